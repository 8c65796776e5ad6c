import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import {
  Direction,
  EdgeKind,
  NodeKind,
  type NodeRef,
  type TraceResponse,
} from '../../common/gen/retrace/v1/lineage.js';
import type { LineageEvent, ObjectVersion, Run, Step } from '../../common/gen/retrace/v1/provenance.js';
import { fillStepStarts, openLineageStepId, parseDatasetObjectId, parseJobTransformName, runsNeedingStoredStart, toLineageEvents, type StoredRunStart } from '../../common/openlineage/to-lineage-events.js';
import { toRetraceResourcesFacet } from '../../common/openlineage/to-openlineage-event.js';
import { RETRACE_RESOURCES_FACET, type ValidatedOpenLineageEvent } from '../../common/openlineage/types.js';
import { validateOpenLineageBatch, validateOpenLineageEvent } from '../../common/openlineage/validate.js';
import { nanosToIso } from '../../common/time.js';
import type { LineageApi } from '../lineage/lineage-api.js';
import { datasetNodeId, jobNodeId, marquezRunState, NATIVE_NAMESPACE, nativeIdOf } from './marquez-ids.js';
import { runIndexOf } from './run-index.js';
import type { HttpRequest, HttpResponse, Route } from './router.js';

/** Marquez's default lineage depth. */
export const DEFAULT_LINEAGE_DEPTH = 20;
/** Deepest lineage query served (in Marquez hops: dataset to job or job to dataset pairs). */
export const MAX_LINEAGE_DEPTH = 10_000;
/** Most nodes one trace page may hold; a larger closure is answered with its first page. */
const TRACE_PAGE_SIZE = 100_000;

/** An edge of Marquez's lineage graph, by node id (`dataset:<ns>:<name>` or `job:<ns>:<name>`). */
export interface MarquezEdge {
  origin: string;
  destination: string;
}

/** A node of Marquez's lineage graph (`GET /api/v1/lineage`). */
export interface MarquezNode {
  id: string;
  type: 'DATASET' | 'JOB';
  data: Record<string, unknown>;
  inEdges: MarquezEdge[];
  outEdges: MarquezEdge[];
}

/**
 * Adds to a lineage graph's nodes the times (and a job's parentJobName) their own answers give
 * (`GET .../datasets/{name}`, `GET .../jobs/{name}`), which Marquez's node data always carries:
 * the Marquez read routes know them (createMarquezRoutes' `nodeTimes`).
 */
export type NodeTimes = (nodes: readonly MarquezNode[]) => Promise<void>;

/**
 * The OpenLineage face of the coordinator, Marquez-compatible:
 *
 * - `POST /api/v1/lineage`: one OpenLineage event; validated, converted and submitted
 *   atomically; 201 `{}`. Invalid events are InvalidArgumentErrors (400) naming the JSON path.
 * - `POST /api/v1/lineage/batch`: a JSON array of events; every one is validated and converted
 *   before one atomic submission (nothing is stored if any is invalid; paths are prefixed with
 *   `[i].`); 201 `{accepted, duplicates}`, counted in native events.
 * - `GET /api/v1/lineage?nodeId=dataset:<ns>:<name>|job:<ns>:<name>&depth=N`: Marquez's lineage
 *   graph `{graph: MarquezNode[]}` of everything connected to the node within N job hops
 *   (default 20), nodes sorted by id, edges deduplicated per job. Jobs are transforms, datasets
 *   are objects; native ones are in the `retrace` namespace (see marquez-ids.ts). A job whose
 *   runs never read or wrote a dataset has no step: its graph is the job alone. A closure
 *   beyond one trace page (100000 nodes) is answered with its first page.
 *   Unknown node: NotFoundError (404); malformed query: InvalidArgumentError (400).
 */
