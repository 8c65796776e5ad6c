/**
 * Capacity forecaster: fits per node and metric, off the hot path, then forecasts cheaply.
 *
 * `fit` holds out the most recent part of the history, trains every candidate (persistence,
 * seasonal naive, Holt-Winters, the learned L1 model) on the rest, and replays the held-out part
 * from every origin (a rolling-origin backtest). For each horizon the candidate with the lowest
 * backtest MAE wins, and that candidate's empirical residual quantiles become the prediction
 * interval. The learned model is then refitted on all of the history. So a short or erratic history
 * ends up on a baseline instead of doing worse than one, and the interval's coverage is measured
 * rather than assumed. With too little history for any of this the forecaster falls back to
 * persistence.
 *
 * `forecast` is plain arithmetic on the fitted object (no tensors), so it is safe on a request path.
 */
import { InvalidArgumentError } from '../../common/errors.js';
import { fitHoltWinters, holtWintersForecasts, persistenceForecast, seasonalNaiveForecast, type HoltWintersParams } from './baselines.js';
import { buildFeatures, createRollingCache, featureCount, predictRow, trainLearnedModel, type FeatureSpec, type LearnedWeights } from './learned-model.js';
import { naiveScale, quantileSorted, tailOf, toRegularSeries, type RegularSeries, type Series } from './regular-series.js';
import { loadTensorflow, type LoadedTensorflow, type TensorflowBackendName } from './tensorflow-backend.js';

/**
 * Forecasting methods, simplest first (ties go to the simpler one). `ensemble` is the median of the
 * learned forecast, persistence and seasonal naive (Holt-Winters when there is no season): the
 * learned forecast, clamped between the two naive ones. On spiky series this keeps most of what
 * the model learned while a mistimed or out-of-regime prediction falls back to a naive one.
 */
export const FORECAST_METHODS = ['persistence', 'seasonal-naive', 'holt-winters', 'learned', 'ensemble'] as const;
/** One forecasting method. */
export type ForecastMethod = (typeof FORECAST_METHODS)[number];

/** Options of {@link createForecaster}; every field has a default. */
export interface ForecasterOptions {
  /** Season length in ms (daily load cycles). Used when it is a whole number of steps and the history covers it. Default 1 day. */
  seasonPeriodMs?: number;
  /** Horizons, in steps, the learned model outputs and the backtest scores; other horizons interpolate between them. Default [1, 3, 6, 12, 24, 72, 288] (5 min to 1 day on a 5-minute grid). */
  anchors?: readonly number[];
  /** Nominal coverage of the prediction interval, in (0, 1). Default 0.8 (10% and 90% residual quantiles). */
  coverage?: number;
  /** Candidate methods. Persistence is always a candidate. Default all. */
  methods?: readonly ForecastMethod[];
  /**
   * How much lower a baseline's backtest MAE must be than the better learned candidate's (learned
   * or ensemble), over the whole backtest window and over each half of it, for the baseline to be
   * used at a horizon. The backtest scores a model trained on less history than the deployed one
   * (refitted on all of it) over a short window, so a narrow or one-off baseline win is mostly
   * noise. Default 0.1.
   */
  selectionMargin?: number;
  /** Share of the history held out for the backtest. Default 0.25. */
  backtestFraction?: number;
  /** Cap on the held-out length, in steps. Default 4032 (14 days of 5-minute steps). */
  maxBacktestSteps?: number;
  /** A horizon is fitted only if the backtest scores it from at least this many origins. Default 30. */
  minBacktestOrigins?: number;
  /** The learned model is a candidate only with at least this many training rows. Default 200. */
  minTrainRows?: number;
  /** Most recent rows the learned model trains on. Default 20 000. */
  maxTrainRows?: number;
  /** Feature lags in steps. Default [1, 2, 3]. */
  lags?: readonly number[];
  /** Rolling-median windows in steps. Default [3, 6, 12, 24, 48, 96, 288, 864]. */
  medianWindows?: readonly number[];
  /** Rolling-mean windows in steps. Default [12, 288]. */
  meanWindows?: readonly number[];
  /** Past seasons in the seasonal-median feature. Default 7. */
  seasonCount?: number;
  /** Adam steps on the held-out fit. Default 200. */
  trainSteps?: number;
  /** Adam steps when refitting on all history (warm start). Default 100. */
  refitSteps?: number;
  /** Mini-batch rows. Default 128. */
  batchSize?: number;
  /** Adam learning rate (then a third, then a tenth). Default 0.02. */
  learningRate?: number;
  /** Seed of every random choice. Default 1. */
  seed?: number;
  /** Clock for `trainedAt`, epoch ms. Default `Date.now`. */
  clock?: () => number;
  /** Monotonic ms for the training-time figure. Default `performance.now`. */
  monotonic?: () => number;
  /** Longest regular grid `fit` accepts. Default 2 000 000 points. */
  maxPoints?: number;
}

/** Options after validation and defaulting; frozen. */
export type CompiledForecasterOptions = Readonly<Required<Omit<ForecasterOptions, 'anchors' | 'methods' | 'lags' | 'medianWindows' | 'meanWindows'>>> & {
  readonly anchors: readonly number[];
  readonly methods: readonly ForecastMethod[];
  readonly lags: readonly number[];
  readonly medianWindows: readonly number[];
  readonly meanWindows: readonly number[];
};

