/**
 * Forecast accuracy on real VM traces (Bitbrains GWA-T-12 Rnd, VMs 1-40).
 *
 * Every trace goes through the same path as live data: samples are appended to the history store
 * (memory-level, or LevelDB in a temp dir with `--store level`), read back on a 5-minute grid, and
 * handed to the forecaster. Each series is split 70/30 by time; the forecaster fits on the first
 * 70% and is then scored from every origin of the last 30% (rolling origin, no refit) at 5 min,
 * 30 min, 2 h and 24 h against persistence, seasonal naive and Holt-Winters.
 *
 * MASE divides the MAE by the in-sample (training part) one-step naive MAE of the same series;
 * figures are means over VMs. The last line is the JSON summary; `ratio` is best baseline MASE /
 * forecaster MASE at 2 h on CPU usage (goal 1.15).
 *
 * Flags: --data DIR (default ../shared/data/bitbrains-rnd), --vms 1-40 (CPU), --metrics
 * cpu,memory,disk-read,disk-write,net-rx,net-tx, --other-vms 1-8 (VMs for the non-CPU metrics),
 * --store memory|level.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MemoryLevel } from 'memory-level';
import { Level } from 'level';
import { InvalidArgumentError } from '../common/errors.js';
import { createHistoryStore, type HistoryDb } from '../coordinator/store/history-store.js';
import { createForecaster, type ForecastMethod } from '../coordinator/forecast/forecaster.js';
import { naiveScale, toRegularSeries } from '../coordinator/forecast/regular-series.js';
import { describeTensorflowBackend } from '../coordinator/forecast/tensorflow-backend.js';
import { BITBRAINS_METRICS, loadBitbrainsVm, parseVmList, toSamples, type BitbrainsMetric } from './bitbrains-loader.js';
import { finish, percentile } from './report.js';

const STEP_MS = 300_000;
const HORIZONS = [
  { steps: 1, label: '5m' },
  { steps: 6, label: '30m' },
  { steps: 24, label: '2h' },
  { steps: 288, label: '24h' },
] as const;
const TRAIN_SHARE = 0.7;
/** Reported methods: the forecaster as deployed, the baselines it must beat, then its own candidates on their own. */
const COLUMNS = ['forecaster', 'persistence', 'seasonal-naive', 'holt-winters', 'learned', 'ensemble'] as const;
type Column = (typeof COLUMNS)[number];
const BASELINES: readonly Column[] = ['persistence', 'seasonal-naive', 'holt-winters'];

interface Args {
  data: string;
  vms: number[];
  metrics: BitbrainsMetric[];
  otherVms: number[];
  store: 'memory' | 'level';
}

function parseArgs(argv: readonly string[]): Args {
  const repoRoot = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');
  const args: Args = {
    data: resolve(repoRoot, '../shared/data/bitbrains-rnd'),
    vms: parseVmList('1-40'),
    metrics: Object.keys(BITBRAINS_METRICS) as BitbrainsMetric[],
    otherVms: parseVmList('1-8'),
    store: 'memory',
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new InvalidArgumentError(flag ?? 'argv', 'missing value');
    i++;
    switch (flag) {
      case '--data':
        args.data = resolve(value);
        break;
      case '--vms':
        args.vms = parseVmList(value);
        break;
      case '--other-vms':
        args.otherVms = parseVmList(value);
        break;
      case '--metrics':
        args.metrics = value.split(',').map((m) => {
          if (!(m in BITBRAINS_METRICS)) throw new InvalidArgumentError('metrics', `unknown metric ${JSON.stringify(m)}; known: ${Object.keys(BITBRAINS_METRICS).join(', ')}`);
          return m as BitbrainsMetric;
        });
        break;
      case '--store':
        if (value !== 'memory' && value !== 'level') throw new InvalidArgumentError('store', 'expected memory or level');
        args.store = value;
        break;
      default:
        throw new InvalidArgumentError(flag ?? 'argv', 'unknown flag');
    }
  }
  return args;
}

/** Per-series scores: `mase[column][h]`, `smape[column][h]`. */
interface SeriesScore {
  vm: number;
  metric: BitbrainsMetric;
  mase: Record<Column, number[]>;
  smape: Record<Column, number[]>;
  trainingMs: number;
  method: ForecastMethod;
  chosen: ForecastMethod[];
}

function smape(y: number, f: number): number {
  const d = Math.abs(y) + Math.abs(f);
  return d === 0 ? 0 : (200 * Math.abs(y - f)) / d;
}

