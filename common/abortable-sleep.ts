/**
 * The longest delay a Node timer takes. A longer one (a replay paced over months of event time)
 * overflows: Node warns and fires after 1 ms.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Calls `fn` once `ms` milliseconds have passed, however long that is: the wait is chained from
 * timers of at most MAX_TIMER_MS, re-reading the clock after each. Returns the cancel function.
 */
export function setLongTimeout(fn: () => void, ms: number): () => void {
  const deadline = performance.now() + ms;
  let timer: ReturnType<typeof setTimeout>;
  // The last stretch fires `fn` itself, so a wait that fits one timer is exactly one setTimeout.
  const arm = (left: number): void => {
    timer = left > MAX_TIMER_MS ? setTimeout(() => arm(deadline - performance.now()), MAX_TIMER_MS) : setTimeout(fn, Math.max(left, 0));
  };
  arm(ms);
  return () => clearTimeout(timer);
}

/**
 * Resolves after `ms` milliseconds, or at once when `signal` aborts (never rejects), so loops
 * that wait between attempts stop promptly on shutdown. `ms ≤ 0` resolves immediately. Any
 * `ms` works, also past MAX_TIMER_MS.
 */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted || ms <= 0) return resolve();
    const cancel = setLongTimeout(done, ms);
    function done(): void {
      cancel();
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
