import { ServerError, Status, type CallContext, type ServerMiddlewareCall } from 'nice-grpc';
import { bearerTokenCheck } from '../bearer-token.js';

/** Services that stay open without a token: health checks and reflection describe, never change. */
const OPEN_PREFIXES = ['/grpc.health.v1.', '/grpc.reflection.'];

/** Requires `authorization: Bearer <token>` on every call except health and reflection. */
export function createAuthMiddleware(token: string) {
  const authorized = bearerTokenCheck(token);
  return async function* authMiddleware<Request, Response>(call: ServerMiddlewareCall<Request, Response>, context: CallContext) {
    if (!OPEN_PREFIXES.some((p) => call.method.path.startsWith(p))) {
      if (!authorized(context.metadata.get('authorization'))) {
        throw new ServerError(Status.UNAUTHENTICATED, 'missing or wrong token: send "authorization: Bearer <token>" (the coordinator writes it to <data dir>/auth-token)');
      }
    }
    return yield* call.next(call.request, context);
  };
}
