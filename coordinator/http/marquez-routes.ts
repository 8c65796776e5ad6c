import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import { NodeKind } from '../../common/gen/retrace/v1/lineage.js';
import type { ObjectVersion, Run, Step } from '../../common/gen/retrace/v1/provenance.js';
import { openLineageStepId, parseJobTransformName } from '../../common/openlineage/to-lineage-events.js';
import { isUuid } from '../../common/openlineage/validate.js';
import { nanosToIso } from '../../common/time.js';
import type { LineageApi, ObjectList } from '../lineage/lineage-api.js';
import { datasetNodeId, jobNodeId, NATIVE_NAMESPACE } from './marquez-ids.js';
import { compare, datasetDataOf, facetMap, getOptional, intParam, jobDataFrom, MAX_JOB_RECORDS, runAndStep, runData, runFacetsOf, type MarquezEdge, type NodeTimes } from './openlineage-routes.js';
import { firstInOrder, MarquezDatasets, widen } from './marquez-datasets.js';
import { runIndexOf, type RunEntry } from './run-index.js';
import type { HttpRequest, Route } from './router.js';

/** Marquez's default page size for lists, and the largest page served. */
const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;
/** Steps and datasets of one job read for its data, at most (its latest run is among them). */
const MAX_JOB_NODES = 100_000;
/** Marquez's default number of search results. */
const DEFAULT_SEARCH_LIMIT = 10;
/** The start of a Marquez id in the native namespace: an object id with it is its own Marquez id. */
const NATIVE_DATASET_PREFIX = `dataset:${NATIVE_NAMESPACE}:`;
/** The start of a native record's object id (a record's Marquez id is NATIVE_DATASET_PREFIX and this). */
const NATIVE_RECORD_PREFIX = 'record:';

/** A dataset or job of the OpenLineage face: its Marquez id parts and when it was first seen. */
interface Entry {
  type: 'DATASET' | 'JOB';
  namespace: string;
  name: string;
  /** `dataset:<ns>:<name>` / `job:<ns>:<name>`, as in the lineage graph. */
  nodeId: string;
  /** The object or transform in the store; undefined for a job that has runs but no step. */
  storeId: string | undefined;
  /** A job's runs by name (OpenLineage jobs), newest first; empty for datasets and native jobs. */
  runs: RunEntry[];
  firstSeenMs: number;
  lastChangedMs: number;
}

/**
 * Marquez's read API over the store, so tools written for Marquez (its web UI, `marquez-python`)
 * can browse Retrace: namespaces, datasets and jobs with their latest versions and runs, a job's
 * runs, a dataset's versions, a run and its facets by id, and search. Datasets are the objects
 * and jobs the transforms, under their Marquez ids (`dataset:<ns>:<name>`, `job:<ns>:<name>`;
 * native ones in the `retrace` namespace, see marquez-ids.ts). An OpenLineage job whose runs
 * read and wrote no dataset has no transform; its runs (by name) make it a job all the same.
 * Names in paths are percent-encoded as Marquez's clients send them. Lists take `limit`
 * (default 100, 0 to 1000; 0 gives an empty page as in Marquez) and `offset`, with `totalCount`; namespaces, datasets and jobs come sorted by
 * name, runs and versions newest first. Unknown namespace, dataset, job or run: 404; a bad
 * query parameter: 400 naming it. `nodeTimes` dates the lineage graph's nodes as these answers do,
 * for the OpenLineage routes, which serve the graph.
 */
