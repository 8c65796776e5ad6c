/**
 * Irregular samples to a regular grid, plus the order statistics the forecasters share.
 * Pure computation.
 */
import { InvalidArgumentError } from '../../common/errors.js';

/** Samples as parallel arrays: `t` epoch ms, `v` values. Order does not matter. */
export interface Series {
  t: readonly number[];
  v: readonly number[];
}

/**
 * A series on a regular grid: point `i` is the mean of the samples in
 * `[t0 + i·stepMs, t0 + (i+1)·stepMs)`. Empty buckets carry the last observed value forward and
 * have `observed[i] = 0`, so forecasters can read them but never score on them.
 */
export interface RegularSeries {
  /** Start of the first bucket, epoch ms, a multiple of `stepMs`. */
  t0: number;
  stepMs: number;
  v: Float64Array;
  observed: Uint8Array;
}

/**
 * Buckets samples onto the epoch-aligned grid of `stepMs`.
 * @throws InvalidArgumentError (`series`, `series.t[i]`, `series.v[i]`, `stepMs`) for empty or
 *   mismatched arrays, non-finite or negative times, non-finite values, or a grid over `maxPoints`.
 */
export function toRegularSeries(series: Series, stepMs: number, maxPoints = 5_000_000): RegularSeries {
  if (!Number.isInteger(stepMs) || stepMs <= 0) throw new InvalidArgumentError('stepMs', `expected a positive integer, got ${String(stepMs)}`);
  if (!series || !Array.isArray(series.t) || !Array.isArray(series.v)) throw new InvalidArgumentError('series', 'expected { t: number[], v: number[] }');
  const { t, v } = series;
  if (t.length !== v.length) throw new InvalidArgumentError('series', `t has ${t.length} entries but v has ${v.length}`);
  if (t.length === 0) throw new InvalidArgumentError('series', 'no samples');
  let minB = Number.POSITIVE_INFINITY;
  let maxB = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < t.length; i++) {
    const ti = t[i] as number;
    if (typeof ti !== 'number' || !Number.isFinite(ti) || ti < 0) throw new InvalidArgumentError(`series.t[${i}]`, `expected finite non-negative epoch ms, got ${String(ti)}`);
    const vi = v[i] as number;
    if (typeof vi !== 'number' || !Number.isFinite(vi)) throw new InvalidArgumentError(`series.v[${i}]`, `expected a finite number, got ${String(vi)}`);
    const b = Math.floor(ti / stepMs);
    if (b < minB) minB = b;
    if (b > maxB) maxB = b;
  }
  const n = maxB - minB + 1;
  if (n > maxPoints) throw new InvalidArgumentError('stepMs', `the series spans ${n} steps, more than ${maxPoints}; use a larger step`);
  const sum = new Float64Array(n);
  const count = new Uint32Array(n);
  for (let i = 0; i < t.length; i++) {
    const b = Math.floor((t[i] as number) / stepMs) - minB;
    sum[b] = (sum[b] as number) + (v[i] as number);
    count[b] = (count[b] as number) + 1;
  }
  const out = new Float64Array(n);
  const observed = new Uint8Array(n);
  let last = 0;
  for (let i = 0; i < n; i++) {
    const c = count[i] as number;
    if (c > 0) {
      last = (sum[i] as number) / c;
      observed[i] = 1;
    }
    out[i] = last;
  }
  return { t0: minB * stepMs, stepMs, v: out, observed };
}

/** The last `count` points of a regular series (all of it when shorter). */
export function tailOf(series: RegularSeries, count: number): RegularSeries {
  const start = Math.max(0, series.v.length - count);
  return { t0: series.t0 + start * series.stepMs, stepMs: series.stepMs, v: series.v.slice(start), observed: series.observed.slice(start) };
}

/** Median of the values (averaging the middle two); NaN when empty. Sorts `values` in place. */
export function medianInPlace(values: number[] | Float64Array): number {
  const k = values.length;
  if (k === 0) return Number.NaN;
  values.sort((a, b) => a - b);
  return k % 2 === 1 ? (values[(k - 1) >> 1] as number) : ((values[k / 2 - 1] as number) + (values[k / 2] as number)) / 2;
}

/** Empirical quantile (0..1) of sorted values with linear interpolation; NaN when empty. */
export function quantileSorted(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return Number.NaN;
  const pos = Math.min(n - 1, Math.max(0, q * (n - 1)));
  const lo = Math.floor(pos);
  const hi = Math.min(n - 1, lo + 1);
  return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (pos - lo);
}

/**
 * Median of `v[i-w+1 .. i]` for every `i` (windows truncated at the start), in O(n·w) with a sorted
 * window instead of a sort per point. Same values as {@link medianInPlace} over each window.
 */
export function rollingMedian(v: Float64Array, w: number): Float64Array {
  const out = new Float64Array(v.length);
  const win: number[] = [];
  const position = (x: number): number => {
    let lo = 0;
    let hi = win.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((win[mid] as number) < x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  for (let i = 0; i < v.length; i++) {
    const x = v[i] as number;
    win.splice(position(x), 0, x);
    if (i >= w) win.splice(position(v[i - w] as number), 1);
    const k = win.length;
    out[i] = k % 2 === 1 ? (win[(k - 1) >> 1] as number) : ((win[k / 2 - 1] as number) + (win[k / 2] as number)) / 2;
  }
  return out;
}

/** Mean of `v[i-w+1 .. i]` for every `i` (windows truncated at the start). */
export function rollingMean(v: Float64Array, w: number): Float64Array {
  const out = new Float64Array(v.length);
  let sum = 0;
  for (let i = 0; i < v.length; i++) {
    sum += v[i] as number;
    if (i >= w) sum -= v[i - w] as number;
    out[i] = sum / Math.min(i + 1, w);
  }
  return out;
}

/** Median of `v[i-w+1 .. i]` for one `i`, computed directly (for single-origin forecasts). */
export function windowMedian(v: Float64Array, i: number, w: number): number {
  return medianInPlace(v.slice(Math.max(0, i - w + 1), i + 1));
}

/** Mean of `v[i-w+1 .. i]` for one `i`. */
export function windowMean(v: Float64Array, i: number, w: number): number {
  const start = Math.max(0, i - w + 1);
  let sum = 0;
  for (let k = start; k <= i; k++) sum += v[k] as number;
  return sum / (i - start + 1);
}

/**
 * Mean absolute one-step change over observed neighbours in `[0, end)`: the in-sample naive MAE
 * that scales MASE. Falls back to a tiny positive number for a constant series so ratios stay finite.
 */
export function naiveScale(series: RegularSeries, end = series.v.length): number {
  let sum = 0;
  let count = 0;
  let level = 0;
  for (let i = 1; i < end; i++) {
    level += Math.abs(series.v[i] as number);
    if (series.observed[i] && series.observed[i - 1]) {
      sum += Math.abs((series.v[i] as number) - (series.v[i - 1] as number));
      count++;
    }
  }
  const scale = count > 0 ? sum / count : 0;
  const floor = 1e-9 * Math.max(1, end > 1 ? level / (end - 1) : 0);
  return Math.max(scale, floor);
}

export { createRng } from '../../common/random.js';