export function createOpenLineageRoutes(lineage: LineageApi, nodeTimes?: NodeTimes): Route[] {
  return [
    { method: 'POST', path: '/api/v1/lineage', handler: (req) => postEvent(lineage, req) },
    { method: 'POST', path: '/api/v1/lineage/batch', handler: (req) => postBatch(lineage, req) },
    { method: 'GET', path: '/api/v1/lineage', handler: (req) => getLineage(lineage, req, nodeTimes) },
  ];
}

async function postEvent(lineage: LineageApi, req: HttpRequest): Promise<HttpResponse> {
  if (req.body === undefined) throw new InvalidArgumentError('$', 'an OpenLineage event (JSON object) is required');
  const validated = validateOpenLineageEvent(req.body);
  const converted = convert(validated, '', req.boundPrincipal);
  const events = await withRunStarts(lineage, converted);
  // A JobEvent converts to nothing; there is nothing to store, but it was accepted.
  if (events.length > 0) await submitAs(lineage, req, events, sourcesOf([converted], events), [validated], () => '');
  return { status: 201, body: {} };
}

async function postBatch(lineage: LineageApi, req: HttpRequest): Promise<HttpResponse> {
  if (req.body === undefined) throw new InvalidArgumentError('$', 'a JSON array of OpenLineage events is required');
  const validated = validateOpenLineageBatch(req.body);
  const converted = validated.map((v, i) => convert(v, `[${i}]`, req.boundPrincipal));
  const events = await withRunStarts(lineage, converted.flat());
  if (events.length === 0) return { status: 201, body: { accepted: 0, duplicates: 0 } };
  const result = await submitAs(lineage, req, events, sourcesOf(converted, events), validated, (i) => `[${i}]`);
  return { status: 201, body: { accepted: result.accepted, duplicates: result.duplicates } };
}

/**
 * For each native event of `events`, the index of the OpenLineage event it came from:
 * `converted[i]` are event i's native events; withRunStarts keeps their ids and puts an event it
 * adds right after the one it adds it for.
 */
function sourcesOf(converted: readonly LineageEvent[][], events: readonly LineageEvent[]): number[] {
  const byId = new Map<string, number>();
  converted.forEach((list, i) => {
    for (const e of list) if (!byId.has(e.eventId)) byId.set(e.eventId, i);
  });
  const out: number[] = [];
  for (const e of events) out.push(byId.get(e.eventId) ?? out[out.length - 1] ?? 0);
  return out;
}

/**
 * Submits the converted events; a refusal of the store (a run's step already recorded under
 * another job, a dataset version already written by another run) names the OpenLineage event's
 * field, not the converted events' (`job.name`, `[1].outputs[0]`, not `events[5].step.transform`,
 * which the sender never wrote).
 */
async function submitAs(
  lineage: LineageApi,
  req: HttpRequest,
  events: LineageEvent[],
  sources: readonly number[],
  validated: readonly ValidatedOpenLineageEvent[],
  prefixOf: (i: number) => string,
): Promise<Awaited<ReturnType<LineageApi['submit']>>> {
  try {
    return await lineage.submit(events, { signal: req.signal });
  } catch (err) {
    const field = err instanceof InvalidArgumentError ? err.field : undefined;
    const m = field === undefined ? null : /^events\[(\d+)\](?:\.(.*))?$/.exec(field);
    if (!m || field === undefined) throw err;
    const i = sources[Number(m[1])] ?? 0;
    const source = validated[i];
    const detail = (err as InvalidArgumentError).message.startsWith(`${field}: `) ? (err as InvalidArgumentError).message.slice(field.length + 2) : (err as InvalidArgumentError).message;
    const { path, message } = openLineageFieldOf(m[2] ?? '', detail, source);
    const prefix = prefixOf(i);
    throw new InvalidArgumentError(prefix === '' ? path : path === '$' ? prefix : `${prefix}.${path}`, message, err);
  }
}

