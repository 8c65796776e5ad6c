import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../common/errors.js';
import { renderForecastSvg, renderScatterSvg } from '../common/svg-chart.js';

describe('scatter chart', () => {
  it('draws each finite point once, in its series colour, and y = x on shared axes', () => {
    const svg = renderScatterSvg({
      title: 'due <vs> dispatched',
      xLabel: 'due',
      yLabel: 'dispatched',
      diagonal: true,
      series: [
        { name: 'matched', color: '#2ca02c', x: [0, 100, 200, Number.NaN], y: [1, 102, 199, 5] },
        { name: 'failed', color: '#d62728', x: [300], y: [900] },
      ],
    });
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"[\s\S]*<\/svg>$/);
    expect(svg).toContain('>due &lt;vs&gt; dispatched</text>');
    expect(svg.match(/<circle class="point"[^>]*fill="#2ca02c"/g)).toHaveLength(3);
    expect(svg.match(/<circle class="point"[^>]*fill="#d62728"/g)).toHaveLength(1);
    expect(svg).toContain('>matched (3)</text>');
    // Shared axes: the diagonal runs corner to corner of the plot.
    const d = /<line class="diagonal" x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)"/.exec(svg);
    expect(d?.slice(1).map(Number)).toEqual([64, 316, 784, 58]);
    // The point (300, 900) sits above the diagonal: a lower y on screen than y = x at x = 300.
    const late = /<circle class="point" cx="([\d.]+)" cy="([\d.]+)" r="3" fill="#d62728"/.exec(svg);
    const [cx, cy] = [Number(late?.[1]), Number(late?.[2])];
    expect(cy).toBeLessThan(316 - ((cx - 64) / 720) * 258);
  });

  it('says so when there is nothing to draw, and refuses a series whose x and y differ in length', () => {
    expect(renderScatterSvg({ title: 't', xLabel: 'x', yLabel: 'y', series: [{ name: 's', color: '#000', x: [], y: [] }] })).toContain('>no data</text>');
    expect(() => renderScatterSvg({ title: 't', xLabel: 'x', yLabel: 'y', series: [{ name: 's', color: '#000', x: [1, 2], y: [1] }] })).toThrow(InvalidArgumentError);
  });
});

describe('value axis', () => {
  it('ends with a handful of ticks when the values differ below their float resolution', () => {
    // 1e17 and 1e17 + 16: a tick step of 5 is below the spacing of doubles there (16), so adding it
    // to the tick left it where it was; the loop ran until the process died (invalid array size).
    const t0 = Date.UTC(2026, 0, 1);
    const svg = renderForecastSvg({ title: 'flat', history: { t: [t0, t0 + 60_000], v: [1e17, 1e17 + 16] } });
    const ticks = svg.match(/<text x="58" [^>]*text-anchor="end"/g) ?? [];
    expect(ticks.length).toBeGreaterThan(0);
    expect(ticks.length).toBeLessThanOrEqual(11);
    expect(renderScatterSvg({ title: 's', xLabel: 'x', yLabel: 'y', series: [{ name: 'a', color: '#000', x: [1e17, 1e17 + 16], y: [1, 2] }] })).toContain('class="point"');
  });
});

describe('value axis ticks', () => {
  const yLabels = (svg: string): string[] => [...svg.matchAll(/<text x="58" [^>]*text-anchor="end"[^>]*>([^<]*)</g)].map((m) => m[1] as string);
  const T0 = Date.UTC(2026, 0, 1);

  it('are 4 to 8 nice ticks (1, 2, 5 x 10^k) whatever the range, tiny, flat or huge', () => {
    // A replay pacing chart whose times ran 0 to 1 s (1.05 wide once padded) got the step 0.5:
    // two value ticks on the whole axis.
    const ranges: [number, number][] = [[0, 1], [0, 1000], [0.1, 2.9], [0, 14.9], [3, 3], [0, 0], [-7, 7], [1, 1 + 1e-9], [2_147_000_000, 2_151_000_000], [0, 1e12], [0.001, 0.0013], [-5e-3, -4e-3], [42, 42.5]];
    for (const [a, b] of ranges) {
      for (const svg of [
        renderForecastSvg({ title: 'r', history: { t: [T0, T0 + 60_000], v: [a, b] } }),
        renderScatterSvg({ title: 'r', xLabel: 'x', yLabel: 'y', series: [{ name: 's', color: '#000', x: [0, 1], y: [a, b] }] }),
      ]) {
        const labels = yLabels(svg);
        expect(labels.length, `${a}..${b}: ${labels.join(' ')}`).toBeGreaterThanOrEqual(4);
        expect(labels.length, `${a}..${b}: ${labels.join(' ')}`).toBeLessThanOrEqual(8);
        expect(new Set(labels).size, `${a}..${b}`).toBe(labels.length);
      }
    }
    // The pacing case itself: dispatches 0 to 1000 ms against due times 0 to 1000 ms.
    const pacing = renderScatterSvg({ title: 'p', xLabel: 'due', yLabel: 'dispatched', diagonal: true, series: [{ name: 'm', color: '#000', x: [0, 1], y: [0, 1] }] });
    expect(yLabels(pacing)).toEqual(['0', '0.2', '0.4', '0.6', '0.8', '1']);
  });
});

