import { NodeKind } from '../../common/gen/retrace/v1/lineage.js';
import { InvalidArgumentError } from '../../common/errors.js';
import { AdjacencyLists, DEFAULT_MIN_TAIL } from './adjacency-lists.js';
import { GrowableFloat64, GrowableInt32 } from './growable-array.js';
import { KeyTable } from './key-table.js';

/** What a step event adds to the graph. Keys are lineage node keys (common/lineage-keys.ts). */
export interface StepEdges {
  stepKey: string;
  transformKey: string;
  runKey: string | undefined;
  /** Version keys, or object keys for unversioned inputs. */
  used: string[];
  /** Node ids of `used` where the caller has already looked them up (-1: look up or add). */
  usedIds?: readonly number[];
  generated: string[];
}

/** A point to roll the index back to. */
export interface IndexMark {
  nodes: number;
  edges: readonly number[];
  generatorLog: number;
}

export interface WalkOptions {
  /** Walk edges downstream (uses and generations), upstream, or either way at every hop. */
  mode: 'down' | 'up' | 'any';
  objectLevel: boolean;
  /** Maximum hops; 0 = unlimited. */
  depth: number;
  /** Only nodes and edges that existed at this time (ms since epoch); Infinity for now. */
  asOfMs: number;
}

export interface GraphIndexOptions {
  /** Edges appended to a list (since its last merge) before a merge into its base is worth it; default 4096. */
  minTail?: number;
  /** Quiet time (no appends) after which lists with at least minTail new edges are merged; 0 = never by timer. Default 100 ms. */
  idleMergeMs?: number;
}

const NO_NODE = -1;
const DEFAULT_IDLE_MERGE_MS = 100;

/**
 * The in-memory lineage graph: every node and edge of the ledger in compact typed arrays, in
 * two granularities (object versions, and whole objects as Marquez draws them), with the time
 * each edge appeared, so closures and as-of closures are breadth-first walks over arrays.
 * It is derived state: rebuilt from the ledger at start, and written only by the committer.
 */
export class GraphIndex {
  /** Node key ↔ node id. */
  private readonly keys = new KeyTable();
  private readonly kinds = new GrowableInt32();
  private readonly firstSeen = new GrowableFloat64();
  /** version → object node; other kinds → NO_NODE. */
  private readonly objectOf = new GrowableInt32();
  /** version → generating step; other kinds → NO_NODE. */
  private readonly generator = new GrowableInt32();
  /** Step → its transform node (a step's label is the transform's name); other kinds → NO_NODE. */
  private readonly transformOf = new GrowableInt32();
  /**
   * Step → the ledger seq of its only event; NO_NODE for other kinds and for steps with several
   * events. Lets a step be read with one point lookup instead of a scan of the steps table,
   * which cost most of an impact analysis's time (an iterator per step).
   */
  private readonly soleEventSeq = new GrowableFloat64();
  /** Transform node → its name: the one string its steps' labels share. */
  private readonly transformNames = new Map<number, string>();
  /**
   * Transform name → its node: steps of a few transforms interleave (a pipeline's stages), so a
   * one-entry cache, as for runs, missed on nearly every step and paid a lookup in the key table.
   * Keyed by the strings transformNames holds, so it adds no string of its own.
   */
  private readonly transformIds = new Map<string, number>();
  private readonly lastRun = { key: '', id: NO_NODE };
  private readonly generatorLog: number[] = [];
  /** addStep's mark, refilled by every step rather than made anew (a step is undone at most once, before the next). */
  private readonly stepMark = { nodes: 0, edges: [0, 0, 0, 0, 0], generatorLog: 0 };

  /** Version-level edges: down = input → step → output; up = reverse. */
  private readonly vDown: AdjacencyLists;
  private readonly vUp: AdjacencyLists;
  /** Object-level edges. */
  private readonly oDown: AdjacencyLists;
  private readonly oUp: AdjacencyLists;
  /** transform → steps, run → steps, object → versions. */
  private readonly members: AdjacencyLists;
  private readonly lists: readonly AdjacencyLists[];
  private readonly minTail: number;
  private readonly idleMergeMs: number;
  private mergeTimer: ReturnType<typeof setTimeout> | undefined;
  private appendedSinceArmed = false;

