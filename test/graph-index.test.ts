import { afterEach, describe, expect, it, vi } from 'vitest';
import { NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { createRng } from '../common/random.js';
import { AdjacencyLists } from '../coordinator/lineage/adjacency-lists.js';
import { GraphIndex, type WalkOptions } from '../coordinator/lineage/graph-index.js';

interface Edge {
  from: number;
  to: number;
  time: number;
}

/** Reference adjacency: a node's targets are its edges' in reverse append order (newest first), as the linked lists gave. */
function naiveTargets(edges: readonly Edge[], node: number, asOfMs: number): number[] {
  const out: number[] = [];
  for (let e = edges.length - 1; e >= 0; e--) {
    const edge = edges[e] as Edge;
    if (edge.from === node && edge.time <= asOfMs) out.push(edge.to);
  }
  return out;
}

/** Per node its edges newest first (the reference order), built once per check. */
function byNode(edges: readonly Edge[]): Map<number, Edge[]> {
  const m = new Map<number, Edge[]>();
  for (let e = edges.length - 1; e >= 0; e--) {
    const edge = edges[e] as Edge;
    let list = m.get(edge.from);
    if (!list) m.set(edge.from, (list = []));
    list.push(edge);
  }
  return m;
}

/** Reference breadth-first walk over edge lists (down, up), written without the index's arrays. */
function naiveWalk(down: Map<number, Edge[]>, up: Map<number, Edge[]>, starts: number[], o: WalkOptions): { nodes: number[]; distances: number[] } {
  const lists = o.mode === 'down' ? [down] : o.mode === 'up' ? [up] : [down, up];
  const seen = new Set<number>();
  const queue: [number, number][] = [];
  for (const s of starts) {
    if (seen.has(s)) continue;
    seen.add(s);
    queue.push([s, 0]);
  }
  const startCount = queue.length;
  for (let i = 0; i < queue.length; i++) {
    const [n, d] = queue[i] as [number, number];
    if (o.depth !== 0 && d >= o.depth) continue;
    for (const edges of lists) {
      for (const edge of edges.get(n) ?? []) {
        if (edge.time > o.asOfMs || seen.has(edge.to)) continue;
        seen.add(edge.to);
        queue.push([edge.to, d + 1]);
      }
    }
  }
  const rest = queue.slice(startCount);
  return { nodes: rest.map((q) => q[0]), distances: rest.map((q) => q[1]) };
}

function expectSameArray(got: number[], want: number[], what: string): void {
  if (got.length !== want.length || got.some((v, i) => v !== want[i])) expect(got, what).toEqual(want);
}

/** Walk results compared cheaply (thousands per test); expect's diff only on a mismatch. */
function expectSameWalk(got: { nodes: number[]; distances: number[] }, want: { nodes: number[]; distances: number[] }, what: string): void {
  const same = got.nodes.length === want.nodes.length && got.nodes.every((n, i) => n === want.nodes[i] && got.distances[i] === want.distances[i]);
  if (!same) expect(got, what).toEqual(want);
}

function walkOf(index: GraphIndex, starts: number[], o: WalkOptions): { nodes: number[]; distances: number[] } {
  const r = index.walk(starts, o);
  return { nodes: Array.from(r.nodes), distances: Array.from(r.distances) };
}

describe('AdjacencyLists (merged base + appended tail)', () => {
  it('answers every node exactly as a plain edge list does, across appends, merges and rollbacks', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const rnd = createRng(seed);
      const minTail = 1 + Math.floor(rnd() * 6);
      const lists = new AdjacencyLists(minTail);
      const edges: Edge[] = [];
      let nodes = 0;
      const marks: { edges: number; nodes: number }[] = [];
      let time = 0;
      for (let op = 0; op < 400; op++) {
        const r = rnd();
        if (r < 0.7) {
          if (nodes === 0 || rnd() < 0.2) nodes++;
          const from = Math.floor(rnd() * nodes);
          const to = Math.floor(rnd() * nodes);
          // Mostly later than the last edge, sometimes earlier (as-of walks must not assume order).
          time += rnd() < 0.85 ? Math.floor(rnd() * 3) : -Math.floor(rnd() * 5);
          lists.add(from, to, time);
          edges.push({ from, to, time });
        } else if (r < 0.8) {
          marks.push({ edges: edges.length, nodes });
        } else if (r < 0.9 && marks.length > 0) {
          const m = marks.splice(Math.floor(rnd() * marks.length))[0] as { edges: number; nodes: number };
          lists.rollback(m.edges, m.nodes);
          edges.length = m.edges;
          nodes = m.nodes;
        } else {
          lists.compact();
          expect(lists.tailEdges).toBe(0);
        }
        expect(lists.edgeCount).toBe(edges.length);
        const asOf = rnd() < 0.5 ? Number.POSITIVE_INFINITY : Math.floor(rnd() * (time + 2)) - 1;
        for (let n = 0; n < nodes; n++) {
          const what = `seed ${seed} op ${op} node ${n}`;
          expectSameArray(lists.targets(n, asOf, []), naiveTargets(edges, n, asOf), what);
          const pushed = new Int32Array(edges.length);
          const top = lists.pushTargets(n, pushed, 0);
          expectSameArray(Array.from(pushed.subarray(0, top)), naiveTargets(edges, n, Number.POSITIVE_INFINITY), `${what} pushTargets`);
        }
        const probe = edges[Math.floor(rnd() * edges.length)];
        if (probe) expect(lists.has(probe.from, probe.to)).toBe(true);
        if (nodes > 0) {
          const from = Math.floor(rnd() * nodes);
          const to = Math.floor(rnd() * nodes);
          expect(lists.has(from, to)).toBe(edges.some((e) => e.from === from && e.to === to));
        }
      }
    }
  });

  it('merges by itself once the tail reaches minTail and an eighth of the base', () => {
    const lists = new AdjacencyLists(4);
    for (let i = 0; i < 3; i++) lists.add(0, i + 1, i);
    expect(lists.tailEdges).toBe(3);
    lists.add(0, 9, 3);
    expect(lists.tailEdges).toBe(0);
    expect(lists.baseEdges).toBe(4);
    expect(lists.targets(0, Number.POSITIVE_INFINITY, [])).toEqual([9, 3, 2, 1]);
  });

  it('undoes appends that a merge already took into the base', () => {
    const lists = new AdjacencyLists(1 << 20);
    lists.add(0, 1, 1);
    lists.add(1, 2, 2);
    lists.add(0, 3, 3);
    lists.add(2, 0, 4);
    lists.compact();
    lists.add(0, 4, 5);
    lists.rollback(2, 3);
    expect(lists.edgeCount).toBe(2);
    expect(lists.tailEdges).toBe(0);
    expect(lists.targets(0, Number.POSITIVE_INFINITY, [])).toEqual([1]);
    expect(lists.targets(1, Number.POSITIVE_INFINITY, [])).toEqual([2]);
    expect(lists.targets(2, Number.POSITIVE_INFINITY, [])).toEqual([]);
    expect(lists.has(0, 3)).toBe(false);
    lists.add(0, 2, 6);
    expect(lists.targets(0, Number.POSITIVE_INFINITY, [])).toEqual([2, 1]);
  });
});