const mean = (xs: readonly number[]): number => (xs.length === 0 ? Number.NaN : xs.reduce((a, b) => a + b, 0) / xs.length);
const fmt = (x: number, digits = 3): string => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');
const round = (x: number, digits = 4): number => Math.round(x * 10 ** digits) / 10 ** digits;

/** Runs the benchmark; see the module comment for flags. */
export async function main(argv: string[]): Promise<void> {
  const args = parseArgs(argv);
  const backend = await describeTensorflowBackend();
  console.log(`forecast-accuracy: Bitbrains Rnd from ${args.data}`);
  console.log(`tensorflow backend: ${backend}; store: ${args.store}; step 5 min; split ${TRAIN_SHARE * 100}/${100 - TRAIN_SHARE * 100}`);
  let tempDir: string | undefined;
  let db: HistoryDb;
  if (args.store === 'level') {
    tempDir = await mkdtemp(join(tmpdir(), 'retrace-bench-'));
    db = new Level<string, string>(join(tempDir, 'db'));
  } else {
    db = new MemoryLevel<string, string>();
  }
  await db.open();
  // Raw samples must survive for the whole 3-month trace, so one raw tier outlives it; the default
  // tiers would roll 2013 data up to 15 minutes against today's clock.
  const store = createHistoryStore(db, { tiers: [{ resolutionMs: 0, retentionMs: 10 * 365 * 86_400_000 }] });
  const forecaster = createForecaster();
  const scores: SeriesScore[] = [];
  const latencies: number[] = [];
  let ingestMs = 0;
  let ingested = 0;
  let queryMs = 0;
  const started = performance.now();
  try {
    const vmSet = new Set([...args.vms, ...(args.metrics.some((m) => m !== 'cpu') ? args.otherVms : [])]);
    for (const vm of [...vmSet].sort((a, b) => a - b)) {
      const metrics = args.metrics.filter((m) => (m === 'cpu' ? args.vms.includes(vm) : args.otherVms.includes(vm)));
      if (metrics.length === 0) continue;
      const trace = loadBitbrainsVm(args.data, vm);
      const nodeId = `bitbrains-vm-${vm}`;
      const t0 = performance.now();
      for (const metric of metrics) {
        const samples = toSamples(trace.rows, metric, STEP_MS);
        for (let k = 0; k < samples.length; k += 5000) ingested += await store.append(nodeId, samples.slice(k, k + 5000));
      }
      ingestMs += performance.now() - t0;
      for (const metric of metrics) {
        const q0 = performance.now();
        const points = await store.query(nodeId, BITBRAINS_METRICS[metric].metric, 0, Date.now(), { stepMs: STEP_MS });
        queryMs += performance.now() - q0;
        if (points.length < 100) continue;
        const series = { t: points.map((p) => p.t), v: points.map((p) => p.value) };
        const first = points[0]?.t as number;
        const last = points[points.length - 1]?.t as number;
        const splitMs = first + Math.floor(((last - first) / STEP_MS + 1) * TRAIN_SHARE) * STEP_MS;
        const trainIdx = series.t.findIndex((t) => t >= splitMs);
        const train = { t: series.t.slice(0, trainIdx), v: series.v.slice(0, trainIdx) };
        const fitted = await forecaster.fit(train, STEP_MS);
        const scale = naiveScale(toRegularSeries(train, STEP_MS));
        const ro = forecaster.rollingOrigin(fitted, series, HORIZONS.map((h) => h.steps), splitMs - STEP_MS);
        const score: SeriesScore = {
          vm,
          metric,
          mase: {} as Record<Column, number[]>,
          smape: {} as Record<Column, number[]>,
          trainingMs: fitted.trainingMs,
          method: fitted.method,
          chosen: HORIZONS.map((h) => (fitted.anchors.find((a) => a.h === h.steps) ?? fitted.anchors[fitted.anchors.length - 1])?.method ?? 'persistence'),
        };
        for (const column of COLUMNS) {
          const preds = ro.predictions[column === 'forecaster' ? 'selected' : column];
          score.mase[column] = [];
          score.smape[column] = [];
          HORIZONS.forEach((_h, k) => {
            const actual = ro.actual[k] as Float64Array;
            const pred = preds[k] as Float64Array;
            let abs = 0;
            let sm = 0;
            let count = 0;
            for (let o = 0; o < actual.length; o++) {
              const y = actual[o] as number;
              if (Number.isNaN(y)) continue;
              abs += Math.abs(y - (pred[o] as number));
              sm += smape(y, pred[o] as number);
              count++;
            }
            score.mase[column].push(abs / count / scale);
            score.smape[column].push(sm / count);
          });
        }
        scores.push(score);
        // Live latency: a 24 h forecast from the latest history, as the Forecast RPC would ask.
        const recent = { t: series.t.slice(-3000), v: series.v.slice(-3000) };
        for (let r = 0; r < 5; r++) {
          const l0 = performance.now();
          forecaster.forecast(fitted, 288, recent);
          latencies.push(performance.now() - l0);
        }
      }
    }
  } finally {
    await db.close();
    if (tempDir) await rm(tempDir, { recursive: true, force: true });
  }
  const wallS = (performance.now() - started) / 1000;

  const summary: Record<string, unknown> = {};
  for (const metric of args.metrics) {
    const rows = scores.filter((s) => s.metric === metric);
    if (rows.length === 0) continue;
    console.log(`\n${metric} (${BITBRAINS_METRICS[metric].metric}), ${rows.length} VMs: mean MASE / mean sMAPE %`);
    console.log(['horizon'.padEnd(8), ...COLUMNS.map((c) => c.padStart(20))].join(''));
    const perH: Record<string, unknown> = {};
    HORIZONS.forEach((h, k) => {
      const mase = Object.fromEntries(COLUMNS.map((c) => [c, mean(rows.map((r) => r.mase[c][k] as number))])) as Record<Column, number>;
      const sm = Object.fromEntries(COLUMNS.map((c) => [c, mean(rows.map((r) => r.smape[c][k] as number))])) as Record<Column, number>;
      console.log([h.label.padEnd(8), ...COLUMNS.map((c) => `${fmt(mase[c])} / ${fmt(sm[c], 1)}`.padStart(20))].join(''));
      const bestBaseline = Math.min(...BASELINES.map((c) => mase[c]));
      const chosen: Record<string, number> = {};
      for (const r of rows) chosen[r.chosen[k] as string] = (chosen[r.chosen[k] as string] ?? 0) + 1;
      perH[h.label] = {
        mase: Object.fromEntries(COLUMNS.map((c) => [c, round(mase[c])])),
        smape: Object.fromEntries(COLUMNS.map((c) => [c, round(sm[c], 2)])),
        bestBaselineOverForecaster: round(bestBaseline / mase.forecaster),
        vmsBetterThanPersistence: rows.filter((r) => (r.mase.forecaster[k] as number) <= (r.mase.persistence[k] as number)).length,
        chosen,
      };
    });
    const ratios = HORIZONS.map((h) => `${h.label} ${fmt(((perH[h.label] as { bestBaselineOverForecaster: number }).bestBaselineOverForecaster), 3)}`);
    console.log(`best baseline MASE / forecaster MASE: ${ratios.join(', ')}`);
    summary[metric] = { vms: rows.length, ...perH };
  }
  const trainMs = scores.map((s) => s.trainingMs);
  console.log(`\ntraining per node/metric: mean ${fmt(mean(trainMs), 0)} ms, p50 ${fmt(percentile(trainMs, 50), 0)} ms, max ${fmt(Math.max(...trainMs), 0)} ms`);
  console.log(`forecast latency (288 steps from 3000 points): p50 ${fmt(percentile(latencies, 50), 2)} ms, p99 ${fmt(percentile(latencies, 99), 2)} ms`);
  console.log(`store: ${ingested} samples appended in ${fmt(ingestMs / 1000, 1)} s, grid queries ${fmt(queryMs / 1000, 1)} s; total ${fmt(wallS, 1)} s`);

  const cpu = summary.cpu as Record<string, { mase: Record<Column, number>; bestBaselineOverForecaster: number }> | undefined;
  const ratio = cpu ? (cpu['2h']?.bestBaselineOverForecaster ?? Number.NaN) : Number.NaN;
  const goals = cpu
    ? {
        '30m': (cpu['30m']?.bestBaselineOverForecaster ?? 0) >= 1.15,
        '2h': (cpu['2h']?.bestBaselineOverForecaster ?? 0) >= 1.15,
        '5mNotWorseThanPersistence': (cpu['5m']?.mase.forecaster ?? Number.POSITIVE_INFINITY) <= (cpu['5m']?.mase.persistence ?? 0),
      }
    : {};
  finish({
    bench: 'forecast-accuracy',
    ratio: round(ratio),
    goal: 1.15,
    goals,
    backend,
    store: args.store,
    series: scores.length,
    trainingMs: { mean: round(mean(trainMs), 1), p50: round(percentile(trainMs, 50), 1), max: round(Math.max(...trainMs), 1) },
    forecastLatencyMs: { p50: round(percentile(latencies, 50), 3), p99: round(percentile(latencies, 99), 3) },
    wallS: round(wallS, 1),
    ...summary,
  });
}
