import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import { Direction, NodeKind } from '../../common/gen/retrace/v1/lineage.js';
import { openLineageStepId, parseDatasetObjectId, parseJobTransformName } from '../../common/openlineage/to-lineage-events.js';
import type { LineageApi } from '../lineage/lineage-api.js';
import { buildGraph, compare, datasetDataOf, getOptional, intParam, runData } from './openlineage-routes.js';
import type { HttpRequest, Route } from './router.js';

/** Marquez's default page size for lists, and the largest page served. */
const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;
/** Steps and datasets of one job read for its data, at most (its latest run is among them). */
const MAX_JOB_NODES = 100_000;
/** Marquez's default number of search results. */
const DEFAULT_SEARCH_LIMIT = 10;

/** A dataset or job of the OpenLineage face: its Marquez id parts and when it was first seen. */
interface Entry {
  type: 'DATASET' | 'JOB';
  namespace: string;
  name: string;
  /** `dataset:<ns>:<name>` / `job:<ns>:<name>`, as in the lineage graph. */
  nodeId: string;
  firstSeenMs: number;
  lastChangedMs: number;
}

/**
 * Marquez's read API over what OpenLineage producers sent, so tools written for Marquez (its web
 * UI, `marquez-python`) can browse Retrace: namespaces, datasets and jobs with their latest
 * versions and runs, a run by id, and search. Datasets are the objects `dataset:<ns>:<name>`,
 * jobs the transforms `job:<ns>:<name>` (see openlineage-routes.ts); names in paths are
 * percent-encoded as Marquez's clients send them. Lists take `limit` (default 100) and
 * `offset`, sorted by name, with `totalCount`. Unknown namespace, dataset, job or run: 404;
 * a bad query parameter: 400 naming it.
 */
