import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MAX_TIMER_MS, setLongTimeout, sleep } from '../common/abortable-sleep.js';

// A replay of records months apart in event time waits longer than one Node timer takes
// (2^31-1 ms); a longer setTimeout fires after 1 ms, so the record was released at once.
describe('sleep and setLongTimeout past the 32-bit timer limit (fake clock)', () => {
  let delays: number[];
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
    delays = [];
    const real = globalThis.setTimeout;
    vi.spyOn(globalThis, 'setTimeout').mockImplementation(((fn: () => void, ms?: number) => {
      delays.push(ms ?? 0);
      // What Node does with a delay it cannot hold.
      return real(fn, (ms ?? 0) > MAX_TIMER_MS ? 1 : ms);
    }) as typeof setTimeout);
  });
  afterEach(() => {
    vi.restoreAllMocks();
    vi.useRealTimers();
  });

  it('a wait of 56,547,676,542 ms (a 0.5x replay over 327 days) ends then, not after 1 ms', async () => {
    const ms = 56_547_676_542.6;
    let done = false;
    void sleep(ms, new AbortController().signal).then(() => (done = true));
    await vi.advanceTimersByTimeAsync(1000);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(ms - 1000 - 1);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(2);
    expect(done).toBe(true);
    expect(delays.length).toBeGreaterThan(1);
    expect(Math.max(...delays)).toBeLessThanOrEqual(MAX_TIMER_MS);
  });

  it('a short wait is one timer of exactly that length', async () => {
    let done = false;
    void sleep(250, new AbortController().signal).then(() => (done = true));
    await vi.advanceTimersByTimeAsync(249);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(done).toBe(true);
    expect(delays).toEqual([250]);
  });

  it('an abort ends a long wait at once and clears its timer', async () => {
    const ac = new AbortController();
    let done = false;
    void sleep(3 * MAX_TIMER_MS, ac.signal).then(() => (done = true));
    await vi.advanceTimersByTimeAsync(MAX_TIMER_MS + 5);
    expect(done).toBe(false);
    ac.abort();
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('setLongTimeout fires once at its deadline and can be cancelled between chunks', async () => {
    const fired: number[] = [];
    const start = performance.now();
    setLongTimeout(() => fired.push(performance.now() - start), 2 * MAX_TIMER_MS + 10);
    const cancel = setLongTimeout(() => fired.push(-1), 2 * MAX_TIMER_MS);
    await vi.advanceTimersByTimeAsync(MAX_TIMER_MS + 1);
    cancel();
    await vi.advanceTimersByTimeAsync(MAX_TIMER_MS + 100);
    expect(fired).toEqual([2 * MAX_TIMER_MS + 10]);
    expect(vi.getTimerCount()).toBe(0);
  });
});
