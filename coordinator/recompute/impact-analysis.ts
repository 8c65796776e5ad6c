import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import { TriggerKind, type Step } from '../../common/gen/retrace/v1/provenance.js';
import type { AffectedObject, AffectedStep, ImpactResponse } from '../../common/gen/retrace/v1/recompute.js';
import { parseNodeKey, versionKey } from '../../common/lineage-keys.js';
import { logicalStepKey, retraceFacetOf, stepOutputs } from '../../common/step-versions.js';
import { STEP_READ_BATCH, type LineageEngine } from '../lineage/lineage-engine.js';

/**
 * What changed, as impact analysis starts from it:
 * - `version`: an object's version was replaced; the steps that used `oldHash` are affected.
 * - `step`: a recorded step and everything downstream of its outputs.
 * - `pipelineStep`: every latest execution of a pipeline step (its code or parameters changed).
 */
export type ImpactRoot =
  | { kind: 'version'; objectId: string; oldHash: string; newHash?: string }
  | { kind: 'step'; stepId: string }
  | { kind: 'pipelineStep'; pipeline: string; step: string; transform: string };

/** One affected logical step: the latest recorded execution of a (pipeline step, inputs) pair. */
export interface AffectedNode {
  step: Step;
  /** facets.retrace of the step (empty strings for steps recorded outside pipelines). */
  pipeline: string;
  stepName: string;
  key: string;
  /** Output dataset of a pipeline step. */
  output: string;
  /** What it output: generated versions, and those it reproduced exactly (recorded by an earlier step). */
  outputs: { objectId: string; contentHash: string }[];
  /** Input name of each `used` ref, same order. */
  inputNames: string[];
  /** 0 for a step root, 1 for the direct users of a changed version, and so on. */
  depth: number;
  /** Step ids (of other affected nodes) whose outputs this one uses. */
  dependsOn: string[];
  /**
   * Where `step` was served from the memo (facet `cachedFrom`), the execution whose result it
   * reused: the node and resources a rerun would cost. Else absent.
   */
  ranAs?: Step;
}

/** The affected subgraph, steps in dependency order. */
export interface AffectedGraph {
  roots: string[];
  nodes: AffectedNode[];
  objects: AffectedObject[];
}

export type ImpactLineage = Pick<LineageEngine, 'index' | 'readSteps'>;

function isReplay(step: Step): boolean {
  return step.why?.kind === TriggerKind.TRIGGER_KIND_REPLAY;
}

/** The key of a pipeline record id (`record:<pipeline>/<dataset>:<key>`), or ''. */
export function recordKeyOf(objectId: string): string {
  if (!objectId.startsWith('record:')) return '';
  const colon = objectId.indexOf(':', 'record:'.length);
  return colon < 0 ? '' : objectId.slice(colon + 1);
}

/** The dataset of a pipeline record id, or ''. */
function datasetOf(objectId: string): string {
  const m = /^record:[^/]+\/([^:]+):/.exec(objectId);
  return m ? (m[1] as string) : '';
}

/**
 * `lineage.readSteps` of the step ids, STEP_READ_BATCH at a time, in the order given. One at a
 * time, each read waited for the store (a key scan, then the event) with the main thread mostly
 * idle: an impact over 60,000 steps took 26 s.
 */
async function readSteps(lineage: ImpactLineage, stepIds: readonly string[]): Promise<(Step | undefined)[]> {
  const out: (Step | undefined)[] = [];
  for (let i = 0; i < stepIds.length; i += STEP_READ_BATCH) out.push(...(await lineage.readSteps(stepIds.slice(i, i + STEP_READ_BATCH))));
  return out;
}

