/**
 * Resource history: per-node, per-metric time series in LevelDB with retention tiers.
 *
 * Layout (all under the database or sublevel handed to {@link createHistoryStore}):
 * - one sublevel per tier, named `raw` or `r<resolutionMs>`; key
 *   `<nodeId> NUL <metric> NUL <16-digit zero-padded ms>` so that one series is one contiguous key
 *   range and a time range is one range scan;
 * - raw values are one float64 (8 bytes); rolled-up buckets are `mean, min, max, count` (4 × float64),
 *   keyed by the bucket's start time;
 * - sublevel `series` indexes `<nodeId> NUL <metric>` so listing metrics never scans samples.
 *
 * Data lives in exactly one tier at a time: {@link HistoryStore.compact} moves each complete bucket
 * from a tier to the next coarser one in the same atomic batch that deletes its sources, so a
 * reader never sees a sample twice or not at all.
 */
import type { AbstractBatchOperation, AbstractLevel, AbstractSublevel } from 'abstract-level';
import { InvalidArgumentError } from '../../common/errors.js';

/** Any abstract-level database or sublevel (level, memory-level, `db.sublevel(...)`). */
export type HistoryDb = AbstractLevel<any, any, any>;
type TierDb = AbstractSublevel<HistoryDb, any, string, Uint8Array>;

/** One retention tier. `resolutionMs: 0` means raw samples. */
export interface RetentionTier {
  /** Bucket width in ms; 0 for raw samples. Each tier's width must be a multiple of the previous one's. */
  resolutionMs: number;
  /** How long data stays in this tier, in ms, before it is rolled up into the next (or deleted, for the last). */
  retentionMs: number;
}

/** Options of {@link createHistoryStore}; every field has a default. */
export interface HistoryStoreOptions {
  /**
   * Retention tiers, finest first; the first must be raw (`resolutionMs: 0`). Default: raw for 24 h,
   * 1-minute buckets for 7 days, 15-minute buckets for 90 days.
   */
  tiers?: readonly RetentionTier[];
  /** Clock for {@link HistoryStore.compact} when called without `now`; epoch ms. Default `Date.now`. */
  clock?: () => number;
  /** Most operations in one compaction batch (a batch always ends on a bucket boundary). Default 20 000. */
  maxBatchOps?: number;
  /** Most stored points one query may read (they are held in memory); larger ranges throw InvalidArgumentError. Default 1 000 000. */
  maxQueryPoints?: number;
}

/** Options after validation and defaulting; frozen. */
export interface CompiledHistoryStoreOptions {
  readonly tiers: readonly Readonly<RetentionTier>[];
  readonly clock: () => number;
  readonly maxBatchOps: number;
  readonly maxQueryPoints: number;
}

/** One sample as the agents report it. */
export interface MetricSample {
  /** Metric name, e.g. `cpu.usage_pct`; 1..200 characters, no control characters. */
  metric: string;
  /** Sample time, epoch milliseconds, ≥ 0 (fractions are floored). */
  t: number;
  /** The measurement; any finite number. */
  value: number;
}

/**
 * One point of a query answer. Raw samples have `count: 1`, `min = max = value` and
 * `resolutionMs: 0`; rolled-up or step-aggregated points cover `[t, t + resolutionMs)`.
 */
export interface HistoryPoint {
  /** Start of the bucket (or the raw sample's time), epoch ms. */
  t: number;
  /** Mean of the samples in the bucket. */
  value: number;
  min: number;
  max: number;
  /** Number of raw samples the point summarises. */
  count: number;
  /** Width of the bucket in ms; 0 for a raw sample. */
  resolutionMs: number;
}

/** Options of {@link HistoryStore.query}. */
export interface HistoryQueryOptions {
  /**
   * Aggregate into buckets of this width (ms, aligned to the epoch), weighting each stored point by
   * its count. Where only coarser data survives, its buckets come back as they are (a step never
   * invents data). Omitted: every stored point at its own resolution.
   */
  stepMs?: number;
}

/** What one {@link HistoryStore.compact} run did. */
export interface CompactionReport {
  /** Series visited. */
  series: number;
  /** Entries moved into a coarser tier (and deleted from their own). */
  rolledUp: number;
  /** Entries deleted because they were older than the last tier's retention. */
  expired: number;
  /** Coarse buckets written (created or merged). */
  bucketsWritten: number;
  /** Series dropped from the index because no data was left in any tier. */
  seriesRemoved: number;
}

