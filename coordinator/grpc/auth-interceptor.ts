import { ServerInterceptingCall, status as GrpcStatus, type ServerInterceptingCallInterface, type ServerInterceptor } from '@grpc/grpc-js';
import { bearerTokenCheck } from '../bearer-token.js';

/** Services that stay open without a token: health checks and reflection describe, never change. */
const OPEN_PREFIXES = ['/grpc.health.v1.', '/grpc.reflection.'];

/**
 * Largest request message the open services take, bytes. Their requests name a service, a symbol
 * or a file; a larger one is refused with RESOURCE_EXHAUSTED as soon as its length prefix arrives.
 */
export const OPEN_SERVICE_MAX_MESSAGE_BYTES = 64 * 1024;

const UNAUTHENTICATED = 'missing or wrong token: send "authorization: Bearer <token>" (the coordinator writes it to <data dir>/auth-token)';

/**
 * Requires `authorization: Bearer <token>` on every call except health and reflection. A grpc-js
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
export function createAuthInterceptor(token: string): ServerInterceptor {
  const authorized = bearerTokenCheck(token);
  return (method, call) => {
    if (OPEN_PREFIXES.some((p) => method.path.startsWith(p)) && limitReceive(call, OPEN_SERVICE_MAX_MESSAGE_BYTES)) return new ServerInterceptingCall(call);
    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, pass) {
            const value = metadata.get('authorization')[0];
            if (authorized(typeof value === 'string' ? value : undefined)) pass(metadata);
            else call.sendStatus({ code: GrpcStatus.UNAUTHENTICATED, details: UNAUTHENTICATED });
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
