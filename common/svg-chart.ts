/**
 * A dependency-free SVG line chart for forecasts: history line, forecast line, shaded prediction
 * interval, time and value axes, title and legend. Pure string building; the caller writes the file
 * (`retrace forecast ID --plot out.svg`).
 */
import { InvalidArgumentError } from './errors.js';

/** What to draw. Times are epoch ms; non-finite values leave a gap in their line. */
export interface ForecastChartInput {
  title: string;
  history: { t: readonly number[]; v: readonly number[] };
  forecast?: {
    t: readonly number[];
    mean: readonly number[];
    lower?: readonly number[];
    upper?: readonly number[];
    /** Nominal coverage of the band, shown in the legend (e.g. 0.8 → "80% interval"). */
    coverage?: number;
  };
  /** Unit or name for the value axis, e.g. `CPU %`. */
  yLabel?: string;
  /** Pixels; default 800. */
  width?: number;
  /** Pixels; default 360. */
  height?: number;
  /** Minutes east of UTC for the time labels; default 0 (UTC). */
  utcOffsetMinutes?: number;
}

const MARGIN = { left: 64, right: 16, bottom: 44 };
const COLORS = { history: '#1f77b4', forecast: '#ff7f0e', band: '#ff7f0e', grid: '#e5e5e5', axis: '#333333', text: '#222222' };
const TIME_STEPS_MS = [
  1_000, 5_000, 15_000, 30_000, 60_000, 300_000, 900_000, 1_800_000, 3_600_000, 3 * 3_600_000, 6 * 3_600_000, 12 * 3_600_000,
  86_400_000, 2 * 86_400_000, 7 * 86_400_000, 14 * 86_400_000,
];
/** Steps past two weeks, in calendar months, so ticks fall on month (and year) starts. */
const MONTH_STEPS = [1, 2, 3, 6, 12, 24, 60, 120, 240];

/** Escapes text for SVG content and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** Decimal sizes a label is written in, largest first. */
const SI_SIZES: readonly [number, string][] = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];

/**
 * The ticks' labels in one unit, k, M, G or T, read from the largest tick (k from 10,000 up, so
 * four-digit values stay plain), with as many decimals as the tick step needs: three significant
 * digits gave 2.147G, 2.148G and 2.149G all as "2.15G", and a unit picked per tick labelled one
 * axis "0, 200, 400, 600, 800, 1k" and another "0, 500, 1k, 1.5k".
 */
function tickLabels(ticks: readonly number[], step: number): string[] {
  let most = 0;
  for (const v of ticks) most = Math.max(most, Math.abs(v));
  const [size, suffix] = SI_SIZES.find(([s]) => most >= (s === 1e3 ? 1e4 : s)) ?? [1, ''];
  const decimals = Math.min(12, Math.max(0, Math.ceil(-Math.log10(step / size) - 1e-9)));
  // Trailing zeros go (2.150G reads 2.15G): labels that differ still differ.
  return ticks.map((v) => (v === 0 ? '0' : `${Number((v / size).toFixed(decimals))}${suffix}`));
}