/** The history store; see {@link createHistoryStore}. */
export interface HistoryStore {
  /** The compiled options in force. */
  readonly options: CompiledHistoryStoreOptions;
  /**
   * Writes samples of one node in one atomic batch. A sample at a time already stored for the same
   * metric replaces it. Resolves to the number of samples written.
   * @throws InvalidArgumentError naming the field (`nodeId`, `samples[i].metric`, `samples[i].t`, `samples[i].value`).
   */
  append(nodeId: string, samples: readonly MetricSample[]): Promise<number>;
  /**
   * Points of one series with `fromMs ≤ t ≤ toMs` (coarse buckets overlapping the range included),
   * sorted by time, at the best resolution each part of the range still has, merged across tiers.
   * An unknown series gives `[]`.
   * @throws InvalidArgumentError for a bad id, a negative or reversed range, a bad `stepMs`, or a range holding over `maxQueryPoints` stored points.
   */
  query(nodeId: string, metric: string, fromMs: number, toMs: number, options?: HistoryQueryOptions): Promise<HistoryPoint[]>;
  /** Metric names recorded for a node, sorted; `[]` for an unknown node. */
  listMetrics(nodeId: string): Promise<string[]>;
  /** Node ids with at least one recorded series, sorted. */
  listNodes(): Promise<string[]>;
  /**
   * Rolls every complete bucket older than a tier's retention into the next tier and deletes data
   * older than the last tier's retention. Each batch is atomic and ends on a bucket boundary, so a
   * crash mid-run loses nothing and double-counts nothing. Runs one at a time (calls queue).
   * @param now epoch ms; default the store's clock.
   */
  compact(now?: number): Promise<CompactionReport>;
}

/** Default tiers: raw 24 h, 1-minute buckets 7 days, 15-minute buckets 90 days. */
export const DEFAULT_RETENTION_TIERS: readonly RetentionTier[] = Object.freeze([
  Object.freeze({ resolutionMs: 0, retentionMs: 24 * 3_600_000 }),
  Object.freeze({ resolutionMs: 60_000, retentionMs: 7 * 86_400_000 }),
  Object.freeze({ resolutionMs: 900_000, retentionMs: 90 * 86_400_000 }),
]);

const SEP = '\u0000';
const TIME_DIGITS = 16;
const MAX_TIME = 10 ** TIME_DIGITS - 1;
const MAX_ID_LENGTH = 200;

function positiveInt(value: unknown, field: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new InvalidArgumentError(field, `expected a positive integer, got ${String(value)}`);
  }
  return value;
}

/**
 * Validates and defaults store options once.
 * @throws InvalidArgumentError naming the offending option (e.g. `tiers[1].resolutionMs`).
 */
export function compileHistoryStoreOptions(options: HistoryStoreOptions = {}): CompiledHistoryStoreOptions {
  const tiers = options.tiers ?? DEFAULT_RETENTION_TIERS;
  if (!Array.isArray(tiers) || tiers.length === 0) throw new InvalidArgumentError('tiers', 'expected at least one tier');
  const compiled: Readonly<RetentionTier>[] = [];
  tiers.forEach((tier: RetentionTier, i) => {
    const { resolutionMs, retentionMs } = tier;
    if (!Number.isInteger(resolutionMs) || resolutionMs < 0) {
      throw new InvalidArgumentError(`tiers[${i}].resolutionMs`, `expected a non-negative integer, got ${String(resolutionMs)}`);
    }
    if (!Number.isInteger(retentionMs) || retentionMs <= 0) {
      throw new InvalidArgumentError(`tiers[${i}].retentionMs`, `expected a positive integer, got ${String(retentionMs)}`);
    }
    const prev = compiled[i - 1];
    if (i === 0 && resolutionMs !== 0) throw new InvalidArgumentError('tiers[0].resolutionMs', 'the first tier must be raw (0)');
    if (prev) {
      if (resolutionMs <= prev.resolutionMs || (prev.resolutionMs > 0 && resolutionMs % prev.resolutionMs !== 0)) {
        throw new InvalidArgumentError(`tiers[${i}].resolutionMs`, `must be a larger multiple of ${prev.resolutionMs}`);
      }
      if (retentionMs <= prev.retentionMs) {
        throw new InvalidArgumentError(`tiers[${i}].retentionMs`, `must exceed the previous tier's ${prev.retentionMs}`);
      }
    }
    compiled.push(Object.freeze({ resolutionMs, retentionMs }));
  });
  const clock = options.clock ?? Date.now;
  if (typeof clock !== 'function') throw new InvalidArgumentError('clock', 'expected a function returning epoch ms');
  return Object.freeze({
    tiers: Object.freeze(compiled),
    clock,
    maxBatchOps: positiveInt(options.maxBatchOps, 'maxBatchOps', 20_000),
    maxQueryPoints: positiveInt(options.maxQueryPoints, 'maxQueryPoints', 1_000_000),
  });
}