export function createMarquezRoutes(lineage: LineageApi): { routes: Route[]; nodeTimes: NodeTimes } {
  const runIndex = runIndexOf(lineage);
  /** The datasets served, without an Entry per object (see MarquezDatasets). */
  const datasets = (): MarquezDatasets => MarquezDatasets.of(lineage.listObjects());
  const datasetEntry = (d: MarquezDatasets, i: number): Entry => {
    const storeId = d.objects.objectId(i);
    return { type: 'DATASET', namespace: d.namespaceOf(i), name: d.nameOf(i), nodeId: datasetNodeId(storeId), storeId, runs: [], firstSeenMs: d.objects.firstSeenMs(i), lastChangedMs: d.objects.lastChangedMs(i) };
  };
  const jobs = async (): Promise<Entry[]> => {
    const out: Entry[] = [];
    const runs = await runIndex.byJob();
    const byId = new Map<string, Entry>();
    for (const n of lineage.listNodes(NodeKind.NODE_KIND_TRANSFORM, '')) {
      const nodeId = jobNodeId(n.id);
      const p = parseJobTransformName(nodeId);
      if (p && (!byId.has(nodeId) || n.id.startsWith('job:'))) byId.set(nodeId, { type: 'JOB', ...p, nodeId, storeId: n.id, runs: [], firstSeenMs: n.firstSeenMs, lastChangedMs: n.lastChangedMs });
    }
    for (const [job, jobRuns] of runs) {
      const p = parseJobTransformName(job);
      if (!p) continue;
      const e = byId.get(job) ?? { type: 'JOB', ...p, nodeId: job, storeId: undefined, runs: [], firstSeenMs: Number.POSITIVE_INFINITY, lastChangedMs: 0 };
      e.runs = jobRuns;
      for (const r of jobRuns) {
        e.firstSeenMs = Math.min(e.firstSeenMs, r.firstSeenMs);
        e.lastChangedMs = Math.max(e.lastChangedMs, r.lastChangedMs);
      }
      byId.set(job, e);
    }
    // A loop, not out.push(...byId.values()): a spread of 120,000 entries overflowed the call stack.
    for (const e of byId.values()) out.push(e);
    return out;
  };
  /** Every namespace a dataset or job is in, with when it was first seen and last changed (see namespaces). */
  const spans = async (): Promise<Map<string, { first: number; last: number }>> => {
    const all = datasets().spans();
    for (const e of await jobs()) {
      const updated = updatedMs(e);
      widen(all, e.namespace, e.firstSeenMs, typeof updated === 'number' ? updated : await updated);
    }
    return all;
  };
  const noNamespace = (namespace: string): NotFoundError => new NotFoundError(`namespace ${JSON.stringify(namespace)}`, 'namespace');
  /** The datasets of `namespace` by place, in no order; 404 for a namespace with no dataset or job. */
  const datasetsIn = async (namespace: string): Promise<{ d: MarquezDatasets; places: number[] }> => {
    const d = datasets();
    const places = d.inNamespace(namespace);
    if (places.length === 0 && !(await jobs()).some((e) => e.namespace === namespace)) throw noNamespace(namespace);
    return { d, places };
  };
  const findDataset = async (req: HttpRequest): Promise<Entry> => {
    const namespace = req.params['namespace'] ?? '';
    const name = req.params['dataset'];
    const { d, places } = await datasetsIn(namespace);
    const i = places.length === 0 || name === undefined ? undefined : d.find(namespace, name);
    if (i === undefined) throw new NotFoundError(`dataset ${JSON.stringify(name)} in namespace ${JSON.stringify(req.params['namespace'])}`, 'dataset');
    return datasetEntry(d, i);
  };
  const jobsIn = async (namespace: string): Promise<Entry[]> => {
    const all = (await jobs()).filter((e) => e.namespace === namespace);
    if (all.length === 0 && datasets().inNamespace(namespace).length === 0) throw noNamespace(namespace);
    return all.sort((a, b) => compare(a.name, b.name));
  };
  const findJob = async (req: HttpRequest): Promise<Entry> => {
    const e = (await jobsIn(req.params['namespace'] ?? '')).find((d) => d.name === req.params['job']);
    if (!e) throw new NotFoundError(`job ${JSON.stringify(req.params['job'])} in namespace ${JSON.stringify(req.params['namespace'])}`, 'job');
    return e;
  };
  const jobData = async (e: Entry): Promise<Record<string, unknown>> => {
    let inEdges: MarquezEdge[] = [];
    let outEdges: MarquezEdge[] = [];
    let data: Record<string, unknown> | undefined;
    if (e.storeId !== undefined) {
      // The job's own steps and the datasets they read and wrote (depth 1 from a transform), and
      // no data of those datasets: a job's cost stays its own, however many jobs share an input.
      // From the graph's ids, not a trace made into messages and folded (a list of 3 jobs over
      // 20,000 records took 0.6 s so, nearly all of it building and dropping 60,000 nodes a job).
      const found = lineage.transformObjects(e.storeId, MAX_JOB_NODES);
      if (!found) throw new NotFoundError(`job ${JSON.stringify(e.nodeId)}`, 'job');
      // Only a job's latest records are shown (see shownObjects), unless its runs by name serve
      // its data (they order records by id alone) or two of its objects may share a Marquez id.
      const cut = e.runs.length === 0 && !anyStartsWith(found.used, NATIVE_DATASET_PREFIX) && !anyStartsWith(found.generated, NATIVE_DATASET_PREFIX);
      const times = new Map<string, number>();
      const datasets = (objects: ObjectList): string[] => {
        const ids = new Set<string>();
        for (const o of shownObjects(objects, cut)) {
          const id = datasetNodeId(o.objectId);
          ids.add(id);
          if (o.firstSeenMs > (times.get(id) ?? Number.NEGATIVE_INFINITY)) times.set(id, o.firstSeenMs);
        }
        return [...ids];
      };
      inEdges = datasets(found.used).map((id) => ({ origin: id, destination: e.nodeId }));
      outEdges = datasets(found.generated).map((id) => ({ origin: e.nodeId, destination: id }));
      const step = found.latestStepId === undefined ? undefined : await getOptional(lineage, NodeKind.NODE_KIND_STEP, found.latestStepId, 'step');
      const run = step?.runId ? await lineage.readRun(step.runId) : undefined;
      data = jobDataFrom(e.nodeId, run, step, inEdges, outEdges, (id) => wholeMs(times.get(id) ?? 0));
    }
    // The newest run by name, which may have touched no dataset (so have no step), is the latest.
    const newest = e.runs[0];
    let latest: Run | undefined;
    if (newest !== undefined && (data === undefined || facetMap(data['latestRun'])['id'] !== newest.runId)) {
      const { run, step } = await runAndStep(lineage, newest.runId);
      data = jobDataFrom(e.nodeId, run, step, inEdges, outEdges);
      latest = run;
    }
    if (data === undefined) throw new NotFoundError(`job ${JSON.stringify(e.nodeId)}`, 'job');
    return { ...data, ...(await jobTimes(e, data, latest)) };
  };
  /**
   * A job's createdAt, updatedAt and parentJobName, from its data's latestRun (`latest`: that
   * run, when it was read as the newest run by name).
   */
  const jobTimes = async (e: Entry, data: Record<string, unknown>, latest: Run | undefined): Promise<{ createdAt: string; updatedAt: string; parentJobName: string | null }> => {
    const latestRun = facetMap(data['latestRun']);
    const parentRunId = typeof latestRun['parentRunId'] === 'string' ? latestRun['parentRunId'] : undefined;
    let parentJobName: string | null = null;
    if (parentRunId !== undefined) {
      const parent = await lineage.readRun(parentRunId);
      if (parent?.name) parentJobName = (parseJobTransformName(parent.name) ?? { name: parent.name }).name;
    }
    // The job changed when its latest run last did: a COMPLETE after the START moves it on,
    // whether or not that run has a step (the step keeps the time its outputs were written).
    const ended = endedMsOf(latest) ?? isoMs(latestRun['endedAt']);
    return {
      createdAt: new Date(e.firstSeenMs).toISOString(),
      updatedAt: new Date(Math.max(e.lastChangedMs, ended)).toISOString(),
      parentJobName,
    };
  };
  /**
   * When an entry last changed as its own `updatedAt` says: a job's latest run's end counts (a
   * COMPLETE later than the last START moves the job on, see jobData); a dataset's is lastChangedMs.
   * A number where nothing is read, so a namespace list need not await each of its 80,000 datasets.
   */
  const updatedMs = (e: Entry): number | Promise<number> => {
    const newest = e.runs[0];
    if (newest === undefined) return e.lastChangedMs;
    return lineage.readRun(newest.runId).then((run) => {
      return Math.max(e.lastChangedMs, endedMsOf(run) ?? 0);
    });
  };
  const datasetData = async (e: Entry): Promise<Record<string, unknown>> => ({
    ...(await datasetDataOf(lineage, e.storeId ?? e.nodeId)),
    ...datasetTimes(e),
  });
  // Marquez's createdAt is when the dataset first appeared; its latest version's time is lastModifiedAt.
  const datasetTimes = (e: Entry): { createdAt: string; firstSeenAt: string; updatedAt: string } => timesOf(e.firstSeenMs, e.lastChangedMs);
  // The lineage graph's nodes carry the times their own answers give (Marquez's JobData and
  // DatasetData always have createdAt and updatedAt); the jobs and datasets are listed once a graph.
  const nodeTimes: NodeTimes = async (nodes) => {
    const jobNodes = nodes.filter((n) => n.type === 'JOB');
    const byId = jobNodes.length === 0 ? new Map<string, Entry>() : new Map((await jobs()).map((e) => [e.nodeId, e]));
    for (const n of jobNodes) {
      const e = byId.get(n.id);
      if (e === undefined) continue;
      const newest = e.runs[0];
      const latest = newest !== undefined && facetMap(n.data['latestRun'])['id'] !== newest.runId ? await lineage.readRun(newest.runId) : undefined;
      Object.assign(n.data, await jobTimes(e, n.data, latest));
    }
    const datasetNodes = nodes.filter((n) => n.type === 'DATASET');
    const d = datasetNodes.length === 0 ? undefined : datasets();
    for (const n of datasetNodes) {
      const { namespace, name } = n.data as { namespace?: unknown; name?: unknown };
      const i = d === undefined || typeof namespace !== 'string' || typeof name !== 'string' ? undefined : d.find(namespace, name);
      // From the place alone, no entry (its id and Marquez id made strings) for each of 60,000.
      if (i !== undefined) Object.assign(n.data, timesOf((d as MarquezDatasets).objects.firstSeenMs(i), (d as MarquezDatasets).objects.lastChangedMs(i)));
    }
  };

  const routes: Route[] = [
    {
      method: 'GET',
      path: '/api/v1/namespaces',
      handler: async (req) => {
        // Marquez pages namespaces too (limit, offset); a client paging through them must not get them all each time.
        const page = paged(namespaces(await spans()), req);
        return { status: 200, body: { namespaces: page } };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}',
      handler: async (req) => {
        const name = req.params['namespace'];
        const span = name === undefined ? undefined : (await spans()).get(name);
        if (!span) throw noNamespace(req.params['namespace'] ?? '');
        const ns = namespaces(new Map([[name as string, span]]))[0];
        return { status: 200, body: ns };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/datasets',
      handler: async (req) => {
        const { d, places } = await datasetsIn(req.params['namespace'] ?? '');
        const { offset, limit } = pageOf(req);
        // Sorted by name as far as the page goes, not the 80,000 datasets of a namespace.
        const page = firstInOrder(places, Math.min(offset + limit, places.length), (a, b) => d.compareNames(a, b)).slice(offset).map((i) => datasetEntry(d, i));
        return { status: 200, body: { totalCount: places.length, datasets: await inTurn(page, datasetData) } };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/datasets/{dataset}',
      handler: async (req) => ({ status: 200, body: await datasetData(await findDataset(req)) }),
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/datasets/{dataset}/versions',
      handler: async (req) => ({ status: 200, body: await datasetVersions(lineage, await findDataset(req), req) }),
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/jobs',
      handler: async (req) => {
        const all = await jobsIn(req.params['namespace'] ?? '');
        const page = paged(all, req);
        return { status: 200, body: { totalCount: all.length, jobs: await inTurn(page, jobData) } };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/jobs/{job}',
      handler: async (req) => ({ status: 200, body: await jobData(await findJob(req)) }),
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/jobs/{job}/runs',
      handler: async (req) => ({ status: 200, body: await jobRuns(lineage, await findJob(req), req) }),
    },
    {
      method: 'GET',
      path: '/api/v1/jobs/runs/{id}',
      handler: async (req) => {
        const id = req.params['id'] ?? '';
        const { run, step } = await runById(lineage, id);
        if (!run) throw new NotFoundError(`run ${JSON.stringify(id)}`, 'id');
        return { status: 200, body: runData(run, step) };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/jobs/runs/{id}/facets',
      handler: async (req) => {
        const id = req.params['id'] ?? '';
        const type = req.query.get('type')?.toLowerCase();
        if (type !== 'run' && type !== 'job') throw new InvalidArgumentError('type', `is required: run or job, got ${JSON.stringify((req.query.get('type') ?? '').slice(0, 40))}`);
        const { run, step } = await runById(lineage, id);
        if (!run) throw new NotFoundError(`run ${JSON.stringify(id)}`, 'id');
        return { status: 200, body: { runId: run.runId, facets: type === 'run' ? runFacetsOf(run, step) : facetMap((run.facets ?? step?.facets)?.['job']) } };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/search',
      handler: async (req) => ({ status: 200, body: await search(datasets, jobs, updatedMs, req) }),
    },
  ];
  return { routes, nodeTimes };
}

/**
 * The run (and its OpenLineage step) a run id in a Marquez path names. Run ids are stored as
 * their producer sent them; Marquez's are UUIDs, which it takes in any case (a user pastes one
 * upper-case from a log or a UI): a UUID not stored as given is looked up lower-case, then
 * upper-case, the forms producers send. Other ids (native runs) match exactly.
 */
async function runById(lineage: LineageApi, id: string): Promise<{ run: Run | undefined; step: Step | undefined }> {
  const ids = isUuid(id) ? new Set([id, id.toLowerCase(), id.toUpperCase()]) : [id];
  for (const runId of ids) {
    const found = await runAndStep(lineage, runId);
    if (found.run) return found;
  }
  return { run: undefined, step: undefined };
}

/**
 * `GET .../jobs/{job}/runs`: Marquez's `{runs, totalCount}`, newest first. An OpenLineage job's
 * runs are those named after it; a native job's are the native runs some of its steps belong
 * to, each served with the job's latest step in it (the one recorded last) and ordered by that
 * step's start. The graph's run -> step membership finds them: one step is read per run, not
 * every step of the job (a run list over 20,000 records read 20,000 steps, 7.8 s, for 3 runs).
 */
async function jobRuns(lineage: LineageApi, e: Entry, req: HttpRequest): Promise<{ runs: Record<string, unknown>[]; totalCount: number }> {
  let ids: { runId: string; stepId: string | undefined }[];
  if (e.storeId === undefined || e.storeId.startsWith('job:')) {
    ids = e.runs.map((r) => ({ runId: r.runId, stepId: openLineageStepId(r.runId) }));
  } else {
    const found: { runId: string; stepId: string; timeNs: bigint }[] = [];
    // OpenLineage runs (`job:` names) have only their own `job:` transform's steps.
    for (const r of await runIndexOf(lineage).all()) {
      if (r.job.startsWith('job:')) continue;
      // The job's step in the run recorded last, from the graph: the run's steps made into keys
      // and matched against the job's took 60 ms a run list over 20,000 records.
      const stepId = lineage.runStepOf(r.runId, e.storeId);
      if (stepId === undefined) continue;
      const step = await getOptional(lineage, NodeKind.NODE_KIND_STEP, stepId, 'step');
      if (!step || step.runId !== r.runId) continue;
      found.push({ runId: r.runId, stepId, timeNs: BigInt(step.startedAtNs || '0') });
    }
    ids = found.sort((a, b) => (a.timeNs < b.timeNs ? 1 : a.timeNs > b.timeNs ? -1 : 0));
  }
  const page = paged(ids, req);
  const runs: Record<string, unknown>[] = [];
  for (const { runId, stepId } of page) {
    const run = await lineage.readRun(runId);
    if (!run) continue;
    const step: Step | undefined = stepId === undefined ? undefined : await getOptional(lineage, NodeKind.NODE_KIND_STEP, stepId, 'step');
    runs.push(runData(run, step));
  }
  return { runs, totalCount: ids.length };
}

/**
 * `GET .../datasets/{dataset}/versions`: Marquez's `{versions, totalCount}`, newest first. A
 * version's id is its content hash; `createdByRun` is the run of the step that wrote it, where
 * one did (a version known only as an input, or written by a DatasetEvent, has none).
 */
async function datasetVersions(lineage: LineageApi, e: Entry, req: HttpRequest): Promise<{ versions: Record<string, unknown>[]; totalCount: number }> {
  const objectId = e.storeId ?? e.nodeId;
  let all: ObjectVersion[] = [];
  try {
    const res = await lineage.getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT, id: objectId, contentHash: '' } });
    if (res.body?.$case === 'object') all = res.body.value.versions;
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
  }
  // Newest first; versions of one instant keep the store's order, the later one first.
  const sorted = all.map((v, i) => ({ v, i })).sort((a, b) => {
    const ta = BigInt(a.v.createdAtNs || '0');
    const tb = BigInt(b.v.createdAtNs || '0');
    return ta < tb ? 1 : ta > tb ? -1 : b.i - a.i;
  });
  const page = paged(sorted, req);
  const versions: Record<string, unknown>[] = [];
  for (const { v } of page) versions.push(await datasetVersionData(lineage, objectId, v));
  return { versions, totalCount: all.length };
}

/**
 * The run that wrote a version, as Marquez shows runs (null when no step wrote it), and when the
 * version appeared in provenance ('0' when unknown).
 */
async function datasetVersionOrigin(lineage: LineageApi, objectId: string, contentHash: string): Promise<{ run: Record<string, unknown> | null; firstSeenNs: string }> {
  let generatedBy = '';
  let firstSeenNs = '0';
  try {
    ({ generatedBy, firstSeenNs } = await lineage.getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: objectId, contentHash } }));
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
  }
  if (!generatedBy.startsWith('step:')) return { run: null, firstSeenNs };
  const step = await getOptional(lineage, NodeKind.NODE_KIND_STEP, generatedBy.slice('step:'.length), 'step');
  if (!step?.runId) return { run: null, firstSeenNs };
  const run = await lineage.readRun(step.runId);
  return { run: run === undefined ? null : runData(run, step), firstSeenNs };
}

