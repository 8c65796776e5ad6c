import { ServerInterceptingCall, status as GrpcStatus, type ServerInterceptor } from '@grpc/grpc-js';

/** Bytes of code the coordinator takes in at once over all PublishCode calls (128 MiB). */
export const PUBLISH_BUDGET_BYTES = 128 * 1024 * 1024;

/** PublishCode calls that may wait for the budget at once; one more is refused (16). */
export const PUBLISH_MAX_WAITING = 16;

/**
 * How long an admitted PublishCode call may take to deliver its bundle (5 min): a 32 MiB bundle
 * then needs about 110 KiB/s. A caller that stalls after its metadata would otherwise hold its
 * share until its connection dies, which for a dead peer can take hours.
 */
export const PUBLISH_RECEIVE_TIMEOUT_MS = 5 * 60_000;

/** What the budget interceptor needs to know. */
export interface PublishBudgetOptions {
  /** The method's path, e.g. `/retrace.v1.CodeService/PublishCode`. */
  path: string;
  /** Bytes all calls of the method may hold at once. */
  budgetBytes: number;
  /** What one call counts for until its request has arrived: the largest request it may send. */
  reserveBytes: number;
  /** Calls that may wait for room at once; past that a call is refused. */
  maxWaiting: number;
  /** Bytes the arrived request holds (its bundle), which the call counts for from then on. */
  sizeOf: (request: unknown) => number;
  /** How long an admitted call may take to deliver its request; then it ends DEADLINE_EXCEEDED and its share comes back. */
  receiveTimeoutMs: number;
}

const MIB = 1024 * 1024;

/**
 * Bounds the memory PublishCode calls hold at once. grpc-js buffers a request whole before any
 * handler or middleware sees it, so the budget is taken when the call's metadata arrives, before
 * a byte of the request is read: a call counts for `reserveBytes` (the largest request it may
 * send) while its request arrives, then for the bytes its request holds, until it ends in any
 * way (answered, failed, cancelled, connection lost). A call that does not fit waits, in arrival
 * order, with its request unread (grpc-js reads none before the metadata is passed on, so a
 * waiting call holds no more than HTTP/2's window); when `maxWaiting` calls already wait, it is
 * refused at once with RESOURCE_EXHAUSTED naming the limit, for the client to retry later.
 * Without it, one authenticated client sending twenty concurrent 60 MiB publishes made the
 * coordinator hold about 1.2 GB. Must come after the auth interceptor, so calls without a token
 * never count.
 */
export function createPublishBudgetInterceptor(options: PublishBudgetOptions): ServerInterceptor {
  let held = 0;
  const waiting: { admit: () => void }[] = [];
  const fits = (): boolean => held + options.reserveBytes <= options.budgetBytes;
  const admitWaiting = (): void => {
    while (waiting.length > 0 && fits()) waiting.shift()?.admit();
  };
  return (method, call) => {
    if (method.path !== options.path) return new ServerInterceptingCall(call);
    let mine = 0;
    let ended = false;
    let waiter: { admit: () => void } | undefined;
    let timer: NodeJS.Timeout | undefined;
    const end = (): void => {
      clearTimeout(timer);
      if (ended) return;
      ended = true;
      if (waiter) waiting.splice(waiting.indexOf(waiter), 1);
      held -= mine;
      mine = 0;
      admitWaiting();
    };
    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, pass) {
            const admit = (): void => {
              waiter = undefined;
              mine = options.reserveBytes;
              held += mine;
              timer = setTimeout(() => {
                end();
                call.sendStatus({
                  code: GrpcStatus.DEADLINE_EXCEEDED,
                  details: `PublishCode: the bundle did not arrive within ${options.receiveTimeoutMs / 1000} s of the call being let in; it held ${options.reserveBytes / MIB} MiB of the ${options.budgetBytes / MIB} MiB publish budget meanwhile. Publish again over a faster link`,
                });
              }, options.receiveTimeoutMs);
              timer.unref();
              pass(metadata);
            };
            if (waiting.length === 0 && fits()) return admit();
            if (waiting.length >= options.maxWaiting) {
              ended = true;
              call.sendStatus({
                code: GrpcStatus.RESOURCE_EXHAUSTED,
                details: `PublishCode: the coordinator takes in at most ${options.budgetBytes / MIB} MiB of code at once (a publish counts for ${options.reserveBytes / MIB} MiB until its bundle has arrived) and ${options.maxWaiting} more publishes already wait for room; try again when they end`,
              });
              return;
            }
            waiter = { admit };
            waiting.push(waiter);
          },
          onReceiveMessage(message, pass) {
            clearTimeout(timer);
            if (!ended) {
              const size = Math.min(options.reserveBytes, Math.max(0, options.sizeOf(message)));
              held += size - mine;
              mine = size;
              admitWaiting();
            }
            pass(message);
          },
          onCancel() {
            end();
          },
        });
      },
      sendStatus(status, next) {
        end();
        next(status);
      },
    });
  };
}