function checkId(value: unknown, field: string): string {
  if (typeof value !== 'string' || value.length === 0) throw new InvalidArgumentError(field, 'expected a non-empty string');
  if (value.length > MAX_ID_LENGTH) throw new InvalidArgumentError(field, `longer than ${MAX_ID_LENGTH} characters`);
  // Control characters would collide with the key separator and break range scans.
  if (/[\u0000-\u001f\u007f]/.test(value)) throw new InvalidArgumentError(field, 'must not contain control characters');
  return value;
}

function checkTime(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new InvalidArgumentError(field, `expected finite epoch ms, got ${String(value)}`);
  if (value < 0) throw new InvalidArgumentError(field, `must not be negative, got ${value}`);
  if (value > MAX_TIME) throw new InvalidArgumentError(field, `beyond the supported range, got ${value}`);
  return Math.floor(value);
}

function padTime(t: number): string {
  return String(t).padStart(TIME_DIGITS, '0');
}

function seriesPrefix(nodeId: string, metric: string): string {
  return `${nodeId}${SEP}${metric}${SEP}`;
}

function encodeRaw(value: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setFloat64(0, value);
  return out;
}

interface Agg {
  sum: number;
  min: number;
  max: number;
  count: number;
}

function encodeAgg(a: Agg): Uint8Array {
  const out = new Uint8Array(32);
  const view = new DataView(out.buffer);
  view.setFloat64(0, a.sum / a.count);
  view.setFloat64(8, a.min);
  view.setFloat64(16, a.max);
  view.setFloat64(24, a.count);
  return out;
}

/** Decodes either layout; raw entries count as one sample. */
function decodeValue(bytes: Uint8Array): { mean: number; min: number; max: number; count: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const mean = view.getFloat64(0);
  if (bytes.byteLength < 32) return { mean, min: mean, max: mean, count: 1 };
  return { mean, min: view.getFloat64(8), max: view.getFloat64(16), count: view.getFloat64(24) };
}

function addTo(agg: Agg, mean: number, min: number, max: number, count: number): void {
  agg.sum += mean * count;
  if (min < agg.min) agg.min = min;
  if (max > agg.max) agg.max = max;
  agg.count += count;
}

/** Serialises async sections: each call starts when the previous one settled. */
function createMutex(): <T>(fn: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const run = tail.then(fn);
    tail = run.catch(() => undefined);
    return run;
  };
}

/**
 * Opens a history store over `db` (any abstract-level database or sublevel; the caller opens and
 * closes it). Writes go to sublevels of `db`, so handing it `root.sublevel('history')` keeps the
 * history apart from other tables.
 * @throws InvalidArgumentError for bad options.
 */
