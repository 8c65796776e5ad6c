import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MemoryLevel } from 'memory-level';
import { Level } from 'level';
import { InvalidArgumentError } from '../common/errors.js';
import { compileHistoryStoreOptions, createHistoryStore, type HistoryDb, type HistoryStoreOptions, type MetricSample } from '../coordinator/store/history-store.js';

const MIN = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;
/** A fixed "now", aligned to 15 minutes so bucket arithmetic in the expectations stays readable. */
const NOW = Date.UTC(2025, 0, 15, 12, 0, 0);

/** Samples every `everyMs` over `[from, from + durationMs)` with values 0, 1, 2, ... */
function ramp(metric: string, from: number, durationMs: number, everyMs: number): MetricSample[] {
  const out: MetricSample[] = [];
  for (let t = from, k = 0; t < from + durationMs; t += everyMs, k++) out.push({ metric, t, value: k });
  return out;
}

interface Backend {
  name: string;
  open(): Promise<{ db: HistoryDb; close(): Promise<void> }>;
}

const backends: Backend[] = [
  {
    name: 'memory-level',
    async open() {
      const db = new MemoryLevel<string, string>();
      await db.open();
      return { db, close: () => db.close() };
    },
  },
  {
    name: 'LevelDB in a temp dir',
    async open() {
      const dir = await mkdtemp(join(tmpdir(), 'retrace-history-'));
      const db = new Level<string, string>(join(dir, 'db'));
      await db.open();
      return {
        db,
        async close() {
          await db.close();
          await rm(dir, { recursive: true, force: true });
        },
      };
    },
  },
];