/** The OpenLineage field a store refusal at `nativePath` of a converted event is about, and what to say. */
function openLineageFieldOf(nativePath: string, detail: string, source: ValidatedOpenLineageEvent | undefined): { path: string; message: string } {
  const run = source?.kind === 'RunEvent' ? source.event : undefined;
  if (run && nativePath === 'step.transform') {
    const job = /transform "job:(.*)"$/.exec(detail)?.[1];
    return {
      path: 'job.name',
      message: `run ${run.run.runId} is already recorded under ${job === undefined ? 'another job' : `job ${JSON.stringify(job)}`}; all events of a run must name the same job (namespace and name)`,
    };
  }
  const generated = /^step\.generated\[(\d+)\]$/.exec(nativePath);
  if (run && generated) {
    // The step's outputs are the event's distinct outputs, in order.
    const seen = new Set<string>();
    const distinct: number[] = [];
    (run.outputs ?? []).forEach((o, j) => {
      const key = JSON.stringify([o.namespace, o.name]);
      if (!seen.has(key)) distinct.push(j);
      seen.add(key);
    });
    const j = distinct[Number(generated[1])];
    const by = /already generated by step:openlineage:(.*)$/.exec(detail)?.[1];
    if (j !== undefined) {
      return {
        path: `outputs[${j}]`,
        message: by === undefined ? detail : `this version of the dataset was already written by run ${by}; a version (its version facet) is written by one run: give this run's output a version of its own`,
      };
    }
  }
  if (run && nativePath === 'step.generated') return { path: 'outputs', message: detail };
  return { path: '$', message: `${nativePath === '' ? 'the event' : nativePath}: ${detail}` };
}

/**
 * The events with each run's step started when its run did (fillStepStarts): a START naming no
 * datasets, stored earlier, gives the step its COMPLETE makes its start, and one stored after the
 * COMPLETE starts the stored step. The store is read only for the runs fillStepStarts can use it
 * for (runsNeedingStoredStart).
 */
async function withRunStarts(lineage: LineageApi, events: LineageEvent[]): Promise<LineageEvent[]> {
  const stored = new Map<string, StoredRunStart>();
  for (const runId of runsNeedingStoredStart(events)) {
    const { run, step } = await runAndStep(lineage, runId);
    if (run) stored.set(runId, { runStartedAtNs: run.startedAtNs || '0', stepStarted: step !== undefined && (step.startedAtNs || '0') !== '0', stepStored: step !== undefined });
  }
  return fillStepStarts(events, (runId) => stored.get(runId));
}

/**
 * Conversion, with its (rare) errors moved under the event's path in the batch. A client token's
 * runs are recorded as caused by its name (`principal`), not by whom the ownership facet or the
 * producer names; the owner's and admin tokens' as those say.
 */
function convert(validated: ValidatedOpenLineageEvent, prefix: string, principal: string | undefined): LineageEvent[] {
  try {
    return toLineageEvents(validated, { principal });
  } catch (err) {
    if (err instanceof InvalidArgumentError && prefix !== '') {
      const field = err.field ?? '$';
      const message = err.message.startsWith(`${field}: `) ? err.message.slice(field.length + 2) : err.message;
      throw new InvalidArgumentError(`${prefix}.${field}`, message, err);
    }
    throw err;
  }
}

// ---- GET /api/v1/lineage ---------------------------------------------------------------------

/** The form of a Marquez node id, for messages. */
const NODE_ID_FORM = 'dataset:<namespace>:<name> or job:<namespace>:<name>';

