/**
 * Baseline forecasters on a regular series: persistence, seasonal naive and additive Holt-Winters
 * (damped trend). Each predicts from an origin index `i` (the last point it may read) `h` steps
 * ahead; the batch forms serve backtests and the single forms serve live forecasts through the
 * same code. Pure computation.
 */

/** Persistence: the value at the origin. */
export function persistenceForecast(v: Float64Array, i: number): number {
  return v[i] as number;
}

/**
 * Seasonal naive: the value one (or more) whole periods before the target, the latest one the
 * origin can see. Falls back to persistence where history does not reach back that far.
 */
export function seasonalNaiveForecast(v: Float64Array, i: number, h: number, period: number): number {
  const j = i + h - period * Math.ceil(h / period);
  return j >= 0 ? (v[j] as number) : (v[i] as number);
}

/** Parameters of an additive Holt-Winters model with damped trend; `period: 0` means no season (Holt). */
export interface HoltWintersParams {
  alpha: number;
  beta: number;
  gamma: number;
  phi: number;
  period: number;
}

/** Grid the fit searches: small on purpose, the fit runs per node and metric. */
const ALPHAS = [0.1, 0.3, 0.6, 1];
const BETAS = [0, 0.05];
const GAMMAS = [0, 0.1, 0.3];
const PHIS = [0.9];

interface HwState {
  level: number;
  trend: number;
  season: Float64Array;
}

/** Initial state from the first periods: level = their mean, season = average deviation per phase. */
function initState(v: Float64Array, period: number): HwState {
  const n = v.length;
  if (period <= 1 || n < 2 * period) {
    return { level: n > 0 ? (v[0] as number) : 0, trend: 0, season: new Float64Array(Math.max(1, period)) };
  }
  const cycles = Math.min(3, Math.floor(n / period));
  let mean = 0;
  for (let k = 0; k < cycles * period; k++) mean += v[k] as number;
  mean /= cycles * period;
  const season = new Float64Array(period);
  for (let p = 0; p < period; p++) {
    let s = 0;
    for (let c = 0; c < cycles; c++) s += v[c * period + p] as number;
    season[p] = s / cycles - mean;
  }
  return { level: mean, trend: 0, season };
}

function dampedSum(phi: number, h: number): number {
  if (phi === 1) return h;
  return (phi * (1 - phi ** h)) / (1 - phi);
}

/**
 * Runs the filter over `v[0 .. end)` and returns the mean, over `horizons`, of the mean absolute
 * error of in-sample forecasts from every `stride`-th origin after a one-period warm-up. Scoring
 * several horizons (not just one step) keeps the grid search from picking a trend that only pays
 * off one step ahead and runs away further out.
 */
function multiHorizonMae(v: Float64Array, observed: Uint8Array, end: number, p: HoltWintersParams, horizons: readonly number[], stride: number): number {
  const seasonal = p.period > 1 && end >= 2 * p.period;
  const st = initState(v.subarray(0, end), seasonal ? p.period : 0);
  const season = st.season;
  let { level, trend } = st;
  const { alpha, beta, gamma, phi } = p;
  const period = seasonal ? p.period : 1;
  const warm = seasonal ? p.period : 1;
  const sums = horizons.map((h) => dampedSum(phi, h));
  const err = new Float64Array(horizons.length);
  const count = new Float64Array(horizons.length);
  for (let t = 0; t < end; t++) {
    const y = v[t] as number;
    const idx = t % period;
    const s = seasonal ? (season[idx] as number) : 0;
    const prevLevel = level;
    level = alpha * (y - s) + (1 - alpha) * (prevLevel + phi * trend);
    trend = beta * (level - prevLevel) + (1 - beta) * phi * trend;
    if (seasonal) season[idx] = gamma * (y - level) + (1 - gamma) * s;
    if (t < warm || t % stride !== 0) continue;
    for (let k = 0; k < horizons.length; k++) {
      const j = t + (horizons[k] as number);
      if (j >= end || !observed[j]) continue;
      const f = level + (sums[k] as number) * trend + (seasonal ? (season[j % period] as number) : 0);
      err[k] = (err[k] as number) + Math.abs((v[j] as number) - f);
      count[k] = (count[k] as number) + 1;
    }
  }
  let total = 0;
  let used = 0;
  for (let k = 0; k < horizons.length; k++) {
    if ((count[k] as number) === 0) continue;
    total += (err[k] as number) / (count[k] as number);
    used++;
  }
  return used > 0 ? total / used : Number.POSITIVE_INFINITY;
}

/**
 * Fits alpha, beta, gamma and phi by grid search on the in-sample MAE averaged over `horizons`
 * (steps; default one step) from every `stride`-th origin of `v[0 .. end)`. The season is used only
 * when `period > 1` and the window holds at least two periods.
 */
export function fitHoltWinters(v: Float64Array, observed: Uint8Array, period: number, end = v.length, horizons: readonly number[] = [1], stride = 1): HoltWintersParams {
  const seasonal = period > 1 && end >= 2 * period;
  let best: HoltWintersParams = { alpha: 1, beta: 0, gamma: 0, phi: 0.98, period: seasonal ? period : 0 };
  let bestErr = Number.POSITIVE_INFINITY;
  for (const alpha of ALPHAS) {
    for (const beta of BETAS) {
      // phi only matters when there is a trend to damp.
      for (const phi of beta === 0 ? [0.98] : PHIS) {
        for (const gamma of seasonal ? GAMMAS : [0]) {
          const p = { alpha, beta, gamma, phi, period: seasonal ? period : 0 };
          const err = multiHorizonMae(v, observed, end, p, horizons, stride);
          if (err < bestErr) {
            bestErr = err;
            best = p;
          }
        }
      }
    }
  }
  return best;
}

/**
 * Holt-Winters forecasts from many origins in one pass: `out[k][o]` is the forecast made at
 * `origins[o]` for `horizons[k]` steps ahead. Origins must be ascending. The filter starts at `v[0]`
 * from a state taken from the first (up to three) periods, so forecasts at origins past those
 * periods depend only on `v[0 .. origin]`.
 */
export function holtWintersForecasts(v: Float64Array, p: HoltWintersParams, origins: ArrayLike<number>, horizons: readonly number[]): Float64Array[] {
  const out = horizons.map(() => new Float64Array(origins.length));
  if (origins.length === 0) return out;
  const seasonal = p.period > 1 && v.length >= 2 * p.period;
  const st = initState(v, seasonal ? p.period : 0);
  const season = st.season;
  let { level, trend } = st;
  const period = seasonal ? p.period : 1;
  const sums = horizons.map((h) => dampedSum(p.phi, h));
  let o = 0;
  const last = origins[origins.length - 1] as number;
  for (let t = 0; t <= last; t++) {
    const y = v[t] as number;
    const idx = t % period;
    const s = seasonal ? (season[idx] as number) : 0;
    const prevLevel = level;
    level = p.alpha * (y - s) + (1 - p.alpha) * (prevLevel + p.phi * trend);
    trend = p.beta * (level - prevLevel) + (1 - p.beta) * p.phi * trend;
    if (seasonal) season[idx] = p.gamma * (y - level) + (1 - p.gamma) * s;
    while (o < origins.length && origins[o] === t) {
      for (let k = 0; k < horizons.length; k++) {
        const h = horizons[k] as number;
        const sTarget = seasonal ? (season[(t + h) % period] as number) : 0;
        (out[k] as Float64Array)[o] = level + (sums[k] as number) * trend + sTarget;
      }
      o++;
    }
  }
  return out;
}
