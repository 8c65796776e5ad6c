import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  ClientError,
  Metadata,
  Status,
  createChannel,
  createClientFactory,
  type CallOptions,
  type Channel,
  type Client,
  type ClientMiddlewareCall,
  type CompatServiceDefinition,
} from 'nice-grpc';
import { fromClientError } from '../../common/errors.js';
import { flag, UsageError, type ParsedArgs } from './command.js';

/** Where client commands connect when `--coordinator` is not given. */
export const DEFAULT_COORDINATOR = '127.0.0.1:7700';

/** The token file a coordinator started in this directory writes. */
export const DEFAULT_TOKEN_FILE = './.retrace/auth-token';

/** Reads `--coordinator HOST:PORT` (default 127.0.0.1:7700); UsageError when malformed. */
export function coordinatorAddress(args: ParsedArgs): string {
  const address = flag(args, 'coordinator', DEFAULT_COORDINATOR) as string;
  if (!/^(\[[0-9a-fA-F:]+\]|[^\s:]+):\d{1,5}$/.test(address)) {
    throw new UsageError(`--coordinator: expected HOST:PORT, got ${JSON.stringify(address)}`);
  }
  return address;
}

/**
 * The bearer token, first found of: `--token T`, `--token-file F`, env RETRACE_TOKEN, and (when
 * `defaultFile` is given) that file if it exists. Undefined when none is set.
 */
export function resolveToken(args: ParsedArgs, options: { env?: NodeJS.ProcessEnv; defaultFile?: string } = {}): string | undefined {
  const direct = flag(args, 'token');
  if (direct !== undefined && direct !== 'true') return direct.trim();
  const file = flag(args, 'token-file');
  if (file !== undefined) {
    try {
      return readFileSync(resolve(file), 'utf8').trim();
    } catch (err) {
      throw new UsageError(`--token-file: cannot read ${file}: ${(err as Error).message}`);
    }
  }
  const env = (options.env ?? process.env).RETRACE_TOKEN;
  if (env !== undefined && env.trim() !== '') return env.trim();
  if (options.defaultFile !== undefined && existsSync(options.defaultFile)) {
    return readFileSync(options.defaultFile, 'utf8').trim();
  }
  return undefined;
}

/** A connected client; `close()` releases the channel. */
export interface CliClient<S extends CompatServiceDefinition> {
  client: Client<S>;
  channel: Channel;
  address: string;
  close(): void;
}

/**
 * Opens a channel to the coordinator named by the flags and a client for `definition` that
 * sends `authorization: Bearer <token>`, retries calls the proto marks IDEMPOTENT on UNAVAILABLE
 * (jittered backoff, 3 attempts, unary only) and turns gRPC statuses into typed RetraceErrors.
 */
export function openClient<S extends CompatServiceDefinition>(definition: S, args: ParsedArgs): CliClient<S> {
  const address = coordinatorAddress(args);
  const token = resolveToken(args, { defaultFile: DEFAULT_TOKEN_FILE });
  const metadata = Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  const channel = createChannel(address);
  const client = createClientFactory()
    .use(errorMiddleware)
    .use(retryMiddleware)
    .create(definition, channel, { '*': { metadata } }) as Client<S>;
  return { client, channel, address, close: () => channel.close() };
}

async function* errorMiddleware<Request, Response>(call: ClientMiddlewareCall<Request, Response>, options: CallOptions) {
  try {
    return yield* call.next(call.request, options);
  } catch (err) {
    throw fromClientError(err);
  }
}

async function* retryMiddleware<Request, Response>(call: ClientMiddlewareCall<Request, Response>, options: CallOptions) {
  const idempotent = call.method.options.idempotencyLevel === 'IDEMPOTENT' || call.method.options.idempotencyLevel === 'NO_SIDE_EFFECTS';
  if (!idempotent || call.requestStream || call.responseStream) return yield* call.next(call.request, options);
  for (let attempt = 0; ; attempt++) {
    try {
      return yield* call.next(call.request, options);
    } catch (err) {
      if (!(err instanceof ClientError) || err.code !== Status.UNAVAILABLE || attempt >= 2 || options.signal?.aborted) throw err;
      const base = 200 * 2 ** attempt;
      await new Promise((r) => setTimeout(r, base / 2 + Math.random() * (base / 2)));
    }
  }
}