describe.each(backends)('history store on $name', (backend) => {
  let handle: { db: HistoryDb; close(): Promise<void> };
  beforeEach(async () => {
    handle = await backend.open();
  });
  afterEach(async () => {
    await handle.close();
  });
  const store = (options: HistoryStoreOptions = {}) => createHistoryStore(handle.db.sublevel('history'), { clock: () => NOW, ...options });

  it('appends in one batch and reads a time range back in order', async () => {
    const s = store();
    const written = await s.append('node-a', [
      { metric: 'cpu', t: NOW - 2000, value: 0.5 },
      { metric: 'cpu', t: NOW - 4000, value: 0.25 },
      { metric: 'mem', t: NOW - 2000, value: 1024 },
      { metric: 'cpu', t: NOW, value: 0.75 },
    ]);
    expect(written).toBe(4);
    const points = await s.query('node-a', 'cpu', NOW - 4000, NOW - 1);
    expect(points.map((p) => [p.t, p.value, p.count, p.resolutionMs])).toEqual([
      [NOW - 4000, 0.25, 1, 0],
      [NOW - 2000, 0.5, 1, 0],
    ]);
    expect(await s.listMetrics('node-a')).toEqual(['cpu', 'mem']);
    expect(await s.listMetrics('node-b')).toEqual([]);
    expect(await s.listNodes()).toEqual(['node-a']);
    expect(await s.query('node-b', 'cpu', 0, NOW)).toEqual([]);
  });

  it('keeps series of different nodes and metrics apart, even when one id prefixes another', async () => {
    const s = store();
    await s.append('n', [{ metric: 'cpu', t: 1000, value: 1 }]);
    await s.append('n1', [{ metric: 'cpu', t: 1000, value: 2 }, { metric: 'cpu.user', t: 1000, value: 3 }]);
    expect((await s.query('n', 'cpu', 0, 5000)).map((p) => p.value)).toEqual([1]);
    expect((await s.query('n1', 'cpu', 0, 5000)).map((p) => p.value)).toEqual([2]);
    expect(await s.listMetrics('n')).toEqual(['cpu']);
    expect(await s.listMetrics('n1')).toEqual(['cpu', 'cpu.user']);
    expect(await s.listNodes()).toEqual(['n', 'n1']);
  });

  it('rejects bad input naming the field', async () => {
    const s = store();
    const fieldOf = async (p: Promise<unknown>) => {
      const err = await p.then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidArgumentError);
      return (err as InvalidArgumentError).field;
    };
    expect(await fieldOf(s.append('', [{ metric: 'cpu', t: 1, value: 1 }]))).toBe('nodeId');
    expect(await fieldOf(s.append('n', [{ metric: 'cpu', t: 1, value: 1 }, { metric: 'cpu', t: 2, value: Number.NaN }]))).toBe('samples[1].value');
    expect(await fieldOf(s.append('n', [{ metric: 'cpu', t: -5, value: 1 }]))).toBe('samples[0].t');
    expect(await fieldOf(s.append('n', [{ metric: '', t: 5, value: 1 }]))).toBe('samples[0].metric');
    expect(await fieldOf(s.append('n', [{ metric: 'a\u0000b', t: 5, value: 1 }]))).toBe('samples[0].metric');
    expect(await fieldOf(s.append('n', [{ metric: 'cpu', t: Number.POSITIVE_INFINITY, value: 1 }]))).toBe('samples[0].t');
    expect(await fieldOf(s.query('n', 'cpu', 10, 5))).toBe('toMs');
    expect(await fieldOf(s.query('n', 'cpu', -1, 5))).toBe('fromMs');
    expect(await fieldOf(s.query('n', 'cpu', 0, 5, { stepMs: 0 }))).toBe('stepMs');
    // Nothing from the rejected batches was written.
    expect(await s.listNodes()).toEqual([]);
  });

  it('rolls raw data up through the tiers and expires it, with an injected clock', async () => {
    const s = store();
    // 10 s samples: 30 min three days ago, 10 min thirty hours ago, 5 min an hour ago, 5 min 100 days ago.
    await s.append('n', ramp('cpu', NOW - 3 * DAY, 30 * MIN, 10_000));
    await s.append('n', ramp('cpu', NOW - 30 * HOUR, 10 * MIN, 10_000));
    await s.append('n', ramp('cpu', NOW - HOUR, 5 * MIN, 10_000));
    await s.append('n', ramp('cpu', NOW - 100 * DAY, 5 * MIN, 10_000));

    const report = await s.compact();
    expect(report).toMatchObject({ series: 1, rolledUp: 180 + 60, expired: 30, bucketsWritten: 30 + 10, seriesRemoved: 0 });
    const old = await s.query('n', 'cpu', NOW - 3 * DAY, NOW - 3 * DAY + 30 * MIN - 1);
    expect(old).toHaveLength(30);
    expect(old[0]).toEqual({ t: NOW - 3 * DAY, value: 2.5, min: 0, max: 5, count: 6, resolutionMs: MIN });
    expect(old[29]).toMatchObject({ t: NOW - 3 * DAY + 29 * MIN, value: 176.5, min: 174, max: 179, count: 6 });
    expect(await s.query('n', 'cpu', NOW - 101 * DAY, NOW - 99 * DAY)).toEqual([]);
    const recent = await s.query('n', 'cpu', NOW - HOUR, NOW);
    expect(recent).toHaveLength(30);
    expect(recent.every((p) => p.resolutionMs === 0)).toBe(true);

    // Eight days later the 1-minute data of "three days ago" is past 7 days and becomes 15-minute buckets.
    const later = NOW + 8 * DAY;
    await s.compact(later);
    const coarse = await s.query('n', 'cpu', NOW - 3 * DAY, NOW - 3 * DAY + 30 * MIN - 1);
    expect(coarse).toEqual([
      { t: NOW - 3 * DAY, value: 44.5, min: 0, max: 89, count: 90, resolutionMs: 15 * MIN },
      { t: NOW - 3 * DAY + 15 * MIN, value: 134.5, min: 90, max: 179, count: 90, resolutionMs: 15 * MIN },
    ]);
    // The samples of an hour ago, now 8 days old, went raw → 1 minute → 15 minutes in one run.
    const hourAgo = await s.query('n', 'cpu', NOW - HOUR, NOW);
    expect(hourAgo.map((p) => p.resolutionMs)).toEqual([15 * MIN]);
    expect(hourAgo[0]).toMatchObject({ count: 30, min: 0, max: 29 });

    // Past 90 days everything is gone and the series leaves the index.
    const end = await s.compact(NOW + 200 * DAY);
    expect(end.seriesRemoved).toBe(1);
    expect(await s.listMetrics('n')).toEqual([]);
    expect(await s.query('n', 'cpu', 0, NOW + 200 * DAY)).toEqual([]);
  });

  it('merges tiers in one query and re-buckets by stepMs weighting by count', async () => {
    const s = store();
    // 10 s samples from 25 h ago to 23 h ago: the first hour will be rolled to 1-minute buckets.
    await s.append('n', ramp('cpu', NOW - 25 * HOUR, 2 * HOUR, 10_000));
    await s.compact();
    const all = await s.query('n', 'cpu', NOW - 25 * HOUR, NOW);
    const minute = all.filter((p) => p.resolutionMs === MIN);
    const raw = all.filter((p) => p.resolutionMs === 0);
    expect(minute).toHaveLength(60);
    expect(raw).toHaveLength(360);
    expect(all.map((p) => p.t)).toEqual([...all.map((p) => p.t)].sort((a, b) => a - b));
    // One 2-hour step over both tiers: the mean of all 720 ramp values, count-weighted.
    const merged = await s.query('n', 'cpu', NOW - 25 * HOUR, NOW, { stepMs: 2 * HOUR });
    const total = merged.reduce((sum, p) => sum + p.count, 0);
    expect(total).toBe(720);
    const mean = merged.reduce((sum, p) => sum + p.value * p.count, 0) / total;
    expect(mean).toBeCloseTo(359.5, 9);
    expect(Math.min(...merged.map((p) => p.min))).toBe(0);
    expect(Math.max(...merged.map((p) => p.max))).toBe(719);
    // 5-minute steps: 12 of them from 1-minute buckets, 12 from raw samples, 30 samples each.
    const fiveMin = await s.query('n', 'cpu', NOW - 25 * HOUR, NOW, { stepMs: 5 * MIN });
    expect(fiveMin).toHaveLength(24);
    expect(fiveMin.every((p) => p.count === 30 && p.resolutionMs === 5 * MIN)).toBe(true);
    expect(fiveMin[0]).toMatchObject({ t: NOW - 25 * HOUR, value: 14.5, min: 0, max: 29 });
    // A step finer than the stored buckets never splits them.
    const fine = await s.query('n', 'cpu', NOW - 25 * HOUR, NOW - 24 * HOUR - 1, { stepMs: 10_000 });
    expect(fine).toHaveLength(60);
    expect(fine.every((p) => p.resolutionMs === MIN)).toBe(true);
  });

  it('folds late raw samples into an existing bucket on the next compaction', async () => {
    const s = store();
    const t = NOW - 2 * DAY;
    await s.append('n', [{ metric: 'cpu', t, value: 10 }, { metric: 'cpu', t: t + 10_000, value: 20 }]);
    await s.compact();
    await s.append('n', [{ metric: 'cpu', t: t + 20_000, value: 60 }]);
    const report = await s.compact();
    expect(report.rolledUp).toBe(1);
    expect(await s.query('n', 'cpu', t, t + MIN - 1)).toEqual([{ t, value: 30, min: 10, max: 60, count: 3, resolutionMs: MIN }]);
  });

  it('gives the same result when compaction is split into many small batches', async () => {
    const big = store();
    await big.append('n', ramp('cpu', NOW - 3 * DAY, 20 * MIN, 5_000));
    await big.compact();
    const expected = await big.query('n', 'cpu', 0, NOW);
    const db2 = handle.db.sublevel('history-2');
    const small = createHistoryStore(db2, { clock: () => NOW, maxBatchOps: 7 });
    await small.append('n', ramp('cpu', NOW - 3 * DAY, 20 * MIN, 5_000));
    await small.compact();
    expect(await small.query('n', 'cpu', 0, NOW)).toEqual(expected);
    expect(expected).toHaveLength(20);
  });

  it('runs compactions one at a time', async () => {
    const s = store();
    await s.append('n', ramp('cpu', NOW - 2 * DAY, 10 * MIN, 1_000));
    const [a, b] = await Promise.all([s.compact(), s.compact()]);
    expect(a.rolledUp + b.rolledUp).toBe(600);
    expect((await s.query('n', 'cpu', 0, NOW)).reduce((sum, p) => sum + p.count, 0)).toBe(600);
  });
});

