import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { RETRACE_OPENLINEAGE_PRODUCER, RETRACE_RESOURCES_FACET_SCHEMA_URL } from '../common/openlineage/to-openlineage-event.js';
import { objectEvent, ref, runEvent as nativeRunEvent, stepEvent } from './helpers/lineage-events.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/** The OpenLineage HTTP face through a real coordinator (LevelDB in a temp dir, real sockets). */

const PRODUCER = 'https://github.com/OpenLineage/OpenLineage/tree/1.23.0/integration/spark';
const NS = 'warehouse';
const facet = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  _producer: PRODUCER,
  _schemaURL: 'https://openlineage.io/spec/facets/1-0-1/SomeFacet.json',
  ...extra,
});

let counter = 0;
/** A UUID unique within this file, so tests do not share runs. */
function uuid(): string {
  counter++;
  return `00000000-0000-4000-8000-${counter.toString(16).padStart(12, '0')}`;
}

function runEvent(job: string, runId: string, eventType: string, inputs: string[], outputs: string[], time = '2024-10-17T09:18:26.825Z') {
  return {
    eventTime: time,
    producer: PRODUCER,
    schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent',
    eventType,
    run: { runId, facets: {} },
    job: { namespace: NS, name: job, facets: { jobType: facet({ processingType: 'BATCH', integration: 'SPARK' }) } },
    inputs: inputs.map((name) => ({ namespace: NS, name })),
    outputs: outputs.map((name) => ({
      namespace: NS,
      name,
      facets: { schema: facet({ fields: [{ name: 'id', type: 'INT', description: 'key' }] }) },
    })),
  };
}

interface GraphNode {
  id: string;
  type: 'DATASET' | 'JOB';
  data: Record<string, any>;
  inEdges: { origin: string; destination: string }[];
  outEdges: { origin: string; destination: string }[];
}

let tc: TestCoordinator;

beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true });
});

afterAll(async () => {
  await tc?.stop();
});