/** What the backtest found at one horizon. */
export interface AnchorFit {
  /** Horizon in steps. */
  h: number;
  /** The method forecasts at this horizon use. */
  method: ForecastMethod;
  /** Backtest MASE per candidate (MAE over the in-sample one-step naive MAE). */
  mase: Partial<Record<ForecastMethod, number>>;
  /** Residual quantiles (truth − forecast) per candidate: the interval offsets at this horizon. */
  interval: Partial<Record<ForecastMethod, [lower: number, upper: number]>>;
  /** Backtest origins scored. */
  origins: number;
}

/** A fitted model: plain data (JSON-serialisable), everything `forecast` needs. */
export interface FittedForecaster {
  /** The method most horizons use. */
  method: ForecastMethod;
  /** When the fit finished, epoch ms (from the forecaster's clock). */
  trainedAt: number;
  /** Wall time of the fit, ms. */
  trainingMs: number;
  stepMs: number;
  /** Season in steps; 0 when the step does not divide it or the history is shorter. */
  periodSteps: number;
  seasonPeriodMs: number;
  /** The history's in-sample one-step naive MAE, in the metric's units. */
  scale: number;
  /** Nominal coverage of the intervals. */
  coverage: number;
  /** False when the interval comes from too few residuals to mean anything (very short history). */
  calibrated: boolean;
  /** Why the fit fell back to persistence, when it did. */
  fallbackReason?: string;
  /** Backtest results per horizon, ascending `h`. */
  anchors: AnchorFit[];
  /** Backtest MASE per candidate, averaged over the horizons. */
  backtestMase: Partial<Record<ForecastMethod, number>>;
  holtWinters?: HoltWintersParams;
  /** The learned model; `scale` is the unit its features and outputs are measured in. */
  learned?: { spec: FeatureSpec; weights: LearnedWeights; scale: number };
  /**
   * Range model forecasts (Holt-Winters, learned, ensemble) are clamped to: the observed range
   * widened by its own width on each side (room for drift and growth, not for a runaway
   * extrapolation), and never below zero for a metric that was never negative. Persistence
   * forecasts need no clamping, but their intervals do: a short, spiky history of CPU load gave
   * an interval reaching below 0 %. Absent only when no point was observed.
   */
  bounds?: [number, number];
  /** TensorFlow.js package that trained the learned model. */
  backend?: TensorflowBackendName;
  /** The end of the training history, enough for every feature; forecasts start after it. */
  tail: { t0: number; v: number[]; observed: number[] };
}

/** A forecast from the end of the history. */
export interface ForecastResult {
  /** Target times, epoch ms: one step apart, starting one step after the last history point. */
  t: number[];
  /** Point forecast (conditional median). */
  mean: number[];
  lower: number[];
  upper: number[];
  /** The fitted model's main method. */
  method: ForecastMethod;
  /** The method behind each step. */
  methods: ForecastMethod[];
  /** Nominal coverage of `[lower, upper]`, e.g. 0.8. */
  coverage: number;
  calibrated: boolean;
}

/** Forecasts from many origins at once, for backtests and benchmarks. */
export interface RollingOriginResult {
  /** Origin times (the last point each forecast may see), epoch ms. */
  originsMs: number[];
  horizons: number[];
  /** `actual[k][o]`: the observed value `horizons[k]` steps after origin `o`, NaN where none was observed. */
  actual: Float64Array[];
  /** `predictions[method][k][o]`; `selected` is what {@link Forecaster.forecast} would return. */
  predictions: Record<ForecastMethod | 'selected', Float64Array[]>;
}

/** The forecaster; see {@link createForecaster}. */
export interface Forecaster {
  readonly options: CompiledForecasterOptions;
  /**
   * Fits on a history sampled roughly every `stepMs` (bucketed onto that grid; gaps carry the last
   * value forward and are never scored). Loads TensorFlow.js on first use. Takes well under a second
   * for a few weeks of 5-minute points on one CPU core.
   * @throws InvalidArgumentError for an empty or malformed series or a bad `stepMs`.
   */
  fit(series: Series, stepMs: number): Promise<FittedForecaster>;
  /**
   * Forecasts `horizonSteps` steps (of `fitted.stepMs`) after the end of `history`, or after the
   * end of the fitted history when omitted. Passing the latest history conditions on new data
   * without refitting.
   * @throws InvalidArgumentError for a bad `horizonSteps` or history.
   */
  forecast(fitted: FittedForecaster, horizonSteps: number, history?: Series): ForecastResult;
  /**
   * Every method's forecasts from every grid origin at or after `fromMs` (default: all) of
   * `history`, at the given horizons, with the truth where it was observed.
   */
  rollingOrigin(fitted: FittedForecaster, history: Series, horizons: readonly number[], fromMs?: number): RollingOriginResult;
}

const DEFAULT_ANCHORS = [1, 3, 6, 12, 24, 72, 288];
/** Fewest h-step changes a fallback (short-history) fit needs to give horizon h its own interval. */
const MIN_FALLBACK_RESIDUALS = 5;
const LEARNED_METHODS: ReadonlySet<ForecastMethod> = new Set(['learned', 'ensemble']);

