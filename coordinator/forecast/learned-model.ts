/**
 * The learned forecaster: a direct multi-horizon regression trained with TensorFlow.js for
 * absolute error (L1), so it estimates the conditional median, which is what MASE and sMAPE reward
 * on spiky resource series (least squares chases the spikes and loses to persistence).
 *
 * Every feature is expressed relative to the value at the origin and divided by the series' naive
 * scale, and the target is the change from the origin; with all weights at zero the model IS
 * persistence, which is where training starts. Training is pure tensor math; prediction runs in
 * plain JS from the extracted weights, so a fitted model is plain data.
 */
import type { Tensorflow } from './tensorflow-backend.js';
import { createRng, rollingMean, rollingMedian, windowMean, windowMedian } from './regular-series.js';

/** What the features look at; the same spec builds training rows and live rows. */
export interface FeatureSpec {
  /** Past values, steps back from the origin. */
  lags: readonly number[];
  /** Rolling-median windows ending at the origin, in steps. */
  medianWindows: readonly number[];
  /** Rolling-mean windows ending at the origin, in steps. */
  meanWindows: readonly number[];
  /** Horizons (steps) the model outputs, ascending. */
  anchors: readonly number[];
  /** Season length in steps, or 0 for no seasonal and time-of-day features. */
  period: number;
  /** How many past seasons the seasonal median looks at. */
  seasonCount: number;
  /** Season length in ms (time-of-day phase), used when `period > 0`. */
  periodMs: number;
}

/** Context that turns indices into times and values into scale-free features. */
export interface FeatureContext {
  t0: number;
  stepMs: number;
  /** The series' naive scale (in-sample one-step MAE). */
  scale: number;
}

/** Number of features the spec produces. */
export function featureCount(spec: FeatureSpec): number {
  const seasonal = spec.period > 0 ? 2 * spec.anchors.length + 4 : 0;
  return spec.lags.length + spec.medianWindows.length + spec.meanWindows.length + seasonal;
}

/** Rolling statistics of one series for one spec, computed once and shared by every row built from it. */
export interface RollingCache {
  readonly v: Float64Array;
  readonly medians: Float64Array[];
  readonly means: Float64Array[];
}

/** Precomputes the spec's rolling medians and means over the whole series. */
export function createRollingCache(v: Float64Array, spec: FeatureSpec): RollingCache {
  return { v, medians: spec.medianWindows.map((w) => rollingMedian(v, w)), means: spec.meanWindows.map((w) => rollingMean(v, w)) };
}

/** Median of `buf[0 .. len)` by insertion sort: the seasonal windows hold a handful of values. */
function smallMedian(buf: Float64Array, len: number): number {
  for (let a = 1; a < len; a++) {
    const x = buf[a] as number;
    let b = a - 1;
    while (b >= 0 && (buf[b] as number) > x) {
      buf[b + 1] = buf[b] as number;
      b--;
    }
    buf[b + 1] = x;
  }
  return len % 2 === 1 ? (buf[(len - 1) >> 1] as number) : ((buf[len / 2 - 1] as number) + (buf[len / 2] as number)) / 2;
}

function fillRow(v: Float64Array, i: number, spec: FeatureSpec, ctx: FeatureContext, out: Float32Array, offset: number, cache?: RollingCache): void {
  const base = v[i] as number;
  const inv = 1 / ctx.scale;
  let c = offset;
  for (const lag of spec.lags) out[c++] = ((v[Math.max(0, i - lag)] as number) - base) * inv;
  spec.medianWindows.forEach((w, k) => {
    const m = cache ? ((cache.medians[k] as Float64Array)[i] as number) : windowMedian(v, i, w);
    out[c++] = (m - base) * inv;
  });
  spec.meanWindows.forEach((w, k) => {
    const m = cache ? ((cache.means[k] as Float64Array)[i] as number) : windowMean(v, i, w);
    out[c++] = (m - base) * inv;
  });
  if (spec.period > 0) {
    const scratch = new Float64Array(spec.seasonCount);
    for (const h of spec.anchors) {
      const first = Math.ceil(h / spec.period);
      let len = 0;
      for (let k = first; k < first + spec.seasonCount; k++) {
        const j = i + h - k * spec.period;
        if (j < 0) break;
        scratch[len++] = v[j] as number;
      }
      // Where history is shorter than a season the features read as "no change".
      out[c++] = len > 0 ? ((scratch[0] as number) - base) * inv : 0;
      out[c++] = len > 0 ? (smallMedian(scratch, len) - base) * inv : 0;
    }
    const phase = (2 * Math.PI * ((ctx.t0 + i * ctx.stepMs) % spec.periodMs)) / spec.periodMs;
    out[c++] = Math.sin(phase);
    out[c++] = Math.cos(phase);
    out[c++] = Math.sin(2 * phase);
    out[c++] = Math.cos(2 * phase);
  }
}