export function createMarquezRoutes(lineage: LineageApi): Route[] {
  const entries = (type?: Entry['type']): Entry[] => {
    const out: Entry[] = [];
    if (type !== 'JOB') {
      for (const n of lineage.listNodes(NodeKind.NODE_KIND_OBJECT, 'dataset:')) {
        const p = parseDatasetObjectId(n.id);
        if (p) out.push({ type: 'DATASET', ...p, nodeId: n.id, firstSeenMs: n.firstSeenMs, lastChangedMs: n.lastChangedMs });
      }
    }
    if (type !== 'DATASET') {
      for (const n of lineage.listNodes(NodeKind.NODE_KIND_TRANSFORM, 'job:')) {
        const p = parseJobTransformName(n.id);
        if (p) out.push({ type: 'JOB', ...p, nodeId: n.id, firstSeenMs: n.firstSeenMs, lastChangedMs: n.lastChangedMs });
      }
    }
    return out;
  };
  const inNamespace = (namespace: string, type: Entry['type']): Entry[] => {
    const all = entries(type).filter((e) => e.namespace === namespace);
    if (all.length === 0 && !entries().some((e) => e.namespace === namespace)) throw new NotFoundError(`namespace ${JSON.stringify(namespace)}`, 'namespace');
    return all.sort((a, b) => compare(a.name, b.name));
  };
  const jobData = async (nodeId: string): Promise<Record<string, unknown>> => {
    // The job's own steps and the datasets they read and wrote (depth 1 from a transform), and
    // no data of those datasets: a job's cost stays its own, however many jobs share an input.
    const start = { kind: NodeKind.NODE_KIND_TRANSFORM, id: nodeId, contentHash: '' };
    const trace = await lineage.trace({ start, direction: Direction.DIRECTION_ANY, depth: 1, pageSize: MAX_JOB_NODES, includeEdges: true, objectLevel: true });
    const node = (await buildGraph(lineage, start, trace, { datasetData: false })).find((n) => n.id === nodeId);
    if (!node) throw new NotFoundError(`job ${JSON.stringify(nodeId)}`, 'job');
    return node.data;
  };
  const datasetData = async (e: Entry): Promise<Record<string, unknown>> => ({ ...(await datasetDataOf(lineage, e.nodeId)), firstSeenAt: new Date(e.firstSeenMs).toISOString() });

  return [
    {
      method: 'GET',
      path: '/api/v1/namespaces',
      handler: async () => ({ status: 200, body: { namespaces: namespaces(entries()) } }),
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}',
      handler: async (req) => {
        const ns = namespaces(entries()).find((n) => n.name === req.params['namespace']);
        if (!ns) throw new NotFoundError(`namespace ${JSON.stringify(req.params['namespace'])}`, 'namespace');
        return { status: 200, body: ns };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/datasets',
      handler: async (req) => {
        const all = inNamespace(req.params['namespace'] ?? '', 'DATASET');
        const page = paged(all, req);
        return { status: 200, body: { totalCount: all.length, datasets: await inTurn(page, datasetData) } };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/datasets/{dataset}',
      handler: async (req) => {
        const e = inNamespace(req.params['namespace'] ?? '', 'DATASET').find((d) => d.name === req.params['dataset']);
        if (!e) throw new NotFoundError(`dataset ${JSON.stringify(req.params['dataset'])} in namespace ${JSON.stringify(req.params['namespace'])}`, 'dataset');
        return { status: 200, body: await datasetData(e) };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/jobs',
      handler: async (req) => {
        const all = inNamespace(req.params['namespace'] ?? '', 'JOB');
        const page = paged(all, req);
        return { status: 200, body: { totalCount: all.length, jobs: await inTurn(page, (e) => jobData(e.nodeId)) } };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/namespaces/{namespace}/jobs/{job}',
      handler: async (req) => {
        const e = inNamespace(req.params['namespace'] ?? '', 'JOB').find((j) => j.name === req.params['job']);
        if (!e) throw new NotFoundError(`job ${JSON.stringify(req.params['job'])} in namespace ${JSON.stringify(req.params['namespace'])}`, 'job');
        return { status: 200, body: await jobData(e.nodeId) };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/jobs/runs/{id}',
      handler: async (req) => {
        const id = req.params['id'] ?? '';
        const run = await getOptional(lineage, NodeKind.NODE_KIND_RUN, id, 'run');
        if (!run) throw new NotFoundError(`run ${JSON.stringify(id)}`, 'id');
        // An OpenLineage run is one step, whose code version and resources are the run's.
        return { status: 200, body: runData(run, await getOptional(lineage, NodeKind.NODE_KIND_STEP, openLineageStepId(id), 'step')) };
      },
    },
    {
      method: 'GET',
      path: '/api/v1/search',
      handler: async (req) => ({ status: 200, body: search(entries, req) }),
    },
  ];
}

/** Marquez's namespaces: every namespace a dataset or job is in, when first seen and last changed. */
function namespaces(all: readonly Entry[]): { name: string; createdAt: string; updatedAt: string; ownerName: string; description: null; isHidden: boolean }[] {
  const span = new Map<string, { first: number; last: number }>();
  for (const e of all) {
    const s = span.get(e.namespace);
    if (!s) span.set(e.namespace, { first: e.firstSeenMs, last: e.lastChangedMs });
    else {
      s.first = Math.min(s.first, e.firstSeenMs);
      s.last = Math.max(s.last, e.lastChangedMs);
    }
  }
  return [...span.entries()]
    .sort(([a], [b]) => compare(a, b))
    .map(([name, s]) => ({ name, createdAt: new Date(s.first).toISOString(), updatedAt: new Date(s.last).toISOString(), ownerName: 'anonymous', description: null, isHidden: false }));
}

/** `GET /api/v1/search?q=TEXT[&filter=DATASET|JOB][&sort=NAME|UPDATE_AT][&limit=N][&namespace=NS]`: names or namespaces containing q, case-insensitively. */
function search(entries: (type?: Entry['type']) => Entry[], req: HttpRequest): { totalCount: number; results: Record<string, unknown>[] } {
  const q = req.query.get('q');
  if (q === null || q.trim() === '') throw new InvalidArgumentError('q', 'is required: the text to look for in dataset and job names');
  const filter = req.query.get('filter')?.toUpperCase();
  if (filter !== undefined && filter !== 'DATASET' && filter !== 'JOB') throw new InvalidArgumentError('filter', `must be DATASET or JOB, got ${JSON.stringify(filter.slice(0, 40))}`);
  const sort = req.query.get('sort')?.toUpperCase() ?? 'NAME';
  if (sort !== 'NAME' && sort !== 'UPDATE_AT') throw new InvalidArgumentError('sort', `must be NAME or UPDATE_AT, got ${JSON.stringify(sort.slice(0, 40))}`);
  const limit = intParam(req, 'limit', DEFAULT_SEARCH_LIMIT, 1, MAX_LIMIT);
  const namespace = req.query.get('namespace');
  const needle = q.toLowerCase();
  const hits = entries(filter as Entry['type'] | undefined)
    .filter((e) => (namespace === null || e.namespace === namespace) && (e.name.toLowerCase().includes(needle) || e.namespace.toLowerCase().includes(needle)))
    .sort((a, b) => (sort === 'NAME' ? compare(a.name, b.name) || compare(a.namespace, b.namespace) : b.lastChangedMs - a.lastChangedMs));
  return {
    totalCount: hits.length,
    results: hits.slice(0, limit).map((e) => ({ type: e.type, name: e.name, updatedAt: new Date(e.lastChangedMs).toISOString(), namespace: e.namespace, nodeId: e.nodeId })),
  };
}

/** One item after another: a page holds only one item's lineage reads in memory at a time. */
async function inTurn<T, R>(items: readonly T[], f: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (const item of items) out.push(await f(item));
  return out;
}

function paged<T>(all: readonly T[], req: HttpRequest): T[] {
  const limit = intParam(req, 'limit', DEFAULT_LIMIT, 1, MAX_LIMIT);
  const offset = intParam(req, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
  return all.slice(offset, offset + limit);
}
