import type { ObjectRef, ObjectVersion, Run, Step } from '../../common/gen/retrace/v1/provenance.js';

/**
 * Several events may describe one step, run or object version (an OpenLineage run sends START
 * then COMPLETE). The view is their fold in event-time order: non-empty scalars of later events
 * win, references accumulate, facets merge shallowly.
 */
export function foldSteps(events: readonly { timeNs: bigint; step: Step }[]): Step {
  const sorted = [...events].sort(byEventTime);
  const first = sorted[0];
  if (!first) throw new Error('foldSteps needs at least one event');
  const out: Step = { ...first.step, used: [...first.step.used], generated: [...first.step.generated] };
  for (const { step } of sorted.slice(1)) {
    if (step.runId) out.runId = step.runId;
    if (step.codeVersion) out.codeVersion = step.codeVersion;
    if (step.parameters) out.parameters = step.parameters;
    if (step.nodeId) out.nodeId = step.nodeId;
    if (step.host) out.host = step.host;
    if (step.startedAtNs !== '0' && (out.startedAtNs === '0' || BigInt(step.startedAtNs) < BigInt(out.startedAtNs))) out.startedAtNs = step.startedAtNs;
    if (step.endedAtNs !== '0') out.endedAtNs = step.endedAtNs;
    if (step.why) out.why = step.why;
    if (step.resources) out.resources = step.resources;
    out.used = mergeRefs(out.used, step.used);
    out.generated = mergeRefs(out.generated, step.generated);
    if (step.facets) out.facets = mergeFacets(out.facets, step.facets);
  }
  return out;
}

/** Run states that say the run goes on: a later event in one of them reopens a closed run. */
const OPEN_RUN_STATES: ReadonlySet<string> = new Set(['START', 'RUNNING']);

/**
 * Where a run's events share a timestamp, their order in the ledger is only the order they
 * arrived in (producers emit COMPLETE right after START for quick jobs, and retries reorder
 * them), so the lifecycle orders them instead: a START stamped with the same instant as the run's
 * end does not reopen it.
 */
const RUN_STATE_RANK: Readonly<Record<string, number>> = { START: 0, RUNNING: 1, OTHER: 1, COMPLETE: 2, FAIL: 2, ABORT: 2 };

function byEventTimeThenLifecycle(a: { timeNs: bigint; run: Run }, b: { timeNs: bigint; run: Run }): number {
  return byEventTime(a, b) || (RUN_STATE_RANK[a.run.state] ?? 1) - (RUN_STATE_RANK[b.run.state] ?? 1);
}

export function foldRuns(events: readonly { timeNs: bigint; run: Run }[]): Run {
  const sorted = [...events].sort(byEventTimeThenLifecycle);
  const first = sorted[0];
  if (!first) throw new Error('foldRuns needs at least one event');
  const out: Run = { ...first.run };
  for (const { run } of sorted.slice(1)) {
    if (run.name) out.name = run.name;
    if (run.parentRunId) out.parentRunId = run.parentRunId;
    // OTHER carries metadata at any point of a run, also after its end (the OpenLineage spec): no change of state.
    if (run.state && run.state !== 'OTHER') out.state = run.state;
    // A run closed and then started again (a resumed recompute job) is open again until its next end.
    if (OPEN_RUN_STATES.has(run.state) && run.endedAtNs === '0') out.endedAtNs = '0';
    if (run.startedAtNs !== '0' && (out.startedAtNs === '0' || BigInt(run.startedAtNs) < BigInt(out.startedAtNs))) out.startedAtNs = run.startedAtNs;
    if (run.endedAtNs !== '0') out.endedAtNs = run.endedAtNs;
    if (run.facets) out.facets = mergeFacets(out.facets, run.facets);
  }
  return out;
}

export function foldObjectVersions(events: readonly { timeNs: bigint; version: ObjectVersion }[]): ObjectVersion {
  const sorted = [...events].sort(byEventTime);
  const first = sorted[0];
  if (!first) throw new Error('foldObjectVersions needs at least one event');
  const out: ObjectVersion = { ...first.version };
  for (const { version } of sorted.slice(1)) {
    if (version.size !== '0') out.size = version.size;
    if (version.mediaType) out.mediaType = version.mediaType;
    if (version.createdAtNs !== '0' && out.createdAtNs === '0') out.createdAtNs = version.createdAtNs;
    out.attributes = { ...out.attributes, ...version.attributes };
    if (version.facets) out.facets = mergeFacets(out.facets, version.facets);
  }
  return out;
}

function mergeRefs(a: readonly ObjectRef[], b: readonly ObjectRef[]): ObjectRef[] {
  const seen = new Set(a.map(refId));
  const out = [...a];
  for (const r of b) {
    if (!seen.has(refId(r))) {
      seen.add(refId(r));
      out.push(r);
    }
  }
  return out;
}

function refId(r: ObjectRef): string {
  return `${r.objectId}\u0000${r.contentHash}`;
}

/**
 * Facets merge two levels deep: producers group facets (OpenLineage keeps `run` and `job`
 * facets apart) and each event carries only some of them, so a later event's group must add to
 * the earlier one's rather than replace it.
 */
function mergeFacets(a: Record<string, unknown> | undefined, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...(a ?? {}) };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    out[k] = isPlainObject(prev) && isPlainObject(v) ? { ...prev, ...v } : v;
  }
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function byEventTime(a: { timeNs: bigint }, b: { timeNs: bigint }): number {
  return a.timeNs < b.timeNs ? -1 : a.timeNs > b.timeNs ? 1 : 0;
}
