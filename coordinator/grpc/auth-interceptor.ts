import { ServerInterceptingCall, status as GrpcStatus, type ServerInterceptor } from '@grpc/grpc-js';
import { bearerTokenCheck } from '../bearer-token.js';

/** Services that stay open without a token: health checks and reflection describe, never change. */
const OPEN_PREFIXES = ['/grpc.health.v1.', '/grpc.reflection.'];

const UNAUTHENTICATED = 'missing or wrong token: send "authorization: Bearer <token>" (the coordinator writes it to <data dir>/auth-token)';

/**
 * Requires `authorization: Bearer <token>` on every call except health and reflection. A grpc-js
 * interceptor rather than a nice-grpc middleware: it answers as soon as the call's metadata
 * arrives, before a single message is read. A middleware runs only once grpc-js has received the
 * whole request, so a caller without a token could make the coordinator buffer 64 MiB per call
 * (six concurrent 60 MiB calls took it from 128 MiB to 991 MiB resident).
 */
export function createAuthInterceptor(token: string): ServerInterceptor {
  const authorized = bearerTokenCheck(token);
  return (method, call) => {
    if (OPEN_PREFIXES.some((p) => method.path.startsWith(p))) return new ServerInterceptingCall(call);
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