/** One version as Marquez's DatasetVersion. */
async function datasetVersionData(lineage: LineageApi, objectId: string, v: ObjectVersion): Promise<Record<string, unknown>> {
  const data = await datasetDataOf(lineage, objectId, v);
  const facets = facetMap(data['facets']);
  const lifecycle = facetMap(facets['lifecycleStateChange'])['lifecycleStateChange'];
  const origin = await datasetVersionOrigin(lineage, objectId, v.contentHash);
  // Marquez always has a time here; an event that gave no created_at gives its own time.
  const createdNs = v.createdAtNs !== '0' ? v.createdAtNs : origin.firstSeenNs;
  const createdAt = createdNs !== '0' ? nanosToIso(createdNs) : null;
  const { namespace, name } = data as { namespace: string; name: string };
  return {
    id: { namespace, name, version: v.contentHash },
    type: data['type'],
    name,
    physicalName: data['physicalName'],
    createdAt,
    version: v.contentHash,
    namespace,
    sourceName: data['sourceName'],
    fields: data['fields'],
    tags: [],
    lastModifiedAt: createdAt,
    description: data['description'] ?? null,
    lifecycleState: typeof lifecycle === 'string' ? lifecycle : null,
    createdByRun: origin.run,
    facets,
  };
}

function parseFilter(req: HttpRequest): Entry['type'] | undefined {
  const filter = req.query.get('filter')?.toUpperCase();
  if (filter !== undefined && filter !== 'DATASET' && filter !== 'JOB') throw new InvalidArgumentError('filter', `must be DATASET or JOB, got ${JSON.stringify(filter.slice(0, 40))}`);
  return filter;
}

