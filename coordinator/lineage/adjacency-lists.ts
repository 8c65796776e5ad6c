import { GrowableFloat64, GrowableInt32 } from './growable-array.js';

/** Tail size below which a merge into the base is never forced (nor worth a timer's work). */
export const DEFAULT_MIN_TAIL = 4096;

/**
 * Adjacency lists of a growing graph in two parts, both in flat typed arrays:
 * - a base in compressed sparse row form: each node's targets (and their edge times) in one
 *   contiguous run, `baseDst[baseStart[n] .. baseStart[n + 1])`, so a walk reads them in
 *   sequence instead of chasing a pointer per edge;
 * - a tail of the edges appended since the base was built, as linked lists (per edge target,
 *   time and next edge of the same source; per node the head), so an append stays O(1).
 * `compact()` merges the tail into the base. Every node's edges are visited newest first
 * (its tail chain, then its base run, which is kept in that order), the order the linked lists
 * alone gave, so walks over either part answer the same nodes in the same order.
 *
 * Per edge: 4 bytes of source (in append order, for rollback) plus 12 of target and time;
 * per node 8 bytes (base run start, tail head); the base arrays grow by half when full.
 * A merge works in place from the top down and stops at the lowest node with tail edges, so it
 * costs the tail plus the base above that node: little when new edges leave new nodes, as in
 * ingest, and O(edges) at worst. Appends stay O(1) amortised: a merge is forced only once the
 * tail is an eighth of what the merge would move, or a quarter of the whole base (which bounds
 * the share of edges a walk reads from linked lists while ingest goes on).
 */
export class AdjacencyLists {
  /** Source of every edge in append order: what undoing an append needs. */
  private readonly src = new GrowableInt32();

  /** Edges [0, baseEdges) are in the base; nodes [0, baseNodes) have a run there. */
  baseEdges = 0;
  baseNodes = 0;
  /** Run of node n: baseStart[n] .. baseStart[n + 1], newest edge first. Length ≥ baseNodes + 1 (spare room past that). */
  baseStart = new Int32Array(1);
  baseDst = new Int32Array(0);
  baseTime = new Float64Array(0);
  /** No base edge is later than this (an upper bound after a rollback into the base). */
  baseMaxTime = Number.NEGATIVE_INFINITY;
  /** Times never increase along any base run: an as-of walk skips a run's too-new prefix and stops checking. */
  baseTimeDescending = true;

  /** Tail edge i is edge baseEdges + i. Heads and next hold tail indices, -1 for none. */
  readonly tailHead = new GrowableInt32();
  tailDst = new GrowableInt32();
  tailTime = new GrowableFloat64();
  tailNext = new GrowableInt32();
  /** No tail edge leaves a node below this (a lower bound after rollbacks): sizes what a merge would move. */
  private tailMinSrc = Number.POSITIVE_INFINITY;

  /** @param minTail tail size below which `add` never merges (tests use small ones). */
  constructor(private readonly minTail = DEFAULT_MIN_TAIL) {}

  /** Makes room for node ids below `count`. */
  ensureNodes(count: number): void {
    while (this.tailHead.length < count) this.tailHead.push(-1);
  }

  get nodeCount(): number {
    return this.tailHead.length;
  }

  get edgeCount(): number {
    return this.src.length;
  }

  get tailEdges(): number {
    return this.tailDst.length;
  }

  /** No tail edge leaves a node below this (+Infinity for an empty tail): a walk reads no tail chain below it. */
  get tailFrom(): number {
    return this.tailMinSrc;
  }

  add(from: number, to: number, timeMs: number): void {
    this.ensureNodes(Math.max(from, to) + 1);
    this.src.push(from);
    const i = this.tailDst.push(to);
    this.tailTime.push(timeMs);
    this.tailNext.push(this.tailHead.data[from] as number);
    this.tailHead.data[from] = i;
    if (from < this.tailMinSrc) this.tailMinSrc = from;
    const tail = i + 1;
    if (tail >= this.minTail && (tail >= this.baseEdges >>> 2 || tail >= this.mergeWork() >>> 3)) this.compact();
  }

  /** Base entries and run starts a merge of the tail would move. */
  private mergeWork(): number {
    const from = this.tailMinSrc;
    if (from >= this.baseNodes) return this.tailHead.length - this.baseNodes;
    return this.baseEdges - (this.baseStart[from] as number) + (this.tailHead.length - from);
  }