function compareNs(a: string, b: string): number {
  const x = BigInt(a || '0');
  const y = BigInt(b || '0');
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * Whether `collectAffected(lineage, roots)` (as of now) would find any step, reading only the
 * first steps below each root, and those only until one counts. The walk reads every affected
 * step; a recompute's check that new content has something downstream walked it all once more
 * before planning (an object read by every record's step: all of them twice).
 */
export async function hasAffected(lineage: ImpactLineage, roots: readonly ImpactRoot[]): Promise<boolean> {
  const index = lineage.index;
  for (const [i, r] of roots.entries()) {
    if (r.kind !== 'version') return (await collectAffected(lineage, roots)).nodes.length > 0;
    const key = versionKey(r.objectId, r.oldHash);
    if (!index.has(key)) throw new NotFoundError(`object version ${key}`, `roots[${i}]`);
    // The walk goes on below a step it keeps, and keeps every step it reads but replays.
    const consumers = index.consumersOf(key);
    for (let at = 0; at < consumers.length; at += STEP_READ_BATCH) {
      const read = await lineage.readSteps(consumers.slice(at, at + STEP_READ_BATCH).map((k) => parseNodeKey(k).id));
      if (read.some((step) => step !== undefined && !isReplay(step))) return true;
    }
  }
  return false;
}

/**
 * Walks the graph downstream from the roots, as of `asOfMs` (steps recorded later are ignored),
 * and returns the affected logical steps in dependency order with their dependencies. Throws
 * NotFoundError for an unknown version or step, InvalidArgumentError (`pipeline`) when the
 * affected steps depend on each other in a cycle.
 */
export async function collectAffected(lineage: ImpactLineage, roots: readonly ImpactRoot[], asOfMs = Number.POSITIVE_INFINITY): Promise<AffectedGraph> {
  const index = lineage.index;
  const visible = (key: string): boolean => {
    const id = index.idOf(key);
    return id !== undefined && index.timeOf(id) <= asOfMs;
  };
  const depthOf = new Map<string, number>();
  const queue: string[] = [];
  const enqueue = (stepKey: string, depth: number): void => {
    if (!visible(stepKey)) return;
    const known = depthOf.get(stepKey);
    if (known !== undefined && known <= depth) return;
    depthOf.set(stepKey, depth);
    queue.push(stepKey);
  };
  const steps = new Map<string, Step>();
  const rootNames: string[] = [];
  for (const [i, r] of roots.entries()) {
    if (r.kind === 'version') {
      const key = versionKey(r.objectId, r.oldHash);
      if (!index.has(key)) throw new NotFoundError(`object version ${key}`, `roots[${i}]`);
      rootNames.push(key);
      for (const s of index.consumersOf(key)) enqueue(s, 1);
    } else if (r.kind === 'step') {
      const key = `step:${r.stepId}`;
      if (!index.has(key)) throw new NotFoundError(`step ${JSON.stringify(r.stepId)}`, 'step_id');
      rootNames.push(key);
      enqueue(key, 0);
    } else {
      rootNames.push(`${r.pipeline}/${r.step}`);
      const members = index.membersOf(`transform:${r.transform}`).filter(visible);
      const read = await readSteps(lineage, members.map((s) => parseNodeKey(s).id));
      for (const [j, s] of members.entries()) {
        const step = read[j];
        const f = step ? retraceFacetOf(step) : {};
        if (step && !isReplay(step) && f.pipeline === r.pipeline && f.step === r.step) {
          // Read once: the walk below takes it from here instead of reading it again.
          steps.set(s, step);
          enqueue(s, 1);
        }
      }
    }
  }
  const objects = new Map<string, AffectedObject>();
  // Steps read ahead of the walk (each read once), STEP_READ_BATCH at a time.
  const readAhead = new Map<string, Step | undefined>();
  // An index into the queue, not queue.shift(): shifting moves the whole queue each time.
  for (let head = 0; head < queue.length; head++) {
    const key = queue[head] as string;
    const depth = depthOf.get(key) as number;
    let step = steps.get(key);
    if (!step) {
      if (!readAhead.has(key)) {
        readAhead.clear();
        const next = [...new Set(queue.slice(head, head + STEP_READ_BATCH))].filter((k) => !steps.has(k));
        const read = await readSteps(lineage, next.map((k) => parseNodeKey(k).id));
        for (const [j, k] of next.entries()) readAhead.set(k, read[j]);
      }
      step = readAhead.get(key);
      // Replays run in their own namespace (replay:<id>/...): what-ifs and checks, never inputs
      // of the live pipelines, so nothing a change affects.
      if (!step || isReplay(step)) continue;
      steps.set(key, step);
    }
    for (const g of stepOutputs(step)) {
      const vk = versionKey(g.objectId, g.contentHash);
      const prev = objects.get(vk);
      if (!prev || prev.depth > depth + 1) objects.set(vk, { objectId: g.objectId, contentHash: g.contentHash, depth: depth + 1 });
      for (const c of index.consumersOf(vk)) enqueue(c, depth + 1);
    }
  }
  // Keep the latest execution of each logical step (with the smallest depth any of them had).
  const kept = new Map<string, AffectedNode>();
  for (const [key, step] of steps) {
    const f = retraceFacetOf(step);
    const lk = logicalStepKey(step);
    const depth = depthOf.get(key) as number;
    const cur = kept.get(lk);
    if (cur && (compareNs(cur.step.endedAtNs, step.endedAtNs) > 0 || (compareNs(cur.step.endedAtNs, step.endedAtNs) === 0 && cur.step.stepId > step.stepId))) {
      cur.depth = Math.min(cur.depth, depth);
      continue;
    }
    const byObject = new Map(Object.entries(f.inputs ?? {}).map(([name, objectId]) => [objectId, name]));
    const outputs = stepOutputs(step).map((o) => ({ objectId: o.objectId, contentHash: o.contentHash }));
    const firstRecord = step.used.find((u) => recordKeyOf(u.objectId) !== '') ?? outputs.find((g) => recordKeyOf(g.objectId) !== '');
    kept.set(lk, {
      step,
      pipeline: f.pipeline ?? '',
      stepName: f.step ?? step.transform,
      key: firstRecord ? recordKeyOf(firstRecord.objectId) : '',
      // The dataset its outputs were recorded under (the runner names it after the step).
      output: datasetOf(outputs[0]?.objectId ?? '') || (f.step ?? step.transform),
      outputs,
      inputNames: step.used.map((u) => byObject.get(u.objectId) ?? u.objectId),
      depth: Math.min(depth, cur?.depth ?? depth),
      dependsOn: [],
    });
  }
  // A node depends on the node that produces (a version of) an object it uses.
  const producer = new Map<string, AffectedNode>();
  for (const n of kept.values()) for (const g of n.outputs) producer.set(g.objectId, n);
  for (const n of kept.values()) {
    const deps = new Set<string>();
    for (const u of n.step.used) {
      const p = producer.get(u.objectId);
      if (p && p !== n) deps.add(p.step.stepId);
    }
    n.dependsOn = [...deps].sort();
  }
  const cached = [...kept.values()].flatMap((n) => {
    const from = retraceFacetOf(n.step).cachedFrom;
    return typeof from === 'string' && from !== '' ? [{ n, from }] : [];
  });
  const ranAs = await readSteps(lineage, cached.map((c) => c.from));
  for (const [j, { n }] of cached.entries()) {
    const ran = ranAs[j];
    if (ran) n.ranAs = ran;
  }
  const ordered = topoOrder([...kept.values()]);
  // The affected objects are what the kept executions output: a version that a superseded
  // execution made (before a re-ingest, an older recompute) is history a recompute does not
  // touch, and counting it made "40 steps, 62 objects" of 40 one-output steps.
  const affectedObjects = new Map<string, AffectedObject>();
  for (const n of ordered) {
    for (const o of n.outputs) {
      const vk = versionKey(o.objectId, o.contentHash);
      const walked = objects.get(vk);
      if (walked && !affectedObjects.has(vk)) affectedObjects.set(vk, walked);
    }
  }
  return { roots: rootNames, nodes: ordered, objects: [...affectedObjects.values()].sort((a, b) => a.depth - b.depth || a.objectId.localeCompare(b.objectId)) };
}

/**
 * Kahn's order (ties by depth, then step id); a leftover means a cycle. The ready steps are a
 * binary heap: sorting the whole ready list again each time a step became ready was O(n²)
 * comparisons (a code change over 20,000 records, 60,000 steps: 125 s); a heap is O(n log n).
 */
export function topoOrder(nodes: readonly AffectedNode[]): AffectedNode[] {
  const byId = new Map(nodes.map((n) => [n.step.stepId, n]));
  const indegree = new Map(nodes.map((n) => [n.step.stepId, n.dependsOn.filter((d) => byId.has(d)).length]));
  const dependants = new Map<string, string[]>();
  for (const n of nodes) {
    for (const d of n.dependsOn) {
      if (!byId.has(d)) continue;
      const list = dependants.get(d);
      if (list) list.push(n.step.stepId);
      else dependants.set(d, [n.step.stepId]);
    }
  }
  const cmp = (a: AffectedNode, b: AffectedNode): number => a.depth - b.depth || a.step.stepId.localeCompare(b.step.stepId);
  const ready = new Heap(cmp);
  for (const n of nodes) if (indegree.get(n.step.stepId) === 0) ready.push(n);
  const out: AffectedNode[] = [];
  for (let n = ready.pop(); n !== undefined; n = ready.pop()) {
    out.push(n);
    for (const d of dependants.get(n.step.stepId) ?? []) {
      const left = (indegree.get(d) as number) - 1;
      indegree.set(d, left);
      if (left === 0) ready.push(byId.get(d) as AffectedNode);
    }
  }
  if (out.length < nodes.length) {
    const done = new Set(out);
    const stuck = nodes.filter((n) => !done.has(n)).map((n) => `${n.pipeline}/${n.stepName}`);
    throw new InvalidArgumentError('pipeline', `the affected steps depend on each other in a cycle: ${[...new Set(stuck)].slice(0, 5).join(', ')}`);
  }
  return out;
}

/** A binary min-heap under `cmp`: pop gives the least item. */
class Heap<T> {
  private readonly items: T[] = [];

  constructor(private readonly cmp: (a: T, b: T) => number) {}

  push(item: T): void {
    const a = this.items;
    a.push(item);
    let i = a.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.cmp(a[i] as T, a[parent] as T) >= 0) break;
      [a[i], a[parent]] = [a[parent] as T, a[i] as T];
      i = parent;
    }
  }

  pop(): T | undefined {
    const a = this.items;
    const top = a[0];
    const last = a.pop();
    if (a.length === 0 || last === undefined) return top;
    a[0] = last;
    for (let i = 0; ;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let least = i;
      if (l < a.length && this.cmp(a[l] as T, a[least] as T) < 0) least = l;
      if (r < a.length && this.cmp(a[r] as T, a[least] as T) < 0) least = r;
      if (least === i) break;
      [a[i], a[least]] = [a[least] as T, a[i] as T];
      i = least;
    }
    return top;
  }
}

