/** Wall-clock nanoseconds since the epoch, monotonic within the process (hrtime-based). */
export type NanoClock = () => bigint;

export function createSystemClock(): NanoClock {
  const base = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
  return () => base + process.hrtime.bigint();
}
