import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../common/errors.js';
import { renderForecastSvg } from '../common/svg-chart.js';
import { createForecaster, WEEK_MS, type FittedForecaster } from '../coordinator/forecast/forecaster.js';
import { toFreeCapacity } from '../coordinator/forecast/free-capacity.js';
import { createRng, rollingMedian, toRegularSeries, windowMedian } from '../coordinator/forecast/regular-series.js';
import { tensorflowBackend } from '../coordinator/forecast/tensorflow-backend.js';

const STEP = 300_000;
const DAY_STEPS = 288;
const T0 = Date.UTC(2025, 0, 1);

/** Daily sine (amplitude 20 around 50) plus seeded Laplace noise (scale 2): known seasonality. */
function seasonalSeries(days: number, seed = 7): { t: number[]; v: number[] } {
  const rng = createRng(seed);
  const t: number[] = [];
  const v: number[] = [];
  for (let i = 0; i < days * DAY_STEPS; i++) {
    const u = rng() - 0.5;
    const noise = -2 * Math.sign(u) * Math.log(1 - 2 * Math.abs(u));
    t.push(T0 + i * STEP);
    v.push(50 + 20 * Math.sin((2 * Math.PI * i) / DAY_STEPS) + noise);
  }
  return { t, v };
}

const slice = (s: { t: number[]; v: number[] }, end: number) => ({ t: s.t.slice(0, end), v: s.v.slice(0, end) });

describe('forecaster on a daily-seasonal series', () => {
  const series = seasonalSeries(16);
  const trainEnd = 13 * DAY_STEPS;
  const forecaster = createForecaster({ seed: 3, clock: () => 1_700_000_000_000 });
  let fitted: FittedForecaster;

  it('fits, reports the backtest, and runs on the reported backend', async () => {
    fitted = await forecaster.fit(slice(series, trainEnd), STEP);
    expect(fitted.trainedAt).toBe(1_700_000_000_000);
    expect(fitted.periodSteps).toBe(DAY_STEPS);
    expect(fitted.fallbackReason).toBeUndefined();
    expect(Object.keys(fitted.backtestMase).sort()).toEqual(['ensemble', 'holt-winters', 'learned', 'persistence', 'seasonal-naive']);
    expect(fitted.anchors.map((a) => a.h)).toEqual([1, 3, 6, 12, 24, 72, 288]);
    expect(['learned', 'ensemble', 'holt-winters', 'seasonal-naive']).toContain(fitted.method);
    expect(fitted.backend).toBe('tfjs-cpu');
    expect(tensorflowBackend()).toBe('tfjs-cpu');
    // Plain data: survives a JSON round trip unchanged.
    expect(JSON.parse(JSON.stringify(fitted))).toEqual(fitted);
  });

  it('beats persistence out of sample, with the selected method and with the learned model', () => {
    const ro = forecaster.rollingOrigin(fitted, series, [6, 24], series.t[trainEnd - 1]);
    for (let k = 0; k < 2; k++) {
      const mae = (m: 'selected' | 'learned' | 'persistence') => {
        let sum = 0;
        let n = 0;
        ro.actual[k]?.forEach((y, o) => {
          if (Number.isNaN(y)) return;
          sum += Math.abs(y - (ro.predictions[m][k]?.[o] as number));
          n++;
        });
        return sum / n;
      };
      expect(mae('selected')).toBeLessThan(0.8 * mae('persistence'));
      expect(mae('learned')).toBeLessThan(0.8 * mae('persistence'));
    }
  });

  it('covers the truth at about the nominal 80% with its intervals', () => {
    let inside = 0;
    let total = 0;
    for (let origin = trainEnd; origin + 24 <= series.t.length; origin += 24) {
      const f = forecaster.forecast(fitted, 24, slice(series, origin));
      expect(f.coverage).toBe(0.8);
      expect(f.t[0]).toBe(series.t[origin]);
      f.mean.forEach((_m, k) => {
        const y = series.v[origin + k] as number;
        if (y >= (f.lower[k] as number) && y <= (f.upper[k] as number)) inside++;
        total++;
      });
    }
    expect(total).toBeGreaterThan(500);
    const rate = inside / total;
    expect(rate).toBeGreaterThan(0.65);
    expect(rate).toBeLessThan(0.95);
  });

  it('gives the same point forecast live as in the rolling-origin replay', () => {
    const origin = trainEnd + 100;
    const history = slice(series, origin + 1);
    const live = forecaster.forecast(fitted, 24, history);
    const replay = forecaster.rollingOrigin(fitted, history, [1, 6, 24], series.t[origin]);
    expect(replay.originsMs).toEqual([series.t[origin]]);
    expect(live.mean[0]).toBeCloseTo(replay.predictions.selected[0]?.[0] as number, 9);
    expect(live.mean[5]).toBeCloseTo(replay.predictions.selected[1]?.[0] as number, 9);
    expect(live.mean[23]).toBeCloseTo(replay.predictions.selected[2]?.[0] as number, 9);
  });

  it('forecasts from its stored tail without a history', () => {
    const f = forecaster.forecast(fitted, 300);
    expect(f.t).toHaveLength(300);
    expect(f.t[0]).toBe(series.t[trainEnd - 1]! + STEP);
    expect(f.methods).toHaveLength(300);
    f.mean.forEach((m, k) => {
      expect(Number.isFinite(m)).toBe(true);
      expect(f.lower[k]).toBeLessThanOrEqual(m);
      expect(f.upper[k]).toBeGreaterThanOrEqual(m);
    });
  });

  it('is deterministic for a given seed', async () => {
    const again = await createForecaster({ seed: 3, clock: () => 1_700_000_000_000 }).fit(slice(series, trainEnd), STEP);
    expect(again.learned?.weights).toEqual(fitted.learned?.weights);
    expect(again.anchors).toEqual(fitted.anchors);
  });
});