export function createHistoryStore(db: HistoryDb, options: HistoryStoreOptions = {}): HistoryStore {
  const opts = compileHistoryStoreOptions(options);
  const tierDbs: TierDb[] = opts.tiers.map((tier) =>
    db.sublevel<string, Uint8Array>(tier.resolutionMs === 0 ? 'raw' : `r${tier.resolutionMs}`, { keyEncoding: 'utf8', valueEncoding: 'view' }),
  );
  const seriesDb = db.sublevel<string, string>('series', { keyEncoding: 'utf8', valueEncoding: 'utf8' });
  /** Series whose index entry this process wrote or saw written; others are (re)written on append. */
  const knownSeries = new Set<string>();
  // Appends and the "is this series empty now?" check of compaction share one lock, so an append
  // can never land between that check and the index delete; compactions queue on their own lock.
  const writeLock = createMutex();
  const compactLock = createMutex();

  async function append(nodeId: string, samples: readonly MetricSample[]): Promise<number> {
    checkId(nodeId, 'nodeId');
    if (!Array.isArray(samples)) throw new InvalidArgumentError('samples', 'expected an array');
    const ops: AbstractBatchOperation<HistoryDb, string, Uint8Array | string>[] = [];
    const metrics = new Set<string>();
    samples.forEach((s, i) => {
      if (s === null || typeof s !== 'object') throw new InvalidArgumentError(`samples[${i}]`, 'expected {metric, t, value}');
      const metric = checkId(s.metric, `samples[${i}].metric`);
      const t = checkTime(s.t, `samples[${i}].t`);
      if (typeof s.value !== 'number' || !Number.isFinite(s.value)) {
        throw new InvalidArgumentError(`samples[${i}].value`, `expected a finite number, got ${String(s.value)}`);
      }
      metrics.add(metric);
      ops.push({ type: 'put', sublevel: tierDbs[0] as TierDb, key: seriesPrefix(nodeId, metric) + padTime(t), value: encodeRaw(s.value) });
    });
    if (ops.length === 0) return 0;
    await writeLock(async () => {
      // The series index is written once per series, not on every report (it doubled the writes);
      // decided under the lock so compaction cannot drop an index entry in between.
      const fresh = [...metrics].map((m) => `${nodeId}${SEP}${m}`).filter((k) => !knownSeries.has(k));
      for (const key of fresh) ops.push({ type: 'put', sublevel: seriesDb, key, value: '' });
      await db.batch(ops);
      for (const key of fresh) knownSeries.add(key);
    });
    return samples.length;
  }

  async function query(nodeId: string, metric: string, fromMs: number, toMs: number, qopts: HistoryQueryOptions = {}): Promise<HistoryPoint[]> {
    checkId(nodeId, 'nodeId');
    checkId(metric, 'metric');
    const from = checkTime(fromMs, 'fromMs');
    const to = checkTime(toMs, 'toMs');
    if (to < from) throw new InvalidArgumentError('toMs', `must not be before fromMs (${from}), got ${to}`);
    const step = qopts.stepMs;
    if (step !== undefined && (!Number.isInteger(step) || step <= 0)) {
      throw new InvalidArgumentError('stepMs', `expected a positive integer, got ${String(step)}`);
    }
    const prefix = seriesPrefix(nodeId, metric);
    const points: HistoryPoint[] = [];
    for (let i = 0; i < tierDbs.length; i++) {
      const res = (opts.tiers[i] as RetentionTier).resolutionMs;
      const lo = Math.max(0, from - (res > 0 ? res - 1 : 0));
      for await (const [key, bytes] of (tierDbs[i] as TierDb).iterator({ gte: prefix + padTime(lo), lte: prefix + padTime(to) })) {
        const t = Number((key as string).slice(prefix.length));
        const d = decodeValue(bytes as Uint8Array);
        points.push({ t, value: d.mean, min: d.min, max: d.max, count: d.count, resolutionMs: res });
        if (points.length > opts.maxQueryPoints) {
          throw new InvalidArgumentError('toMs', `the range holds more than ${opts.maxQueryPoints} stored points; narrow it`);
        }
      }
    }
    points.sort((a, b) => a.t - b.t || b.resolutionMs - a.resolutionMs);
    return step === undefined ? points : aggregate(points, step);
  }

  async function listMetrics(nodeId: string): Promise<string[]> {
    checkId(nodeId, 'nodeId');
    const out: string[] = [];
    const prefix = `${nodeId}${SEP}`;
    for await (const key of seriesDb.keys({ gt: prefix, lt: `${nodeId}\u0001` })) out.push(key.slice(prefix.length));
    return out;
  }

  async function listNodes(): Promise<string[]> {
    const out: string[] = [];
    for await (const key of seriesDb.keys()) {
      const node = key.slice(0, key.indexOf(SEP));
      if (out[out.length - 1] !== node) out.push(node);
    }
    return out;
  }

  async function compactSeries(nodeId: string, metric: string, now: number, report: CompactionReport): Promise<void> {
    const prefix = seriesPrefix(nodeId, metric);
    for (let i = 0; i < opts.tiers.length; i++) {
      const tier = opts.tiers[i] as RetentionTier;
      const next = opts.tiers[i + 1];
      const source = tierDbs[i] as TierDb;
      const cutoff = now - tier.retentionMs;
      if (cutoff <= 0) continue;
      if (!next) {
        // Last tier: a bucket goes once all of it is older than the retention.
        const keys: string[] = [];
        for await (const key of source.keys({ gte: prefix, lt: prefix + padTime(Math.max(0, cutoff - tier.resolutionMs)) })) keys.push(key as string);
        for (let k = 0; k < keys.length; k += opts.maxBatchOps) {
          await source.batch(keys.slice(k, k + opts.maxBatchOps).map((key) => ({ type: 'del' as const, key })));
        }
        report.expired += keys.length;
        continue;
      }
      // Only complete target buckets move, so a bucket is never split between two tiers.
      const boundary = Math.floor(cutoff / next.resolutionMs) * next.resolutionMs;
      const target = tierDbs[i + 1] as TierDb;
      // Data that even the last tier would already have dropped is deleted instead of rolled up.
      const last = opts.tiers[opts.tiers.length - 1] as RetentionTier;
      const finalCutoff = now - last.retentionMs - last.resolutionMs;
      let pendingDeletes: string[] = [];
      let buckets = new Map<number, Agg>();
      let expired = 0;
      let currentBucket = -1;
      const flush = async (): Promise<void> => {
        if (pendingDeletes.length === 0) return;
        const ops: AbstractBatchOperation<HistoryDb, string, Uint8Array>[] = [];
        const starts = [...buckets.keys()];
        const existing = starts.length > 0 ? await target.getMany(starts.map((b) => prefix + padTime(b))) : [];
        starts.forEach((b, k) => {
          const agg = buckets.get(b) as Agg;
          const prev = existing[k] as Uint8Array | undefined;
          if (prev) {
            const d = decodeValue(prev);
            addTo(agg, d.mean, d.min, d.max, d.count);
          }
          ops.push({ type: 'put', sublevel: target, key: prefix + padTime(b), value: encodeAgg(agg) });
        });
        for (const key of pendingDeletes) ops.push({ type: 'del', sublevel: source, key });
        await db.batch(ops);
        report.rolledUp += pendingDeletes.length - expired;
        report.expired += expired;
        report.bucketsWritten += starts.length;
        pendingDeletes = [];
        buckets = new Map();
        expired = 0;
      };
      for await (const [key, bytes] of source.iterator({ gte: prefix, lt: prefix + padTime(boundary) })) {
        const t = Number((key as string).slice(prefix.length));
        const bucket = Math.floor(t / next.resolutionMs) * next.resolutionMs;
        if (bucket !== currentBucket && pendingDeletes.length >= opts.maxBatchOps) await flush();
        currentBucket = bucket;
        pendingDeletes.push(key as string);
        if (t < finalCutoff) {
          expired++;
          continue;
        }
        const d = decodeValue(bytes as Uint8Array);
        const agg = buckets.get(bucket);
        if (agg) addTo(agg, d.mean, d.min, d.max, d.count);
        else buckets.set(bucket, { sum: d.mean * d.count, min: d.min, max: d.max, count: d.count });
      }
      await flush();
    }
  }

  async function seriesIsEmpty(prefix: string): Promise<boolean> {
    for (const tierDb of tierDbs) {
      for await (const _key of tierDb.keys({ gte: prefix, lt: prefix + '\uffff', limit: 1 })) return false;
    }
    return true;
  }

  function compact(now?: number): Promise<CompactionReport> {
    const at = checkTime(now ?? opts.clock(), 'now');
    return compactLock(async () => {
      const report: CompactionReport = { series: 0, rolledUp: 0, expired: 0, bucketsWritten: 0, seriesRemoved: 0 };
      const series: string[] = [];
      for await (const key of seriesDb.keys()) series.push(key);
      for (const key of series) {
        const [nodeId, metric] = key.split(SEP) as [string, string];
        report.series++;
        await compactSeries(nodeId, metric, at, report);
        const removed = await writeLock(async () => {
          if (!(await seriesIsEmpty(seriesPrefix(nodeId, metric)))) return false;
          await seriesDb.del(key);
          knownSeries.delete(key);
          return true;
        });
        if (removed) report.seriesRemoved++;
      }
      return report;
    });
  }

  return Object.freeze({ options: opts, append, query, listMetrics, listNodes, compact });
}

/** Re-buckets sorted points into `step`-wide epoch-aligned buckets, weighting by count. */
function aggregate(points: readonly HistoryPoint[], step: number): HistoryPoint[] {
  const out: HistoryPoint[] = [];
  let cur: (Agg & { t: number; res: number }) | undefined;
  const emit = (): void => {
    if (cur) out.push({ t: cur.t, value: cur.sum / cur.count, min: cur.min, max: cur.max, count: cur.count, resolutionMs: cur.res });
  };
  for (const p of points) {
    // A point coarser than the step keeps its own bucket: splitting it would invent data.
    const width = Math.max(step, p.resolutionMs);
    const start = p.resolutionMs >= step ? p.t : Math.floor(p.t / step) * step;
    if (cur && start < cur.t + cur.res && width === cur.res) {
      addTo(cur, p.value, p.min, p.max, p.count);
      continue;
    }
    emit();
    cur = { t: start, res: width, sum: p.value * p.count, min: p.min, max: p.max, count: p.count };
  }
  emit();
  return out;
}