/**
 * Marquez's namespaces from their spans: every namespace a dataset or job is in, when first seen
 * and last changed (the latest `updatedAt` of its datasets and jobs, a job's run end included, as
 * Marquez moves a namespace on with every event in it), by name.
 */
function namespaces(spans: ReadonlyMap<string, { first: number; last: number }>): { name: string; createdAt: string; updatedAt: string; ownerName: string; description: null; isHidden: boolean }[] {
  return [...spans.entries()]
    .sort(([a], [b]) => compare(a, b))
    .map(([name, s]) => ({ name, createdAt: new Date(s.first).toISOString(), updatedAt: new Date(s.last).toISOString(), ownerName: 'anonymous', description: null, isHidden: false }));
}

/**
 * `GET /api/v1/search?q=TEXT[&filter=DATASET|JOB][&sort=NAME|UPDATE_AT][&limit=N][&namespace=NS]`:
 * names or namespaces containing q, case-insensitively. A hit is a dataset's place (below
 * `datasetHits.length`) or a job's after them, the datasets first, each in list order, which
 * breaks ties as a stable sort of the list did; a plain native dataset's name is matched and
 * compared with no string made.
 */
async function search(
  datasets: () => MarquezDatasets,
  jobs: () => Promise<Entry[]>,
  updatedMs: (e: Entry) => number | Promise<number>,
  req: HttpRequest,
): Promise<{ totalCount: number; results: Record<string, unknown>[] }> {
  const q = req.query.get('q');
  if (q === null || q.trim() === '') throw new InvalidArgumentError('q', 'is required: the text to look for in dataset and job names');
  const filter = parseFilter(req);
  const sort = req.query.get('sort')?.toUpperCase() ?? 'NAME';
  if (sort !== 'NAME' && sort !== 'UPDATE_AT') throw new InvalidArgumentError('sort', `must be NAME or UPDATE_AT, got ${JSON.stringify(sort.slice(0, 40))}`);
  // Marquez takes limit=0 (@Min(0)): no results, the count all the same.
  const limit = intParam(req, 'limit', DEFAULT_SEARCH_LIMIT, 0, MAX_LIMIT);
  const namespace = req.query.get('namespace');
  const needle = q.toLowerCase();
  const matches = (ns: string, name: string): boolean => (namespace === null || ns === namespace) && (name.toLowerCase().includes(needle) || ns.toLowerCase().includes(needle));
  const d = filter === 'JOB' ? undefined : datasets();
  const datasetHits: number[] = [];
  if (d !== undefined) {
    const nativeHits = (namespace === null || namespace === NATIVE_NAMESPACE) && NATIVE_NAMESPACE.toLowerCase().includes(needle);
    for (const i of d.places) {
      if (!d.isPlain(i)) {
        if (matches(d.namespaceOf(i), d.nameOf(i))) datasetHits.push(i);
      } else if (namespace === null || namespace === NATIVE_NAMESPACE) {
        if (nativeHits || d.objects.idIncludesLowerCase(i, needle)) datasetHits.push(i);
      }
    }
  }
  const jobHits = filter === 'DATASET' ? [] : (await jobs()).filter((e) => matches(e.namespace, e.name));
  const count = datasetHits.length + jobHits.length;
  const job = (h: number): Entry => jobHits[h - datasetHits.length] as Entry;
  const place = (h: number): number => datasetHits[h] as number;
  const isDataset = (h: number): boolean => h < datasetHits.length;
  const nameOf = (h: number): string => (isDataset(h) ? (d as MarquezDatasets).nameOf(place(h)) : job(h).name);
  const namespaceOf = (h: number): string => (isDataset(h) ? (d as MarquezDatasets).namespaceOf(place(h)) : job(h).namespace);
  const updated = new Float64Array(count);
  // A job's updatedAt is its own answer's (its latest run's end included), so UPDATE_AT orders
  // jobs as their pages date them: an Airflow DAG's run ends after all its tasks.
  for (let h = 0; h < count; h++) {
    if (isDataset(h)) updated[h] = (d as MarquezDatasets).objects.lastChangedMs(place(h));
    else {
      const t = updatedMs(job(h));
      updated[h] = typeof t === 'number' ? t : await t;
    }
  }
  const byName = (a: number, b: number): number => {
    if (isDataset(a) && isDataset(b)) return (d as MarquezDatasets).compareNames(place(a), place(b)) || compare(namespaceOf(a), namespaceOf(b)) || a - b;
    return compare(nameOf(a), nameOf(b)) || compare(namespaceOf(a), namespaceOf(b)) || a - b;
  };
  const byUpdate = (a: number, b: number): number => (updated[b] as number) - (updated[a] as number) || a - b;
  const hits = firstInOrder(Array.from({ length: count }, (_, h) => h), Math.min(limit, count), sort === 'NAME' ? byName : byUpdate);
  return {
    totalCount: count,
    results: hits.map((h) => ({
      type: isDataset(h) ? 'DATASET' : 'JOB',
      name: nameOf(h),
      updatedAt: new Date(updated[h] as number).toISOString(),
      namespace: namespaceOf(h),
      nodeId: isDataset(h) ? datasetNodeId((d as MarquezDatasets).objects.objectId(place(h))) : job(h).nodeId,
    })),
  };
}