async function getLineage(lineage: LineageApi, req: HttpRequest, nodeTimes: NodeTimes | undefined): Promise<HttpResponse> {
  const nodeId = req.query.get('nodeId');
  if (nodeId === null || nodeId === '') throw new InvalidArgumentError('nodeId', `is required: ${NODE_ID_FORM}`);
  let kind: NodeKind;
  if (nodeId.startsWith('dataset:')) kind = NodeKind.NODE_KIND_OBJECT;
  else if (nodeId.startsWith('job:')) kind = NodeKind.NODE_KIND_TRANSFORM;
  else throw new InvalidArgumentError('nodeId', `must be ${NODE_ID_FORM}, got ${JSON.stringify(nodeId.slice(0, 200))}`);
  // `dataset:warehouse` or `dataset:` names no node: a malformed id (400), not an unknown one (404).
  // Empty parts (`dataset::x`) are well formed, and name no node (events with one are refused): 404.
  if (!nodeId.slice(nodeId.indexOf(':') + 1).includes(':')) throw new InvalidArgumentError('nodeId', `must be ${NODE_ID_FORM}, got ${JSON.stringify(nodeId.slice(0, 200))} (no name)`);
  const depth = intParam(req, 'depth', DEFAULT_LINEAGE_DEPTH, 1, MAX_LINEAGE_DEPTH);

  // The id as stored first, then the native object or transform it names in the `retrace` namespace.
  const native = nativeIdOf(nodeId);
  for (const id of native === undefined ? [nodeId] : [nodeId, native]) {
    const start: NodeRef = { kind, id, contentHash: '' };
    let trace: TraceResponse;
    try {
      trace = await lineage.trace({
        start,
        direction: Direction.DIRECTION_ANY,
        // One Marquez hop (dataset to job) is two of ours (object to step to object).
        depth: 2 * depth,
        asOfNs: '0',
        pageSize: TRACE_PAGE_SIZE,
        pageToken: '',
        includeEdges: true,
        objectLevel: true,
      });
    } catch (err) {
      if (err instanceof NotFoundError) continue;
      throw err;
    }
    const graph = await buildGraph(lineage, start, trace);
    await nodeTimes?.(graph);
    return { status: 200, body: { graph } };
  }
  if (kind === NodeKind.NODE_KIND_TRANSFORM) {
    // A job whose runs touched no dataset has runs but no transform: it stands alone.
    const runs = (await runIndexOf(lineage).byJob()).get(nodeId);
    const newest = runs?.[0];
    if (newest !== undefined) {
      const { run, step } = await runAndStep(lineage, newest.runId);
      const graph: MarquezNode[] = [{ id: nodeId, type: 'JOB', data: jobDataFrom(nodeId, run, step, [], []), inEdges: [], outEdges: [] }];
      await nodeTimes?.(graph);
      return { status: 200, body: { graph } };
    }
  }
  throw new NotFoundError(`node ${JSON.stringify(nodeId)}`, 'nodeId');
}

/** A run and its OpenLineage step (whose code version and resources are the run's), each undefined when not stored. */
export async function runAndStep(lineage: LineageApi, runId: string): Promise<{ run: Run | undefined; step: Step | undefined }> {
  const run = await lineage.readRun(runId);
  const step = run === undefined ? undefined : await getOptional(lineage, NodeKind.NODE_KIND_STEP, openLineageStepId(runId), 'step');
  return { run, step };
}

/** The integer query parameter `name` in [min, max], `dflt` when absent or empty; else 400 naming it. */
export function intParam(req: HttpRequest, name: string, dflt: number, min: number, max: number): number {
  const text = req.query.get(name);
  if (text === null || text === '') return dflt;
  if (!/^\d{1,15}$/.test(text) || Number(text) < min || Number(text) > max) throw new InvalidArgumentError(name, `must be an integer from ${min} to ${max}, got ${JSON.stringify(text.slice(0, 40))}`);
  return Number(text);
}

/** What one job (transform) aggregates: its steps, the latest first. */
interface JobAccumulator {
  steps: { stepId: string; timeNs: bigint }[];
}

/**
 * Folds the trace's steps into their transforms (Marquez jobs) and its objects into datasets,
 * and its step-level edges into job-level ones (deduplicated: many runs of a job read the same
 * dataset once in Marquez's graph). Nodes and edges carry Marquez ids (marquez-ids.ts).
 */
