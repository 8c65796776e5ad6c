import { ServerInterceptingCall, status as GrpcStatus, type ServerInterceptingCallInterface, type ServerInterceptor } from '@grpc/grpc-js';
import { toServerError } from '../../common/errors.js';
import { mayCall, permissionDenied } from '../access-policy.js';
import type { Authenticate } from '../token-registry.js';
import { bindPrincipal } from './principal.js';

/** Services that stay open without a token: health checks and reflection describe, never change. */
const OPEN_PREFIXES = ['/grpc.health.v1.', '/grpc.reflection.'];

/**
 * Largest request message the open services take, bytes. Their requests name a service, a symbol
 * or a file; a larger one is refused with RESOURCE_EXHAUSTED as soon as its length prefix arrives.
 */
export const OPEN_SERVICE_MAX_MESSAGE_BYTES = 64 * 1024;

const UNAUTHENTICATED = 'missing or wrong token: send "authorization: Bearer <token>" (the coordinator writes it to <data dir>/auth-token)';

/**
 * Requires `authorization: Bearer <token>` on every call except health and reflection, and that
 * the token's role may call the method (access-policy.ts): PERMISSION_DENIED naming the role and
 * the method otherwise. It then binds the call's principal to the token (principal.ts): a client
 * or agent token that names another in `x-retrace-principal` is refused. A call made with a named
 * token that is revoked while it is open (a stream) ends with UNAUTHENTICATED. A grpc-js
 * interceptor rather than a nice-grpc middleware: it answers as soon as the call's metadata
 * arrives, before a single message is read. A middleware runs only once grpc-js has received the
 * whole request, so a caller without a token could make the coordinator buffer 64 MiB per call
 * (six concurrent 60 MiB calls took it from 128 MiB to 991 MiB resident).
 *
 * The open services, which read their request without a token, take messages of at most
 * OPEN_SERVICE_MAX_MESSAGE_BYTES: with the server's 64 MiB, eight 60 MiB Health/Check calls from
 * anyone took the coordinator from 108 MiB to 2.3 GiB resident. grpc-js has no per-method limit,
 * so the call's own limit is lowered; should a grpc-js version lack the fields this relies on,
 * the open services need the token too rather than read 64 MiB from anyone.
 */
export function createAuthInterceptor(authenticate: Authenticate): ServerInterceptor {
  return (method, call) => {
    if (OPEN_PREFIXES.some((p) => method.path.startsWith(p)) && limitReceive(call, OPEN_SERVICE_MAX_MESSAGE_BYTES)) return new ServerInterceptingCall(call);
    // A named token revoked while the call is open (a stream) ends it: revoking must cut off an
    // agent's Connect session or a client's TraceSession, not only the calls made after.
    let revoked: AbortSignal | undefined;
    const onRevoked = (): void => {
      const reason: unknown = revoked?.reason;
      call.sendStatus({ code: GrpcStatus.UNAUTHENTICATED, details: `${reason instanceof Error ? reason.message : 'the token was revoked'} while this call was open` });
    };
    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, pass) {
            const value = metadata.get('authorization')[0];
            const identity = authenticate(typeof value === 'string' ? value : undefined);
            if (!identity) {
              call.sendStatus({ code: GrpcStatus.UNAUTHENTICATED, details: UNAUTHENTICATED });
              return;
            }
            const refused = mayCall(identity.role, method.path) ? bindPrincipal(identity, metadata) : permissionDenied(identity, method.path);
            if (refused) {
              const status = toServerError(refused);
              call.sendStatus({ code: status.code as number, details: status.details });
              return;
            }
            revoked = identity.revoked;
            revoked?.addEventListener('abort', onRevoked, { once: true });
            pass(metadata);
          },
          onCancel() {
            // Every end of the call (its status sent, the client gone) comes here.
            revoked?.removeEventListener('abort', onRevoked);
          },
        });
      },
    });
  };
}

/**
 * Lowers the largest message `call` reads, before it reads any: the length prefix is checked
 * against the decoder's limit (`maxReadMessageLength`), a decompressed message against the call's
 * (`maxReceiveMessageSize`). `call` is grpc-js's BaseServerInterceptingCall when this interceptor
 * is the first; false (nothing changed) when it does not have both fields.
 */
function limitReceive(call: ServerInterceptingCallInterface, bytes: number): boolean {
  const base = call as unknown as { decoder?: { maxReadMessageLength?: unknown }; maxReceiveMessageSize?: unknown };
  if (!base.decoder || typeof base.decoder.maxReadMessageLength !== 'number' || typeof base.maxReceiveMessageSize !== 'number') return false;
  base.decoder.maxReadMessageLength = bytes;
  base.maxReceiveMessageSize = bytes;
  return true;
}