describe('forecast chart', () => {
  const T0 = Date.UTC(2026, 0, 1);

  it('shows a lone point: the only history point, one between gaps, a forecast of one step', () => {
    // A path of one moveto draws nothing: one history point (an agent that reported once) or a
    // one-step forecast left an empty plot under a legend naming them.
    const one = renderForecastSvg({
      title: 'one',
      history: { t: [T0], v: [5] },
      forecast: { t: [T0 + 60_000], mean: [6], lower: [4], upper: [8], coverage: 0.8 },
    });
    expect(one.match(/<circle class="history"/g)).toHaveLength(1);
    expect(one.match(/<circle class="forecast"/g)).toHaveLength(1);
    const bar = /<line class="interval" x1="([\d.]+)" x2="([\d.]+)" y1="([\d.]+)" y2="([\d.]+)"/.exec(one);
    expect(Number(bar?.[4])).toBeGreaterThan(Number(bar?.[3]));
    const gaps = renderForecastSvg({ title: 'gaps', history: { t: [T0, T0 + 1000, T0 + 2000, T0 + 3000, T0 + 4000], v: [1, 2, Number.NaN, 3, Number.NaN] } });
    expect(gaps).toMatch(/<path class="history" d="M[\d.]+,[\d.]+L[\d.]+,[\d.]+"/);
    expect(gaps.match(/<circle class="history"/g)).toHaveLength(1);
  });
});

describe('long histories', () => {
  it('are thinned per pixel column, keeping each column\'s lowest and highest point; short ones are drawn exactly', () => {
    // 25,000 points drew 25,000 path vertices on a 720-pixel plot.
    const T0 = Date.UTC(2026, 0, 1);
    const n = 25_000;
    const t = Array.from({ length: n }, (_, i) => T0 + i * 10_000);
    const v = t.map((_, i) => 20 + 5 * Math.sin(i / 300) + (i % 7));
    v[12_345] = 400;
    v[20_001] = -50;
    const svg = renderForecastSvg({ title: 'cpu', history: { t, v } });
    const d = /<path class="history" d="([^"]*)"/.exec(svg)?.[1] ?? '';
    const pts = [...d.matchAll(/[ML]([\d.-]+),([\d.-]+)/g)].map((m) => [Number(m[1]), Number(m[2])] as const);
    expect(pts.length).toBeGreaterThan(720);
    expect(pts.length).toBeLessThanOrEqual(4 * 720);
    // The spike and the dip are the highest and lowest vertices: the plot's top and bottom padding.
    const ys = pts.map(([, py]) => py);
    const frame = /<rect x="64" y="([\d.]+)" width="720" height="([\d.]+)" fill="none"/.exec(svg);
    const [top, h] = [Number(frame?.[1]), Number(frame?.[2])];
    expect(Math.min(...ys)).toBeCloseTo(top + h * (0.05 / 1.1), 0);
    expect(Math.max(...ys)).toBeCloseTo(top + h * (1 - 0.05 / 1.1), 0);
    // x stays in time order.
    for (let k = 1; k < pts.length; k++) expect((pts[k] as readonly number[])[0]).toBeGreaterThanOrEqual((pts[k - 1] as readonly number[])[0] as number);
    const few = renderForecastSvg({ title: 'cpu', history: { t: t.slice(0, 1000), v: v.slice(0, 1000) } });
    expect((/<path class="history" d="([^"]*)"/.exec(few)?.[1] ?? '').match(/[ML]/g)).toHaveLength(1000);
  });
});