/** A dataset's createdAt and firstSeenAt (when first seen) and updatedAt (when last changed), from ms. */
function timesOf(firstSeenMs: number, lastChangedMs: number): { createdAt: string; firstSeenAt: string; updatedAt: string } {
  const created = new Date(firstSeenMs).toISOString();
  return { createdAt: created, firstSeenAt: created, updatedAt: new Date(lastChangedMs).toISOString() };
}

/** A dataset's time as a job's data orders its records: the whole ms of trace's microseconds (its ns, truncated). */
function wholeMs(ms: number): number {
  return Number(BigInt(Math.round(ms * 1000)) / 1000n);
}

function anyStartsWith(list: ObjectList, prefix: string): boolean {
  for (let i = 0; i < list.length; i++) if (list.idStartsWith(i, prefix)) return true;
  return false;
}

/**
 * The objects of `list`, each with when it was first seen; with `cut`, only the native records
 * jobDataFrom can list (the MAX_JOB_RECORDS first seen last by wholeMs, every one tied with the
 * last included) and every other object. `cut` is for lists where no two objects share a Marquez
 * id (none is `dataset:retrace:…`), so a record's time is its own. Ids are made strings for those
 * alone: a job over 20,000 records made 40,000 and their Marquez ids, 65 ms of its 100 ms.
 */
