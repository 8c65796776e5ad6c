/**
 * Free capacity from a usage forecast: capacity − forecast usage − reservations, per forecast step,
 * and the per-node headroom the shard allocator ranks nodes by. Pure computation; the headroom
 * cache only calls the function it is given.
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

/** Free capacity of a node for placement: CPU cores and memory, MiB (reservations not subtracted). */
export interface NodeHeadroom {
  cpuCores: number;
  memoryMb: number;
}

/** The part of a Forecast answer (ForecastResponse) headroom reads: capacity and per-step mean usage. */
export interface MetricForecast {
  capacity: number;
  points: readonly { mean: number }[];
}

/**
 * Headroom over a forecast horizon: the least free capacity any step forecasts (capacity − mean
 * usage), so a node expected to get busy soon ranks as busy now. CPU comes as `cpu.load` percent
 * and becomes cores (× `cpuCores`); memory comes as `memory.used` bytes against `memory.total`
 * bytes and becomes MiB. Reservations are left out on purpose: the allocator subtracts the
 * dispatcher's live reservations itself, and subtracting the forecast's snapshot of them too
 * would count them twice. A metric with no usable forecast (no capacity, no points) gives
 * undefined for that field; both missing gives undefined.
 */
export function toNodeHeadroom(cpu: MetricForecast | undefined, memory: MetricForecast | undefined, cpuCores: number): Partial<NodeHeadroom> | undefined {
  const least = (f: MetricForecast | undefined): number | undefined => {
    if (!f || !Number.isFinite(f.capacity) || f.capacity <= 0 || f.points.length === 0) return undefined;
    let min = Number.POSITIVE_INFINITY;
    for (const p of f.points) if (Number.isFinite(p.mean)) min = Math.min(min, f.capacity - p.mean);
    return Number.isFinite(min) ? Math.max(0, Math.min(f.capacity, min)) : undefined;
  };
  const cpuFree = least(cpu);
  const memFree = least(memory);
  const out: Partial<NodeHeadroom> = {};
  if (cpuFree !== undefined && cpuCores > 0) out.cpuCores = (cpuCores * cpuFree) / (cpu?.capacity ?? 100);
  if (memFree !== undefined) out.memoryMb = memFree / 2 ** 20;
  return out.cpuCores === undefined && out.memoryMb === undefined ? undefined : out;
}

/** Options of {@link createHeadroomCache}. */
export interface HeadroomCacheOptions {
  /** Computes a node's headroom (e.g. two Forecast calls); undefined or a rejection = not known. */
  compute: (nodeId: string, signal: AbortSignal) => Promise<NodeHeadroom | undefined>;
  /** A node's headroom is recomputed at most this often, ms (default 5000). */
  minRefreshMs?: number;
  /** Clock, ms (default Date.now). */
  now?: () => number;
  /** Called with a node's id and the error when a refresh fails (first failure in a row only). */
  onError?: (nodeId: string, error: unknown) => void;
}

/** Per-node forecast headroom, read synchronously on every placement and refreshed in the background. */
export interface HeadroomCache {
  /** The latest headroom of a node, or undefined before the first successful refresh. O(1). */
  get(nodeId: string): NodeHeadroom | undefined;
  /** A new report came in: recomputes in the background unless the entry is younger than `minRefreshMs`. */
  refresh(nodeId: string): void;
  /** Forgets a node (it left or was lost). */
  forget(nodeId: string): void;
  /** Stops refreshing and aborts refreshes in flight. Idempotent. */
  stop(): void;
}

/**
 * A per-node cache of forecast headroom. Forecasting costs a history read and arithmetic on a
 * fitted model (the fit itself is cached by the mesh), too much for every placement but cheap
 * per report; so placements read the cache and reports refresh it, one refresh per node at a
 * time, at most every `minRefreshMs`.
 */
export function createHeadroomCache(options: HeadroomCacheOptions): HeadroomCache {
  const minRefreshMs = options.minRefreshMs ?? 5000;
  if (!Number.isFinite(minRefreshMs) || minRefreshMs < 0) throw new InvalidArgumentError('minRefreshMs', `expected a finite number ≥ 0, got ${String(minRefreshMs)}`);
  const now = options.now ?? Date.now;
  const controller = new AbortController();
  const entries = new Map<string, { value: NodeHeadroom | undefined; atMs: number; busy: boolean; failing: boolean }>();
  return {
    get(nodeId) {
      return entries.get(nodeId)?.value;
    },
    refresh(nodeId) {
      if (controller.signal.aborted) return;
      let e = entries.get(nodeId);
      if (!e) entries.set(nodeId, (e = { value: undefined, atMs: Number.NEGATIVE_INFINITY, busy: false, failing: false }));
      if (e.busy || now() - e.atMs < minRefreshMs) return;
      const entry = e;
      entry.busy = true;
      entry.atMs = now();
      void options
        .compute(nodeId, controller.signal)
        .then(
          (value) => {
            entry.value = value;
            entry.failing = false;
          },
          (err: unknown) => {
            // Keep the last good value: a forecast that fails once (too little history yet, a
            // transient store error) should not flip the node back to raw readings and back.
            if (!entry.failing && !controller.signal.aborted) options.onError?.(nodeId, err);
            entry.failing = true;
          },
        )
        .finally(() => {
          entry.busy = false;
        });
    },
    forget(nodeId) {
      entries.delete(nodeId);
    },
    stop() {
      controller.abort(new Error('headroom cache stopped'));
      entries.clear();
    },
  };
}