async function buildGraph(lineage: LineageApi, start: NodeRef, trace: TraceResponse): Promise<MarquezNode[]> {
  /** Marquez id -> object id. */
  const datasets = new Map<string, string>();
  /** Marquez id -> when the dataset was first seen (ms), for the datasets a job's data lists. */
  const datasetTimes = new Map<string, number>();
  /** Marquez id -> the job's steps. */
  const jobs = new Map<string, JobAccumulator>();
  const jobOfStep = new Map<string, string>();
  const addDataset = (objectId: string): string => {
    const id = datasetNodeId(objectId);
    // Where a native id and an OpenLineage one share a Marquez id, the OpenLineage one is served.
    if (!datasets.has(id) || objectId.startsWith('dataset:')) datasets.set(id, objectId);
    return id;
  };

  // Trace leaves an object start out of its nodes (a transform start comes back as its steps).
  if (start.kind === NodeKind.NODE_KIND_OBJECT) addDataset(start.id);
  for (const node of trace.nodes) {
    const ref = node.node;
    if (!ref) continue;
    if (ref.kind === NodeKind.NODE_KIND_OBJECT || ref.kind === NodeKind.NODE_KIND_OBJECT_VERSION) {
      const id = addDataset(ref.id);
      const ms = Number(BigInt(node.timeNs || '0') / 1_000_000n);
      if (ms > (datasetTimes.get(id) ?? Number.NEGATIVE_INFINITY)) datasetTimes.set(id, ms);
    } else if (ref.kind === NodeKind.NODE_KIND_STEP) {
      const transform = jobNodeId(node.label !== '' ? node.label : await transformOf(lineage, ref.id));
      jobOfStep.set(node.key, transform);
      const job = jobs.get(transform) ?? { steps: [] };
      job.steps.push({ stepId: ref.id, timeNs: BigInt(node.timeNs || '0') });
      jobs.set(transform, job);
    }
  }

  const edges = new Map<string, MarquezEdge>();
  /** The Marquez id of a trace key; a promise only where the store is asked (a step not in the page). */
  const idOf = (key: string): string | undefined | Promise<string> => {
    if (key.startsWith('object:')) return addDataset(key.slice('object:'.length));
    if (key.startsWith('version:')) return addDataset(key.slice('version:'.length, key.lastIndexOf('@sha256:')));
    if (!key.startsWith('step:')) return undefined;
    return jobOfStep.get(key) ?? transformOfStep(key);
  };
  // A step outside this page of nodes (a transform start's own step, say): ask the store.
  const transformOfStep = async (key: string): Promise<string> => {
    const transform = jobNodeId(await transformOf(lineage, key.slice('step:'.length)));
    jobOfStep.set(key, transform);
    if (!jobs.has(transform)) jobs.set(transform, { steps: [{ stepId: key.slice('step:'.length), timeNs: 0n }] });
    return transform;
  };
  for (const edge of trace.edges) {
    if (edge.kind !== EdgeKind.EDGE_KIND_USED && edge.kind !== EdgeKind.EDGE_KIND_GENERATED_BY) continue;
    // Awaited only when a promise: an await for each end of 120,000 edges took a job's graph
    // over 20,000 records half a second.
    const fromId = idOf(edge.from);
    const from = typeof fromId === 'object' ? await fromId : fromId;
    const toId = idOf(edge.to);
    const to = typeof toId === 'object' ? await toId : toId;
    if (from === undefined || to === undefined) continue;
    // Both kinds point against the data flow: USED goes step -> object it read, GENERATED_BY
    // object -> step that wrote it. Marquez's edges follow the data: origin = to, destination = from.
    const e: MarquezEdge = { origin: to, destination: from };
    edges.set(`${e.origin}\u0000${e.destination}`, e);
  }

  const inEdges = new Map<string, MarquezEdge[]>();
  const outEdges = new Map<string, MarquezEdge[]>();
  const sortedEdges = [...edges.values()].sort((a, b) => compare(a.origin, b.origin) || compare(a.destination, b.destination));
  for (const e of sortedEdges) {
    push(outEdges, e.origin, e);
    push(inEdges, e.destination, e);
  }

  const nodes: MarquezNode[] = [];
  const datasetEntries = [...datasets.entries()];
  // All at once (a trace page holds at most TRACE_PAGE_SIZE): a step's event describes the
  // version it read and the one it wrote, and is read and decoded once. A getNode each took a
  // job's graph over 20,000 records 10 s for its 60,000 datasets.
  const versions = await lineage.readObjects(datasetEntries.map(([, objectId]) => objectId));
  datasetEntries.forEach(([id, objectId], i) => {
    nodes.push({ id, type: 'DATASET', data: datasetDataFrom(objectId, versions[i] ?? []), inEdges: inEdges.get(id) ?? [], outEdges: outEdges.get(id) ?? [] });
  });
  const jobEntries = [...jobs.entries()];
  const jobData = await Promise.all(
    jobEntries.map(([id, acc]) => jobDataOf(lineage, id, acc, inEdges.get(id) ?? [], outEdges.get(id) ?? [], (d) => datasetTimes.get(d) ?? 0)),
  );
  jobEntries.forEach(([id], i) => {
    nodes.push({ id, type: 'JOB', data: jobData[i] ?? {}, inEdges: inEdges.get(id) ?? [], outEdges: outEdges.get(id) ?? [] });
  });
  return nodes.sort((a, b) => compare(a.id, b.id));
}