function shownObjects(list: ObjectList, cut: boolean): { objectId: string; firstSeenMs: number }[] {
  const records: number[] = [];
  if (cut) for (let i = 0; i < list.length; i++) if (list.idStartsWith(i, NATIVE_RECORD_PREFIX)) records.push(i);
  // The MAX_JOB_RECORDS-th latest time (wholeMs keeps the order of times, so it is that of the
  // MAX_JOB_RECORDS-th latest first sighting); a record earlier than it is never listed.
  let latest = Number.NEGATIVE_INFINITY;
  if (records.length > MAX_JOB_RECORDS) latest = wholeMs(Float64Array.from(records, (i) => list.firstSeenMs(i)).sort()[records.length - MAX_JOB_RECORDS] as number);
  const out: { objectId: string; firstSeenMs: number }[] = [];
  let r = 0;
  for (let i = 0; i < list.length; i++) {
    const firstSeenMs = list.firstSeenMs(i);
    if (records[r] === i) {
      r++;
      // wholeMs(t) < t + 1: a time a ms or more earlier needs no BigInt to be ruled out.
      if (firstSeenMs <= latest - 1 || wholeMs(firstSeenMs) < latest) continue;
    }
    out.push({ objectId: list.objectId(i), firstSeenMs });
  }
  return out;
}