/** The ticks k × step in [lo, hi], each k × step, not a running sum (see valueTicks). */
function ticksAt(lo: number, hi: number, step: number, most: number): number[] {
  const ticks: number[] = [];
  const first = Math.ceil(lo / step);
  for (let k = first; k * step <= hi + step * 1e-9 && ticks.length < most; k++) {
    const v = k * step;
    if (ticks.length > 0 && v === ticks[ticks.length - 1]) break;
    ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return ticks;
}

/**
 * "Nice" ticks (1, 2, 5 × 10^k) covering [lo, hi], about `target` of them: of the nice steps
 * around span / target, the one whose tick count in the range comes nearest `target`, fewer than
 * 4 counting as worst (the step that only kept span / step under the target gave a 1.05-wide
 * range the step 0.5 and two ticks). Each tick is k × step, not a running sum: a step below the
 * values' float resolution (1e17 ± 16) left `v += step` at v forever.
 */
function valueTicks(lo: number, hi: number, target = 5): number[] {
  const span = hi - lo;
  if (!(span > 0) || !Number.isFinite(span)) return [];
  const mag = 10 ** Math.floor(Math.log10(span / target));
  let best: number[] = [];
  let bestScore = Number.POSITIVE_INFINITY;
  for (const m of [0.5, 1, 2, 5, 10, 20]) {
    const step = m * mag;
    if (!(step > 0) || !Number.isFinite(step)) continue;
    const ticks = ticksAt(lo, hi, step, 4 * target);
    const score = ticks.length < Math.min(4, target) ? 100 + target - ticks.length : Math.abs(ticks.length - target);
    // Ties go to the larger step (fewer labels).
    if (score <= bestScore) {
      best = ticks;
      bestScore = score;
    }
  }
  return best;
}

/** The spacing of ticks (the whole span where there is one tick). */
function tickStep(ticks: readonly number[], span: number): number {
  return ticks.length > 1 ? (ticks[1] as number) - (ticks[0] as number) : span;
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

const DAY_MS = 86_400_000;

/**
 * A time tick's label: the clock within a day, the date (MM-DD) when the axis spans days, and
 * with `withYear` the year before the date (where the caller wants it: the first tick and where
 * the year changes).
 */
function timeLabel(t: number, stepMs: number, spanMs: number, offsetMin: number, withYear = false): string {
  const d = new Date(t + offsetMin * 60_000);
  const date = `${withYear ? `${d.getUTCFullYear()}-` : ''}${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())}`;
  const clock = `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}${stepMs < 60_000 ? `:${pad2(d.getUTCSeconds())}` : ''}`;
  if (stepMs >= DAY_MS) return date;
  return spanMs > DAY_MS || withYear ? `${date} ${clock}` : clock;
}

/**
 * The time axis's ticks and labels. The year shows where a reader needs it: on the first tick and
 * where it changes, when the axis spans months or crosses a new year ("12-30", "01-02" read as
 * one year's end and start of the same year otherwise). The step is the smallest whose labels,
 * the longest measured, fit side by side in the plot, 8 at most: a 200-pixel chart crowded 8
 * "MM-DD HH:MM" labels into 136 pixels.
 */
function timeTicks(t0: number, t1: number, offsetMin: number, plotW: number): { t: number; label: string }[] {
  const span = t1 - t0;
  const shift = offsetMin * 60_000;
  const yearOf = (t: number): number => new Date(t + shift).getUTCFullYear();
  const needYear = span >= 60 * DAY_MS || yearOf(t0) !== yearOf(t1);
  const fits = (step: number): number => {
    const chars = timeLabel(t0, step, span, offsetMin, needYear).length;
    return Math.max(2, Math.min(8, Math.floor(plotW / (chars * CHAR_W + 12))));
  };
  const times: number[] = [];
  const step = TIME_STEPS_MS.find((s) => span / s <= fits(s));
  if (step !== undefined) {
    for (let t = Math.ceil((t0 + shift) / step) * step - shift; t <= t1; t += step) times.push(t);
  } else {
    // Month starts (in the offset's time), every `months` months counted from year 0: a fixed
    // 30-day step put ticks on 10-09, 11-08, 12-08.
    const start = new Date(t0 + shift);
    const most = fits(DAY_MS);
    for (const months of MONTH_STEPS) {
      times.length = 0;
      let m = Math.ceil((start.getUTCFullYear() * 12 + start.getUTCMonth()) / months) * months;
      for (let t = Date.UTC(Math.floor(m / 12), m % 12, 1) - shift; t <= t1; m += months, t = Date.UTC(Math.floor(m / 12), m % 12, 1) - shift) {
        if (t >= t0) times.push(t);
      }
      if (times.length <= most) break;
    }
  }
  let year = Number.NaN;
  return times.map((t) => {
    const y = yearOf(t);
    const label = timeLabel(t, step ?? DAY_MS, span, offsetMin, needYear && y !== year);
    year = y;
    return { t, label };
  });
}

function extent(xs: readonly number[]): [number, number] {
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  for (const x of xs) {
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  return [lo, hi];
}

/** A value range with room around its points: 5% each side, or 10% of the value (1 at 0) for one value. */
function paddedRange([lo, hi]: [number, number]): [number, number] {
  if (hi === lo) {
    const pad = Math.abs(hi) > 0 ? Math.abs(hi) * 0.1 : 1;
    return [lo - pad, hi + pad];
  }
  const pad = (hi - lo) * 0.05;
  return [lo - pad, hi + pad];
}

function finite(x: number | undefined): x is number {
  return typeof x === 'number' && Number.isFinite(x);
}

/** Pixels a character of the 11 px sans-serif labels takes, at most (digits and colons less). */
const CHAR_W = 6.5;

/**
 * A label under the x axis, centred on its tick, but ending there (or starting there) where
 * centring would cut it at the image's edge: a tick at the right end of the plot ("00:02:00")
 * showed as "00:02:0".
 */
function xTickText(px: number, py: number, label: string, width: number): string {
  const half = (label.length * CHAR_W) / 2;
  const anchor = px + half > width ? 'end' : px - half < 0 ? 'start' : 'middle';
  return `<text x="${px.toFixed(1)}" y="${py}" text-anchor="${anchor}" fill="${COLORS.text}">${escapeXml(label)}</text>`;
}

interface LegendItem {
  label: string;
  color: string;
  kind: 'line' | 'band' | 'dot';
}

type LegendRows = { x: number; label: string; item: LegendItem }[][];

/**
 * The legend's rows, between the title and the plot: items go on in a row and wrap to the next
 * where the plot ends (one row ran past the image's edge, cutting off the series after the third
 * or fourth, and drawn inside the plot it covered the data), and a label longer than the plot is
 * cut with an ellipsis.
 */
function legendRows(items: readonly LegendItem[], width: number, height: number, legendTop: number): LegendRows {
  const left = MARGIN.left + 8;
  const right = width - MARGIN.right - 8;
  const maxChars = Math.max(4, Math.floor((right - left - 22) / CHAR_W));
  const rows: LegendRows = [];
  let lx = left;
  for (const item of items) {
    const label = item.label.length <= maxChars ? item.label : `${item.label.slice(0, maxChars - 1)}…`;
    const w = 22 + label.length * CHAR_W;
    if (rows.length === 0 || (lx + w > right && (rows.at(-1)?.length ?? 0) > 0)) {
      rows.push([]);
      lx = left;
    }
    rows.at(-1)?.push({ x: lx, label, item });
    lx += w + 8;
  }
  // At most as many rows as leave the plot 100 pixels; the last says how many it leaves out.
  const most = Math.max(1, Math.floor((height - legendTop - 8 - MARGIN.bottom - 100) / LEGEND_ROW));
  if (rows.length > most) {
    const shown = rows.slice(0, most);
    const last = shown[most - 1] as LegendRows[number];
    const hidden = items.length - shown.reduce((n, row) => n + row.length, 0) + 1;
    last.splice(last.length - 1, 1, { x: (last.at(-1) as LegendRows[number][number]).x, label: `… ${hidden} more`, item: { label: '', color: '#ffffff', kind: 'line' } });
    return shown;
  }
  return rows;
}

/** The title's font size, the pixels a line of it takes (baseline to baseline) and its widest character. */
const TITLE_SIZE = 14;
const TITLE_LINE = 18;
const TITLE_CHAR_W = 0.6 * TITLE_SIZE;
/** Pixels above the title, between the title and the legend, and between the legend and the plot. */
const PAD = 8;
/** A legend row's height; its marker (12 pixels) and 11 px label are centred in it. */
const LEGEND_ROW = 16;

/**
 * The title in lines that fit the image, wrapped at spaces (a word longer than a line is cut),
 * two at most, the second ending in an ellipsis where the title goes on: one line of 150
 * characters ran off both sides of an 800-pixel chart.
 */
function titleLines(title: string, width: number): string[] {
  const max = Math.max(8, Math.floor((width - 2 * PAD) / TITLE_CHAR_W));
  const lines: string[] = [];
  let rest = title.trim();
  while (rest.length > 0 && lines.length < 2) {
    if (rest.length <= max) {
      lines.push(rest);
      rest = '';
      break;
    }
    const space = rest.lastIndexOf(' ', max);
    const end = space > max / 2 ? space : max;
    lines.push(rest.slice(0, end).trimEnd());
    rest = rest.slice(end).trimStart();
  }
  if (rest.length > 0) {
    const last = lines[lines.length - 1] as string;
    lines[lines.length - 1] = `${last.length < max ? last : last.slice(0, max - 1)}…`;
  }
  return lines.length > 0 ? lines : [''];
}

/** Where the title, the legend and the plot go, top to bottom. */
interface Header {
  title: string[];
  rows: LegendRows;
  /** The top of the legend's first row. */
  legendTop: number;
  /** The plot's top edge. */
  top: number;
}

/**
 * The title's lines, then the legend's rows a gap below the title's last line, then the plot a
 * gap below the legend, laid out from the title's and legend's line heights: the legend's first
 * row sat at a fixed 32 pixels, 4 below a 14 px title's baseline, so the title's descenders and
 * the legend's markers touched.
 */
function header(title: string, items: readonly LegendItem[], width: number, height: number): Header {
  const lines = titleLines(title, width);
  const titleBottom = PAD + lines.length * TITLE_LINE;
  const legendTop = titleBottom + PAD;
  const rows = legendRows(items, width, height, legendTop);
  return { title: lines, rows, legendTop, top: rows.length === 0 ? titleBottom + PAD : legendTop + rows.length * LEGEND_ROW + PAD };
}

function drawTitle(parts: string[], h: Header, width: number): void {
  h.title.forEach((line, i) => {
    parts.push(`<text class="title" x="${width / 2}" y="${PAD + TITLE_SIZE + i * TITLE_LINE}" text-anchor="middle" font-size="${TITLE_SIZE}" fill="${COLORS.text}">${escapeXml(line)}</text>`);
  });
}

function drawLegend(parts: string[], h: Header): void {
  h.rows.forEach((row, r) => {
    const cy = h.legendTop + LEGEND_ROW / 2 + r * LEGEND_ROW;
    for (const { x, label, item } of row) {
      parts.push(
        item.kind === 'line'
          ? `<line class="legend" x1="${x}" x2="${x + 18}" y1="${cy}" y2="${cy}" stroke="${item.color}" stroke-width="2"/>`
          : item.kind === 'band'
            ? `<rect class="legend" x="${x}" y="${cy - 6}" width="18" height="12" fill="${item.color}" fill-opacity="0.2"/>`
            : `<circle class="legend" cx="${x + 9}" cy="${cy}" r="4" fill="${item.color}"/>`,
      );
      parts.push(`<text x="${(x + 22).toFixed(1)}" y="${cy + 4}" fill="${COLORS.text}">${escapeXml(label)}</text>`);
    }
  });
}

/** The value axis: a grid line and a label at each nice tick in [lo, hi]; `y` maps a value to pixels. */
function valueAxis(parts: string[], lo: number, hi: number, y: (v: number) => number, plotW: number): void {
  const ticks = valueTicks(lo, hi);
  const labels = tickLabels(ticks, tickStep(ticks, hi - lo));
  ticks.forEach((v, i) => {
    const py = y(v).toFixed(1);
    parts.push(`<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${py}" y2="${py}" stroke="${COLORS.grid}"/>`);
    parts.push(`<text x="${MARGIN.left - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end" fill="${COLORS.text}">${escapeXml(labels[i] as string)}</text>`);
  });
}

/**
 * A run of points to draw, thinned where it has more than two a pixel column: each column keeps
 * its first point, its lowest and highest (so a one-sample spike still shows) and its last, in
 * time order. A 25,000-point history drew 25,000 path vertices on 720 pixels. Fewer points are
 * drawn exactly. Consecutive points in one column make a column's group, so unsorted times are
 * drawn as they come.
 */
function thinned(run: readonly [number, number][], x: (t: number) => number, plotW: number): readonly [number, number][] {
  if (run.length <= 2 * plotW) return run;
  const out: [number, number][] = [];
  let start = 0;
  const flush = (end: number): void => {
    let lo = start;
    let hi = start;
    for (let k = start; k < end; k++) {
      if ((run[k] as [number, number])[1] < (run[lo] as [number, number])[1]) lo = k;
      if ((run[k] as [number, number])[1] > (run[hi] as [number, number])[1]) hi = k;
    }
    for (const k of [...new Set([start, lo, hi, end - 1])].sort((a, b) => a - b)) out.push(run[k] as [number, number]);
  };
  let col = Math.floor(x((run[0] as [number, number])[0]));
  for (let k = 1; k < run.length; k++) {
    const c = Math.floor(x((run[k] as [number, number])[0]));
    if (c !== col) {
      flush(k);
      start = k;
      col = c;
    }
  }
  flush(run.length);
  return out;
}

/**
 * The time between two history points past which the line breaks: 5 times the median spacing,
 * so an agent down for a day (or a trace missing 30 hours) shows as a gap, not as a straight
 * line across the hours nobody measured. Infinite below three points (nothing to compare with).
 */
function gapAfterMs(ts: readonly number[], vs: readonly number[]): number {
  const gaps: number[] = [];
  let prev = Number.NaN;
  for (let k = 0; k < ts.length; k++) {
    const t = ts[k];
    if (!finite(t) || !finite(vs[k])) continue;
    if (finite(prev) && t > prev) gaps.push(t - prev);
    prev = t;
  }
  if (gaps.length < 2) return Number.POSITIVE_INFINITY;
  gaps.sort((a, b) => a - b);
  return 5 * (gaps[Math.floor((gaps.length - 1) / 2)] as number);
}

/**
 * Renders the chart as a standalone SVG document.
 * @throws InvalidArgumentError for mismatched array lengths or a bad width/height.
 */
export function renderForecastSvg(input: ForecastChartInput): string {
  const width = input.width ?? 800;
  const height = input.height ?? 360;
  if (!finite(width) || width < 200) throw new InvalidArgumentError('width', `expected at least 200 pixels, got ${String(width)}`);
  if (!finite(height) || height < 120) throw new InvalidArgumentError('height', `expected at least 120 pixels, got ${String(height)}`);
  if (input.history.t.length !== input.history.v.length) throw new InvalidArgumentError('history', 't and v must have the same length');
  const fc = input.forecast;
  if (fc) {
    const n = fc.t.length;
    if (fc.mean.length !== n || (fc.lower && fc.lower.length !== n) || (fc.upper && fc.upper.length !== n)) {
      throw new InvalidArgumentError('forecast', 't, mean, lower and upper must have the same length');
    }
  }
  const offset = input.utcOffsetMinutes ?? 0;

  const ts: number[] = [...input.history.t, ...(fc?.t ?? [])].filter(finite);
  const vs: number[] = [...input.history.v, ...(fc?.mean ?? []), ...(fc?.lower ?? []), ...(fc?.upper ?? [])].filter(finite);
  const items: LegendItem[] = [{ label: 'history', color: COLORS.history, kind: 'line' }];
  if (fc) items.push({ label: 'forecast', color: COLORS.forecast, kind: 'line' });
  if (fc?.lower && fc.upper) items.push({ label: fc.coverage !== undefined ? `${Math.round(fc.coverage * 100)}% interval` : 'interval', color: COLORS.band, kind: 'band' });
  const head = header(input.title, items, width, height);
  const top = head.top;
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - top - MARGIN.bottom;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`);
  parts.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  drawTitle(parts, head, width);
  if (ts.length === 0 || vs.length === 0) {
    parts.push(`<text x="${width / 2}" y="${height / 2}" text-anchor="middle" fill="${COLORS.text}">no data</text>`);
    parts.push('</svg>');
    return parts.join('\n');
  }

  // Loops, not Math.min(...xs): long histories would overflow the argument stack.
  let [t0, t1] = extent(ts);
  if (t1 === t0) {
    t0 -= 30_000;
    t1 += 30_000;
  }
  const [lo, hi] = paddedRange(extent(vs));
  const x = (t: number): number => MARGIN.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v: number): number => top + (1 - (v - lo) / (hi - lo)) * plotH;
  const r = (n: number): string => n.toFixed(1);

  valueAxis(parts, lo, hi, y, plotW);
  // Time axis: ticks aligned to the (offset) clock.
  for (const { t, label } of timeTicks(t0, t1, offset, plotW)) {
    parts.push(`<line x1="${r(x(t))}" x2="${r(x(t))}" y1="${top}" y2="${top + plotH}" stroke="${COLORS.grid}"/>`);
    parts.push(xTickText(x(t), top + plotH + 16, label, width));
  }
  parts.push(`<rect x="${MARGIN.left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="${COLORS.axis}"/>`);
  parts.push(`<text x="${MARGIN.left + plotW / 2}" y="${height - 8}" text-anchor="middle" fill="${COLORS.text}">time (${offset === 0 ? 'UTC' : `UTC${offset > 0 ? '+' : '-'}${pad2(Math.floor(Math.abs(offset) / 60))}:${pad2(Math.abs(offset) % 60)}`})</text>`);
  if (input.yLabel) {
    parts.push(`<text x="14" y="${top + plotH / 2}" text-anchor="middle" transform="rotate(-90 14 ${top + plotH / 2})" fill="${COLORS.text}">${escapeXml(input.yLabel)}</text>`);
  }

  // Interval band: one polygon per run of steps where both bounds are finite.
  if (fc?.lower && fc.upper) {
    let run: number[] = [];
    const flush = (): void => {
      if (run.length === 1) {
        // One step: the band has no width; an error bar shows it.
        const k = run[0] as number;
        const px = r(x(fc.t[k] as number));
        parts.push(`<line class="interval" x1="${px}" x2="${px}" y1="${r(y(fc.upper?.[k] as number))}" y2="${r(y(fc.lower?.[k] as number))}" stroke="${COLORS.band}" stroke-opacity="0.5" stroke-width="6"/>`);
      } else if (run.length > 1) {
        const upper = run.map((k) => `${r(x(fc.t[k] as number))},${r(y(fc.upper?.[k] as number))}`);
        const lower = [...run].reverse().map((k) => `${r(x(fc.t[k] as number))},${r(y(fc.lower?.[k] as number))}`);
        parts.push(`<polygon class="interval" points="${[...upper, ...lower].join(' ')}" fill="${COLORS.band}" fill-opacity="0.2" stroke="none"/>`);
      }
      run = [];
    };
    for (let k = 0; k < fc.t.length; k++) {
      if (finite(fc.t[k]) && finite(fc.lower[k]) && finite(fc.upper[k])) run.push(k);
      else flush();
    }
    flush();
  }
  const line = (tsArr: readonly number[], vsArr: readonly number[], color: string, cls: string, dash?: string, gapMs = Number.POSITIVE_INFINITY): void => {
    let d = '';
    // A point with no finite neighbour (the only one, or one between gaps) is a path of one
    // moveto, which draws nothing: it gets a dot instead.
    const dots: string[] = [];
    let run: [number, number][] = [];
    const flush = (): void => {
      if (run.length === 1) dots.push(`<circle class="${cls}" cx="${r(x(run[0]?.[0] as number))}" cy="${r(y(run[0]?.[1] as number))}" r="2.5" fill="${color}"/>`);
      else thinned(run, x, plotW).forEach(([t, v], k) => (d += `${k === 0 ? 'M' : 'L'}${r(x(t))},${r(y(v))}`));
      run = [];
    };
    for (let k = 0; k < tsArr.length; k++) {
      const t = tsArr[k];
      const v = vsArr[k];
      if (finite(t) && finite(v)) {
        if (run.length > 0 && Math.abs(t - (run[run.length - 1] as [number, number])[0]) > gapMs) flush();
        run.push([t, v]);
      } else flush();
    }
    flush();
    if (d) parts.push(`<path class="${cls}" d="${d}" fill="none" stroke="${color}" stroke-width="1.5"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`);
    parts.push(...dots);
  };
  line(input.history.t, input.history.v, COLORS.history, 'history', undefined, gapAfterMs(input.history.t, input.history.v));
  if (fc) line(fc.t, fc.mean, COLORS.forecast, 'forecast', '5,3');

  drawLegend(parts, head);
  parts.push('</svg>');
  return parts.join('\n');
}

/** What a scatter chart draws: one colour per series, optionally the line y = x. */
export interface ScatterChartInput {
  title: string;
  xLabel: string;
  yLabel: string;
  series: readonly { name: string; color: string; x: readonly number[]; y: readonly number[] }[];
  /** A dashed y = x: points on it are where y equals x (a replay on time, a step as costly as recorded). */
  diagonal?: boolean;
  /** Pixels; default 800. */
  width?: number;
  /** Pixels; default 360. */
  height?: number;
}

/**
 * Renders a scatter chart as a standalone SVG document; points with a non-finite coordinate are
 * left out.
 * @throws InvalidArgumentError for a series whose x and y differ in length.
 */
export function renderScatterSvg(input: ScatterChartInput): string {
  const width = input.width ?? 800;
  const height = input.height ?? 360;
  for (const [i, s] of input.series.entries()) {
    if (s.x.length !== s.y.length) throw new InvalidArgumentError(`series[${i}]`, 'x and y must have the same length');
  }
  const points = input.series.map((s) => s.x.flatMap((x, k) => (finite(x) && finite(s.y[k]) ? [[x, s.y[k] as number] as const] : [])));
  const xs = points.flatMap((p) => p.map(([x]) => x));
  const ys = points.flatMap((p) => p.map(([, y]) => y));
  const head = header(input.title, input.series.map((s, i) => ({ label: `${s.name} (${points[i]?.length ?? 0})`, color: s.color, kind: 'dot' as const })), width, height);
  const top = head.top;
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - top - MARGIN.bottom;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`,
  ];
  drawTitle(parts, head, width);
  if (xs.length === 0) {
    parts.push(`<text x="${width / 2}" y="${height / 2}" text-anchor="middle" fill="${COLORS.text}">no data</text>`, '</svg>');
    return parts.join('\n');
  }
  let [x0, x1] = paddedRange(extent(xs));
  let [y0, y1] = paddedRange(extent(ys));
  if (input.diagonal) {
    // The same range on both axes, so y = x is the square's diagonal.
    x0 = y0 = Math.min(x0, y0);
    x1 = y1 = Math.max(x1, y1);
  }
  const x = (v: number): number => MARGIN.left + ((v - x0) / (x1 - x0)) * plotW;
  const y = (v: number): number => top + (1 - (v - y0) / (y1 - y0)) * plotH;
  const r = (n: number): string => n.toFixed(1);
  valueAxis(parts, y0, y1, y, plotW);
  const xTicks = valueTicks(x0, x1, 8);
  const xLabels = tickLabels(xTicks, tickStep(xTicks, x1 - x0));
  xTicks.forEach((v, i) => {
    parts.push(`<line x1="${r(x(v))}" x2="${r(x(v))}" y1="${top}" y2="${top + plotH}" stroke="${COLORS.grid}"/>`);
    parts.push(xTickText(x(v), top + plotH + 16, xLabels[i] as string, width));
  });
  parts.push(`<rect x="${MARGIN.left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="${COLORS.axis}"/>`);
  parts.push(`<text x="${MARGIN.left + plotW / 2}" y="${height - 8}" text-anchor="middle" fill="${COLORS.text}">${escapeXml(input.xLabel)}</text>`);
  parts.push(`<text x="14" y="${top + plotH / 2}" text-anchor="middle" transform="rotate(-90 14 ${top + plotH / 2})" fill="${COLORS.text}">${escapeXml(input.yLabel)}</text>`);
  if (input.diagonal) parts.push(`<line class="diagonal" x1="${r(x(x0))}" y1="${r(y(x0))}" x2="${r(x(x1))}" y2="${r(y(x1))}" stroke="${COLORS.axis}" stroke-dasharray="4,3"/>`);
  input.series.forEach((s, i) => {
    for (const [px, py] of points[i] ?? []) parts.push(`<circle class="point" cx="${r(x(px))}" cy="${r(y(py))}" r="3" fill="${s.color}" fill-opacity="0.75"/>`);
  });
  drawLegend(parts, head);
  parts.push('</svg>');
  return parts.join('\n');
}
