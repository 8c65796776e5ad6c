/**
 * An unbounded-by-default FIFO that one consumer reads as an AsyncIterable: the glue between
 * event callbacks and gRPC streams (a bidi stream's outgoing half, a server stream's events).
 * `close()` ends iteration after the buffered items; `fail(err)` ends it with `err` after them;
 * a consumer that stops early (break/return) closes the queue.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private waiter: ((r: IteratorResult<T>) => void) | undefined;
  private failWaiter: ((err: unknown) => void) | undefined;
  private closed = false;
  private error: { err: unknown } | undefined;

  /** @param limit most items buffered; `push` beyond it returns false and drops the item. */
  constructor(private readonly limit = Number.POSITIVE_INFINITY) {}

  /** Items buffered and not yet read. */
  get size(): number {
    return this.items.length;
  }

  /** True once closed or failed. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Enqueues one item; false when the queue is closed or full (the item is dropped). */
  push(item: T): boolean {
    if (this.closed) return false;
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = undefined;
      this.failWaiter = undefined;
      waiter({ value: item, done: false });
      return true;
    }
    if (this.items.length >= this.limit) return false;
    this.items.push(item);
    return true;
  }

  /** Ends iteration once the buffered items are read. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const waiter = this.waiter;
    this.waiter = undefined;
    this.failWaiter = undefined;
    waiter?.({ value: undefined, done: true });
  }

  /** Ends iteration with `err` once the buffered items are read. No-op when already closed. */
  fail(err: unknown): void {
    if (this.closed) return;
    this.closed = true;
    this.error = { err };
    const failWaiter = this.failWaiter;
    this.waiter = undefined;
    this.failWaiter = undefined;
    failWaiter?.(err);
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.items.length > 0) return Promise.resolve({ value: this.items.shift() as T, done: false });
        if (this.error) return Promise.reject(this.error.err);
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise<IteratorResult<T>>((resolve, reject) => {
          this.waiter = resolve;
          this.failWaiter = reject;
        });
      },
      return: () => {
        this.close();
        this.items.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