/** Step events over a random DAG, applied to indexes that merge often, never, or by the idle timer's absence. */
describe('GraphIndex walks over merged and appended edges', () => {
  const modes: WalkOptions['mode'][] = ['down', 'up', 'any'];

  it('walks as a plain breadth-first search over edge lists, with as-of times, depths and rollbacks', () => {
    for (let seed = 1; seed <= 12; seed++) {
      const rnd = createRng(seed * 7919);
      // Tiny tails: merges land between, and inside, steps (a rejected step then rolls back into the base).
      const merged = new GraphIndex({ minTail: 1 + Math.floor(rnd() * 4), idleMergeMs: 0 });
      const plain = new GraphIndex({ minTail: 1 << 30, idleMergeMs: 0 });
      const down: Edge[] = [];
      const up: Edge[] = [];
      const versions: string[] = [];
      const roots: string[] = [];
      const marks: { index: ReturnType<GraphIndex['mark']>; plain: ReturnType<GraphIndex['mark']>; edges: number; versions: number; roots: number }[] = [];
      let time = 1000;
      let steps = 0;
      const objects = 6;
      const addVersion = (): void => {
        const key = `version:o${Math.floor(rnd() * objects)}@sha256:${versions.length}`;
        merged.ensureNode(key, NodeKind.NODE_KIND_OBJECT_VERSION, time);
        plain.ensureNode(key, NodeKind.NODE_KIND_OBJECT_VERSION, time);
        versions.push(key);
        roots.push(key);
      };
      for (let i = 0; i < 4; i++) addVersion();
      for (let op = 0; op < 120; op++) {
        const r = rnd();
        time += rnd() < 0.8 ? 1 + Math.floor(rnd() * 3) : -Math.floor(rnd() * 10);
        if (r < 0.1) {
          addVersion();
        } else if (r < 0.2) {
          marks.push({ index: merged.mark(), plain: plain.mark(), edges: down.length, versions: versions.length, roots: roots.length });
        } else if (r < 0.27 && marks.length > 0) {
          const m = marks.splice(Math.floor(rnd() * marks.length))[0] as (typeof marks)[number];
          merged.rollback(m.index);
          plain.rollback(m.plain);
          down.length = up.length = m.edges;
          versions.length = m.versions;
          roots.length = m.roots;
        } else if (r < 0.3) {
          merged.compact();
        } else {
          const used = new Set<string>();
          const count = 1 + Math.floor(rnd() * 3);
          for (let i = 0; i < count; i++) used.add(versions[Math.floor(rnd() * versions.length)] as string);
          // Sometimes generate a root version: a cycle when it is upstream of an input (rejected, rolled back).
          const generated = rnd() < 0.2 && roots.length > 0 ? [roots[Math.floor(rnd() * roots.length)] as string] : [`version:o${Math.floor(rnd() * objects)}@sha256:s${steps}`];
          const edges = { stepKey: `step:s${steps}`, transformKey: `transform:t${steps % 3}`, runKey: undefined, used: [...used], generated };
          steps++;
          let rejected = false;
          try {
            merged.addStep(edges, time, 'step', BigInt(steps));
          } catch {
            rejected = true;
          }
          let plainRejected = false;
          try {
            plain.addStep(edges, time, 'step', BigInt(steps));
          } catch {
            plainRejected = true;
          }
          expect(plainRejected).toBe(rejected);
          if (rejected) continue;
          const step = merged.idOf(edges.stepKey) as number;
          for (const k of used) {
            const v = merged.idOf(k) as number;
            down.push({ from: v, to: step, time });
            up.push({ from: step, to: v, time });
          }
          const out = generated[0] as string;
          const o = merged.idOf(out) as number;
          down.push({ from: step, to: o, time });
          up.push({ from: o, to: step, time });
          const root = roots.indexOf(out);
          if (root >= 0) roots.splice(root, 1);
          else versions.push(out);
        }
        expect(merged.nodeCount).toBe(plain.nodeCount);
        expect(merged.edgeCount).toBe(down.length);
        if (op % 3 !== 2) continue;
        // As-of times at and around edge times, where a run's newer edges can be older (time steps back).
        const edgeTime = (down[Math.floor(rnd() * down.length)] ?? { time: 0 }).time;
        const asOfs = [Number.POSITIVE_INFINITY, edgeTime, edgeTime - 1, time - Math.floor(rnd() * 20), 0];
        const downBy = byNode(down);
        const upBy = byNode(up);
        for (let k = 0; k < 25; k++) {
          const n = Math.floor(rnd() * merged.nodeCount);
          for (const mode of modes) {
            for (const asOfMs of asOfs) {
              const o: WalkOptions = { mode, objectLevel: false, depth: rnd() < 0.3 ? 1 + Math.floor(rnd() * 3) : 0, asOfMs };
              const want = naiveWalk(downBy, upBy, [n], o);
              const what = `seed ${seed} op ${op} node ${n} ${JSON.stringify(o)}`;
              expectSameWalk(walkOf(merged, [n], o), want, what);
              expectSameWalk(walkOf(plain, [n], o), want, `${what} (never merged)`);
              const objectLevel = { ...o, objectLevel: true };
              expectSameWalk(walkOf(merged, [n], objectLevel), walkOf(plain, [n], objectLevel), `${what} object level`);
            }
          }
          const key = merged.keyOf(n);
          expect(merged.membersOf(key)).toEqual(plain.membersOf(key));
          expect(merged.consumersOf(key)).toEqual(plain.consumersOf(key));
        }
        const set = new Set<number>();
        for (let n = 0; n < merged.nodeCount; n++) if (rnd() < 0.5) set.add(n);
        for (const objectLevel of [false, true]) expect(merged.edgesAmong(set, objectLevel, time - 5)).toEqual(plain.edgesAmong(set, objectLevel, time - 5));
      }
    }
  });
});