  private visitStamp = new Int32Array(0);
  /** Walks' visited marks: all 0 between walks. */
  private seen = new Uint8Array(0);
  /** Scratch of walkScratch: the breadth-first queue and each queued node's distance. */
  private queue = new Int32Array(0);
  private queueDistance = new Int32Array(0);
  private stamp = 0;
  /** lastChangedOf's scratch: empty between calls. */
  private readonly memberScratch: number[] = [];

  constructor(options: GraphIndexOptions = {}) {
    this.minTail = options.minTail ?? DEFAULT_MIN_TAIL;
    this.idleMergeMs = options.idleMergeMs ?? DEFAULT_IDLE_MERGE_MS;
    this.vDown = new AdjacencyLists(this.minTail);
    this.vUp = new AdjacencyLists(this.minTail);
    this.oDown = new AdjacencyLists(this.minTail);
    this.oUp = new AdjacencyLists(this.minTail);
    this.members = new AdjacencyLists(this.minTail);
    this.lists = [this.vDown, this.vUp, this.oDown, this.oUp, this.members];
  }

  get nodeCount(): number {
    return this.keys.size;
  }

  get edgeCount(): number {
    return this.vDown.edgeCount;
  }

  /** Bytes held by the typed arrays, the keys' included (a few maps of transforms are extra). */
  get arrayBytes(): number {
    const perNode = [this.kinds, this.firstSeen, this.objectOf, this.generator, this.transformOf, this.soleEventSeq];
    return this.lists.reduce((n, l) => n + l.byteLength, 0) + perNode.reduce((n, a) => n + a.byteLength, 0) + this.keys.byteLength;
  }

  idOf(key: string): number | undefined {
    return this.keys.get(key);
  }

  has(key: string): boolean {
    return this.keys.has(key);
  }

  keyOf(id: number): string {
    return this.keys.keyOf(id);
  }

  /** The code-unit order of nodes `a`'s and `b`'s keys from char `from` on (no string made). */
  compareKeys(a: number, b: number, from = 0): number {
    return this.keys.compare(a, b, from);
  }

  /** Whether node `id`'s key from char `from` on, lower-cased, contains `needle` (no string made for a one-byte key and an ASCII needle). */
  keyIncludesLowerCase(id: number, needle: string, from = 0): boolean {
    return this.keys.includesLowerCase(id, needle, from);
  }

  /** Whether node `id`'s key has `prefix` at char `from` (no string made). */
  keyStartsWith(id: number, prefix: string, from = 0): boolean {
    return this.keys.startsWith(id, prefix, from);
  }

  kindOf(id: number): NodeKind {
    return this.kinds.data[id] as NodeKind;
  }

  timeOf(id: number): number {
    return this.firstSeen.data[id] as number;
  }

  /** When a node last changed: its latest member's first sighting (an object's versions, a transform's or run's steps), else its own. */
  lastChangedOf(id: number): number {
    let last = this.timeOf(id);
    // One array for every call: a namespace list asks this of each of 80,000 objects.
    const members = this.members.targets(id, Number.POSITIVE_INFINITY, this.memberScratch);
    for (const m of members) last = Math.max(last, this.timeOf(m));
    members.length = 0;
    return last;
  }

  labelOf(id: number): string | undefined {
    if (id < 0 || id >= this.transformOf.length) return undefined;
    const transform = this.transformOf.data[id] as number;
    return transform === NO_NODE ? undefined : this.transformNames.get(transform);
  }

  /** Key of the step that generated a version, if any. */
  generatorOf(versionKey: string): string | undefined {
    const id = this.keys.get(versionKey);
    if (id === undefined) return undefined;
    const g = this.generator.data[id] as number;
    return g === NO_NODE ? undefined : this.keys.keyOf(g);
  }

  /** Keys of the members of a transform, a run (steps) or an object (versions). */
  membersOf(key: string): string[] {
    const id = this.keys.get(key);
    const out: string[] = [];
    if (id === undefined) return out;
    for (const n of this.members.targets(id, Number.POSITIVE_INFINITY, [])) out.push(this.keys.keyOf(n));
    return out.reverse();
  }

