/**
 * Seeded 32-bit PRNG (mulberry32), uniform in [0, 1): small and repeatable, so forecaster
 * training and injected replay faults can be reproduced from a seed.
 */
export function createRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Wait before retry `n` (1-based) after a failure: "full jitter", uniform in
 * [0, min(capMs, baseMs · 2^(n-1))] and rounded to a ms, so retries of many failures spread out.
 * The job manager's task retries and a pipeline step's retries draw it alike.
 */
export function fullJitterBackoffMs(n: number, baseMs: number, capMs: number, rng: () => number): number {
  return Math.round(rng() * Math.min(capMs, baseMs * 2 ** (n - 1)));
}