/**
 * Feature rows for many origins (row-major, `origins.length × featureCount(spec)`). Uses `cache`
 * (or rolling statistics computed here) when there are many origins, direct windows when there are
 * few; both give the same medians.
 */
export function buildFeatures(v: Float64Array, origins: ArrayLike<number>, spec: FeatureSpec, ctx: FeatureContext, cache?: RollingCache): Float32Array {
  const f = featureCount(spec);
  const out = new Float32Array(origins.length * f);
  if (cache && cache.v !== v) cache = undefined;
  if (!cache && origins.length > 64) cache = createRollingCache(v, spec);
  for (let o = 0; o < origins.length; o++) fillRow(v, origins[o] as number, spec, ctx, out, o * f, cache);
  return out;
}

/** Weights of a trained model, plain arrays so a fitted model can be stored as JSON. */
export interface LearnedWeights {
  features: number;
  outputs: number;
  /** Row-major `features × outputs`. */
  w: number[];
  /** Bias per output. */
  b: number[];
}

/** Training knobs (already validated by the forecaster's options). */
export interface TrainOptions {
  steps: number;
  batchSize: number;
  learningRate: number;
  seed: number;
  /** Start from these weights instead of zero (persistence). */
  init?: LearnedWeights;
}

/**
 * Trains the linear model for mean absolute error over the observed targets (`mask` 1) with Adam on
 * shuffled mini-batches. `x` is `rows × features`, `y` and `mask` are `rows × outputs`, targets in
 * scale units relative to the origin. The learning rate drops to a third, then a tenth, for the last
 * 40% and 15% of the steps, since L1 gradients do not shrink near the optimum.
 *
 * The L1 subgradient `Xᵀ·(sign(XW − Y) ⊙ M) / ΣM` is written out rather than taped: on the pure-JS
 * CPU backend autograd's transposes and broadcasts cost more than the arithmetic. The bias is a
 * constant feature for the same reason. Every tensor is disposed before returning.
 */