/** Where the allocator would place a step now: a node id, or why none can take it. */
export type PlacementProbe = (node: AffectedNode) => Promise<{ nodeId: string } | { waiting: string }>;

/** The ImpactResponse of an affected graph: counts, recorded costs, placement now. */
export async function toImpactResponse(graph: AffectedGraph, asOfNs: string, place?: PlacementProbe): Promise<ImpactResponse> {
  const steps: AffectedStep[] = [];
  const placements: Record<string, number> = {};
  let cpu = 0n;
  let wall = 0n;
  // Longest chain of recorded wall times, in dependency order.
  const finish = new Map<string, bigint>();
  let critical = 0n;
  for (const n of graph.nodes) {
    // A memo-served step ran nothing: its cost is that of the execution it reused.
    const ran = n.ranAs ?? n.step;
    const r = ran.resources;
    const w = BigInt(r?.wallTimeNs ?? '0');
    cpu += BigInt(r?.cpuTimeNs ?? '0');
    wall += w;
    const start = n.dependsOn.reduce((m, d) => (finish.get(d) ?? 0n) > m ? (finish.get(d) ?? 0n) : m, 0n);
    finish.set(n.step.stepId, start + w);
    if (start + w > critical) critical = start + w;
    const where = place ? await place(n) : { waiting: 'no allocator' };
    if ('nodeId' in where) placements[where.nodeId] = (placements[where.nodeId] ?? 0) + 1;
    steps.push({
      stepId: n.step.stepId,
      pipeline: n.pipeline,
      step: n.stepName,
      key: n.key,
      transform: n.step.transform,
      codeVersion: n.step.codeVersion,
      depth: n.depth,
      nodeId: ran.nodeId,
      cpuTimeNs: r?.cpuTimeNs ?? '0',
      wallTimeNs: r?.wallTimeNs ?? '0',
      peakMemoryBytes: r?.peakMemoryBytes ?? '0',
      placementNodeId: 'nodeId' in where ? where.nodeId : '',
      placementWaiting: 'waiting' in where ? where.waiting : '',
      dependsOn: n.dependsOn,
    });
  }
  return {
    roots: graph.roots,
    steps,
    objects: graph.objects,
    stepCount: steps.length,
    objectCount: graph.objects.length,
    estimatedCpuTimeNs: cpu.toString(),
    estimatedWallTimeNs: wall.toString(),
    criticalPathWallTimeNs: critical.toString(),
    asOfNs,
    placements,
    nextPageToken: '',
  };
}