function stepList(value: readonly number[] | undefined, fallback: readonly number[], field: string, allowEmpty: boolean): readonly number[] {
  const list = value ?? fallback;
  if (!Array.isArray(list) || (!allowEmpty && list.length === 0)) throw new InvalidArgumentError(field, 'expected a non-empty array of positive integers');
  list.forEach((x, i) => {
    if (!Number.isInteger(x) || x < 1) throw new InvalidArgumentError(`${field}[${i}]`, `expected a positive integer, got ${String(x)}`);
  });
  return Object.freeze([...new Set(list)].sort((a, b) => a - b));
}

function num(value: number | undefined, fallback: number, field: string, ok: (x: number) => boolean, what: string): number {
  const x = value ?? fallback;
  if (typeof x !== 'number' || !Number.isFinite(x) || !ok(x)) throw new InvalidArgumentError(field, `expected ${what}, got ${String(x)}`);
  return x;
}

const isPosInt = (x: number): boolean => Number.isInteger(x) && x >= 1;
const isNonNegInt = (x: number): boolean => Number.isInteger(x) && x >= 0;

/**
 * Validates and defaults forecaster options once.
 * @throws InvalidArgumentError naming the offending option.
 */
export function compileForecasterOptions(options: ForecasterOptions = {}): CompiledForecasterOptions {
  const methods = options.methods ?? FORECAST_METHODS;
  methods.forEach((m, i) => {
    if (!FORECAST_METHODS.includes(m)) throw new InvalidArgumentError(`methods[${i}]`, `unknown method ${JSON.stringify(m)}`);
  });
  const clock = options.clock ?? Date.now;
  const monotonic = options.monotonic ?? (() => performance.now());
  if (typeof clock !== 'function') throw new InvalidArgumentError('clock', 'expected a function');
  if (typeof monotonic !== 'function') throw new InvalidArgumentError('monotonic', 'expected a function');
  return Object.freeze({
    seasonPeriodMs: num(options.seasonPeriodMs, 86_400_000, 'seasonPeriodMs', isPosInt, 'a positive integer'),
    anchors: stepList(options.anchors, DEFAULT_ANCHORS, 'anchors', false),
    coverage: num(options.coverage, 0.8, 'coverage', (x) => x > 0 && x < 1, 'a number in (0, 1)'),
    methods: Object.freeze(FORECAST_METHODS.filter((m) => m === 'persistence' || methods.includes(m))),
    selectionMargin: num(options.selectionMargin, 0.1, 'selectionMargin', (x) => x >= 0 && x < 1, 'a number in [0, 1)'),
    backtestFraction: num(options.backtestFraction, 0.25, 'backtestFraction', (x) => x > 0 && x < 1, 'a number in (0, 1)'),
    maxBacktestSteps: num(options.maxBacktestSteps, 4032, 'maxBacktestSteps', isPosInt, 'a positive integer'),
    minBacktestOrigins: num(options.minBacktestOrigins, 30, 'minBacktestOrigins', isPosInt, 'a positive integer'),
    minTrainRows: num(options.minTrainRows, 200, 'minTrainRows', isPosInt, 'a positive integer'),
    maxTrainRows: num(options.maxTrainRows, 20_000, 'maxTrainRows', isPosInt, 'a positive integer'),
    lags: stepList(options.lags, [1, 2, 3], 'lags', true),
    medianWindows: stepList(options.medianWindows, [3, 6, 12, 24, 48, 96, 288, 864], 'medianWindows', true),
    meanWindows: stepList(options.meanWindows, [12, 288], 'meanWindows', true),
    seasonCount: num(options.seasonCount, 7, 'seasonCount', isPosInt, 'a positive integer'),
    trainSteps: num(options.trainSteps, 200, 'trainSteps', isPosInt, 'a positive integer'),
    refitSteps: num(options.refitSteps, 100, 'refitSteps', isNonNegInt, 'a non-negative integer'),
    batchSize: num(options.batchSize, 128, 'batchSize', isPosInt, 'a positive integer'),
    learningRate: num(options.learningRate, 0.02, 'learningRate', (x) => x > 0, 'a positive number'),
    seed: num(options.seed, 1, 'seed', Number.isInteger, 'an integer'),
    clock,
    monotonic,
    maxPoints: num(options.maxPoints, 2_000_000, 'maxPoints', isPosInt, 'a positive integer'),
  });
}

/** Learned-model outputs (changes in scale units, one per anchor) to a change at horizon `h`. */
function interpolateAnchors(anchors: readonly number[], values: ArrayLike<number>, h: number): number {
  const first = anchors[0] as number;
  // Below the first anchor, interpolate from "no change" at h = 0 (the origin itself).
  if (h <= first) return ((values[0] as number) * h) / first;
  for (let k = 1; k < anchors.length; k++) {
    const a = anchors[k] as number;
    if (h <= a) {
      const p = anchors[k - 1] as number;
      const wgt = (h - p) / (a - p);
      return (values[k - 1] as number) * (1 - wgt) + (values[k] as number) * wgt;
    }
  }
  return values[anchors.length - 1] as number;
}