export async function trainLearnedModel(tf: Tensorflow, x: Float32Array, y: Float32Array, mask: Float32Array, rows: number, features: number, outputs: number, opts: TrainOptions): Promise<LearnedWeights> {
  const rng = createRng(opts.seed);
  const order = new Int32Array(rows);
  for (let r = 0; r < rows; r++) order[r] = r;
  for (let r = rows - 1; r > 0; r--) {
    const k = Math.floor(rng() * (r + 1));
    const tmp = order[r] as number;
    order[r] = order[k] as number;
    order[k] = tmp;
  }
  // Each feature and target column is divided by its mean absolute value, so one learning rate
  // suits every series (a near-idle VM's features run to hundreds of scale units) and every
  // horizon; the scales are folded back into the weights at the end.
  const cols = features + 1;
  const fScale = new Float64Array(cols).fill(0);
  for (let r = 0; r < rows; r++) for (let j = 0; j < features; j++) fScale[j] = (fScale[j] as number) + Math.abs(x[r * features + j] as number);
  for (let j = 0; j < features; j++) fScale[j] = (fScale[j] as number) / rows > 1e-6 ? (fScale[j] as number) / rows : 1;
  fScale[features] = 1;
  const tScale = new Float64Array(outputs).fill(0);
  const tCount = new Float64Array(outputs).fill(0);
  for (let i = 0; i < rows * outputs; i++) {
    if ((mask[i] as number) === 0) continue;
    tScale[i % outputs] = (tScale[i % outputs] as number) + Math.abs(y[i] as number);
    tCount[i % outputs] = (tCount[i % outputs] as number) + 1;
  }
  for (let k = 0; k < outputs; k++) {
    const m = (tCount[k] as number) > 0 ? (tScale[k] as number) / (tCount[k] as number) : 0;
    tScale[k] = m > 1e-6 ? m : 1;
  }
  // Shuffled, scaled copies split into whole mini-batches up front: no gather or slice per step.
  const batch = Math.max(1, Math.min(opts.batchSize, rows));
  const batches = Math.max(1, Math.floor(rows / batch));
  const xs: TF_Tensor[] = [];
  const xts: TF_Tensor[] = [];
  const ys: TF_Tensor[] = [];
  const invCount: number[] = [];
  for (let bi = 0; bi < batches; bi++) {
    const xb = new Float32Array(batch * cols);
    const xtb = new Float32Array(cols * batch);
    const yb = new Float32Array(batch * outputs);
    const mb = new Float32Array(batch * outputs);
    let count = 0;
    for (let r = 0; r < batch; r++) {
      const src = order[bi * batch + r] as number;
      for (let j = 0; j < cols; j++) {
        const value = j === features ? 1 : (x[src * features + j] as number) / (fScale[j] as number);
        xb[r * cols + j] = value;
        xtb[j * batch + r] = value;
      }
      for (let k = 0; k < outputs; k++) {
        const m = mask[src * outputs + k] as number;
        mb[r * outputs + k] = m;
        // Masked targets sit at zero with zero weight: they add nothing to the gradient.
        yb[r * outputs + k] = m === 0 ? 0 : (y[src * outputs + k] as number) / (tScale[k] as number);
        count += m;
      }
    }
    xs.push(tf.tensor2d(xb, [batch, cols]));
    xts.push(tf.tensor2d(xtb, [cols, batch]));
    ys.push(tf.tensor2d(yb, [batch, outputs]));
    ys.push(tf.tensor2d(mb, [batch, outputs]));
    invCount.push(count > 0 ? 1 / count : 0);
  }
  const initW = new Float32Array(cols * outputs);
  if (opts.init) {
    for (let j = 0; j < features; j++) {
      for (let k = 0; k < outputs; k++) initW[j * outputs + k] = ((opts.init.w[j * outputs + k] as number) * (fScale[j] as number)) / (tScale[k] as number);
    }
    for (let k = 0; k < outputs; k++) initW[features * outputs + k] = (opts.init.b[k] as number) / (tScale[k] as number);
  }
  const w = tf.variable(tf.tensor2d(initW, [cols, outputs]), true, 'w');
  const phases = [
    { until: Math.round(opts.steps * 0.6), lr: opts.learningRate },
    { until: Math.round(opts.steps * 0.85), lr: opts.learningRate / 3 },
    { until: opts.steps, lr: opts.learningRate / 10 },
  ];
  let step = 0;
  for (const phase of phases) {
    const optimizer = tf.train.adam(phase.lr);
    for (; step < phase.until; step++) {
      const bi = step % batches;
      const scaleBy = invCount[bi] as number;
      if (scaleBy === 0) continue;
      tf.tidy(() => {
        const residual = tf.sub(tf.matMul(xs[bi] as TF_Tensor, w), ys[2 * bi] as TF_Tensor);
        const g = tf.mul(tf.sign(residual), ys[2 * bi + 1] as TF_Tensor);
        const grad = tf.mul(tf.matMul(xts[bi] as TF_Tensor, g), tf.scalar(scaleBy));
        optimizer.applyGradients({ w: grad as TF_Variable });
      });
    }
    optimizer.dispose();
  }
  const raw = await w.data();
  tf.dispose([w, ...xs, ...xts, ...ys]);
  const out: LearnedWeights = { features, outputs, w: new Array<number>(features * outputs), b: new Array<number>(outputs) };
  for (let j = 0; j < features; j++) {
    for (let k = 0; k < outputs; k++) out.w[j * outputs + k] = ((raw[j * outputs + k] as number) / (fScale[j] as number)) * (tScale[k] as number);
  }
  for (let k = 0; k < outputs; k++) out.b[k] = (raw[features * outputs + k] as number) * (tScale[k] as number);
  return out;
}

type TF_Tensor = ReturnType<Tensorflow['tensor2d']>;
type TF_Variable = ReturnType<Tensorflow['variable']>;

/** Model outputs (change from the origin, in scale units) for one feature row. */
export function predictRow(weights: LearnedWeights, row: ArrayLike<number>, offset = 0): Float64Array {
  const { features, outputs, w, b } = weights;
  const out = Float64Array.from(b);
  for (let j = 0; j < features; j++) {
    const xj = row[offset + j] as number;
    if (xj === 0) continue;
    for (let k = 0; k < outputs; k++) out[k] = (out[k] as number) + xj * (w[j * outputs + k] as number);
  }
  return out;
}