  /** The first of membersOf(runKey) whose transform is `transformKey`'s node; undefined when none or either key is unknown. */
  runStepOf(runKey: string, transformKey: string): number | undefined {
    const run = this.keys.get(runKey);
    const transform = this.keys.get(transformKey);
    if (run === undefined || transform === undefined) return undefined;
    const steps = this.members.targets(run, Number.POSITIVE_INFINITY, []);
    // membersOf lists the targets reversed.
    for (let i = steps.length - 1; i >= 0; i--) {
      const step = steps[i] as number;
      if (this.transformOf.data[step] === transform) return step;
    }
    return undefined;
  }

  /**
   * A transform's steps and the objects they read (`used`) and wrote (`generated`), as now, in
   * the first `pageSize` nodes of a depth-1 object-level walk either way from its steps (its
   * steps in member order, then the objects in walk order), which is what a trace page of the
   * transform holds. Each object once per list; node ids, no key made a string. Empty for an
   * unknown key.
   */
  transformObjects(transformKey: string, pageSize: number): { steps: number[]; used: number[]; generated: number[] } {
    const id = this.keys.get(transformKey);
    const steps = id === undefined ? [] : this.members.targets(id, Number.POSITIVE_INFINITY, []).reverse();
    const walked = this.walkScratch(steps, { mode: 'any', objectLevel: true, depth: 1, asOfMs: Number.POSITIVE_INFINITY }).nodes;
    // Bit 1: in the page; 2: listed as used; 4: listed as generated.
    const marks = new Uint8Array(this.nodeCount);
    const objects = walked.subarray(0, Math.max(0, pageSize - steps.length));
    for (const n of objects) marks[n] = 1;
    const used: number[] = [];
    const generated: number[] = [];
    const targets: number[] = [];
    // The page's edges include every step's, as a trace's do: its starts are always among them.
    for (const s of steps) {
      targets.length = 0;
      for (const o of this.oUp.targets(s, Number.POSITIVE_INFINITY, targets)) {
        if (((marks[o] as number) & 3) !== 1) continue;
        marks[o] = (marks[o] as number) | 2;
        used.push(o);
      }
      targets.length = 0;
      for (const o of this.oDown.targets(s, Number.POSITIVE_INFINITY, targets)) {
        if (((marks[o] as number) & 5) !== 1) continue;
        marks[o] = (marks[o] as number) | 4;
        generated.push(o);
      }
    }
    return { steps: steps.slice(0, pageSize), used, generated };
  }

  /**
   * For every object whose key does not start with `skipKeyPrefix`: the content hash of its
   * newest version (the latest first seen; every one of them on a tie). What an object is now,
   * which a payload sweep must keep however old.
   */
  *newestVersionHashes(skipKeyPrefix: string): Generator<string> {
    const versions: number[] = [];
    for (let n = 0; n < this.nodeCount; n++) {
      if (this.kindOf(n) !== NodeKind.NODE_KIND_OBJECT) continue;
      if (skipKeyPrefix !== '' && this.keyOf(n).startsWith(skipKeyPrefix)) continue;
      versions.length = 0;
      this.members.targets(n, Number.POSITIVE_INFINITY, versions);
      let newest = Number.NEGATIVE_INFINITY;
      for (const v of versions) newest = Math.max(newest, this.timeOf(v));
      for (const v of versions) {
        if (this.timeOf(v) !== newest) continue;
        const key = this.keyOf(v);
        yield key.slice(key.lastIndexOf('@') + 1);
      }
    }
  }

  /** Keys of the steps that used this version (or, for an object key, the object unversioned). */
  consumersOf(key: string): string[] {
    const id = this.keys.get(key);
    const out: string[] = [];
    if (id === undefined) return out;
    for (const n of this.vDown.targets(id, Number.POSITIVE_INFINITY, [])) out.push(this.keys.keyOf(n));
    return out.reverse();
  }

  mark(): IndexMark {
    return { nodes: this.keys.size, edges: this.lists.map((l) => l.edgeCount), generatorLog: this.generatorLog.length };
  }

  /**
   * The ledger seq of step `stepKey`'s event when it has exactly one; undefined for an unknown
   * step or one with several events (read the steps table for those).
   */
  soleEventSeqOf(stepKey: string): bigint | undefined {
    const id = this.keys.get(stepKey);
    const seq = id === undefined ? NO_NODE : (this.soleEventSeq.data[id] as number);
    return seq === NO_NODE ? undefined : BigInt(seq);
  }