  has(from: number, to: number): boolean {
    if (from >= this.tailHead.length) return false;
    const next = this.tailNext.data;
    const dst = this.tailDst.data;
    for (let i = this.tailHead.data[from] as number; i !== -1; i = next[i] as number) if (dst[i] === to) return true;
    if (from < this.baseNodes) {
      const bd = this.baseDst;
      for (let p = this.baseStart[from] as number, end = this.baseStart[from + 1] as number; p < end; p++) if (bd[p] === to) return true;
    }
    return false;
  }

  /**
   * Appends the targets of `node`'s edges no later than `asOfMs` to `out`, newest edge first
   * (the order walks visit them in).
   */
  targets(node: number, asOfMs: number, out: number[]): number[] {
    if (node >= this.tailHead.length) return out;
    const next = this.tailNext.data;
    const dst = this.tailDst.data;
    const time = this.tailTime.data;
    for (let i = this.tailHead.data[node] as number; i !== -1; i = next[i] as number) if ((time[i] as number) <= asOfMs) out.push(dst[i] as number);
    if (node < this.baseNodes) {
      for (let p = this.baseStart[node] as number, end = this.baseStart[node + 1] as number; p < end; p++) {
        if ((this.baseTime[p] as number) <= asOfMs) out.push(this.baseDst[p] as number);
      }
    }
    return out;
  }

  /** Writes the targets of all `node`'s edges into `stack` from `top` on; returns the new top. */
  pushTargets(node: number, stack: Int32Array, top: number): number {
    if (node >= this.tailHead.length) return top;
    const next = this.tailNext.data;
    const dst = this.tailDst.data;
    for (let i = this.tailHead.data[node] as number; i !== -1; i = next[i] as number) stack[top++] = dst[i] as number;
    if (node < this.baseNodes) {
      const end = this.baseStart[node + 1] as number;
      for (let p = this.baseStart[node] as number; p < end; p++) stack[top++] = this.baseDst[p] as number;
    }
    return top;
  }

  /** Removes edges appended after the list had `edgeCount` edges and nodes beyond `nodeCount`. */
  rollback(edgeCount: number, nodeCount: number): void {
    if (edgeCount < this.baseEdges) this.rollbackIntoBase(edgeCount);
    const head = this.tailHead.data;
    const src = this.src.data;
    for (let e = this.src.length - 1; e >= edgeCount; e--) head[src[e] as number] = this.tailNext.data[e - this.baseEdges] as number;
    const tail = edgeCount - this.baseEdges;
    this.src.length = edgeCount;
    this.tailDst.length = this.tailTime.length = this.tailNext.length = tail;
    if (this.tailHead.length > nodeCount) this.tailHead.length = nodeCount;
    // Nodes added after the mark had no edges before it, so their runs (if any) are empty now.
    if (this.baseNodes > nodeCount) this.baseNodes = nodeCount;
  }

  /**
   * Drops the tail, then the base edges from `edgeCount` on: each is the newest remaining edge of
   * its source, so the first in that source's run. Rare (a commit group undone after a merge
   * took in its edges), so one pass over the base in place.
   */
  private rollbackIntoBase(edgeCount: number): void {
    const src = this.src.data;
    const head = this.tailHead.data;
    for (let e = this.baseEdges; e < this.src.length; e++) head[src[e] as number] = -1;
    this.clearTail();
    this.src.length = this.baseEdges;
    const removed = new Int32Array(this.baseNodes);
    const sources: number[] = [];
    for (let e = edgeCount; e < this.baseEdges; e++) {
      const s = src[e] as number;
      if (removed[s] === 0) sources.push(s);
      removed[s] = (removed[s] as number) + 1;
    }
    sources.sort((a, b) => a - b);
    const start = this.baseStart;
    const dst = this.baseDst;
    const time = this.baseTime;
    // Surviving entries of node n move left by the entries removed from nodes ≤ n.
    let shift = 0;
    for (let k = 0; k < sources.length; k++) {
      const s = sources[k] as number;
      shift += removed[s] as number;
      const from = (start[s] as number) + (removed[s] as number);
      const to = k + 1 < sources.length ? (start[sources[k + 1] as number] as number) : (start[this.baseNodes] as number);
      dst.copyWithin(from - shift, from, to);
      time.copyWithin(from - shift, from, to);
    }
    shift = 0;
    for (let n = 0; n < this.baseNodes; n++) {
      const r = removed[n] as number;
      start[n] = (start[n] as number) - shift;
      shift += r;
    }
    start[this.baseNodes] = (start[this.baseNodes] as number) - shift;
    this.baseEdges = edgeCount;
    this.src.length = edgeCount;
  }

