/**
 * Drawings of a lineage DAG for people: a layered SVG (data flowing left to right) and Graphviz
 * DOT. Pure string building; the CLI writes the file (`retrace lineage trace --svg/--dot`,
 * `retrace impact --svg/--dot`).
 */
import { escapeXml } from './svg-chart.js';

export type DagTone = 'start' | 'step' | 'object';

export interface DagNode {
  id: string;
  /** Shown in the node, one line each (cut to fit); the whole id is the node's tooltip. */
  lines: string[];
  tone: DagTone;
}

export interface DagDrawing {
  title: string;
  nodes: readonly DagNode[];
  /** In the direction data flows. Edges naming a node not in `nodes` are left out. */
  edges: readonly { from: string; to: string }[];
}

const W = 200;
const H = 44;
const GAP_X = 70;
const GAP_Y = 14;
const TOP = 44;
const LEFT = 20;
const CHARS = 31;
/** Rounds of barycentre ordering (one down and one up the layers each). */
const ORDER_ROUNDS = 4;

const STYLE: Record<DagTone, { fill: string; stroke: string; rx: number; dot: string }> = {
  start: { fill: '#fde2e2', stroke: '#c66666', rx: H / 2, dot: 'shape=box, style="rounded,filled", fillcolor="#fde2e2"' },
  step: { fill: '#eef3fb', stroke: '#5b7db8', rx: 4, dot: 'shape=box, style=filled, fillcolor="#eef3fb"' },
  object: { fill: '#f1f7ec', stroke: '#6a9a4a', rx: H / 2, dot: 'shape=box, style="rounded,filled", fillcolor="#f1f7ec"' },
};

/** Where dagToSvg puts each node: its layers, left to right, and each box's top-left corner. */
export interface DagLayout {
  layers: string[][];
  pos: Map<string, { x: number; y: number }>;
  /** The edges drawn: those between two known nodes, self-loops left out. */
  edges: { from: string; to: string }[];
  width: number;
  height: number;
}

/**
 * Longest-path layers (every edge goes at least one layer right), ordered within each layer by
 * the mean position of their neighbours to cut crossings, each layer centred vertically.
 */
export function dagLayout(d: DagDrawing): DagLayout {
  const known = new Set(d.nodes.map((n) => n.id));
  const edges = d.edges.filter((e) => known.has(e.from) && known.has(e.to) && e.from !== e.to);
  const succ = new Map<string, string[]>();
  const pred = new Map<string, string[]>();
  const indegree = new Map<string, number>();
  for (const n of d.nodes) indegree.set(n.id, 0);
  const add = (m: Map<string, string[]>, k: string, v: string): void => {
    const list = m.get(k);
    if (list) list.push(v);
    else m.set(k, [v]);
  };
  for (const e of edges) {
    add(succ, e.from, e.to);
    add(pred, e.to, e.from);
    indegree.set(e.to, (indegree.get(e.to) ?? 0) + 1);
  }
  const layerOf = new Map<string, number>();
  const ready = d.nodes.filter((n) => indegree.get(n.id) === 0).map((n) => n.id);
  for (const id of ready) layerOf.set(id, 0);
  for (let i = 0; i < ready.length; i++) {
    const id = ready[i] as string;
    for (const next of succ.get(id) ?? []) {
      layerOf.set(next, Math.max(layerOf.get(next) ?? 0, (layerOf.get(id) ?? 0) + 1));
      const left = (indegree.get(next) ?? 0) - 1;
      indegree.set(next, left);
      if (left === 0) ready.push(next);
    }
  }
  // Lineage is acyclic; should a drawing not be, what is left of a cycle goes after the rest.
  // Loops, not Math.max(...xs): a big closure would overflow the argument stack.
  let last = 0;
  for (const l of layerOf.values()) last = Math.max(last, l);
  for (const n of d.nodes) if (!layerOf.has(n.id)) layerOf.set(n.id, last + 1);
  // An input that only a later step reads (a reference dataset) goes right before that step
  // instead of with the first inputs, so its edges stay short.
  for (const n of d.nodes) {
    const next = succ.get(n.id);
    if (pred.has(n.id) || !next) continue;
    let first = Number.POSITIVE_INFINITY;
    for (const id of next) first = Math.min(first, layerOf.get(id) as number);
    layerOf.set(n.id, Math.max(layerOf.get(n.id) as number, first - 1));
  }

  const layers: string[][] = [];
  for (const n of d.nodes) (layers[layerOf.get(n.id) as number] ??= []).push(n.id);
  for (let i = 0; i < layers.length; i++) layers[i] ??= [];
  const index = new Map<string, number>();
  const renumber = (layer: string[]): void => layer.forEach((id, i) => index.set(id, i));
  layers.forEach(renumber);
  const reorder = (layer: string[], neighbours: Map<string, string[]>): void => {
    const key = new Map(layer.map((id, i) => {
      const ns = (neighbours.get(id) ?? []).map((n) => index.get(n) as number);
      return [id, ns.length === 0 ? i : ns.reduce((a, b) => a + b, 0) / ns.length] as const;
    }));
    layer.sort((a, b) => (key.get(a) as number) - (key.get(b) as number));
    renumber(layer);
  };
  for (let round = 0; round < ORDER_ROUNDS; round++) {
    for (let l = 1; l < layers.length; l++) reorder(layers[l] as string[], pred);
    for (let l = layers.length - 2; l >= 0; l--) reorder(layers[l] as string[], succ);
  }

  const rows = layers.reduce((m, l) => Math.max(m, l.length), 1);
  const pos = new Map<string, { x: number; y: number }>();
  layers.forEach((layer, l) => {
    const offset = ((rows - layer.length) * (H + GAP_Y)) / 2;
    layer.forEach((id, i) => pos.set(id, { x: LEFT + l * (W + GAP_X), y: TOP + offset + i * (H + GAP_Y) }));
  });
  return { layers, pos, edges, width: 2 * LEFT + layers.length * (W + GAP_X) - GAP_X, height: TOP + rows * (H + GAP_Y) + 10 };
}