  /** Undoes everything added since `mark`. */
  rollback(mark: IndexMark): void {
    this.lists.forEach((l, i) => l.rollback(mark.edges[i] as number, mark.nodes));
    while (this.generatorLog.length > mark.generatorLog) this.generator.data[this.generatorLog.pop() as number] = NO_NODE;
    // Few transforms exist, and rollbacks are rare: a scan is cheaper than a log.
    for (const [id, name] of this.transformNames) {
      if (id < mark.nodes) continue;
      this.transformNames.delete(id);
      this.transformIds.delete(name);
    }
    if (this.lastRun.id >= mark.nodes) this.lastRun.id = NO_NODE;
    this.keys.truncate(mark.nodes);
    // A step that got a second event in the undone batch stays marked as having several: its
    // reads then scan the steps table, which is right either way.
    this.kinds.length = this.firstSeen.length = this.objectOf.length = this.generator.length = this.transformOf.length = this.soleEventSeq.length = mark.nodes;
  }

  /** Adds (or finds) a node. Object versions also get their object node. */
  ensureNode(key: string, kind: NodeKind, timeMs: number): number {
    const existing = this.keys.get(key);
    if (existing !== undefined) return existing;
    const id = this.addNode(key, kind, timeMs);
    this.noteAppends();
    return id;
  }

  /**
   * A run's node through a one-entry cache: consecutive steps mostly share their run, and
   * comparing a short key is cheaper than a lookup in the table of every node.
   */
  private runNode(key: string, timeMs: number): number {
    const cache = this.lastRun;
    if (cache.id >= 0 && cache.id < this.keys.size && cache.key === key) return cache.id;
    const id = this.ensureNode(key, NodeKind.NODE_KIND_RUN, timeMs);
    cache.key = key;
    cache.id = id;
    return id;
  }

  /** Adds a node known to be absent. */
  private addNode(key: string, kind: NodeKind, timeMs: number): number {
    let object = NO_NODE;
    if (kind === NodeKind.NODE_KIND_OBJECT_VERSION) {
      const at = key.lastIndexOf('@sha256:');
      object = this.ensureNode(`object:${key.slice('version:'.length, at)}`, NodeKind.NODE_KIND_OBJECT, timeMs);
    }
    const id = this.keys.add(key);
    this.kinds.push(kind);
    this.firstSeen.push(timeMs);
    this.objectOf.push(object);
    this.generator.push(NO_NODE);
    this.transformOf.push(NO_NODE);
    this.soleEventSeq.push(NO_NODE);
    if (object !== NO_NODE) this.members.add(object, id, timeMs);
    return id;
  }