describe('GraphIndex idle merge', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('merges tails of minTail edges once appends pause, not while they continue', () => {
    vi.useFakeTimers();
    const index = new GraphIndex({ minTail: 4, idleMergeMs: 50 });
    index.ensureNode('version:a@sha256:0', NodeKind.NODE_KIND_OBJECT_VERSION, 1);
    let prev = 'version:a@sha256:0';
    // Appends every 30 ms (the 50 ms quiet spell never comes) until some tail is worth merging.
    let steps = 0;
    while (steps < 40 || Math.max(...index.tailEdges) < 4) {
      const out = `version:a@sha256:${steps + 1}`;
      index.addStep({ stepKey: `step:${steps}`, transformKey: 'transform:t', runKey: undefined, used: [prev], generated: [out] }, 10 + steps, 'step', BigInt(steps));
      prev = out;
      steps++;
      vi.advanceTimersByTime(30);
    }
    const before = index.tailEdges;
    vi.advanceTimersByTime(15);
    expect(index.tailEdges).toEqual(before);
    const walkBefore = walkOf(index, [index.idOf('version:a@sha256:0') as number], { mode: 'down', objectLevel: false, depth: 0, asOfMs: Number.POSITIVE_INFINITY });
    vi.advanceTimersByTime(100);
    for (const t of index.tailEdges) expect(t).toBeLessThan(4);
    expect(walkOf(index, [index.idOf('version:a@sha256:0') as number], { mode: 'down', objectLevel: false, depth: 0, asOfMs: Number.POSITIVE_INFINITY })).toEqual(walkBefore);
    expect(walkBefore.nodes.length).toBe(2 * steps);
  });
});