async function transformOf(lineage: LineageApi, stepId: string): Promise<string> {
  const res = await lineage.getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: stepId, contentHash: '' } });
  return res.body?.$case === 'step' ? res.body.value.transform : `step:${stepId}`;
}

/**
 * Marquez's dataset data: identity, the latest version's schema fields and facets. Given a
 * `version`, that version's, read from nothing else (`versions` is then 0).
 */
export async function datasetDataOf(lineage: LineageApi, id: string, version?: ObjectVersion): Promise<Record<string, unknown>> {
  if (version !== undefined) return datasetDataFrom(id, [], version);
  try {
    const res = await lineage.getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT, id, contentHash: '' } });
    return datasetDataFrom(id, res.body?.$case === 'object' ? res.body.value.versions : []);
  } catch (err) {
    // An object known only as an input has no stored versions; its identity is all there is.
    if (!(err instanceof NotFoundError)) throw err;
    return datasetDataFrom(id, []);
  }
}

/**
 * datasetDataOf from the object's stored `versions` (the latest is the last with the greatest
 * created_at), or from one `version` alone (`versions` is then 0).
 */
function datasetDataFrom(id: string, versions: readonly ObjectVersion[], version?: ObjectVersion): Record<string, unknown> {
  let latest: ObjectVersion | undefined = version;
  for (const v of versions) {
    if (latest === undefined || BigInt(v.createdAtNs || '0') >= BigInt(latest.createdAtNs || '0')) latest = v;
  }
  const attributes = latest?.attributes ?? {};
  const parsed = parseDatasetObjectId(id);
  const namespace = attributes['openlineage.namespace'] ?? parsed?.namespace ?? NATIVE_NAMESPACE;
  const name = attributes['openlineage.name'] ?? parsed?.name ?? id;
  const facets = (latest?.facets ?? {}) as Record<string, unknown>;
  const createdAt = latest && latest.createdAtNs !== '0' ? nanosToIso(latest.createdAtNs) : null;
  const documentation = facetMap(facets['documentation']);
  return {
    id: { namespace, name },
    type: 'DB_TABLE',
    name,
    physicalName: name,
    namespace,
    sourceName: namespace,
    fields: schemaFields(facets['schema']),
    // Marquez always sends these; its web UI maps over tags.
    tags: [],
    description: typeof documentation['description'] === 'string' ? documentation['description'] : null,
    facets,
    currentVersion: latest?.contentHash ?? null,
    versions: versions.length,
    createdAt,
    lastModifiedAt: createdAt,
  };
}