async function post(path: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${tc.httpUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...tc.httpAuth },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

async function lineage(nodeId: string, depth?: number): Promise<{ status: number; json: any }> {
  const q = new URLSearchParams({ nodeId });
  if (depth !== undefined) q.set('depth', String(depth));
  const res = await fetch(`${tc.httpUrl}/api/v1/lineage?${q}`, { headers: tc.httpAuth });
  return { status: res.status, json: await res.json() };
}

function node(graph: GraphNode[], id: string): GraphNode {
  const n = graph.find((g) => g.id === id);
  if (!n) throw new Error(`${id} not in graph: ${graph.map((g) => g.id).join(', ')}`);
  return n;
}

describe('POST /api/v1/lineage', () => {
  it('accepts a RunEvent (201 {}) and a resent one without storing it twice', async () => {
    const runId = uuid();
    const e = runEvent('single.load', runId, 'COMPLETE', ['single.raw'], ['single.clean']);
    expect(await post('/api/v1/lineage', e)).toEqual({ status: 201, json: {} });
    expect(await post('/api/v1/lineage', e)).toEqual({ status: 201, json: {} });
    // Submitted again in a batch: every native event is a duplicate.
    expect(await post('/api/v1/lineage/batch', [e])).toEqual({ status: 201, json: { accepted: 0, duplicates: 3 } });
  });

  it('rejects an invalid event with 400 and the JSON path of the problem', async () => {
    const e = runEvent('bad.job', uuid(), 'COMPLETE', ['a', 'b', 'c'], []) as any;
    delete e.inputs[2].namespace;
    const res = await post('/api/v1/lineage', e);
    expect(res.status).toBe(400);
    expect(res.json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'inputs[2].namespace' });
    const noRunId = runEvent('bad.job', uuid(), 'COMPLETE', [], []) as any;
    delete noRunId.run.runId;
    expect((await post('/api/v1/lineage', noRunId)).json.field).toBe('run.runId');
    expect((await post('/api/v1/lineage', '{not json')).status).toBe(400);
    expect((await post('/api/v1/lineage', [])).json.field).toBe('$');
  });

  it('accepts DatasetEvents and JobEvents', async () => {
    const base = { eventTime: '2024-01-01T00:00:00Z', producer: PRODUCER, schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json' };
    expect((await post('/api/v1/lineage', { ...base, dataset: { namespace: NS, name: 'static.table' } })).status).toBe(201);
    expect((await post('/api/v1/lineage', { ...base, job: { namespace: NS, name: 'static.job' } })).status).toBe(201);
  });
});

describe('POST /api/v1/lineage/batch', () => {
  it('stores a whole batch atomically and counts native events', async () => {
    const runA = uuid();
    const runB = uuid();
    const batch = [
      runEvent('batch.extract', runA, 'START', [], [], '2024-10-17T09:00:00Z'),
      runEvent('batch.extract', runA, 'COMPLETE', ['batch.src'], ['batch.mid'], '2024-10-17T09:01:00Z'),
      runEvent('batch.transform', runB, 'COMPLETE', ['batch.mid'], ['batch.out'], '2024-10-17T09:02:00Z'),
    ];
    // START: run; COMPLETE: run + version + step (twice).
    expect(await post('/api/v1/lineage/batch', batch)).toEqual({ status: 201, json: { accepted: 7, duplicates: 0 } });
    const { json } = await lineage('dataset:warehouse:batch.mid');
    expect(json.graph.map((n: GraphNode) => n.id)).toEqual([
      'dataset:warehouse:batch.mid',
      'dataset:warehouse:batch.out',
      'dataset:warehouse:batch.src',
      'job:warehouse:batch.extract',
      'job:warehouse:batch.transform',
    ]);
  });

  it('stores nothing when one event is invalid, and names it with its index', async () => {
    const runId = uuid();
    const good = runEvent('atomic.job', runId, 'COMPLETE', ['atomic.in'], ['atomic.out']);
    const bad = runEvent('atomic.job2', uuid(), 'COMPLETE', [], []) as any;
    bad.eventType = 'FINISHED';
    const res = await post('/api/v1/lineage/batch', [good, bad]);
    expect(res.status).toBe(400);
    expect(res.json).toMatchObject({ error: 'INVALID_ARGUMENT', field: '[1].eventType' });
    expect((await lineage('dataset:warehouse:atomic.out')).status).toBe(404);
    expect((await post('/api/v1/lineage/batch', { events: [] })).json.field).toBe('$');
    expect(await post('/api/v1/lineage/batch', [])).toEqual({ status: 201, json: { accepted: 0, duplicates: 0 } });
  });
});

describe('GET /api/v1/lineage', () => {
  // raw -> ingest -> staged -> enrich (+ dims) -> mart -> report -> dashboard
  const runs = { ingest: uuid(), enrich: uuid(), report: uuid() };
  beforeAll(async () => {
    const batch = [
      runEvent('g.ingest', runs.ingest, 'START', ['g.raw'], [], '2024-10-17T10:00:00Z'),
      runEvent('g.ingest', runs.ingest, 'COMPLETE', [], ['g.staged'], '2024-10-17T10:05:00Z'),
      runEvent('g.enrich', runs.enrich, 'COMPLETE', ['g.staged', 'g.dims'], ['g.mart'], '2024-10-17T10:10:00Z'),
      runEvent('g.report', runs.report, 'COMPLETE', ['g.mart'], ['g.dashboard'], '2024-10-17T10:15:00Z'),
    ];
    expect((await post('/api/v1/lineage/batch', batch)).status).toBe(201);
  });

  it('returns the Marquez graph with job-level edges both ways', async () => {
    const { status, json } = await lineage('job:warehouse:g.enrich');
    expect(status).toBe(200);
    const graph = json.graph as GraphNode[];
    expect(graph.map((n) => n.id).sort()).toEqual([
      'dataset:warehouse:g.dashboard',
      'dataset:warehouse:g.dims',
      'dataset:warehouse:g.mart',
      'dataset:warehouse:g.raw',
      'dataset:warehouse:g.staged',
      'job:warehouse:g.enrich',
      'job:warehouse:g.ingest',
      'job:warehouse:g.report',
    ]);
    const enrich = node(graph, 'job:warehouse:g.enrich');
    expect(enrich.type).toBe('JOB');
    expect(enrich.inEdges).toEqual([
      { origin: 'dataset:warehouse:g.dims', destination: 'job:warehouse:g.enrich' },
      { origin: 'dataset:warehouse:g.staged', destination: 'job:warehouse:g.enrich' },
    ]);
    expect(enrich.outEdges).toEqual([{ origin: 'job:warehouse:g.enrich', destination: 'dataset:warehouse:g.mart' }]);
    // The ingest job's edges come from two events of one run, merged into one step.
    const ingest = node(graph, 'job:warehouse:g.ingest');
    expect(ingest.inEdges).toEqual([{ origin: 'dataset:warehouse:g.raw', destination: 'job:warehouse:g.ingest' }]);
    expect(ingest.outEdges).toEqual([{ origin: 'job:warehouse:g.ingest', destination: 'dataset:warehouse:g.staged' }]);
    const mart = node(graph, 'dataset:warehouse:g.mart');
    expect(mart.type).toBe('DATASET');
    expect(mart.inEdges).toEqual([{ origin: 'job:warehouse:g.enrich', destination: 'dataset:warehouse:g.mart' }]);
    expect(mart.outEdges).toEqual([{ origin: 'dataset:warehouse:g.mart', destination: 'job:warehouse:g.report' }]);
  });

  it('fills job and dataset data from the store', async () => {
    const graph = (await lineage('dataset:warehouse:g.mart')).json.graph as GraphNode[];
    const ingest = node(graph, 'job:warehouse:g.ingest').data;
    expect(ingest).toMatchObject({
      id: { namespace: 'warehouse', name: 'g.ingest' },
      name: 'g.ingest',
      namespace: 'warehouse',
      type: 'BATCH',
      inputs: [{ namespace: 'warehouse', name: 'g.raw' }],
      outputs: [{ namespace: 'warehouse', name: 'g.staged' }],
      latestRun: { id: runs.ingest, state: 'COMPLETE', startedAt: '2024-10-17T10:00:00Z', endedAt: '2024-10-17T10:05:00Z' },
    });
    const mart = node(graph, 'dataset:warehouse:g.mart').data;
    expect(mart).toMatchObject({
      id: { namespace: 'warehouse', name: 'g.mart' },
      name: 'g.mart',
      namespace: 'warehouse',
      fields: [{ name: 'id', type: 'INT', tags: [], description: 'key' }],
    });
    // Known only as an input: identity from the id, no fields.
    expect(node(graph, 'dataset:warehouse:g.dims').data).toMatchObject({ namespace: 'warehouse', name: 'g.dims', fields: [] });
  });

  it('limits the graph by depth, in job hops', async () => {
    const near = (await lineage('dataset:warehouse:g.raw', 1)).json.graph as GraphNode[];
    expect(near.map((n) => n.id).sort()).toEqual(['dataset:warehouse:g.raw', 'dataset:warehouse:g.staged', 'job:warehouse:g.ingest']);
    const far = (await lineage('dataset:warehouse:g.raw')).json.graph as GraphNode[];
    expect(far).toHaveLength(8);
  });

  it('answers 404 for an unknown node and 400 for a malformed query', async () => {
    expect((await lineage('dataset:warehouse:nope')).status).toBe(404);
    expect((await lineage('job:warehouse:nope')).json).toMatchObject({ error: 'NOT_FOUND', field: 'nodeId' });
    expect((await lineage('table:warehouse:g.raw')).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'nodeId' });
    expect((await lineage('dataset:warehouse:g.raw', 0)).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'depth' });
    const res = await fetch(`${tc.httpUrl}/api/v1/lineage`, { headers: tc.httpAuth });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ field: 'nodeId' });
  });
});