  /**
   * Adds the edges of a step event (at ledger position `seq`). Throws InvalidArgumentError
   * (leaving the index as it was) when an output already has another generator or the edges
   * would close a cycle. `path` prefixes the field names in errors.
   */
  addStep(edges: StepEdges, timeMs: number, path: string, seq: bigint): void {
    const mark = this.stepMark;
    mark.nodes = this.keys.size;
    for (let i = 0; i < this.lists.length; i++) mark.edges[i] = (this.lists[i] as AdjacencyLists).edgeCount;
    mark.generatorLog = this.generatorLog.length;
    try {
      const known = this.keys.get(edges.stepKey);
      const step = known ?? this.addNode(edges.stepKey, NodeKind.NODE_KIND_STEP, timeMs);
      this.soleEventSeq.data[step] = known === undefined ? Number(seq) : NO_NODE;
      if (known === undefined) {
        const name = edges.transformKey.slice('transform:'.length);
        let transform = this.transformIds.get(name);
        if (transform === undefined) {
          transform = this.ensureNode(edges.transformKey, NodeKind.NODE_KIND_TRANSFORM, timeMs);
          // Steps share their transform's label string: a slice per step outlived the step event.
          this.transformNames.set(transform, name);
          this.transformIds.set(name, transform);
        }
        this.transformOf.data[step] = transform;
        this.members.add(transform, step, timeMs);
        if (edges.runKey) this.members.add(this.runNode(edges.runKey, timeMs), step, timeMs);
      } else if (this.labelOf(step) !== edges.transformKey.slice('transform:'.length)) {
        throw new InvalidArgumentError(`${path}.transform`, `step already recorded with transform ${JSON.stringify(this.labelOf(step))}`);
      }
      for (let i = 0; i < edges.used.length; i++) {
        const key = edges.used[i] as string;
        const kind = key.startsWith('version:') ? NodeKind.NODE_KIND_OBJECT_VERSION : NodeKind.NODE_KIND_OBJECT;
        const known = edges.usedIds?.[i] ?? -1;
        const input = known >= 0 ? known : this.ensureNode(key, kind, timeMs);
        if (!this.vDown.has(input, step)) {
          this.vDown.add(input, step, timeMs);
          this.vUp.add(step, input, timeMs);
        }
        // A version's object is known from the version (no key lookup); an unversioned input is the object.
        const object = kind === NodeKind.NODE_KIND_OBJECT_VERSION ? (this.objectOf.data[input] as number) : input;
        if (!this.oUp.has(step, object)) {
          this.oDown.add(object, step, timeMs);
          this.oUp.add(step, object, timeMs);
        }
      }
      for (let i = 0; i < edges.generated.length; i++) {
        const key = edges.generated[i] as string;
        const output = this.ensureNode(key, NodeKind.NODE_KIND_OBJECT_VERSION, timeMs);
        const g = this.generator.data[output] as number;
        if (g !== NO_NODE && g !== step) {
          throw new InvalidArgumentError(`${path}.generated[${i}]`, `${key} was already generated by ${this.keys.keyOf(g)}`);
        }
        if (g === NO_NODE) {
          this.generator.data[output] = step;
          this.generatorLog.push(output);
          this.vDown.add(step, output, timeMs);
          this.vUp.add(output, step, timeMs);
        }
        const object = this.objectOf.data[output] as number;
        if (!this.oDown.has(step, object)) {
          this.oDown.add(step, object, timeMs);
          this.oUp.add(object, step, timeMs);
        }
      }
      if (this.reachesItself(step)) {
        throw new InvalidArgumentError(`${path}.generated`, `would close a cycle: ${edges.stepKey} is upstream of its own inputs`);
      }
    } catch (err) {
      this.rollback(mark);
      throw err;
    }
    this.noteAppends();
  }

  /**
   * Merges every list's tail into its base now (walks then read contiguous runs only). Appends
   * merge by themselves once a tail is big enough for the merge's cost (see AdjacencyLists), and
   * a quiet spell merges tails of minTail edges or more; this is for callers that know a burst
   * of appends just ended.
   */
  compact(): void {
    for (const l of this.lists) l.compact();
  }

  /** Edges appended since each list's last merge (version-level down first, as in `mark`). */
  get tailEdges(): readonly number[] {
    return this.lists.map((l) => l.tailEdges);
  }

  /**
   * Arms the idle merge once some tail is worth merging. The timer re-arms while appends keep
   * coming, so a burst of ingest is not slowed by merges the next append would make stale.
   */
  private noteAppends(): void {
    this.appendedSinceArmed = true;
    if (this.mergeTimer !== undefined || this.idleMergeMs <= 0) return;
    for (const l of this.lists) {
      if (l.tailEdges < this.minTail) continue;
      this.armMerge();
      return;
    }
  }

  private armMerge(delayMs = this.idleMergeMs): void {
    this.appendedSinceArmed = false;
    const timer = setTimeout(() => this.mergeWhenIdle(), delayMs);
    // Derived state only: the timer must not keep a process alive.
    timer.unref();
    this.mergeTimer = timer;
  }

  /** One list a turn: a merge can take tens of ms on a large graph, and calls waiting meanwhile get a turn between lists. */
  private mergeWhenIdle(): void {
    this.mergeTimer = undefined;
    if (this.appendedSinceArmed) {
      this.armMerge();
      return;
    }
    const due = this.lists.filter((l) => l.tailEdges >= this.minTail);
    due[0]?.compact();
    if (due.length > 1) this.armMerge(0);
  }

