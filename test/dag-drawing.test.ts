import { describe, expect, it } from 'vitest';
import { dagLayout, dagToDot, dagToSvg, type DagDrawing, type DagNode } from '../common/dag-drawing.js';

const node = (id: string, tone: DagNode['tone'] = 'object', lines: string[] = [id]): DagNode => ({ id, lines, tone });

/** Left edge of each node's box, by id. */
function columns(svg: string): Map<string, number> {
  return new Map([...svg.matchAll(/<g><title>([^<]+)<\/title>\n<rect x="(\d+)"/g)].map((m) => [m[1] as string, Number(m[2])]));
}

describe('DAG drawings', () => {
  const chain: DagDrawing = {
    title: 'chain',
    nodes: [node('a', 'start'), node('s1', 'step'), node('b'), node('s2', 'step'), node('c'), node('ref')],
    edges: [
      { from: 'a', to: 's1' },
      { from: 's1', to: 'b' },
      { from: 'b', to: 's2' },
      { from: 'ref', to: 's2' },
      { from: 's2', to: 'c' },
    ],
  };

  it('puts every node right of what feeds it, and an input only a later step reads just before that step', () => {
    const x = columns(dagToSvg(chain));
    expect(x.size).toBe(6);
    for (const e of chain.edges) expect(x.get(e.to) as number).toBeGreaterThan(x.get(e.from) as number);
    expect(x.get('ref')).toBe(x.get('b'));
    expect(x.get('a')).toBeLessThan(x.get('ref') as number);
  });

  it('draws one arrow per edge and leaves out edges to nodes it does not have', () => {
    const d: DagDrawing = { ...chain, edges: [...chain.edges, { from: 'c', to: 'elsewhere' }, { from: 'a', to: 'a' }] };
    expect(dagToSvg(d).match(/marker-end="url\(#arrow\)"/g)).toHaveLength(5);
    const dot = dagToDot(d);
    expect(dot.match(/ -> /g)).toHaveLength(5);
    expect(dot).not.toContain('"elsewhere"');
  });

  it('draws the same edges in DOT as in SVG: no self-loop, each edge once', () => {
    // --dot drew "a" -> "a" as a loop that --svg left out, so the two drawings of one trace disagreed.
    const d: DagDrawing = { ...chain, edges: [{ from: 'a', to: 'a' }, ...chain.edges, { from: 's1', to: 's1' }, { from: 'a', to: 's1' }] };
    const dotEdges = [...dagToDot(d).matchAll(/^ {2}"([^"]+)" -> "([^"]+)";$/gm)].map((m) => `${m[1]}->${m[2]}`);
    expect(dotEdges).toEqual(chain.edges.map((e) => `${e.from}->${e.to}`));
    expect(dagLayout(d).edges.map((e) => `${e.from}->${e.to}`)).toEqual(dotEdges);
    expect(dagToSvg(d).match(/marker-end="url\(#arrow\)"/g)).toHaveLength(dotEdges.length);
  });

  it('escapes ids and labels for SVG and DOT, and cuts long lines', () => {
    const d: DagDrawing = {
      title: 'x < y & "z"',
      nodes: [node('object:<a&"b>', 'start', ['<a&"b>', 'x'.repeat(80)]), node('step:q\\r', 'step', ['line one\nline two'])],
      edges: [{ from: 'object:<a&"b>', to: 'step:q\\r' }],
    };
    const svg = dagToSvg(d);
    expect(svg).toContain('<title>object:&lt;a&amp;&quot;b&gt;</title>');
    expect(svg).toContain('>x &lt; y &amp; &quot;z&quot;</text>');
    expect(svg).toMatch(/>x+…x+<\/text>/);
    expect(/>(x+…x+)<\/text>/.exec(svg)?.[1]).toHaveLength(31);
    expect(svg).not.toMatch(/<title>[^<]*[&][^a-z#]/);
    const dot = dagToDot(d, 'g');
    expect(dot).toContain('digraph "g" {');
    expect(dot).toContain('"object:<a&\\"b>" [label="<a&\\"b>\\n');
    expect(dot).toContain('"step:q\\\\r" [label="line one\\nline two"');
    expect(dot).toContain('"object:<a&\\"b>" -> "step:q\\\\r";');
  });

  it('draws an edge back to the left under the boxes, where it can be seen', () => {
    // At object level a step that reads and writes one object (rollup reads orders/agg and
    // writes a new version of it) closes a cycle. Its edge back to the left ran along the forward
    // edges' line, hidden under the boxes and their arrowheads: --dot showed it, --svg did not.
    const d: DagDrawing = {
      title: 'object level',
      nodes: [node('raw', 'start'), node('enrich', 'step'), node('agg'), node('rollup', 'step')],
      edges: [{ from: 'raw', to: 'enrich' }, { from: 'enrich', to: 'agg' }, { from: 'agg', to: 'rollup' }, { from: 'rollup', to: 'agg' }],
    };
    const svg = dagToSvg(d);
    const { pos } = dagLayout(d);
    const agg = pos.get('agg') as { x: number; y: number };
    const rollup = pos.get('rollup') as { x: number; y: number };
    expect(rollup.x).toBeGreaterThan(agg.x);
    const paths = [...svg.matchAll(/<path [^>]*d="M ([\d.]+) ([\d.]+) C [\d.]+ ([\d.]+), [\d.]+ ([\d.]+), ([\d.]+) ([\d.]+)"[^>]*marker-end/g)].map((m) => m.slice(1).map(Number));
    expect(paths).toHaveLength(4);
    const back = paths.filter(([x1, , , , x2]) => (x2 as number) < (x1 as number));
    expect(back).toHaveLength(1);
    const [x1, y1, c1, c2, x2, y2] = back[0] as number[];
    // From rollup's box to agg's box, through the space below both (not along the boxes' middle).
    expect(x1).toBeGreaterThan(rollup.x);
    expect(x1).toBeLessThan(rollup.x + 200);
    expect(x2).toBeGreaterThan(agg.x);
    expect(x2).toBeLessThan(agg.x + 200);
    expect(y1).toBe(rollup.y + 44);
    expect(y2).toBe(agg.y + 44);
    expect(Math.min(c1 as number, c2 as number)).toBeGreaterThan(agg.y + 44 + 20);
    // And inside the image.
    const height = Number(/<svg [^>]*height="(\d+)"/.exec(svg)?.[1]);
    expect(0.25 * (y1 as number) + 0.75 * (c1 as number)).toBeLessThanOrEqual(height);
  });

  it('draws a cycle instead of looping forever, and a graph with no edges', () => {
    const cyclic = dagToSvg({ title: 'c', nodes: [node('p'), node('q'), node('r')], edges: [{ from: 'p', to: 'q' }, { from: 'q', to: 'r' }, { from: 'r', to: 'q' }] });
    expect(columns(cyclic).size).toBe(3);
    const lone = dagToSvg({ title: 'one', nodes: [node('only', 'start')], edges: [] });
    expect(columns(lone).get('only')).toBe(20);
  });
});

describe('DAG drawings of big closures', () => {
  it('lays out 150,000 nodes, one input feeding them all, without overflowing the stack', () => {
    const n = 150_000;
    const nodes: DagNode[] = [node('ref')];
    const edges: { from: string; to: string }[] = [];
    for (let i = 0; i < n; i++) {
      nodes.push(node(`s${i}`, 'step'));
      edges.push({ from: 'ref', to: `s${i}` });
    }
    const { layers, pos } = dagLayout({ title: 'fan-out', nodes, edges });
    expect(layers.map((l) => l.length)).toEqual([1, n]);
    expect(pos.get('ref')?.x).toBe(20);
    expect(pos.get(`s${n - 1}`)?.x).toBe(290);
  });
});

describe('DAG drawing background', () => {
  it('is opaque white under everything, as the charts are', () => {
    // Transparent, the black labels and title were unreadable on a dark page or image viewer.
    const svg = dagToSvg({ title: 't', nodes: [node('a', 'start'), node('b')], edges: [{ from: 'a', to: 'b' }] });
    const size = /<svg [^>]*width="(\d+)" height="(\d+)"/.exec(svg);
    const first = svg.split('\n')[1];
    expect(first).toBe(`<rect x="0" y="0" width="${size?.[1]}" height="${size?.[2]}" fill="#ffffff"/>`);
  });
});

describe('DAG node labels', () => {
  it('keep the end of a long name, where names that share a start differ', () => {
    // Cut at the end, 16 tasks read "fertilizer_increase_cycles_ID0…" alike (a Pegasus cycles
    // workflow); lineage ids differ at the end as well (record:orders/raw:o17).
    const ids = ['fertilizer_increase_cycles_ID0000003', 'fertilizer_increase_cycles_ID0000007', 'record:orders/raw-with-a-long-name:o17'];
    const svg = dagToSvg({ title: 't', nodes: ids.map((id) => node(id, 'step')), edges: [] });
    const shown = [...svg.matchAll(/<\/rect>|<rect [^>]*\/>\n<text [^>]*>([^<]*)<\/text>/g)].map((m) => m[1]).filter(Boolean);
    expect(shown).toHaveLength(3);
    expect(new Set(shown).size).toBe(3);
    expect(shown).toContain('fertilizer_…se_cycles_ID0000003');
    for (const s of shown) expect(s?.length).toBeLessThanOrEqual(31);
    expect(shown.some((s) => s?.endsWith(':o17'))).toBe(true);
  });
});