describe("Marquez's read API", () => {
  const get = async (path: string): Promise<{ status: number; json: any }> => {
    const res = await fetch(`${tc.httpUrl}${path}`, { headers: tc.httpAuth });
    return { status: res.status, json: await res.json() };
  };
  const run = uuid();
  beforeAll(async () => {
    // A namespace with a ":" and a name with a "/", as URIs and paths give them.
    const ev = { ...runEvent('m.load', run, 'COMPLETE', ['m/in'], ['m.out'], '2024-10-18T10:00:00Z'), job: { namespace: 'pg://db:5432', name: 'm.load', facets: {} } };
    ev.inputs = [{ namespace: 'pg://db:5432', name: 'm/in' }];
    ev.outputs = [{ namespace: 'pg://db:5432', name: 'm.out', facets: {} }] as never;
    expect((await post('/api/v1/lineage', ev)).status).toBe(201);
  });

  it('lists namespaces, datasets and jobs, and serves one of each with percent-encoded names', async () => {
    const ns = encodeURIComponent('pg://db:5432');
    expect((await get('/api/v1/namespaces')).json.namespaces.map((n: { name: string }) => n.name)).toContain('pg://db:5432');
    expect((await get(`/api/v1/namespaces/${ns}/datasets`)).json).toMatchObject({ totalCount: 2, datasets: [{ name: 'm.out' }, { name: 'm/in' }] });
    expect((await get(`/api/v1/namespaces/${ns}/datasets/${encodeURIComponent('m/in')}`)).json).toMatchObject({ id: { namespace: 'pg://db:5432', name: 'm/in' } });
    expect((await get(`/api/v1/namespaces/${ns}/jobs`)).json).toMatchObject({ totalCount: 1, jobs: [{ name: 'm.load', inputs: [{ name: 'm/in' }], outputs: [{ name: 'm.out' }], latestRun: { id: run, state: 'COMPLETE' } }] });
    expect((await get(`/api/v1/namespaces/${ns}/jobs/m.load`)).json.latestRun.id).toBe(run);
    expect((await get(`/api/v1/jobs/runs/${run}`)).json).toMatchObject({ id: run, state: 'COMPLETE' });
    expect((await get('/api/v1/search?q=m.lo')).json).toEqual({ totalCount: 1, results: [{ type: 'JOB', name: 'm.load', namespace: 'pg://db:5432', nodeId: 'job:pg://db:5432:m.load', updatedAt: '2024-10-18T10:00:00.000Z' }] });
    // A later run changes the job: updatedAt is when it last changed, not when it was first seen.
    const later = { ...runEvent('m.load', uuid(), 'COMPLETE', [], [], '2024-10-19T11:00:00Z'), job: { namespace: 'pg://db:5432', name: 'm.load', facets: {} }, inputs: [{ namespace: 'pg://db:5432', name: 'm/in' }], outputs: [] };
    expect((await post('/api/v1/lineage', later)).status).toBe(201);
    expect((await get('/api/v1/search?q=m.lo')).json.results[0].updatedAt).toBe('2024-10-19T11:00:00.000Z');
    expect((await get(`/api/v1/namespaces/${ns}`)).json).toMatchObject({ createdAt: '2024-10-18T10:00:00.000Z', updatedAt: '2024-10-19T11:00:00.000Z' });
  });

  it("gives each job its own inputs and outputs when many jobs share an input (each reads only its own steps)", async () => {
    const hubRuns = Array.from({ length: 30 }, (_, i) => ({ ...runEvent(`h.job${String(i).padStart(2, '0')}`, uuid(), 'COMPLETE', ['h.hub'], [`h.out${i}`]), job: { namespace: 'hubns', name: `h.job${String(i).padStart(2, '0')}`, facets: {} }, inputs: [{ namespace: 'hubns', name: 'h.hub' }], outputs: [{ namespace: 'hubns', name: `h.out${i}`, facets: {} }] }));
    expect((await post('/api/v1/lineage/batch', hubRuns)).status).toBe(201);
    const jobs = (await get('/api/v1/namespaces/hubns/jobs?limit=1000')).json as { totalCount: number; jobs: { name: string; inputs: unknown[]; outputs: unknown[] }[] };
    expect(jobs.totalCount).toBe(30);
    jobs.jobs.forEach((j, i) => {
      expect(j.name).toBe(`h.job${String(i).padStart(2, '0')}`);
      expect(j.inputs).toEqual([{ namespace: 'hubns', name: 'h.hub' }]);
      expect(j.outputs).toEqual([{ namespace: 'hubns', name: `h.out${i}` }]);
    });
    expect((await get('/api/v1/namespaces/hubns/jobs?limit=1001')).json).toMatchObject({ field: 'limit' });
  });

  it('answers 401 on every read route without the token, or with another one', async () => {
    const ns = encodeURIComponent('pg://db:5432');
    for (const path of ['/api/v1/namespaces', `/api/v1/namespaces/${ns}`, `/api/v1/namespaces/${ns}/datasets`, `/api/v1/namespaces/${ns}/datasets/m.out`, `/api/v1/namespaces/${ns}/jobs`, `/api/v1/namespaces/${ns}/jobs/m.load`, `/api/v1/jobs/runs/${run}`, '/api/v1/search?q=m']) {
      for (const headers of [{}, { authorization: 'Bearer wrong' }] as Record<string, string>[]) {
        const res = await fetch(`${tc.httpUrl}${path}`, { headers });
        expect([path, res.status, ((await res.json()) as { error: string }).error]).toEqual([path, 401, 'UNAUTHENTICATED']);
      }
    }
  });

  it('answers 404 naming the unknown part, 400 naming the bad parameter, 405 for another method', async () => {
    const ns = encodeURIComponent('pg://db:5432');
    expect((await get('/api/v1/namespaces/none/jobs')).json).toMatchObject({ error: 'NOT_FOUND', field: 'namespace' });
    expect((await get(`/api/v1/namespaces/${ns}/datasets/none`)).status).toBe(404);
    expect((await get(`/api/v1/namespaces/${ns}/datasets?offset=-1`)).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'offset' });
    expect((await get('/api/v1/search?q=')).json).toMatchObject({ field: 'q' });
    expect((await get('/api/v1/namespaces/%ZZ')).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'namespace' });
    expect((await fetch(`${tc.httpUrl}/api/v1/namespaces/${ns}`, { method: 'POST', headers: tc.httpAuth })).status).toBe(405);
    expect((await get('/api/v1/namespaces/a/b/c/d')).status).toBe(404);
  });
});

