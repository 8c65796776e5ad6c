/** Reconnect delays: exponential growth capped at `maxMs`, jittered so agents do not stampede. */
export interface BackoffPolicy {
  /** Delay before the first retry, ms. */
  readonly initialMs: number;
  /** Cap on the un-jittered delay, ms. */
  readonly maxMs: number;
  /** Growth per attempt (> 1). */
  readonly multiplier: number;
}

/** 250 ms doubling up to 30 s. */
export const DEFAULT_BACKOFF: BackoffPolicy = Object.freeze({ initialMs: 250, maxMs: 30_000, multiplier: 2 });

/**
 * Delay before retry number `attempt` (0-based): "equal jitter", i.e. uniformly in
 * [base/2, base) with base = min(maxMs, initialMs · multiplier^attempt). Half the delay is kept
 * so a flapping coordinator still sees spacing; half is random so a fleet spreads out.
 * `rng` returns [0, 1) and is injectable for deterministic tests.
 */
export function backoffDelayMs(attempt: number, policy: BackoffPolicy = DEFAULT_BACKOFF, rng: () => number = Math.random): number {
  const base = Math.min(policy.maxMs, policy.initialMs * policy.multiplier ** Math.max(0, attempt));
  return base / 2 + rng() * (base / 2);
}