describe('missing data', () => {
  it('breaks the history line where no point came for more than 5 times the usual spacing', () => {
    // A trace missing 30 hours between 5-minute samples (bitbrains rnd VM 1, July 2013) drew a
    // straight line across the hours nobody measured.
    const T0 = Date.UTC(2013, 6, 16);
    const t = [...Array.from({ length: 50 }, (_, i) => T0 + i * 300_000), ...Array.from({ length: 50 }, (_, i) => T0 + 30 * 3_600_000 + i * 300_000)];
    const svg = renderForecastSvg({ title: 'cpu', history: { t, v: t.map((_, i) => 10 + (i % 3)) } });
    const d = /<path class="history" d="([^"]*)"/.exec(svg)?.[1] ?? '';
    expect(d.match(/M/g)).toHaveLength(2);
    expect(d.match(/[ML]/g)).toHaveLength(100);
    // Irregular but unbroken reporting stays one line.
    const jitter = t.slice(0, 50).map((x, i) => x + (i % 2) * 200_000);
    expect((/<path class="history" d="([^"]*)"/.exec(renderForecastSvg({ title: 'cpu', history: { t: jitter, v: jitter.map(() => 1) } }))?.[1] ?? '').match(/M/g)).toHaveLength(1);
  });
});

describe('tick labels', () => {
  it('differ where the ticks differ: memory moving by a few MB around 2.15 GB', () => {
    // Three significant digits labelled every tick between 2.147G and 2.151G "2.15G".
    const T0 = Date.UTC(2026, 0, 1);
    const t = Array.from({ length: 30 }, (_, i) => T0 + i * 10_000);
    const svg = renderForecastSvg({ title: 'memory', history: { t, v: t.map((_, i) => 2_147_000_000 + (i % 5) * 1_000_000) } });
    const labels = [...svg.matchAll(/<text x="58" [^>]*text-anchor="end"[^>]*>([^<]*)</g)].map((m) => m[1]);
    expect(labels.length).toBeGreaterThan(2);
    expect(new Set(labels).size).toBe(labels.length);
    expect(labels).toContain('2.15G');
    expect(labels).toContain('2.149G');
    const scatter = renderScatterSvg({ title: 's', xLabel: 'x', yLabel: 'y', series: [{ name: 'a', color: '#000', x: [1000.1, 1000.2, 1000.3], y: [0, 500, 1000] }] });
    const xs = [...scatter.matchAll(/text-anchor="middle" fill="#222222">([^<]*)</g)].map((m) => m[1]).filter((s) => /^[\d.]+k?$/.test(s as string));
    expect(new Set(xs).size).toBe(xs.length);
    expect(scatter).toContain('>400<');
  });
});

describe('axis units', () => {
  it('are one for the whole axis, four-digit values plain', () => {
    // A pacing chart to 1 s labelled its axes "0, 200, 400, 600, 800, 1k": 1k beside 800.
    const svg = renderScatterSvg({ title: 'p', xLabel: 'due', yLabel: 'dispatched', diagonal: true, series: [{ name: 'm', color: '#000', x: [0, 1000], y: [0, 1000] }] });
    const y = [...svg.matchAll(/<text x="58" [^>]*text-anchor="end"[^>]*>([^<]*)</g)].map((m) => m[1]);
    expect(y).toEqual(['0', '200', '400', '600', '800', '1000']);
    const wide = renderScatterSvg({ title: 'p', xLabel: 'x', yLabel: 'y', series: [{ name: 'm', color: '#000', x: [0, 1], y: [0, 1_500_000] }] });
    const w = [...wide.matchAll(/<text x="58" [^>]*text-anchor="end"[^>]*>([^<]*)</g)].map((m) => m[1] as string);
    expect(w.filter((l) => l !== '0').every((l) => l.endsWith('M')), w.join(' ')).toBe(true);
  });
});