describe('deeply nested facets', () => {
  it('answer 400 naming where the event nests too deep, and store nothing, however deep', async () => {
    const before = tc.coordinator.lineage.treeSize;
    for (const levels of [30, 5000]) {
      const e = runEvent('deep.job', uuid(), 'COMPLETE', [], ['deep.out']) as any;
      e.run.facets.deep = { _producer: PRODUCER, _schemaURL: 'urn:x', d: 'DEEP' };
      // Written as text: JSON.stringify itself would overflow the stack at 5000 levels.
      const res = await post('/api/v1/lineage', JSON.stringify(e).replace('"DEEP"', `${'{"a":'.repeat(levels)}{"leaf":1}${'}'.repeat(levels)}`));
      expect(res.status, String(levels)).toBe(400);
      expect(res.json).toMatchObject({ error: 'INVALID_ARGUMENT', field: expect.stringMatching(/^run\.facets\.deep\.d(\.a)+$/), message: expect.stringMatching(/nested more than 26 levels/) });
    }
    expect(tc.coordinator.lineage.treeSize).toBe(before);
  });
});

describe('event times past int64 nanoseconds', () => {
  it('answer 400 naming eventTime, not 500', async () => {
    for (const time of ['2280-01-02T00:00:00Z', '2262-04-11T23:47:16.854775808Z']) {
      const res = await post('/api/v1/lineage', runEvent('late.job', uuid(), 'COMPLETE', [], ['late.out'], time));
      expect(res.status, time).toBe(400);
      expect(res.json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'eventTime', message: expect.stringMatching(/after 2262-04-11T23:47:16.854775807Z/) });
    }
    expect((await post('/api/v1/lineage', runEvent('late.job', uuid(), 'COMPLETE', [], ['late.out'], '2262-04-11T23:47:16.854775807Z'))).status).toBe(201);
  });
});