describe('forecaster fallbacks and input checks', () => {
  const forecaster = createForecaster({ seed: 1 });

  it('falls back to persistence on a short history', async () => {
    const short = seasonalSeries(1).t.slice(0, 40);
    const fitted = await forecaster.fit({ t: short, v: short.map((_t, i) => 10 + (i % 3)) }, STEP);
    expect(fitted.method).toBe('persistence');
    expect(fitted.fallbackReason).toMatch(/too short/);
    expect(fitted.learned).toBeUndefined();
    const f = forecaster.forecast(fitted, 6);
    expect(f.mean).toEqual(Array(6).fill(10 + (39 % 3)));
    expect(f.method).toBe('persistence');
  });

  it('keeps the interval of a never-negative metric at or above zero on a short, spiky history', async () => {
    // A CPU load sampled every 2 s right after an agent starts: one busy sample, then near idle.
    const v = [43.6, 0.75, 0.5, 1.25, 0.5, 3.9];
    const fitted = await forecaster.fit({ t: v.map((_x, i) => T0 + i * 2000), v }, 2000);
    expect(fitted.method).toBe('persistence');
    expect(fitted.bounds?.[0]).toBe(0);
    const f = forecaster.forecast(fitted, 30);
    expect(Math.min(...f.lower)).toBe(0);
    expect(f.mean.every((m, k) => f.lower[k]! <= m && m <= f.upper[k]!)).toBe(true);
    // A metric that did go negative keeps its negative interval.
    const signed = await forecaster.fit({ t: v.map((_x, i) => T0 + i * 2000), v: v.map((x) => x - 2) }, 2000);
    expect(Math.min(...forecaster.forecast(signed, 30).lower)).toBeLessThan(0);
  });

  it('falls back to a baseline when history is too short to train the model', async () => {
    const s = seasonalSeries(1);
    const fitted = await forecaster.fit(slice(s, 200), STEP);
    expect(fitted.learned).toBeUndefined();
    expect(['persistence', 'holt-winters']).toContain(fitted.method);
    expect(fitted.anchors.every((a) => a.method === 'persistence' || a.method === 'holt-winters')).toBe(true);
  });

  it('forecasts a single sample as itself', async () => {
    const fitted = await forecaster.fit({ t: [T0], v: [3] }, STEP);
    const f = forecaster.forecast(fitted, 2);
    expect(f.mean).toEqual([3, 3]);
    expect(f.calibrated).toBe(false);
  });

  it('rejects bad input naming the field', async () => {
    const field = async (p: Promise<unknown> | (() => unknown)) => {
      const err = await (typeof p === 'function' ? Promise.resolve().then(p) : p).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidArgumentError);
      return (err as InvalidArgumentError).field;
    };
    expect(await field(forecaster.fit({ t: [], v: [] }, STEP))).toBe('series');
    expect(await field(forecaster.fit({ t: [1, 2], v: [1] }, STEP))).toBe('series');
    expect(await field(forecaster.fit({ t: [1, 2], v: [1, Number.NaN] }, STEP))).toBe('series.v[1]');
    expect(await field(forecaster.fit({ t: [-1], v: [1] }, STEP))).toBe('series.t[0]');
    expect(await field(forecaster.fit({ t: [1], v: [1] }, 0))).toBe('stepMs');
    const fitted = await forecaster.fit({ t: [T0], v: [3] }, STEP);
    expect(await field(() => forecaster.forecast(fitted, 0))).toBe('horizonSteps');
    expect(await field(() => createForecaster({ coverage: 1 }))).toBe('coverage');
    expect(await field(() => createForecaster({ anchors: [0] }))).toBe('anchors[0]');
  });
});