describe('history store options', () => {
  it('defaults to raw 24 h, 1 min for 7 days, 15 min for 90 days', () => {
    expect(compileHistoryStoreOptions().tiers).toEqual([
      { resolutionMs: 0, retentionMs: DAY },
      { resolutionMs: MIN, retentionMs: 7 * DAY },
      { resolutionMs: 15 * MIN, retentionMs: 90 * DAY },
    ]);
  });

  it('rejects inconsistent tiers naming the field', () => {
    const field = (options: HistoryStoreOptions) => {
      try {
        compileHistoryStoreOptions(options);
      } catch (err) {
        expect(err).toBeInstanceOf(InvalidArgumentError);
        return (err as InvalidArgumentError).field;
      }
      return undefined;
    };
    expect(field({ tiers: [] })).toBe('tiers');
    expect(field({ tiers: [{ resolutionMs: 1000, retentionMs: DAY }] })).toBe('tiers[0].resolutionMs');
    expect(field({ tiers: [{ resolutionMs: 0, retentionMs: DAY }, { resolutionMs: 0, retentionMs: 2 * DAY }] })).toBe('tiers[1].resolutionMs');
    expect(field({ tiers: [{ resolutionMs: 0, retentionMs: DAY }, { resolutionMs: MIN, retentionMs: 2 * DAY }, { resolutionMs: 90_000, retentionMs: 3 * DAY }] })).toBe('tiers[2].resolutionMs');
    expect(field({ tiers: [{ resolutionMs: 0, retentionMs: DAY }, { resolutionMs: MIN, retentionMs: DAY }] })).toBe('tiers[1].retentionMs');
    expect(field({ maxBatchOps: 0 })).toBe('maxBatchOps');
  });
});