/** Milliseconds of an ISO time served (`endedAt`), 0 when there is none. */
/** When `run` ended (ms), if it has. */
function endedMsOf(run: Run | undefined): number | undefined {
  return run?.endedAtNs && run.endedAtNs !== '0' ? Number(BigInt(run.endedAtNs) / 1_000_000n) : undefined;
}

function isoMs(value: unknown): number {
  const ms = typeof value === 'string' ? Date.parse(value) : Number.NaN;
  return Number.isFinite(ms) ? ms : 0;
}

/** One item after another: a page holds only one item's lineage reads in memory at a time. */
async function inTurn<T, R>(items: readonly T[], f: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (const item of items) out.push(await f(item));
  return out;
}

/** One page of a list: `limit` (0 to 1000, default 100; 0 gives an empty page, as Marquez's @Min(0) does) from `offset`. */
function paged<T>(all: readonly T[], req: HttpRequest): T[] {
  const { offset, limit } = pageOf(req);
  return all.slice(offset, offset + limit);
}

/** The page a list request asks for (see paged). */
function pageOf(req: HttpRequest): { offset: number; limit: number } {
  const limit = intParam(req, 'limit', DEFAULT_LIMIT, 0, MAX_LIMIT);
  const offset = intParam(req, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
  return { offset, limit };
}