/** The anchor fits bracketing `h` and the weight of the upper one. */
function bracket(anchors: readonly AnchorFit[], h: number): { lo: AnchorFit; hi: AnchorFit; w: number } {
  const first = anchors[0] as AnchorFit;
  if (h <= first.h) return { lo: first, hi: first, w: 0 };
  for (let k = 1; k < anchors.length; k++) {
    const hi = anchors[k] as AnchorFit;
    if (h <= hi.h) {
      const lo = anchors[k - 1] as AnchorFit;
      return { lo, hi, w: (h - lo.h) / (hi.h - lo.h) };
    }
  }
  const last = anchors[anchors.length - 1] as AnchorFit;
  return { lo: last, hi: last, w: 0 };
}

/** Method and interval offsets for horizon `h`: the nearer anchor's method, offsets interpolated. */
function stepPlan(anchors: readonly AnchorFit[], h: number): { method: ForecastMethod; lower: number; upper: number } {
  const { lo, hi, w } = bracket(anchors, h);
  const method = w > 0.5 ? hi.method : lo.method;
  const a = lo.interval[method] ?? lo.interval.persistence ?? [0, 0];
  const b = hi.interval[method] ?? hi.interval.persistence ?? [0, 0];
  return { method, lower: a[0] * (1 - w) + b[0] * w, upper: a[1] * (1 - w) + b[1] * w };
}

interface ModelParts {
  periodSteps: number;
  holtWinters?: HoltWintersParams;
  learned?: { spec: FeatureSpec; weights: LearnedWeights; scale: number };
  /** Model forecasts are clamped to this range (see FittedForecaster.bounds). */
  bounds?: [number, number];
}

/** Learned-model feature rows for the origins `first .. first + rows - 1`, built once per fit. */
interface FeatureTable {
  first: number;
  rows: number;
  features: number;
  x: Float32Array;
}

function clampTo(out: Float64Array[], bounds: [number, number] | undefined): Float64Array[] {
  if (!bounds) return out;
  for (const arr of out) for (let o = 0; o < arr.length; o++) arr[o] = Math.min(bounds[1], Math.max(bounds[0], arr[o] as number));
  return out;
}

/**
 * Point forecasts of one method from many origins: `out[k][o]` for `horizons[k]`. The single
 * forecast path calls this with one origin, so live forecasts and backtests share the arithmetic.
 */
function predictMethod(method: ForecastMethod, grid: RegularSeries, parts: ModelParts, origins: ArrayLike<number>, horizons: readonly number[], table?: FeatureTable): Float64Array[] {
  const v = grid.v;
  const out = horizons.map(() => new Float64Array(origins.length));
  switch (method) {
    case 'persistence':
      horizons.forEach((_h, k) => {
        for (let o = 0; o < origins.length; o++) (out[k] as Float64Array)[o] = persistenceForecast(v, origins[o] as number);
      });
      return out;
    case 'seasonal-naive':
      horizons.forEach((h, k) => {
        for (let o = 0; o < origins.length; o++) {
          const i = origins[o] as number;
          (out[k] as Float64Array)[o] = parts.periodSteps > 1 ? seasonalNaiveForecast(v, i, h, parts.periodSteps) : persistenceForecast(v, i);
        }
      });
      return out;
    case 'holt-winters':
      if (!parts.holtWinters) return predictMethod('persistence', grid, parts, origins, horizons);
      return clampTo(holtWintersForecasts(v, parts.holtWinters, origins, horizons), parts.bounds);
    case 'ensemble': {
      if (!parts.learned) return predictMethod('persistence', grid, parts, origins, horizons);
      const learned = predictMethod('learned', grid, parts, origins, horizons, table);
      const third = predictMethod(parts.periodSteps > 1 || !parts.holtWinters ? 'seasonal-naive' : 'holt-winters', grid, parts, origins, horizons);
      horizons.forEach((_h, k) => {
        const a = learned[k] as Float64Array;
        const c = third[k] as Float64Array;
        const o = out[k] as Float64Array;
        for (let j = 0; j < origins.length; j++) o[j] = median3(a[j] as number, v[origins[j] as number] as number, c[j] as number);
      });
      return out;
    }
    case 'learned': {
      const model = parts.learned;
      if (!model) return predictMethod('persistence', grid, parts, origins, horizons);
      const f = featureCount(model.spec);
      const first = origins[0] as number;
      const inTable = table !== undefined && first >= table.first && (origins[origins.length - 1] as number) < table.first + table.rows;
      const x = inTable ? table.x : buildFeatures(v, origins, model.spec, { t0: grid.t0, stepMs: grid.stepMs, scale: model.scale });
      for (let o = 0; o < origins.length; o++) {
        const i = origins[o] as number;
        const change = predictRow(model.weights, x, (inTable ? i - table.first : o) * f);
        horizons.forEach((h, k) => {
          (out[k] as Float64Array)[o] = (v[i] as number) + interpolateAnchors(model.spec.anchors, change, h) * model.scale;
        });
      }
      return clampTo(out, parts.bounds);
    }
  }
}