describe('x-axis labels', () => {
  it('stay inside the image at the plot\'s right end', () => {
    // Centred on a tick at the right edge of the plot, "00:02:00" ran 8 pixels past the image.
    const T0 = Date.UTC(2026, 0, 1);
    const labels = (svg: string): { x: number; anchor: string; text: string }[] =>
      [...svg.matchAll(/<text x="([\d.]+)" y="332" text-anchor="(\w+)" fill="#222222">([^<]*)</g)].map((m) => ({ x: Number(m[1]), anchor: m[2] as string, text: m[3] as string }));
    const chart = renderForecastSvg({ title: 'two minutes', history: { t: [T0, T0 + 60_000, T0 + 120_000], v: [1, 2, 3] } });
    const scatter = renderScatterSvg({ title: 's', xLabel: 'x', yLabel: 'y', series: [{ name: 'a', color: '#000', x: [0.001, 12345.678], y: [1, 2] }] });
    for (const svg of [chart, scatter]) {
      const ls = labels(svg);
      expect(ls.length).toBeGreaterThan(2);
      for (const l of ls) {
        const w = l.text.length * 6.5;
        const [left, right] = l.anchor === 'end' ? [l.x - w, l.x] : l.anchor === 'start' ? [l.x, l.x + w] : [l.x - w / 2, l.x + w / 2];
        expect(left, l.text).toBeGreaterThanOrEqual(0);
        expect(right, l.text).toBeLessThanOrEqual(800);
      }
    }
    expect(labels(chart).at(-1)).toMatchObject({ text: '00:02:00', anchor: 'end' });
  });
});

describe('time axis years', () => {
  const labels = (svg: string): { x: number; anchor: string; text: string }[] =>
    [...svg.matchAll(/<text x="([\d.]+)" y="\d+" text-anchor="(\w+)" fill="#222222">([^<]*)</g)]
      .map((m) => ({ x: Number(m[1]), anchor: m[2] as string, text: m[3] as string }))
      .filter((l) => /^(\d{4}-)?\d\d-\d\d( \d\d:\d\d)?$|^\d\d:\d\d$/.test(l.text));
  const chart = (from: number, to: number, width?: number): string => renderForecastSvg({ title: 'y', width, history: { t: [from, (from + to) / 2, to], v: [1, 2, 3] } });
  const noOverlap = (ls: { x: number; anchor: string; text: string }[], width: number): void => {
    const boxes = ls.map((l) => {
      const w = l.text.length * 6.5;
      return l.anchor === 'end' ? [l.x - w, l.x] : l.anchor === 'start' ? [l.x, l.x + w] : [l.x - w / 2, l.x + w / 2];
    });
    boxes.forEach(([a, b], i) => {
      expect(a, ls[i]?.text).toBeGreaterThanOrEqual(0);
      expect(b, ls[i]?.text).toBeLessThanOrEqual(width);
      if (i > 0) expect(a, `${ls[i - 1]?.text} / ${ls[i]?.text}`).toBeGreaterThan((boxes[i - 1] as number[])[1] as number);
    });
  };

  it('show the year on the first tick and where it changes when the axis spans months or a new year', () => {
    // Five months from October showed "10-01 ... 02-28": no year anywhere, and January after December.
    const months = labels(chart(Date.UTC(2025, 9, 1), Date.UTC(2026, 2, 1)));
    expect(months[0]?.text).toMatch(/^2025-/);
    const change = months.findIndex((l) => l.text.startsWith('2026-'));
    expect(change).toBeGreaterThan(0);
    expect(months.filter((l) => /^\d{4}-/.test(l.text))).toHaveLength(2);
    expect(months[change]?.text).toMatch(/^2026-01-|^2026-02-/);
    noOverlap(months, 800);
    // Three months in one year: the year once, on the first tick.
    const spring = labels(chart(Date.UTC(2026, 1, 1), Date.UTC(2026, 4, 1)));
    expect(spring[0]?.text).toMatch(/^2026-\d\d-\d\d$/);
    expect(spring.slice(1).every((l) => /^\d\d-\d\d$/.test(l.text))).toBe(true);
    // Two days over a new year, ticks within the days: the year on the first tick and at 01-01.
    const newYear = labels(chart(Date.UTC(2025, 11, 31, 2), Date.UTC(2026, 0, 2, 2)));
    expect(newYear[0]?.text).toMatch(/^2025-12-31 \d\d:\d\d$/);
    expect(newYear.some((l) => l.text === '2026-01-01 00:00')).toBe(true);
    noOverlap(newYear, 800);
    // Within a week of one year, nothing changes: no year.
    expect(labels(chart(Date.UTC(2026, 5, 1), Date.UTC(2026, 5, 3))).every((l) => !/^\d{4}-/.test(l.text))).toBe(true);
    // Years: a year on every tick that starts one.
    const years = labels(chart(Date.UTC(2022, 0, 1), Date.UTC(2026, 0, 1)));
    expect(years[0]?.text).toMatch(/^2022-/);
    expect(years.some((l) => l.text.startsWith('2025-'))).toBe(true);
    noOverlap(years, 800);
  });

  it('fall on month starts when the axis spans months, and on year starts over years', () => {
    // A fixed 30-day step put ticks on 10-09, 11-08, 12-08, 01-07.
    expect(labels(chart(Date.UTC(2025, 9, 1), Date.UTC(2026, 2, 1))).map((l) => l.text)).toEqual(['2025-10-01', '11-01', '12-01', '2026-01-01', '02-01', '03-01']);
    expect(labels(chart(Date.UTC(2022, 0, 1), Date.UTC(2026, 0, 1))).map((l) => l.text)).toEqual(['2022-01-01', '2023-01-01', '2024-01-01', '2025-01-01', '2026-01-01']);
    // In the chart's own time zone: month starts at UTC+02:00 midnight.
    const east = renderForecastSvg({ title: 'y', utcOffsetMinutes: 120, history: { t: [Date.UTC(2026, 1, 10), Date.UTC(2026, 6, 10)], v: [1, 2] } });
    expect(labels(east).map((l) => l.text)).toEqual(['2026-03-01', '04-01', '05-01', '06-01', '07-01']);
  });

  it('do not overlap on a narrow chart', () => {
    // 200 pixels wide, two days: 8 "MM-DD HH:MM" labels in 120 pixels of plot.
    const narrow = labels(chart(Date.UTC(2026, 5, 1), Date.UTC(2026, 5, 3), 200));
    expect(narrow.length).toBeGreaterThanOrEqual(1);
    noOverlap(narrow, 200);
  });
});