  /**
   * Breadth-first closure from `starts` (never part of the result: they are marked visited
   * first). Returns node ids in visiting order with their distances, in fresh arrays.
   */
  walk(starts: readonly number[], options: WalkOptions): { nodes: Int32Array; distances: Int32Array } {
    const r = this.walkScratch(starts, options);
    return { nodes: r.nodes.slice(), distances: r.distances.slice() };
  }

  /**
   * `walk` without copying: the arrays are views of scratch buffers that the next walk (or a
   * step's cycle check) overwrites, so the caller must use or copy them before then. A closure
   * then allocates nothing per node, which keeps the Trace RPC's latency flat and its garbage low.
   */
  walkScratch(starts: readonly number[], options: WalkOptions): { nodes: Int32Array; distances: Int32Array } {
    const lists = options.objectLevel ? [this.oDown, this.oUp] : [this.vDown, this.vUp];
    const directions = options.mode === 'down' ? [lists[0] as AdjacencyLists] : options.mode === 'up' ? [lists[1] as AdjacencyLists] : lists;
    this.prepareMarks();
    // A byte a node (cleared from the queue afterwards) keeps the marks of a large graph in cache.
    const seen = this.seen;
    // Every node enters the queue at most once, so queue and distance buffers of nodeCount suffice.
    const queue = this.queue;
    const qdist = this.queueDistance;
    const kinds = this.kinds.data;
    const objectOf = this.objectOf.data;
    const depth = options.depth;
    const asOfMs = options.asOfMs;
    const objectLevel = options.objectLevel;
    let tail = 0;
    for (const s of starts) {
      if (seen[s] === 1) continue;
      seen[s] = 1;
      qdist[tail] = 0;
      queue[tail++] = s;
    }
    const startCount = tail;
    const one = directions.length === 1 ? (directions[0] as AdjacencyLists) : undefined;
    if (one && !objectLevel && asOfMs === Number.POSITIVE_INFINITY) tail = this.walkLatest(one, tail, depth);
    else for (let head = 0; head < tail; head++) {
      const node = queue[head] as number;
      const d = qdist[head] as number;
      if (depth !== 0 && d >= depth) continue;
      const d1 = d + 1;
      for (const adj of directions) {
        // Newest edges first: the node's tail chain, then its base run (kept newest first). Nodes
        // below tailFrom have no tail chain, and not reading their heads saves a cache miss each:
        // ingest appends edges from new nodes, so between merges that is nearly every node.
        if (node >= adj.tailFrom && node < adj.tailHead.length) {
          const next = adj.tailNext.data;
          const dst = adj.tailDst.data;
          const time = adj.tailTime.data;
          for (let e = adj.tailHead.data[node] as number; e !== -1; e = next[e] as number) {
            if ((time[e] as number) > asOfMs) continue;
            let to = dst[e] as number;
            // Object-level walks see a version as its object.
            if (objectLevel && kinds[to] === NodeKind.NODE_KIND_OBJECT_VERSION) to = objectOf[to] as number;
            if (seen[to] === 1) continue;
            seen[to] = 1;
            qdist[tail] = d1;
            queue[tail++] = to;
          }
        }
        if (node >= adj.baseNodes) continue;
        const start = adj.baseStart;
        const dst = adj.baseDst;
        let p = start[node] as number;
        const end = start[node + 1] as number;
        if (asOfMs < adj.baseMaxTime) {
          const time = adj.baseTime;
          if (adj.baseTimeDescending) {
            // Times fall along the run: skip its too-new prefix, and the rest all qualify.
            while (p < end && (time[p] as number) > asOfMs) p++;
          } else {
            for (; p < end; p++) {
              if ((time[p] as number) > asOfMs) continue;
              let to = dst[p] as number;
              if (objectLevel && kinds[to] === NodeKind.NODE_KIND_OBJECT_VERSION) to = objectOf[to] as number;
              if (seen[to] === 1) continue;
              seen[to] = 1;
              qdist[tail] = d1;
              queue[tail++] = to;
            }
            continue;
          }
        }
        if (objectLevel) {
          for (; p < end; p++) {
            let to = dst[p] as number;
            if (kinds[to] === NodeKind.NODE_KIND_OBJECT_VERSION) to = objectOf[to] as number;
            if (seen[to] === 1) continue;
            seen[to] = 1;
            qdist[tail] = d1;
            queue[tail++] = to;
          }
        } else {
          for (; p < end; p++) {
            const to = dst[p] as number;
            if (seen[to] === 1) continue;
            seen[to] = 1;
            qdist[tail] = d1;
            queue[tail++] = to;
          }
        }
      }
    }
    for (let i = 0; i < tail; i++) seen[queue[i] as number] = 0;
    return { nodes: queue.subarray(startCount, tail), distances: qdist.subarray(startCount, tail) };
  }