/** First origin the learned model trains on: past the longest window, or a quarter into a short history. */
function warmup(spec: FeatureSpec, trainEnd: number): number {
  return Math.min(Math.max(1, ...spec.lags, ...spec.medianWindows, ...spec.meanWindows), Math.floor(trainEnd / 4));
}

/**
 * Feature rows for every origin from `first` (a warm-up into the history, so early rows do not
 * all see truncated windows) to the second-to-last point. Rolling windows are causal, so these
 * rows serve the backtest model, the backtest itself and the refit alike.
 */
function featureTable(grid: RegularSeries, spec: FeatureSpec, scale: number, trainEnd: number): FeatureTable {
  const first = warmup(spec, trainEnd);
  const origins: number[] = [];
  for (let i = first; i < grid.v.length - 1; i++) origins.push(i);
  const cache = createRollingCache(grid.v, spec);
  const x = buildFeatures(grid.v, origins, spec, { t0: grid.t0, stepMs: grid.stepMs, scale }, cache);
  return { first, rows: origins.length, features: featureCount(spec), x };
}

/**
 * Training rows: the most recent `maxRows` origins before `end - 1`, targets in scale units
 * relative to the origin, masked where the target is unobserved or at or past `end` (or the origin
 * itself was a filled gap).
 */
function trainingRows(grid: RegularSeries, table: FeatureTable, spec: FeatureSpec, scale: number, end: number, maxRows: number): { x: Float32Array; y: Float32Array; mask: Float32Array; rows: number } {
  const v = grid.v;
  const start = Math.max(table.first, end - 1 - maxRows);
  const rows = Math.max(0, end - 1 - start);
  const outputs = spec.anchors.length;
  const y = new Float32Array(rows * outputs);
  const mask = new Float32Array(rows * outputs);
  for (let r = 0; r < rows; r++) {
    const i = start + r;
    if (!grid.observed[i]) continue;
    spec.anchors.forEach((h, k) => {
      const j = i + h;
      if (j < end && grid.observed[j]) {
        y[r * outputs + k] = ((v[j] as number) - (v[i] as number)) / scale;
        mask[r * outputs + k] = 1;
      }
    });
  }
  const x = table.x.subarray((start - table.first) * table.features, (start - table.first + rows) * table.features);
  return { x, y, mask, rows: mask.some((m) => m > 0) ? rows : 0 };
}

/**
 * Picks the method for one horizon from its backtest residuals (in origin order). The better of
 * the learned candidates is kept unless the best baseline beats it by `margin` over the whole
 * window AND over each half of it: a baseline that only won one stretch (a regime that came and
 * went) does not displace a model that adapts.
 */
function chooseMethod(candidates: readonly ForecastMethod[], residuals: ReadonlyMap<ForecastMethod, number[]>, margin: number): ForecastMethod {
  const maes = (m: ForecastMethod): [number, number, number] => {
    const r = residuals.get(m) as number[];
    const half = Math.floor(r.length / 2);
    const abs = r.map(Math.abs);
    return [meanOf(abs), meanOf(abs.slice(0, half)), meanOf(abs.slice(half))];
  };
  let learned: ForecastMethod | undefined;
  let baseline: ForecastMethod = 'persistence';
  for (const m of candidates) {
    if (LEARNED_METHODS.has(m)) {
      if (learned === undefined || maes(m)[0] < maes(learned)[0]) learned = m;
    } else if (maes(m)[0] < maes(baseline)[0]) {
      baseline = m;
    }
  }
  if (learned === undefined) return baseline;
  const l = maes(learned);
  const b = maes(baseline);
  // A baseline that was exact over the whole window (a flat stretch) cannot be beaten, only tied.
  if (b[0] === 0) return baseline;
  // Halves too short to score (NaN) do not veto.
  const wins = b.every((x, k) => !(x >= (l[k] as number) * (1 - margin)));
  return wins ? baseline : learned;
}

function observedBounds(grid: RegularSeries): [number, number] {
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < grid.v.length; i++) {
    if (!grid.observed[i]) continue;
    const x = grid.v[i] as number;
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  // A whole observed range of slack on each side lets the level drift; only a metric that never
  // went negative (usage, throughput) is also held at zero.
  const range = hi - lo;
  return [lo >= 0 ? Math.max(0, lo - range) : lo - range, hi + range];
}

function median3(a: number, b: number, c: number): number {
  return Math.max(Math.min(a, b), Math.min(Math.max(a, b), c));
}

function meanOf(values: number[]): number {
  return values.length === 0 ? Number.NaN : values.reduce((a, b) => a + b, 0) / values.length;
}

function mostCommon(anchors: readonly AnchorFit[]): ForecastMethod {
  const votes = new Map<ForecastMethod, number>();
  for (const a of anchors) votes.set(a.method, (votes.get(a.method) ?? 0) + 1);
  let best: ForecastMethod = 'persistence';
  let bestVotes = 0;
  for (const m of FORECAST_METHODS) {
    const n = votes.get(m) ?? 0;
    if (n > bestVotes) {
      best = m;
      bestVotes = n;
    }
  }
  return best;
}

