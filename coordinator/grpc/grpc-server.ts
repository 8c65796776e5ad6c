import { readFileSync } from 'node:fs';
import { createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { createServer, type Server } from 'nice-grpc';
import { HealthDefinition, HealthServiceImpl, HealthState } from 'nice-grpc-server-health';
import { ServerReflection, ServerReflectionService } from 'nice-grpc-server-reflection';
import { FLOW_CONTROL_WINDOW_BYTES, FLOW_CONTROL_WINDOW_OPTION } from '../../common/grpc-flow-control.js';
import { ownerOnly, type Authenticate } from '../token-registry.js';
import { createAuthInterceptor } from './auth-interceptor.js';
import { createErrorMiddleware } from './error-middleware.js';
import { createPublishBudgetInterceptor, PUBLISH_BUDGET_BYTES, PUBLISH_MAX_WAITING, PUBLISH_RECEIVE_TIMEOUT_MS } from './publish-budget.js';
import { guardRequestDecoding } from './request-decoding.js';
import { installServerFlowControlWindow } from './server-flow-control.js';

/** A service to mount: its generated definition and implementation. */
export interface ServiceMount {
  // nice-grpc's definition and implementation types are checked where each mount is built.
  definition: { fullName: string } & Record<string, unknown>;
  implementation: unknown;
}

/** Largest message either way; larger ones fail with RESOURCE_EXHAUSTED at the transport. */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

const DESCRIPTOR_SET = new URL('../../common/gen/descriptor-set.binpb', import.meta.url);

/**
 * The coordinator's gRPC server: auth, then the error funnel, in front of every service; plus
 * the standard health service and server reflection so generic gRPC tools can list and call it.
 * `token` is the owner token alone, or the coordinator's token registry's `authenticate`.
 * Request bytes that do not decode as the method's message are refused with INVALID_ARGUMENT
 * naming the message (grpc-js alone answers INTERNAL "Error deserializing request").
 * PublishCode calls together hold at most PUBLISH_BUDGET_BYTES (createPublishBudgetInterceptor);
 * more wait, and one past PUBLISH_MAX_WAITING waiting is refused with RESOURCE_EXHAUSTED.
 * Streams and connections get FLOW_CONTROL_WINDOW_BYTES windows (see common/grpc-flow-control.ts).
 */
export function createGrpcServer(options: { token: string | Authenticate; services: ServiceMount[]; log: (line: string) => void; publishReceiveTimeoutMs?: number }): { server: Server; health: HealthState } {
  if (!installServerFlowControlWindow()) options.log(`grpc-js no longer lets the coordinator set its HTTP/2 flow-control window: streams from other hosts stay at 64 KiB in flight`);
  const server = createServer({
    [FLOW_CONTROL_WINDOW_OPTION]: FLOW_CONTROL_WINDOW_BYTES,
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    // No channelz service is mounted, so its per-call and per-session bookkeeping is never read.
    'grpc.enable_channelz': 0,
    // Auth first: the budget counts only calls that carry a token allowed to publish.
    interceptors: [
      createAuthInterceptor(typeof options.token === 'string' ? ownerOnly(options.token) : options.token),
      createPublishBudgetInterceptor({ path: '/retrace.v1.CodeService/PublishCode', budgetBytes: PUBLISH_BUDGET_BYTES, reserveBytes: MAX_MESSAGE_BYTES, maxWaiting: PUBLISH_MAX_WAITING, sizeOf: bundleBytes, receiveTimeoutMs: options.publishReceiveTimeoutMs ?? PUBLISH_RECEIVE_TIMEOUT_MS }),
    ],
  })
    .use(createErrorMiddleware(options.log));
  const health = HealthState();
  const descriptors = readFileSync(DESCRIPTOR_SET);
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, descriptors));
  for (const s of options.services) {
    const service = registry.getService(s.definition.fullName);
    const definition = guardRequestDecoding(s.definition as never, (method) => service?.methods.find((m) => m.name === method)?.input.typeName);
    server.add(definition as never, s.implementation as never);
  }
  server.add(HealthDefinition, HealthServiceImpl(health));
  server.add(ServerReflectionService, ServerReflection(descriptors, options.services.map((s) => s.definition.fullName)));
  return { server, health };
}

/** The bytes a PublishCode request holds: its bundle (the rest is a few hundred bytes). */
function bundleBytes(request: unknown): number {
  const bundle = (request as { bundle?: unknown } | undefined)?.bundle;
  return bundle instanceof Uint8Array ? bundle.byteLength : 0;
}