function schemaFields(schema: unknown): { name: string; type: string | null; tags: string[]; description: string | null }[] {
  if (schema === null || typeof schema !== 'object') return [];
  const fields = (schema as { fields?: unknown }).fields;
  if (!Array.isArray(fields)) return [];
  return fields.flatMap((f: unknown) => {
    if (f === null || typeof f !== 'object') return [];
    const field = f as Record<string, unknown>;
    if (typeof field['name'] !== 'string') return [];
    return [{
      name: field['name'],
      type: typeof field['type'] === 'string' ? field['type'] : null,
      tags: [],
      description: typeof field['description'] === 'string' ? field['description'] : null,
    }];
  });
}

/** Marquez's job data: identity, its inputs and outputs, and its latest step's run (from the store). */
async function jobDataOf(
  lineage: LineageApi,
  id: string,
  acc: JobAccumulator,
  inEdges: readonly MarquezEdge[],
  outEdges: readonly MarquezEdge[],
  timeOf: (datasetId: string) => number,
): Promise<Record<string, unknown>> {
  const latestStep = [...acc.steps].sort((a, b) => (a.timeNs < b.timeNs ? 1 : a.timeNs > b.timeNs ? -1 : 0))[0];
  let step: Step | undefined;
  let run: Run | undefined;
  if (latestStep !== undefined) {
    step = await getOptional(lineage, NodeKind.NODE_KIND_STEP, latestStep.stepId, 'step');
    if (step?.runId) run = await lineage.readRun(step.runId);
  }
  return jobDataFrom(id, run, step, inEdges, outEdges, timeOf);
}

/**
 * Most records (native `record:` objects) a job's `inputs` (and, apart, its `outputs`) list. A
 * native job works record by record: its steps over 20,000 records read and wrote 40,000
 * records, each a Marquez dataset, and one job came to 3.4 MB (a job list of 3 jobs, 11.2 MB).
 * Other datasets (a reference table, a report, every OpenLineage dataset) are always listed.
 * The job's graph edges (`GET /api/v1/lineage`) keep every record.
 */
export const MAX_JOB_RECORDS = 100;

const RECORD_PREFIX = `dataset:${NATIVE_NAMESPACE}:record:`;

/**
 * The ends of a job's edges (each end once) it lists as inputs or outputs, in id order: every
 * dataset that is not a record, and the records up to MAX_JOB_RECORDS, else the MAX_JOB_RECORDS
 * first seen last (`timeOf`, ms; ties by id).
 */
function jobDatasets(edges: readonly MarquezEdge[], end: 'origin' | 'destination', timeOf: (datasetId: string) => number): string[] {
  const ids = edges.map((e) => e[end]);
  const records = ids.filter((id) => id.startsWith(RECORD_PREFIX));
  if (records.length <= MAX_JOB_RECORDS) return ids.sort(compare);
  const times = records.map(timeOf);
  // Only records first seen no earlier than the MAX_JOB_RECORDS-th latest can be listed: those
  // are sorted by time and id, not the 20,000 a job over 20,000 records has.
  const cut = Float64Array.from(times).sort()[times.length - MAX_JOB_RECORDS] as number;
  const candidates = records.flatMap((id, i) => ((times[i] as number) >= cut ? [{ id, time: times[i] as number }] : []));
  const latest = candidates.sort((a, b) => b.time - a.time || compare(a.id, b.id)).slice(0, MAX_JOB_RECORDS);
  return [...ids.filter((id) => !id.startsWith(RECORD_PREFIX)), ...latest.map((c) => c.id)].sort(compare);
}

/**
 * Marquez's job data of the job `id` (a Marquez id) from its latest run and that run's step;
 * inputs and outputs from its edges, each with at most MAX_JOB_RECORDS records (the latest by `timeOf`).
 */