describe('HTTP authentication', () => {
  it('answers 401 with a JSON body and stores nothing without the token, a wrong one or another scheme', async () => {
    const before = tc.coordinator.lineage.treeSize;
    const e = runEvent('auth.job', uuid(), 'COMPLETE', ['auth.in'], ['auth.out']);
    const attempts: Record<string, string>[] = [{}, { authorization: `Bearer ${tc.token}x` }, { authorization: 'Bearer ' }, { authorization: `Basic ${tc.token}` }, { authorization: tc.token }];
    for (const headers of attempts) {
      for (const [method, path, body] of [['POST', '/api/v1/lineage', e], ['POST', '/api/v1/lineage/batch', [e]], ['GET', '/api/v1/lineage?nodeId=dataset:warehouse:auth.out', undefined], ['GET', '/nope', undefined]] as const) {
        const res = await fetch(`${tc.httpUrl}${path}`, { method, headers: { 'content-type': 'application/json', ...headers }, ...(body ? { body: JSON.stringify(body) } : {}) });
        expect(res.status, `${method} ${path} with ${JSON.stringify(headers)}`).toBe(401);
        expect(res.headers.get('www-authenticate')).toBe('Bearer realm="retrace"');
        expect(await res.json()).toMatchObject({ error: 'UNAUTHENTICATED', message: expect.stringMatching(/Authorization: Bearer/) });
      }
    }
    expect(tc.coordinator.lineage.treeSize).toBe(before);
    // The scheme is case-insensitive (RFC 7235), as OpenLineage clients may send it.
    const ok = await fetch(`${tc.httpUrl}/api/v1/lineage`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `bearer ${tc.token}` }, body: JSON.stringify(e) });
    expect(ok.status).toBe(201);
    expect(tc.coordinator.lineage.treeSize).toBeGreaterThan(before);
  });
});