describe('legend', () => {
  it('sits a clear gap below the title, which wraps to fit the image', () => {
    // The legend's first row was at a fixed y = 32, 4 pixels under the 14 px title's baseline:
    // descenders and legend markers touched; a long title ran off both sides of the image.
    const geometry = (svg: string): { titleBottom: number; legendTop: number; plotTop: number; titles: string[] } => {
      const titles = [...svg.matchAll(/<text (?:class="title" )?x="[\d.]+" y="([\d.]+)"[^>]*font-size="14"[^>]*>([^<]*)</g)];
      const marks = [
        ...[...svg.matchAll(/<line (?:class="legend" )?x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)"[^>]*stroke-width="2"/g)].map((m) => Number(m[1]) - 1),
        ...[...svg.matchAll(/<rect (?:class="legend" )?x="[\d.]+" y="([\d.]+)" width="18" height="12"/g)].map((m) => Number(m[1])),
        ...[...svg.matchAll(/<circle (?:class="legend" )?cx="[\d.]+" cy="([\d.]+)" r="4"/g)].map((m) => Number(m[1]) - 4),
      ];
      const frame = /<rect x="64" y="([\d.]+)" width="720" height="[\d.]+" fill="none"/.exec(svg);
      return {
        // Descenders reach about a quarter of the font size below the baseline; the legend's 11 px
        // labels rise about 8 pixels above theirs, which sit 4 below the row's marker.
        titleBottom: Math.max(...titles.map((m) => Number(m[1]))) + 0.25 * 14,
        legendTop: Math.min(...marks, ...[...svg.matchAll(/<text x="[\d.]+" y="([\d.]+)" fill="#222222">/g)].map((m) => Number(m[1]) - 8)),
        plotTop: Number(frame?.[1]),
        titles: titles.map((m) => m[2] as string),
      };
    };
    const T0 = Date.UTC(2026, 0, 1);
    const long = `forecast of memory on node worker-17.eu-west.example.internal over the last 30 days, ${'with a long explanation '.repeat(6)}`;
    for (const title of ['cpu', long]) {
      for (const svg of [
        renderForecastSvg({ title, history: { t: [T0, T0 + 60_000], v: [1, 2] }, forecast: { t: [T0 + 120_000], mean: [3], lower: [2], upper: [4], coverage: 0.8 } }),
        renderScatterSvg({ title, xLabel: 'x', yLabel: 'y', series: Array.from({ length: 14 }, (_, i) => ({ name: `step-${i}-with-a-name`, color: '#000', x: [i], y: [i] })) }),
      ]) {
        const g = geometry(svg);
        expect(g.legendTop - g.titleBottom, title).toBeGreaterThanOrEqual(4);
        expect(g.plotTop - Math.max(...[...svg.matchAll(/<text x="[\d.]+" y="([\d.]+)" fill="#222222">/g)].map((m) => Number(m[1]) + 3)), title).toBeGreaterThanOrEqual(4);
        for (const line of g.titles) expect(line.length * 0.6 * 14, line).toBeLessThanOrEqual(800);
      }
    }
    const wrapped = geometry(renderForecastSvg({ title: long, history: { t: [T0], v: [1] } })).titles;
    expect(wrapped).toHaveLength(2);
    expect(wrapped[0]).toBe('forecast of memory on node worker-17.eu-west.example.internal over the last 30 days, with a');
    expect(wrapped[1]).toMatch(/…$/);
  });

  it('wraps onto more rows instead of running past the image, each series named once', () => {
    // Fourteen steps in a replay's CPU chart: one row ran off the right edge after the third.
    const series = Array.from({ length: 14 }, (_, i) => ({ name: `enrich-currency-step-${i}`, color: '#1f77b4', x: [i], y: [i] }));
    const svg = renderScatterSvg({ title: 'cpu', xLabel: 'x', yLabel: 'y', diagonal: true, series });
    const texts = [...svg.matchAll(/<text x="([\d.]+)" y="([\d.]+)" fill="#222222">([^<]*)</g)].map((m) => ({ x: Number(m[1]), y: Number(m[2]), text: m[3] as string }));
    for (let i = 0; i < 14; i++) {
      const t = texts.find((l) => l.text === `enrich-currency-step-${i} (1)`);
      expect(t, `step ${i}`).toBeDefined();
      expect((t?.x ?? 0) + (t?.text.length ?? 0) * 6.5).toBeLessThanOrEqual(800);
    }
    expect(new Set(texts.map((t) => t.y)).size).toBeGreaterThan(1);
    // Above the plot, not over its points: every legend row ends above the plot's frame.
    const frame = /<rect x="64" y="([\d.]+)" width="720" height="([\d.]+)" fill="none"/.exec(svg);
    const legendYs = texts.filter((t) => t.text.startsWith('enrich-currency-step-')).map((t) => t.y);
    expect(Math.max(...legendYs)).toBeLessThan(Number(frame?.[1]));
    for (const c of svg.matchAll(/<circle class="point" cx="[\d.]+" cy="([\d.]+)"/g)) expect(Number(c[1])).toBeGreaterThanOrEqual(Number(frame?.[1]));
    // A hundred series leave the plot room: the legend stops, saying how many it leaves out.
    const hundred = renderScatterSvg({ title: 'cpu', xLabel: 'x', yLabel: 'y', series: Array.from({ length: 100 }, (_, i) => ({ ...series[0], name: `step-${i}` })) as typeof series });
    const h = /<rect x="64" y="([\d.]+)" width="720" height="([\d.]+)" fill="none"/.exec(hundred);
    expect(Number(h?.[2])).toBeGreaterThanOrEqual(100);
    expect(hundred).toMatch(/>… \d+ more</);
    // A name longer than the plot is cut, not drawn past the edge.
    const long = renderScatterSvg({ title: 'cpu', xLabel: 'x', yLabel: 'y', series: [{ name: 's'.repeat(300), color: '#000', x: [1], y: [1] }] });
    const l = /<text x="([\d.]+)" y="[\d.]+" fill="#222222">(s+…)</.exec(long);
    expect(Number(l?.[1]) + (l?.[2]?.length ?? 999) * 6.5).toBeLessThanOrEqual(800);
  });
});