export function jobDataFrom(
  id: string,
  run: Run | undefined,
  step: Step | undefined,
  inEdges: readonly MarquezEdge[],
  outEdges: readonly MarquezEdge[],
  timeOf: (datasetId: string) => number = () => 0,
): Record<string, unknown> {
  const { namespace, name } = parseJobTransformName(id) ?? { namespace: NATIVE_NAMESPACE, name: id };
  const jobFacets = facetMap((run?.facets ?? step?.facets)?.['job']);
  const jobType = facetMap(jobFacets['jobType']);
  const documentation = facetMap(jobFacets['documentation']);
  const location = facetMap(jobFacets['sourceCodeLocation']);
  const split = (id: string): { namespace: string; name: string } => parseDatasetObjectId(id) ?? { namespace: '', name: id };
  return {
    id: { namespace, name },
    type: typeof jobType['processingType'] === 'string' ? jobType['processingType'] : 'BATCH',
    name,
    simpleName: name,
    namespace,
    // At most MAX_JOB_RECORDS records each, the latest: a record-level job touches one per record.
    inputs: jobDatasets(inEdges, 'origin', timeOf).map(split),
    outputs: jobDatasets(outEdges, 'destination', timeOf).map(split),
    description: typeof documentation['description'] === 'string' ? documentation['description'] : null,
    location: typeof location['url'] === 'string' ? location['url'] : null,
    // Marquez always sends these; its web UI maps over tags. Jobs have no Marquez job version here.
    tags: [],
    currentVersion: null,
    facets: jobFacets,
    latestRun: run === undefined ? null : runData(run, step),
  };
}

/**
 * A run as Marquez shows it: its state in Marquez's RunState (marquez-ids.ts), `durationMs` when
 * it started and ended, and its job as `jobVersion` (the code version, where known). The step's
 * measured resources go out as the `retrace_resources` run facet (the one producers send them
 * in), unless the producer sent that facet itself.
 */
export function runData(run: Run, step: Step | undefined): Record<string, unknown> {
  const iso = (ns: string | undefined): string | null => (ns && ns !== '0' ? nanosToIso(ns) : null);
  const facets = facetMap(run.facets?.['run']);
  const startedAt = iso(run.startedAtNs);
  const endedAt = iso(run.endedAtNs);
  const nominal = facetMap(facets['nominalTime']);
  const job = parseJobTransformName(run.name);
  return {
    id: run.runId,
    createdAt: startedAt ?? endedAt,
    updatedAt: endedAt ?? startedAt,
    nominalStartTime: typeof nominal['nominalStartTime'] === 'string' ? nominal['nominalStartTime'] : null,
    nominalEndTime: typeof nominal['nominalEndTime'] === 'string' ? nominal['nominalEndTime'] : null,
    state: marquezRunState(run.state),
    startedAt,
    endedAt,
    durationMs: startedAt !== null && endedAt !== null ? Number((BigInt(run.endedAtNs) - BigInt(run.startedAtNs)) / 1_000_000n) : null,
    args: {},
    jobVersion: job === undefined ? null : { namespace: job.namespace, name: job.name, version: step?.codeVersion || null },
    parentRunId: run.parentRunId || null,
    codeVersion: step?.codeVersion || null,
    facets: runFacetsOf(run, step),
  };
}

/** The run facets a run is served with: the producer's, plus the measured resources (see runData). */
export function runFacetsOf(run: Run, step: Step | undefined): Record<string, unknown> {
  const facets = facetMap(run.facets?.['run']);
  return step?.resources && facets[RETRACE_RESOURCES_FACET] === undefined ? { ...facets, [RETRACE_RESOURCES_FACET]: toRetraceResourcesFacet(step.resources) } : facets;
}

export async function getOptional<K extends 'step' | 'run'>(
  lineage: LineageApi,
  kind: NodeKind,
  id: string,
  expected: K,
): Promise<(K extends 'step' ? Step : Run) | undefined> {
  try {
    const res = await lineage.getNode({ node: { kind, id, contentHash: '' } });
    if (res.body?.$case === expected) return res.body.value as K extends 'step' ? Step : Run;
    return undefined;
  } catch (err) {
    if (err instanceof NotFoundError) return undefined;
    throw err;
  }
}

export function facetMap(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

/** Code-unit order of two strings, for sorts that must not depend on the locale. */
export function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