describe('resource facet over HTTP', () => {
  it('a retrace_resources run facet reaches the stored step', async () => {
    const runId = uuid();
    const e = runEvent('res.job', runId, 'COMPLETE', [], ['res.out']) as any;
    e.run.facets.retrace_resources = { _producer: RETRACE_OPENLINEAGE_PRODUCER, _schemaURL: 'urn:x', cpuTimeNs: 5, gpuUtilization: 0.5 };
    expect((await post('/api/v1/lineage', e)).status).toBe(201);
    const res = await tc.coordinator.lineage.getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: `openlineage:${runId}`, contentHash: '' } });
    expect(res.body?.$case === 'step' ? res.body.value.resources : undefined).toMatchObject({ cpuTimeNs: '5', gpuUtilization: 0.5 });
    // Sent in, it comes back out as the producer sent it, not twice.
    const back = await fetch(`${tc.httpUrl}/api/v1/jobs/runs/${runId}`, { headers: tc.httpAuth });
    expect(((await back.json()) as any).facets.retrace_resources).toEqual(e.run.facets.retrace_resources);
  });

  it('resources Retrace measured go out as the retrace_resources run facet', async () => {
    const used = [ref('dataset:res:native.in', 'in')];
    const generated = [ref('dataset:res:native.out', 'out')];
    const resources = { cpuTimeNs: '1200000', peakMemoryBytes: '9007199254740993', netBytesIn: '10', netBytesOut: '20', diskBytesRead: '0', diskBytesWritten: '30', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '2500000' };
    await tc.coordinator.lineage.submit([
      objectEvent('res-in', 'dataset:res:native.in', 'in'),
      nativeRunEvent('res-run', 'native-run'),
      stepEvent('res-step', 'native-step', used, generated, { transform: 'job:res:native.job', runId: 'native-run', codeVersion: 'sha256:' + 'a'.repeat(64), resources }),
    ]);
    const res = await fetch(`${tc.httpUrl}/api/v1/namespaces/res/jobs/native.job`, { headers: tc.httpAuth });
    const job = (await res.json()) as any;
    expect(job.latestRun).toMatchObject({ id: 'native-run', codeVersion: 'sha256:' + 'a'.repeat(64) });
    // Beyond 2^53 an integer stays a decimal string, so no value loses precision.
    expect(job.latestRun.facets.retrace_resources).toEqual({ _producer: RETRACE_OPENLINEAGE_PRODUCER, _schemaURL: RETRACE_RESOURCES_FACET_SCHEMA_URL, cpuTimeNs: 1200000, peakMemoryBytes: '9007199254740993', netBytesIn: 10, netBytesOut: 20, diskBytesRead: 0, diskBytesWritten: 30, gpuTimeNs: 0, gpuUtilization: 0, wallTimeNs: 2500000 });
  });
});
