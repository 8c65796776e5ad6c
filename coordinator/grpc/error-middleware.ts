import { ServerError, Status, type CallContext, type ServerMiddlewareCall } from 'nice-grpc';
import { isAbortError } from 'abort-controller-x';
import { isRetraceError, toServerError } from '../../common/errors.js';
import { storeErrorOf } from '../store/database.js';
import { rejectUndecodable, rejectUndecodableStream } from './request-decoding.js';

/**
 * The server's one error funnel: RetraceErrors become their gRPC status (message names the
 * field), as do the store's retryable errors (storeErrorOf); anything unexpected becomes INTERNAL with a generic message and a log line. Requests
 * whose bytes did not decode (request-decoding.ts) are refused here with INVALID_ARGUMENT.
 */
export function createErrorMiddleware(log: (line: string) => void) {
  return async function* errorMiddleware<Request, Response>(call: ServerMiddlewareCall<Request, Response>, context: CallContext) {
    try {
      return yield* call.next(call.requestStream ? rejectUndecodableStream(call.request) : rejectUndecodable(call.request), context);
    } catch (err) {
      if (err instanceof ServerError || isAbortError(err)) throw err;
      if (isRetraceError(err)) throw toServerError(err);
      const stored = storeErrorOf(err);
      if (stored) throw toServerError(stored);
      log(`grpc: ${call.method.path} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      throw new ServerError(Status.INTERNAL, 'internal error (see coordinator log)');
    }
  };
}