function toTail(grid: RegularSeries, count: number): FittedForecaster['tail'] {
  const tail = tailOf(grid, count);
  return { t0: tail.t0, v: Array.from(tail.v), observed: Array.from(tail.observed) };
}

function fromTail(tail: FittedForecaster['tail'], stepMs: number): RegularSeries {
  return { t0: tail.t0, stepMs, v: Float64Array.from(tail.v), observed: Uint8Array.from(tail.observed) };
}

/**
 * Creates a forecaster with validated options.
 * @throws InvalidArgumentError for bad options.
 */
/** A week, the second season tried when the history is long enough. */
export const WEEK_MS = 7 * 86_400_000;

/**
 * The forecaster. Without an explicit `seasonPeriodMs` it fits a daily season and, when the
 * history spans three weeks or more, a weekly one too, and keeps whichever the rolling backtest
 * scores better (mean MASE of the methods it would use), so weekly seasonality is learned where
 * the history supports it.
 */
export function createForecaster(options: ForecasterOptions = {}): Forecaster {
  const daily = createSingleSeasonForecaster(options);
  if (options.seasonPeriodMs !== undefined) return daily;
  const weekly = createSingleSeasonForecaster({ ...options, seasonPeriodMs: WEEK_MS });
  const score = (f: FittedForecaster): number => {
    const m = meanOf(f.anchors.map((a) => a.mase[a.method] as number).filter(Number.isFinite));
    return Number.isFinite(m) ? m : Number.POSITIVE_INFINITY;
  };
  return Object.freeze({
    options: daily.options,
    async fit(series: Series, stepMs: number): Promise<FittedForecaster> {
      const d = await daily.fit(series, stepMs);
      const span = (series.t[series.t.length - 1] ?? 0) - (series.t[0] ?? 0);
      if (span < 3 * WEEK_MS) return d;
      const w = await weekly.fit(series, stepMs);
      return score(w) < score(d) ? w : d;
    },
    // Forecasts depend only on the fitted object (its season included), not on the instance.
    forecast: daily.forecast,
    rollingOrigin: daily.rollingOrigin,
  });
}