  /**
   * walkScratch's loop for its most common query: one direction at version level, as of now (no
   * edge is too new). The same visits in the same order, with what the general loop decides per
   * node (directions, object level, edge times) decided once. On the lineage bench's 1M-edge
   * graph a closure of 3-7k nodes took 84-89 µs instead of 96 (the general loop, tail heads below
   * tailFrom skipped too) and 113-120 before that.
   * Continues the breadth-first walk of the `queued` nodes in the scratch queue; returns the
   * queue's new length.
   */
  private walkLatest(adj: AdjacencyLists, queued: number, depth: number): number {
    const seen = this.seen;
    const queue = this.queue;
    const qdist = this.queueDistance;
    const start = adj.baseStart;
    const dst = adj.baseDst;
    const baseNodes = adj.baseNodes;
    const tailFrom = adj.tailFrom;
    const tailNodes = adj.tailHead.length;
    const heads = adj.tailHead.data;
    const next = adj.tailNext.data;
    const tailDst = adj.tailDst.data;
    let tail = queued;
    for (let head = 0; head < tail; head++) {
      const node = queue[head] as number;
      const d = qdist[head] as number;
      if (depth !== 0 && d >= depth) continue;
      const d1 = d + 1;
      if (node >= tailFrom && node < tailNodes) {
        for (let e = heads[node] as number; e !== -1; e = next[e] as number) {
          const to = tailDst[e] as number;
          if (seen[to] === 1) continue;
          seen[to] = 1;
          qdist[tail] = d1;
          queue[tail++] = to;
        }
      }
      if (node >= baseNodes) continue;
      const end = start[node + 1] as number;
      for (let p = start[node] as number; p < end; p++) {
        const to = dst[p] as number;
        if (seen[to] === 1) continue;
        seen[to] = 1;
        qdist[tail] = d1;
        queue[tail++] = to;
      }
    }
    return tail;
  }

  /** Edges among `nodes` (plus `starts`) in the granularity walked, each once, as [from, to] downstream pairs. */
  edgesAmong(nodeSet: ReadonlySet<number>, objectLevel: boolean, asOfMs: number): [number, number][] {
    const down = objectLevel ? this.oDown : this.vDown;
    const out: [number, number][] = [];
    const targets: number[] = [];
    for (const n of nodeSet) {
      targets.length = 0;
      for (let to of down.targets(n, asOfMs, targets)) {
        if (objectLevel && this.kinds.data[to] === NodeKind.NODE_KIND_OBJECT_VERSION) to = this.objectOf.data[to] as number;
        if (nodeSet.has(to)) out.push([n, to]);
      }
    }
    return out;
  }

  private reachesItself(step: number): boolean {
    this.prepareMarks();
    const stamp = ++this.stamp;
    // The queue buffer serves as the stack: each node is pushed once per in-edge, and the edges
    // walked are at most all of them, so grow it to the edge count when that is larger.
    const down = this.vDown;
    if (this.queue.length < down.edgeCount + 1) this.queue = new Int32Array(Math.max(this.queue.length * 2, down.edgeCount + 1));
    const stack = this.queue;
    let top = down.pushTargets(step, stack, 0);
    while (top > 0) {
      const n = stack[--top] as number;
      if (n === step) return true;
      if (this.visitStamp[n] === stamp) continue;
      this.visitStamp[n] = stamp;
      top = down.pushTargets(n, stack, top);
    }
    return false;
  }

  private prepareMarks(): void {
    if (this.visitStamp.length < this.keys.size) {
      const size = Math.max(1024, this.keys.size * 2);
      const v = new Int32Array(size);
      v.set(this.visitStamp);
      this.visitStamp = v;
      this.seen = new Uint8Array(size);
      this.queue = new Int32Array(size);
      this.queueDistance = new Int32Array(size);
    }
  }
}