describe('forecast helpers', () => {
  it('bucket irregular samples onto the grid and carry gaps forward unobserved', () => {
    const g = toRegularSeries({ t: [1_000, 250_000, 900_000, 100], v: [1, 3, 7, 2] }, STEP);
    expect(g.t0).toBe(0);
    expect(Array.from(g.v)).toEqual([2, 2, 2, 7]);
    expect(Array.from(g.observed)).toEqual([1, 0, 0, 1]);
  });

  it('compute rolling medians equal to direct window medians', () => {
    const rng = createRng(11);
    const v = Float64Array.from({ length: 500 }, () => Math.floor(rng() * 20));
    for (const w of [1, 2, 7, 48]) {
      const rolling = rollingMedian(v, w);
      for (const i of [0, 1, 5, 47, 48, 300, 499]) expect(rolling[i]).toBe(windowMedian(v, i, w));
    }
  });

  it('turn a usage forecast into free capacity net of reservations', () => {
    const forecast = { t: [0, 1000, 2000], mean: [30, 40, 50], lower: [25, 35, 45], upper: [35, 45, 60], coverage: 0.8 };
    const free = toFreeCapacity(forecast, 100, [
      { fromMs: 1000, toMs: 3000, amount: 10 },
      { fromMs: 2000, toMs: 2001, amount: 5 },
    ]);
    expect(free).toEqual({ t: [0, 1000, 2000], reserved: [0, 10, 15], free: [70, 50, 35], freeLower: [65, 45, 25], freeUpper: [75, 55, 40], coverage: 0.8 });
    expect(toFreeCapacity(forecast, 40, [], { clampAtZero: true }).free).toEqual([10, 0, 0]);
    expect(() => toFreeCapacity(forecast, 100, [{ fromMs: 5, toMs: 5, amount: 1 }])).toThrow(InvalidArgumentError);
    expect(() => toFreeCapacity(forecast, 100, [{ fromMs: 5, toMs: 6, amount: -1 }])).toThrow(/reservations\[0\]\.amount/);
    expect(() => toFreeCapacity(forecast, Number.NaN)).toThrow(/capacity/);
  });

  it('render an SVG chart with history, forecast, band, axes and an escaped title', () => {
    const svg = renderForecastSvg({
      title: 'node <a> & "b"',
      yLabel: 'CPU %',
      history: { t: [T0, T0 + STEP, T0 + 2 * STEP], v: [1, 2, Number.NaN] },
      forecast: { t: [T0 + 3 * STEP, T0 + 4 * STEP], mean: [2, 3], lower: [1, 2], upper: [3, 4], coverage: 0.8 },
    });
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('node &lt;a&gt; &amp; &quot;b&quot;');
    expect(svg).toContain('class="history"');
    expect(svg).toContain('class="forecast"');
    expect(svg).toContain('class="interval"');
    expect(svg).toContain('80% interval');
    expect(svg).toContain('00:05');
    expect(svg).not.toContain('NaN');
    expect(renderForecastSvg({ title: 'empty', history: { t: [], v: [] } })).toContain('no data');
  });

  it('render a week of one-second samples (604,800 points) without spreading them into Math.min', () => {
    const n = 7 * 86_400;
    const t = Array.from({ length: n }, (_, i) => T0 + i * 1000);
    const v = Array.from({ length: n }, (_, i) => 50 + 40 * Math.sin(i / 3600));
    const svg = renderForecastSvg({ title: 'a week', history: { t, v }, forecast: { t: [T0 + n * 1000], mean: [50], lower: [40], upper: [60], coverage: 0.9 } });
    expect(svg).toContain('class="history"');
    expect(svg).toContain('90% interval');
  });
});

describe('forecaster season choice', () => {
  it('learns a weekly season where the history spans enough weeks, and keeps daily otherwise', async () => {
    const HOUR = 3_600_000;
    const rng = createRng(11);
    const t: number[] = [];
    const v: number[] = [];
    // 5 weeks hourly: busy weekdays (70), quiet weekends (20): a weekly, not a daily, pattern.
    for (let i = 0; i < 5 * 7 * 24; i++) {
      const day = Math.floor(i / 24) % 7;
      t.push(T0 + i * HOUR);
      v.push((day < 5 ? 70 : 20) + (rng() - 0.5) * 4);
    }
    const forecaster = createForecaster({ seed: 5 });
    const weekly = await forecaster.fit({ t, v }, HOUR);
    expect(weekly.seasonPeriodMs).toBe(WEEK_MS);
    const short = await forecaster.fit(seasonalSeries(8), STEP);
    expect(short.seasonPeriodMs).toBe(86_400_000);
  });
});