  /**
   * Merges the tail into the base, in place: from the highest node down, each base run moves up
   * by the tail edges of the nodes at or below it, and each node's tail chain lands just before
   * its run. Nodes below the lowest one with tail edges stay where they are.
   */
  compact(): void {
    const tailCount = this.tailDst.length;
    if (tailCount === 0) return;
    const nodes = this.tailHead.length;
    const edges = this.src.length;
    this.reserve(nodes, edges);
    const start = this.baseStart;
    const dst = this.baseDst;
    const time = this.baseTime;
    // Nodes new since the last merge have empty runs at the base's end.
    for (let n = this.baseNodes + 1; n <= nodes; n++) start[n] = this.baseEdges;
    const head = this.tailHead.data;
    const tailNext = this.tailNext.data;
    const tailDst = this.tailDst.data;
    const tailTime = this.tailTime.data;
    let maxTime = this.baseMaxTime;
    let descending = this.baseTimeDescending;
    // shift: tail edges of the nodes at or below n, i.e. how far n's base run moves up.
    let shift = tailCount;
    // Base entries [n's run start, segEnd) move up by `shift` as one block.
    let segEnd = this.baseEdges;
    start[nodes] = edges;
    for (let n = nodes - 1; shift > 0; n--) {
      const runFrom = start[n] as number;
      const h = head[n] as number;
      if (h === -1) {
        start[n] = runFrom + shift;
        continue;
      }
      if (segEnd > runFrom) {
        dst.copyWithin(runFrom + shift, runFrom, segEnd);
        time.copyWithin(runFrom + shift, runFrom, segEnd);
      }
      let count = 0;
      for (let i = h; i !== -1; i = tailNext[i] as number) count++;
      const runAfter = runFrom + shift;
      let w = runAfter - count;
      let last = Number.POSITIVE_INFINITY;
      for (let i = h; i !== -1; i = tailNext[i] as number) {
        const t = tailTime[i] as number;
        if (t > last) descending = false;
        if (t > maxTime) maxTime = t;
        last = t;
        dst[w] = tailDst[i] as number;
        time[w++] = t;
      }
      if ((start[n + 1] as number) > runAfter && (time[runAfter] as number) > last) descending = false;
      head[n] = -1;
      shift -= count;
      start[n] = runFrom + shift;
      segEnd = runFrom;
    }
    this.baseNodes = nodes;
    this.baseEdges = edges;
    this.baseMaxTime = maxTime;
    this.baseTimeDescending = descending;
    this.clearTail();
  }

  /** Empties the tail; gives back its arrays when a large tail grew them (the base holds those edges now). */
  private clearTail(): void {
    this.tailMinSrc = Number.POSITIVE_INFINITY;
    if (this.tailDst.data.length > 4 * this.minTail) {
      this.tailDst = new GrowableInt32();
      this.tailTime = new GrowableFloat64();
      this.tailNext = new GrowableInt32();
      return;
    }
    this.tailDst.length = this.tailTime.length = this.tailNext.length = 0;
  }

  /**
   * Room for `nodes` runs and `edges` base entries, keeping the base. Grows by half: growing by a
   * quarter reallocated (allocated, zeroed and copied) about 5× the final base while ingest built
   * it, by half about 3×, which saved ~0.4 µs an event of the ingest bench's pattern for ~1% more
   * index bytes per edge on the lineage bench (idle room is a third of a base at most).
   */
  private reserve(nodes: number, edges: number): void {
    if (this.baseStart.length < nodes + 1) {
      const start = new Int32Array(Math.max(nodes + 1, Math.floor(this.baseStart.length * 1.5)));
      start.set(this.baseStart.subarray(0, this.baseNodes + 1));
      this.baseStart = start;
    }
    if (this.baseDst.length < edges) {
      const size = Math.max(edges, Math.floor(this.baseDst.length * 1.5));
      const dst = new Int32Array(size);
      const time = new Float64Array(size);
      dst.set(this.baseDst.subarray(0, this.baseEdges));
      time.set(this.baseTime.subarray(0, this.baseEdges));
      this.baseDst = dst;
      this.baseTime = time;
    }
  }

  get byteLength(): number {
    return (
      this.src.byteLength +
      this.baseStart.byteLength +
      this.baseDst.byteLength +
      this.baseTime.byteLength +
      this.tailHead.byteLength +
      this.tailDst.byteLength +
      this.tailTime.byteLength +
      this.tailNext.byteLength
    );
  }
}

