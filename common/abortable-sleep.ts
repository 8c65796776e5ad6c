/**
 * Resolves after `ms` milliseconds, or at once when `signal` aborts (never rejects), so loops
 * that wait between attempts stop promptly on shutdown. `ms ≤ 0` resolves immediately.
 */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted || ms <= 0) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