function createSingleSeasonForecaster(options: ForecasterOptions): Forecaster {
  const opts = compileForecasterOptions(options);

  function tailLength(periodSteps: number): number {
    const maxAnchor = opts.anchors[opts.anchors.length - 1] as number;
    const windows = Math.max(1, ...opts.lags, ...opts.medianWindows, ...opts.meanWindows);
    const seasons = periodSteps > 0 ? periodSteps * (opts.seasonCount + Math.ceil(maxAnchor / periodSteps)) : 0;
    // Holt-Winters restarts its filter on the tail, so keep a few seasons for it to settle.
    return Math.max(windows + 1, seasons + 1, 4 * periodSteps, 64);
  }

  function residualInterval(residuals: number[]): [number, number] {
    residuals.sort((a, b) => a - b);
    const tailP = (1 - opts.coverage) / 2;
    return [quantileSorted(residuals, tailP), quantileSorted(residuals, 1 - tailP)];
  }

  /** Persistence-only model for histories too short to backtest; intervals from in-sample h-step changes. */
  function fallback(grid: RegularSeries, stepMs: number, periodSteps: number, scale: number, reason: string, started: number): FittedForecaster {
    const n = grid.v.length;
    const anchors: AnchorFit[] = [];
    let calibrated = false;
    const bounds = observedBounds(grid);
    for (const h of opts.anchors) {
      const residuals: number[] = [];
      for (let i = 0; i + h < n; i++) {
        if (grid.observed[i + h]) residuals.push((grid.v[i + h] as number) - (grid.v[i] as number));
      }
      // A horizon seen from fewer origins than this says nothing about its spread (two residuals
      // gave an interval entirely below the forecast); later horizons carry the last one forward.
      if (residuals.length < MIN_FALLBACK_RESIDUALS && anchors.length > 0) break;
      if (residuals.length >= 10) calibrated = true;
      const mae = residuals.length > 0 ? meanOf(residuals.map(Math.abs)) : Number.NaN;
      anchors.push({
        h,
        method: 'persistence',
        mase: { persistence: mae / scale },
        interval: { persistence: residuals.length > 0 ? residualInterval(residuals) : [0, 0] },
        origins: residuals.length,
      });
    }
    return {
      method: 'persistence',
      trainedAt: opts.clock(),
      trainingMs: opts.monotonic() - started,
      stepMs,
      periodSteps,
      seasonPeriodMs: opts.seasonPeriodMs,
      scale,
      coverage: opts.coverage,
      calibrated,
      fallbackReason: reason,
      anchors,
      backtestMase: { persistence: meanOf(anchors.map((a) => a.mase.persistence as number).filter(Number.isFinite)) },
      tail: toTail(grid, tailLength(periodSteps)),
      ...(bounds.every(Number.isFinite) ? { bounds } : {}),
    };
  }

  async function fit(series: Series, stepMs: number): Promise<FittedForecaster> {
    const started = opts.monotonic();
    const grid = toRegularSeries(series, stepMs, opts.maxPoints);
    const n = grid.v.length;
    const rawPeriod = opts.seasonPeriodMs % stepMs === 0 ? opts.seasonPeriodMs / stepMs : 0;
    const backtestLen = Math.min(opts.maxBacktestSteps, Math.floor(n * opts.backtestFraction));
    const trainEnd = n - backtestLen;
    // The season only counts once the training part covers a whole one.
    const periodSteps = rawPeriod >= 2 && trainEnd >= rawPeriod ? rawPeriod : 0;
    const scale = naiveScale(grid);
    const anchorsH = opts.anchors.filter((h) => backtestLen - h + 1 >= opts.minBacktestOrigins);
    if (anchorsH.length === 0 || trainEnd < 8) {
      return fallback(grid, stepMs, periodSteps, scale, `history of ${n} steps is too short for a backtest`, started);
    }
    const trainScale = naiveScale(grid, trainEnd);
    const candidates: ForecastMethod[] = ['persistence'];
    if (opts.methods.includes('seasonal-naive') && periodSteps > 0) candidates.push('seasonal-naive');
    const parts: ModelParts = { periodSteps, bounds: observedBounds(grid) };
    if (opts.methods.includes('holt-winters')) {
      parts.holtWinters = fitHoltWinters(grid.v, grid.observed, periodSteps, trainEnd);
      candidates.push('holt-winters');
    }
    const spec: FeatureSpec = {
      lags: opts.lags,
      medianWindows: opts.medianWindows,
      meanWindows: opts.meanWindows,
      anchors: anchorsH,
      period: periodSteps,
      seasonCount: opts.seasonCount,
      periodMs: opts.seasonPeriodMs,
    };
    let tf: LoadedTensorflow | undefined;
    let table: FeatureTable | undefined;
    const trainOpts = { batchSize: opts.batchSize, learningRate: opts.learningRate, seed: opts.seed };
    // Both the backtest model and the refit work in units of the whole history's scale, so one
    // feature table serves them both.
    if (opts.methods.includes('learned') && trainEnd - 1 - warmup(spec, trainEnd) >= opts.minTrainRows) {
      table = featureTable(grid, spec, scale, trainEnd);
      const rows = trainingRows(grid, table, spec, scale, trainEnd, opts.maxTrainRows);
      if (rows.rows >= opts.minTrainRows) {
        tf = await loadTensorflow();
        const weights = await trainLearnedModel(tf.tf, rows.x, rows.y, rows.mask, rows.rows, table.features, anchorsH.length, { ...trainOpts, steps: opts.trainSteps });
        parts.learned = { spec, weights, scale };
        candidates.push('learned');
        if (opts.methods.includes('ensemble')) candidates.push('ensemble');
      }
    }

    // Rolling-origin backtest over the held-out part.
    const origins: number[] = [];
    for (let i = trainEnd - 1; i < n - 1; i++) origins.push(i);
    const preds = new Map(candidates.map((m) => [m, predictMethod(m, grid, parts, origins, anchorsH, table)] as const));
    const anchors: AnchorFit[] = anchorsH.map((h, k) => {
      const residuals = new Map<ForecastMethod, number[]>(candidates.map((m) => [m, []]));
      let count = 0;
      origins.forEach((i, o) => {
        const j = i + h;
        if (j >= n || !grid.observed[j]) return;
        count++;
        for (const m of candidates) (residuals.get(m) as number[]).push((grid.v[j] as number) - ((preds.get(m) as Float64Array[])[k] as Float64Array)[o]!);
      });
      const fitAt: AnchorFit = { h, method: 'persistence', mase: {}, interval: {}, origins: count };
      for (const m of candidates) {
        const r = residuals.get(m) as number[];
        fitAt.mase[m] = meanOf(r.map(Math.abs)) / trainScale;
        fitAt.interval[m] = residualInterval([...r]);
      }
      fitAt.method = chooseMethod(candidates, residuals, opts.selectionMargin);
      return fitAt;
    });
    const usable = anchors.filter((a) => a.origins > 0);
    if (usable.length === 0) return fallback(grid, stepMs, periodSteps, scale, 'no observed points in the backtest window', started);

    // Refit on all of the history with what the backtest chose to keep.
    const fitted: FittedForecaster = {
      method: mostCommon(usable),
      trainedAt: 0,
      trainingMs: 0,
      stepMs,
      periodSteps: rawPeriod >= 2 && n >= rawPeriod ? rawPeriod : 0,
      seasonPeriodMs: opts.seasonPeriodMs,
      scale,
      coverage: opts.coverage,
      calibrated: usable.every((a) => a.origins >= 10),
      anchors: usable,
      backtestMase: Object.fromEntries(candidates.map((m) => [m, meanOf(usable.map((a) => a.mase[m] as number))])),
      tail: toTail(grid, tailLength(rawPeriod >= 2 ? rawPeriod : 0)),
      bounds: parts.bounds as [number, number],
    };
    const used = new Set(usable.map((a) => a.method));
    // Holt-Winters keeps the parameters the backtest validated: refitted ones on this noisy data
    // can trade a little one-step error for a runaway trend that nothing has checked.
    if (parts.holtWinters) fitted.holtWinters = parts.holtWinters;
    // The learned model stays in the fitted object even where no horizon uses it, so backtests and
    // benchmarks can still report it; it is refitted only when forecasts depend on it.
    const needsLearned = used.has('learned') || used.has('ensemble');
    if (parts.learned && tf && !needsLearned) fitted.learned = parts.learned;
    if (parts.learned && tf && needsLearned) {
      // The feature layout is fixed by the backtested model (its season included), so the refit
      // warm-starts from it on all of the history.
      fitted.learned = parts.learned;
      if (opts.refitSteps > 0 && table) {
        const rows = trainingRows(grid, table, spec, scale, n, opts.maxTrainRows);
        const weights = await trainLearnedModel(tf.tf, rows.x, rows.y, rows.mask, rows.rows, table.features, anchorsH.length, { ...trainOpts, steps: opts.refitSteps, init: parts.learned.weights, seed: opts.seed + 1 });
        fitted.learned = { spec, weights, scale };
      }
      fitted.backend = tf.backend;
    }
    fitted.trainedAt = opts.clock();
    fitted.trainingMs = opts.monotonic() - started;
    return fitted;
  }

  function partsOf(fitted: FittedForecaster): ModelParts {
    const parts: ModelParts = { periodSteps: fitted.periodSteps };
    if (fitted.bounds) parts.bounds = fitted.bounds;
    if (fitted.holtWinters) parts.holtWinters = fitted.holtWinters;
    if (fitted.learned) parts.learned = fitted.learned;
    return parts;
  }

  function historyGrid(fitted: FittedForecaster, history: Series | undefined): RegularSeries {
    if (history === undefined) return fromTail(fitted.tail, fitted.stepMs);
    return toRegularSeries(history, fitted.stepMs, opts.maxPoints);
  }

  function forecast(fitted: FittedForecaster, horizonSteps: number, history?: Series): ForecastResult {
    if (!Number.isInteger(horizonSteps) || horizonSteps < 1 || horizonSteps > 100_000) {
      throw new InvalidArgumentError('horizonSteps', `expected an integer in [1, 100000], got ${String(horizonSteps)}`);
    }
    const grid = historyGrid(fitted, history);
    const origin = grid.v.length - 1;
    const horizons = Array.from({ length: horizonSteps }, (_x, k) => k + 1);
    const plans = horizons.map((h) => stepPlan(fitted.anchors, h));
    const parts = partsOf(fitted);
    const byMethod = new Map<ForecastMethod, Float64Array[]>();
    for (const m of new Set(plans.map((p) => p.method))) byMethod.set(m, predictMethod(m, grid, parts, [origin], horizons));
    const last = grid.t0 + origin * grid.stepMs;
    const result: ForecastResult = { t: [], mean: [], lower: [], upper: [], method: fitted.method, methods: [], coverage: fitted.coverage, calibrated: fitted.calibrated };
    // The interval's offsets never narrow as the horizon grows: what is uncertain one step ahead
    // is no more certain further out. Residual quantiles of different horizons come from
    // different (and, on a short history, very few) origins, so taken alone they gave intervals
    // that shrank with the horizon, even to nothing on one side.
    let below = 0;
    let above = 0;
    plans.forEach((plan, k) => {
      const mean = ((byMethod.get(plan.method) as Float64Array[])[k] as Float64Array)[0] as number;
      below = Math.min(below, plan.lower);
      above = Math.max(above, plan.upper);
      result.t.push(last + (k + 1) * grid.stepMs);
      result.mean.push(mean);
      const [lo, hi] = fitted.bounds ?? [Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY];
      result.lower.push(Math.max(Math.min(lo, mean), mean + below));
      result.upper.push(Math.min(Math.max(hi, mean), mean + above));
      result.methods.push(plan.method);
    });
    return result;
  }

  function rollingOrigin(fitted: FittedForecaster, history: Series, horizons: readonly number[], fromMs = 0): RollingOriginResult {
    horizons.forEach((h, i) => {
      if (!Number.isInteger(h) || h < 1) throw new InvalidArgumentError(`horizons[${i}]`, `expected a positive integer, got ${String(h)}`);
    });
    const grid = toRegularSeries(history, fitted.stepMs, opts.maxPoints);
    const n = grid.v.length;
    const first = Math.max(0, Math.ceil((fromMs - grid.t0) / grid.stepMs));
    const origins: number[] = [];
    for (let i = first; i < n; i++) origins.push(i);
    const parts = partsOf(fitted);
    const predictions = {} as Record<ForecastMethod | 'selected', Float64Array[]>;
    for (const m of FORECAST_METHODS) predictions[m] = predictMethod(m, grid, parts, origins, horizons);
    predictions.selected = horizons.map((h, k) => (predictions[stepPlan(fitted.anchors, h).method][k] as Float64Array).slice());
    const actual = horizons.map((h) => {
      const a = new Float64Array(origins.length);
      origins.forEach((i, o) => {
        a[o] = i + h < n && grid.observed[i + h] ? (grid.v[i + h] as number) : Number.NaN;
      });
      return a;
    });
    return { originsMs: origins.map((i) => grid.t0 + i * grid.stepMs), horizons: [...horizons], actual, predictions };
  }

  return Object.freeze({ options: opts, fit, forecast, rollingOrigin });
}
