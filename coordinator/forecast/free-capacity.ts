/**
 * Free capacity from a usage forecast: capacity − forecast usage − reservations, per forecast step.
 * Pure computation.
 */
import { InvalidArgumentError } from '../../common/errors.js';

/** Capacity promised to someone for `[fromMs, toMs)`, in the metric's units. */
export interface Reservation {
  fromMs: number;
  toMs: number;
  amount: number;
}

/** The part of a forecast this helper reads (a `ForecastResult` fits). */
export interface UsageForecast {
  t: readonly number[];
  mean: readonly number[];
  lower: readonly number[];
  upper: readonly number[];
  coverage: number;
}

/** Free capacity per forecast step. */
export interface FreeCapacityForecast {
  t: number[];
  /** Reservations active at each step. */
  reserved: number[];
  /** capacity − forecast usage − reserved. */
  free: number[];
  /** Pessimistic: capacity − upper usage bound − reserved (what a scheduler can promise at `coverage`). */
  freeLower: number[];
  /** Optimistic: capacity − lower usage bound − reserved. */
  freeUpper: number[];
  /** Nominal coverage of `[freeLower, freeUpper]` (that of the usage interval). */
  coverage: number;
}

/** Options of {@link toFreeCapacity}. */
export interface FreeCapacityOptions {
  /** Clamp results at 0 instead of reporting overcommitment as negative free capacity. Default false. */
  clampAtZero?: boolean;
}

/**
 * Turns a usage forecast into free capacity. A reservation counts at step time `t` when
 * `fromMs ≤ t < toMs`; overlapping reservations add up.
 * @param capacity total capacity in the metric's units (e.g. 100 for CPU %, bytes for memory), finite and ≥ 0.
 * @throws InvalidArgumentError for a bad capacity, a malformed forecast, or a reservation with a
 *   non-finite or negative amount or `toMs ≤ fromMs` (field `reservations[i].…`).
 */
export function toFreeCapacity(forecast: UsageForecast, capacity: number, reservations: readonly Reservation[] = [], options: FreeCapacityOptions = {}): FreeCapacityForecast {
  if (typeof capacity !== 'number' || !Number.isFinite(capacity) || capacity < 0) {
    throw new InvalidArgumentError('capacity', `expected a finite number ≥ 0, got ${String(capacity)}`);
  }
  const n = forecast.t.length;
  if (forecast.mean.length !== n || forecast.lower.length !== n || forecast.upper.length !== n) {
    throw new InvalidArgumentError('forecast', 't, mean, lower and upper must have the same length');
  }
  reservations.forEach((r, i) => {
    if (!Number.isFinite(r.fromMs)) throw new InvalidArgumentError(`reservations[${i}].fromMs`, `expected finite epoch ms, got ${String(r.fromMs)}`);
    if (!Number.isFinite(r.toMs) || r.toMs <= r.fromMs) throw new InvalidArgumentError(`reservations[${i}].toMs`, `expected a time after fromMs, got ${String(r.toMs)}`);
    if (!Number.isFinite(r.amount) || r.amount < 0) throw new InvalidArgumentError(`reservations[${i}].amount`, `expected a finite number ≥ 0, got ${String(r.amount)}`);
  });
  const clamp = options.clampAtZero === true ? (x: number) => Math.max(0, x) : (x: number) => x;
  const out: FreeCapacityForecast = { t: [], reserved: [], free: [], freeLower: [], freeUpper: [], coverage: forecast.coverage };
  for (let k = 0; k < n; k++) {
    const t = forecast.t[k] as number;
    let reserved = 0;
    for (const r of reservations) if (r.fromMs <= t && t < r.toMs) reserved += r.amount;
    out.t.push(t);
    out.reserved.push(reserved);
    out.free.push(clamp(capacity - (forecast.mean[k] as number) - reserved));
    out.freeLower.push(clamp(capacity - (forecast.upper[k] as number) - reserved));
    out.freeUpper.push(clamp(capacity - (forecast.lower[k] as number) - reserved));
  }
  return out;
}