/** Characters a cut line keeps from its start; the rest of the room goes to its end. */
const HEAD = 11;

/**
 * A line cut to fit its box, in the middle: what tells nodes apart is mostly at the end (the key of
 * record:orders/raw:o17, the task number of fertilizer_increase_cycles_ID0000003), and a cut end
 * drew a column of identical "fertilizer_increase_cycles_ID0…" boxes.
 */
function cut(text: string): string {
  return text.length <= CHARS ? text : `${text.slice(0, HEAD)}…${text.slice(text.length - (CHARS - 1 - HEAD))}`;
}

/** The drawing as a standalone SVG document. */
export function dagToSvg(d: DagDrawing): string {
  const { pos, edges, width: graphWidth, height } = dagLayout(d);
  // About 7 pixels a character at the title's 13 px.
  const width = Math.max(graphWidth, 2 * LEFT + Math.ceil(d.title.length * 7));
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`,
    // Opaque white, as the charts are: transparent, it showed black text on black in image
    // viewers and dark-mode pages.
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`,
    '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#888888" /></marker></defs>',
    `<text x="${LEFT}" y="24" font-size="13">${escapeXml(d.title)}</text>`,
  ];
  for (const e of edges) {
    const a = pos.get(e.from) as { x: number; y: number };
    const b = pos.get(e.to) as { x: number; y: number };
    const x1 = a.x + W;
    const y1 = a.y + H / 2;
    const x2 = b.x;
    const y2 = b.y + H / 2;
    const mid = (x1 + x2) / 2;
    out.push(`<path d="M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}" fill="none" stroke="#888888" marker-end="url(#arrow)" />`);
  }
  for (const n of d.nodes) {
    const p = pos.get(n.id) as { x: number; y: number };
    const s = STYLE[n.tone];
    const lines = n.lines.slice(0, 2);
    out.push(
      `<g><title>${escapeXml(n.id)}</title>`,
      `<rect x="${p.x}" y="${p.y}" width="${W}" height="${H}" rx="${s.rx}" fill="${s.fill}" stroke="${s.stroke}" />`,
      ...lines.map((line, i) => `<text x="${p.x + (s.rx > 4 ? 14 : 8)}" y="${p.y + (lines.length === 1 ? 26 : 18 + 15 * i)}"${i > 0 ? ' fill="#555555"' : ''}>${escapeXml(cut(line))}</text>`),
      '</g>',
    );
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** The drawing in Graphviz DOT (`dot -Tsvg`), left to right. */
export function dagToDot(d: DagDrawing, name = 'lineage'): string {
  const q = (s: string): string => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\r?\n/g, '\\n')}"`;
  const known = new Set(d.nodes.map((n) => n.id));
  const lines = [`digraph ${q(name)} {`, `  label=${q(d.title)}; labelloc=t; rankdir=LR;`, '  node [fontname="Helvetica", fontsize=10];'];
  for (const n of d.nodes) lines.push(`  ${q(n.id)} [label=${q(n.lines.join('\n'))}, ${STYLE[n.tone].dot}];`);
  for (const e of d.edges) if (known.has(e.from) && known.has(e.to)) lines.push(`  ${q(e.from)} -> ${q(e.to)};`);
  lines.push('}');
  return `${lines.join('\n')}\n`;
}
