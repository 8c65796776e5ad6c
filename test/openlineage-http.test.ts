import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import { NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { RETRACE_OPENLINEAGE_PRODUCER, RETRACE_RESOURCES_FACET_SCHEMA_URL } from '../common/openlineage/to-openlineage-event.js';
import { buildExampleLineage } from '../scripts/cli/example-lineage.js';
import { objectEvent, ref, runEvent as nativeRunEvent, stepEvent } from './helpers/lineage-events.js';
import { getJson, getLineage, postJson, type GraphNode } from './helpers/openlineage-http.js';
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

let tc: TestCoordinator;

beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true });
});

afterAll(async () => {
  await tc?.stop();
});

const post = (path: string, body: unknown) => postJson(tc, path, body);
const lineage = (nodeId: string, depth?: number) => getLineage(tc, nodeId, depth);

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

  it('answers 415 naming content-type for a body that says it is not JSON, and stores nothing', async () => {
    const e = runEvent('ctype.job', uuid(), 'COMPLETE', ['ctype.in'], ['ctype.out']);
    const before = tc.coordinator.lineage.treeSize;
    for (const [path, body] of [['/api/v1/lineage', e], ['/api/v1/lineage/batch', [e]]] as const) {
      for (const contentType of ['text/plain', 'application/x-www-form-urlencoded', 'application/xml']) {
        const res = await fetch(`${tc.httpUrl}${path}`, { method: 'POST', headers: { 'content-type': contentType, ...tc.httpAuth }, body: JSON.stringify(body) });
        expect([path, contentType, res.status, await res.json()]).toEqual([path, contentType, 415, { error: 'INVALID_ARGUMENT', field: 'content-type', message: expect.stringContaining(contentType) }]);
      }
    }
    expect(tc.coordinator.lineage.treeSize).toBe(before);
    // JSON with parameters, a +json type, or no Content-Type at all is read as JSON.
    for (const contentType of ['application/json; charset=utf-8', 'Application/JSON', 'application/vnd.openlineage+json', undefined]) {
      const res = await fetch(`${tc.httpUrl}/api/v1/lineage`, { method: 'POST', headers: { ...(contentType === undefined ? {} : { 'content-type': contentType }), ...tc.httpAuth }, body: new TextEncoder().encode(JSON.stringify(e)) });
      expect([contentType, res.status]).toEqual([contentType, 201]);
    }
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
      latestRun: { id: runs.ingest, state: 'COMPLETED', startedAt: '2024-10-17T10:00:00Z', endedAt: '2024-10-17T10:05:00Z' },
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

  it('answers 400 naming nodeId and its form for an id without a namespace and name, not 404', async () => {
    for (const nodeId of ['dataset:warehouse', 'dataset:', 'job:warehouse', 'job:', 'foo:a:b', '']) {
      const r = await lineage(nodeId);
      expect([nodeId, r.status]).toEqual([nodeId, 400]);
      expect(r.json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'nodeId' });
      expect(r.json.message).toContain('dataset:<namespace>:<name> or job:<namespace>:<name>');
    }
    expect((await lineage('dataset:warehouse')).json.message).toBe('nodeId: must be dataset:<namespace>:<name> or job:<namespace>:<name>, got "dataset:warehouse" (no name)');
    // Empty parts are well formed (OpenLineage accepts an empty namespace or name): looked up, 404 when absent.
    expect((await lineage('dataset::nope')).status).toBe(404);
  });
});

describe("Marquez's read API", () => {
  const get = (path: string) => getJson(tc, path);
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
    expect((await get(`/api/v1/namespaces/${ns}/jobs`)).json).toMatchObject({ totalCount: 1, jobs: [{ name: 'm.load', inputs: [{ name: 'm/in' }], outputs: [{ name: 'm.out' }], latestRun: { id: run, state: 'COMPLETED' } }] });
    expect((await get(`/api/v1/namespaces/${ns}/jobs/m.load`)).json.latestRun.id).toBe(run);
    expect((await get(`/api/v1/jobs/runs/${run}`)).json).toMatchObject({ id: run, state: 'COMPLETED' });
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

  it('pages namespaces with limit and offset, as Marquez does, and answers 400 naming a bad one', async () => {
    const all = (await get('/api/v1/namespaces')).json.namespaces.map((n: { name: string }) => n.name) as string[];
    expect(all.length).toBeGreaterThan(2);
    expect((await get('/api/v1/namespaces?limit=2')).json.namespaces.map((n: { name: string }) => n.name)).toEqual(all.slice(0, 2));
    expect((await get('/api/v1/namespaces?limit=1&offset=1')).json.namespaces.map((n: { name: string }) => n.name)).toEqual(all.slice(1, 2));
    expect((await get('/api/v1/namespaces?limit=-1')).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'limit' });
    // limit=0 is valid in Marquez (@Min(0)) on every list: an empty page, the count all the same.
    expect((await get('/api/v1/namespaces?limit=0')).json).toEqual({ namespaces: [] });
    const datasets = (await get('/api/v1/namespaces/warehouse/datasets')).json.totalCount as number;
    expect(datasets).toBeGreaterThan(0);
    expect((await get('/api/v1/namespaces/warehouse/datasets?limit=0')).json).toEqual({ totalCount: datasets, datasets: [] });
    const jobs = (await get('/api/v1/namespaces/warehouse/jobs')).json.totalCount as number;
    expect((await get('/api/v1/namespaces/warehouse/jobs?limit=0')).json).toEqual({ totalCount: jobs, jobs: [] });
    const hits = (await get('/api/v1/search?q=a')).json.totalCount as number;
    expect((await get('/api/v1/search?q=a&limit=0')).json).toEqual({ totalCount: hits, results: [] });
    expect((await get('/api/v1/search?q=a&limit=-1')).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'limit' });
    expect((await get('/api/v1/namespaces?offset=x')).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'offset' });
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

describe('a facet key named __proto__', () => {
  it('is refused with 400 naming where it is, rather than dropped while the event is acknowledged', async () => {
    const before = tc.coordinator.lineage.treeSize;
    const e = runEvent('proto.job', uuid(), 'COMPLETE', ['proto.in'], ['proto.out']);
    // Written as text: an object literal's __proto__ would set its prototype, not a key.
    const withProto = JSON.stringify(e).replace(`"run":{"runId":"${e.run.runId}","facets":{}}`, `"run":{"runId":"${e.run.runId}","facets":{"__proto__":{"_producer":"p","_schemaURL":"s","x":1}}}`);
    expect(Object.keys((JSON.parse(withProto) as { run: { facets: object } }).run.facets)).toEqual(['__proto__']);
    const one = await post('/api/v1/lineage', withProto);
    expect(one.status).toBe(400);
    expect(one.json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'run.facets.__proto__' });
    const batch = await post('/api/v1/lineage/batch', `[${JSON.stringify(runEvent('proto.job', uuid(), 'COMPLETE', [], ['proto.out']))},${withProto}]`);
    expect(batch.status).toBe(400);
    expect(batch.json).toMatchObject({ error: 'INVALID_ARGUMENT', field: '[1].run.facets.__proto__' });
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

describe('a START that names no datasets', () => {
  const stepOf = async (runId: string) => {
    const res = await tc.coordinator.lineage.getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: `openlineage:${runId}`, contentHash: '' } });
    return res.body?.$case === 'step' ? res.body.value : undefined;
  };
  const start = '2024-10-17T09:00:00.000Z';
  const end = '2024-10-17T09:05:00.000Z';

  it("gives the step its COMPLETE makes the START's time, posted one by one or in one batch", async () => {
    // Airflow's shape: START with no datasets, COMPLETE with the inputs and outputs.
    const apart = uuid();
    expect((await post('/api/v1/lineage', runEvent('af.task', apart, 'START', [], [], start))).status).toBe(201);
    expect((await post('/api/v1/lineage', runEvent('af.task', apart, 'COMPLETE', ['af.in'], ['af.out'], end))).status).toBe(201);
    expect(await stepOf(apart)).toMatchObject({ startedAtNs: '1729155600000000000', endedAtNs: '1729155900000000000' });
    const together = uuid();
    // In one batch, whatever the order in it.
    const batch = [runEvent('af.task', together, 'COMPLETE', ['af.in'], ['af.out'], end), runEvent('af.task', together, 'START', [], [], start)];
    expect((await post('/api/v1/lineage/batch', batch)).status).toBe(201);
    expect(await stepOf(together)).toMatchObject({ startedAtNs: '1729155600000000000', endedAtNs: '1729155900000000000' });
    // The START stored before the fix kept its encoding: a run with no datasets makes no step.
    const alone = uuid();
    expect((await post('/api/v1/lineage', runEvent('af.task', alone, 'START', [], [], start))).status).toBe(201);
    expect(await stepOf(alone).catch(() => undefined)).toBeUndefined();
  });

  it('gives the step its start when the START comes after the COMPLETE (emitted asynchronously), once', async () => {
    const late = uuid();
    expect((await post('/api/v1/lineage', runEvent('af.task', late, 'COMPLETE', ['af.in'], ['af.out'], end))).status).toBe(201);
    expect(await stepOf(late)).toMatchObject({ startedAtNs: '0', endedAtNs: '1729155900000000000' });
    const before = tc.coordinator.lineage.treeSize;
    expect((await post('/api/v1/lineage', runEvent('af.task', late, 'START', [], [], start))).status).toBe(201);
    // The COMPLETE's edges, end and why stay; only the start is added.
    const step = await stepOf(late);
    expect(step).toMatchObject({ startedAtNs: '1729155600000000000', endedAtNs: '1729155900000000000', transform: expect.stringContaining('af.task') });
    expect(step?.used.map((u) => u.objectId)).toEqual(['dataset:warehouse:af.in']);
    expect(step?.generated).toHaveLength(1);
    // The run event and one event of the step, the start alone.
    expect(tc.coordinator.lineage.treeSize - before).toBe(2n);
    // Sent again: a duplicate, nothing more stored.
    const again = await post('/api/v1/lineage/batch', [runEvent('af.task', late, 'START', [], [], start)]);
    expect(again.json).toMatchObject({ accepted: 0, duplicates: 1 });
    expect(tc.coordinator.lineage.treeSize - before).toBe(2n);
  });
});

describe("Marquez's run states, runs, facets and versions", () => {
  const get = (path: string) => getJson(tc, path);
  const at = (minute: number): string => `2024-11-01T10:${String(minute).padStart(2, '0')}:00Z`;

  it("serves run states in Marquez's RunState (COMPLETED, FAILED, ABORTED, RUNNING), with durationMs", async () => {
    const [failed, aborted, running, done] = [uuid(), uuid(), uuid(), uuid()];
    const batch = [
      runEvent('st.fail', failed, 'START', [], [], at(0)),
      runEvent('st.fail', failed, 'FAIL', ['st.in'], ['st.fail.out'], at(2)),
      runEvent('st.abort', aborted, 'START', ['st.in'], ['st.abort.out'], at(0)),
      runEvent('st.abort', aborted, 'ABORT', [], [], at(1)),
      runEvent('st.run', running, 'START', ['st.in'], ['st.run.out'], at(0)),
      runEvent('st.run', running, 'RUNNING', [], [], at(1)),
      runEvent('st.done', done, 'START', ['st.in'], ['st.done.out'], at(0)),
      runEvent('st.done', done, 'COMPLETE', [], [], at(3)),
    ];
    expect((await post('/api/v1/lineage/batch', batch)).status).toBe(201);
    const expected: [string, string, string, number | null][] = [['st.fail', failed, 'FAILED', 120_000], ['st.abort', aborted, 'ABORTED', 60_000], ['st.run', running, 'RUNNING', null], ['st.done', done, 'COMPLETED', 180_000]];
    const graph = (await lineage('dataset:warehouse:st.in')).json.graph as GraphNode[];
    for (const [job, runId, state, durationMs] of expected) {
      expect((await get(`/api/v1/jobs/runs/${runId}`)).json, job).toMatchObject({ id: runId, state, durationMs });
      expect((await get(`/api/v1/namespaces/warehouse/jobs/${job}`)).json.latestRun, job).toMatchObject({ id: runId, state });
      expect(node(graph, `job:warehouse:${job}`).data['latestRun'], job).toMatchObject({ id: runId, state });
    }
  });

  it("GET .../jobs/{job}/runs: a job's runs newest first, paged, with totalCount; 404 for an unknown job", async () => {
    const ids = [uuid(), uuid(), uuid()];
    const batch = [
      runEvent('hist.job', ids[0] as string, 'COMPLETE', ['hist.in'], ['hist.out'], at(10)),
      runEvent('hist.job', ids[1] as string, 'FAIL', ['hist.in'], [], at(20)),
      // The newest run touched no dataset: it has no step, yet it is a run of the job.
      runEvent('hist.job', ids[2] as string, 'START', [], [], at(30)),
    ];
    expect((await post('/api/v1/lineage/batch', batch)).status).toBe(201);
    const all = await get('/api/v1/namespaces/warehouse/jobs/hist.job/runs');
    expect(all.status).toBe(200);
    expect(all.json.totalCount).toBe(3);
    expect(all.json.runs.map((r: { id: string }) => r.id)).toEqual([ids[2], ids[1], ids[0]]);
    expect(all.json.runs.map((r: { state: string }) => r.state)).toEqual(['RUNNING', 'FAILED', 'COMPLETED']);
    expect((await get('/api/v1/namespaces/warehouse/jobs/hist.job/runs?limit=1&offset=1')).json).toMatchObject({ totalCount: 3, runs: [{ id: ids[1] }] });
    expect((await get('/api/v1/namespaces/warehouse/jobs/hist.job')).json.latestRun).toMatchObject({ id: ids[2], state: 'RUNNING' });
    expect((await get('/api/v1/namespaces/warehouse/jobs/nope/runs')).json).toMatchObject({ error: 'NOT_FOUND', field: 'job' });
    // Marquez takes limit=0 (@Min(0)): an empty page with the full count.
    expect((await get('/api/v1/namespaces/warehouse/jobs/hist.job/runs?limit=0')).json).toEqual({ totalCount: 3, runs: [] });
    expect((await get('/api/v1/namespaces/warehouse/jobs/hist.job/runs?limit=1.5')).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'limit' });
  });

  it('GET /api/v1/jobs/runs/{id}/facets?type=run|job: {runId, facets}; 400 without a type, 404 for an unknown run', async () => {
    const runId = uuid();
    const e = runEvent('fac.job', runId, 'COMPLETE', ['fac.in'], ['fac.out'], at(40)) as any;
    e.run.facets.nominalTime = facet({ nominalStartTime: '2024-11-01T10:00:00Z' });
    expect((await post('/api/v1/lineage', e)).status).toBe(201);
    expect((await get(`/api/v1/jobs/runs/${runId}/facets?type=run`)).json).toEqual({ runId, facets: { nominalTime: e.run.facets.nominalTime } });
    expect((await get(`/api/v1/jobs/runs/${runId}/facets?type=JOB`)).json).toEqual({ runId, facets: { jobType: e.job.facets.jobType } });
    expect((await get(`/api/v1/jobs/runs/${runId}`)).json).toMatchObject({ nominalStartTime: '2024-11-01T10:00:00Z' });
    expect((await get(`/api/v1/jobs/runs/${runId}/facets`)).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'type' });
    expect((await get(`/api/v1/jobs/runs/${runId}/facets?type=dataset`)).json).toMatchObject({ error: 'INVALID_ARGUMENT', field: 'type' });
    expect((await get(`/api/v1/jobs/runs/${uuid()}/facets?type=run`)).json).toMatchObject({ error: 'NOT_FOUND', field: 'id' });
  });

  it("GET .../datasets/{name}/versions: a dataset's versions newest first, with schema and the run that wrote each", async () => {
    const [first, second] = [uuid(), uuid()];
    const v1 = runEvent('ver.writer', first, 'COMPLETE', [], ['ver.table'], at(50));
    const v2 = runEvent('ver.writer', second, 'COMPLETE', [], ['ver.table'], at(55)) as any;
    v2.outputs[0].facets.schema.fields.push({ name: 'amount', type: 'DOUBLE' });
    expect((await post('/api/v1/lineage/batch', [v1, v2])).status).toBe(201);
    const res = await get('/api/v1/namespaces/warehouse/datasets/ver.table/versions');
    expect(res.status).toBe(200);
    expect(res.json.totalCount).toBe(2);
    const [newer, older] = res.json.versions;
    expect(newer).toMatchObject({
      id: { namespace: 'warehouse', name: 'ver.table', version: newer.version },
      name: 'ver.table',
      namespace: 'warehouse',
      createdAt: '2024-11-01T10:55:00Z',
      fields: [{ name: 'id' }, { name: 'amount', type: 'DOUBLE' }],
      createdByRun: { id: second, state: 'COMPLETED' },
    });
    expect(older).toMatchObject({ createdAt: '2024-11-01T10:50:00Z', fields: [{ name: 'id' }], createdByRun: { id: first } });
    expect(newer.version).not.toBe(older.version);
    expect((await get('/api/v1/namespaces/warehouse/datasets/ver.table/versions?limit=1&offset=1')).json).toMatchObject({ totalCount: 2, versions: [{ version: older.version }] });
    expect((await get('/api/v1/namespaces/warehouse/datasets/ver.table/versions?limit=0')).json).toEqual({ totalCount: 2, versions: [] });
    // Known only as an input: no versions.
    expect((await get('/api/v1/namespaces/warehouse/datasets/hist.in/versions')).json).toEqual({ totalCount: 0, versions: [] });
    expect((await get('/api/v1/namespaces/warehouse/datasets/nope/versions')).json).toMatchObject({ error: 'NOT_FOUND', field: 'dataset' });
  });

  it('a version whose native event gave no created_at is dated by that event, not null (Marquez always has one)', async () => {
    await tc.coordinator.lineage.submit([objectEvent('cre-v1', 'dataset:cre:native.v', 'v1', '1730455200000000000'), objectEvent('cre-v2', 'dataset:cre:native.v', 'v2', '1730455260000000000')]);
    const res = await get('/api/v1/namespaces/cre/datasets/native.v/versions');
    expect(res.json.versions.map((v: { createdAt: string; lastModifiedAt: string }) => [v.createdAt, v.lastModifiedAt])).toEqual([
      ['2024-11-01T10:01:00Z', '2024-11-01T10:01:00Z'],
      ['2024-11-01T10:00:00Z', '2024-11-01T10:00:00Z'],
    ]);
  });

  it('serves a job whose runs read and wrote no dataset: listed, by name, in lineage; with parentJobName and updatedAt', async () => {
    const [parent, child] = [uuid(), uuid()];
    const parentStart = runEvent('lonely.dag', parent, 'START', [], [], at(0));
    const parentEnd = runEvent('lonely.dag', parent, 'COMPLETE', [], [], at(9));
    const childEvent = runEvent('lonely.dag.task', child, 'COMPLETE', ['lonely.in'], ['lonely.out'], at(5)) as any;
    childEvent.run.facets.parent = facet({ run: { runId: parent }, job: { namespace: NS, name: 'lonely.dag' } });
    expect((await post('/api/v1/lineage/batch', [parentStart, childEvent, parentEnd])).status).toBe(201);
    const job = await get('/api/v1/namespaces/warehouse/jobs/lonely.dag');
    expect(job.status).toBe(200);
    expect(job.json).toMatchObject({ id: { namespace: NS, name: 'lonely.dag' }, inputs: [], outputs: [], latestRun: { id: parent, state: 'COMPLETED', durationMs: 540_000 }, parentJobName: null, updatedAt: '2024-11-01T10:09:00.000Z' });
    const jobs = (await get('/api/v1/namespaces/warehouse/jobs?limit=1000')).json.jobs.map((j: { name: string }) => j.name);
    expect(jobs).toContain('lonely.dag');
    expect(jobs).toContain('lonely.dag.task');
    expect((await get('/api/v1/namespaces/warehouse/jobs/lonely.dag.task')).json).toMatchObject({ parentJobName: 'lonely.dag', latestRun: { id: child, parentRunId: parent } });
    expect((await get('/api/v1/search?q=lonely.dag&filter=JOB')).json.results.map((r: { name: string }) => r.name)).toEqual(['lonely.dag', 'lonely.dag.task']);
    const graph = await lineage('job:warehouse:lonely.dag');
    expect(graph.status).toBe(200);
    expect(graph.json.graph).toMatchObject([{ id: 'job:warehouse:lonely.dag', type: 'JOB', inEdges: [], outEdges: [], data: { latestRun: { id: parent } } }]);
    expect((await get('/api/v1/namespaces/warehouse/datasets/lonely.out')).json).toMatchObject({ updatedAt: '2024-11-01T10:05:00.000Z' });
  });

  it("dates a job by its latest run's end and a dataset as Marquez does, with its tags and description", async () => {
    // The Marquez demo seed's shape: START with the output, COMPLETE minutes later with nothing.
    const [first, second] = [uuid(), uuid()];
    const start = runEvent('upd.job', first, 'START', [], ['upd.out'], at(0)) as any;
    start.outputs[0].facets.documentation = facet({ description: 'A table for orders.' });
    const batch = [start, runEvent('upd.job', first, 'COMPLETE', [], [], at(6))];
    expect((await post('/api/v1/lineage/batch', batch)).status).toBe(201);
    expect((await get('/api/v1/namespaces/warehouse/jobs/upd.job')).json).toMatchObject({ createdAt: '2024-11-01T10:00:00.000Z', updatedAt: '2024-11-01T10:06:00.000Z', latestRun: { id: first, endedAt: '2024-11-01T10:06:00Z' }, tags: [], currentVersion: null });
    const later = [runEvent('upd.job', second, 'START', [], ['upd.out'], at(30)), runEvent('upd.job', second, 'FAIL', [], [], at(33))];
    expect((await post('/api/v1/lineage/batch', later)).status).toBe(201);
    expect((await get('/api/v1/namespaces/warehouse/jobs/upd.job')).json).toMatchObject({ updatedAt: '2024-11-01T10:33:00.000Z', latestRun: { id: second, state: 'FAILED' } });
    // createdAt: when the dataset first appeared; lastModifiedAt: its latest version.
    const ds = (await get('/api/v1/namespaces/warehouse/datasets/upd.out')).json;
    expect(ds).toMatchObject({ createdAt: '2024-11-01T10:00:00.000Z', lastModifiedAt: '2024-11-01T10:30:00Z', updatedAt: '2024-11-01T10:30:00.000Z', tags: [], versions: 2 });
    expect((await get('/api/v1/namespaces/warehouse/datasets/upd.out/versions')).json.versions[1]).toMatchObject({ createdAt: '2024-11-01T10:00:00Z', description: 'A table for orders.' });
    const graph = (await lineage('dataset:warehouse:upd.out')).json.graph as GraphNode[];
    expect(node(graph, 'job:warehouse:upd.job').data).toMatchObject({ tags: [] });
  });

  it("moves a namespace's updatedAt on with a job's run end, as the job's own updatedAt does", async () => {
    // START writes the output at 10:00; COMPLETE (no datasets) ends the run at 10:07.
    const inNs = (e: any) => ({ ...e, job: { ...e.job, namespace: 'upd-ns' }, outputs: e.outputs.map((o: any) => ({ ...o, namespace: 'upd-ns' })) });
    const runId = uuid();
    const batch = [inNs(runEvent('ns.job', runId, 'START', [], ['ns.out'], at(0))), inNs(runEvent('ns.job', runId, 'COMPLETE', [], [], at(7)))];
    expect((await post('/api/v1/lineage/batch', batch)).status).toBe(201);
    expect((await get('/api/v1/namespaces/upd-ns/jobs/ns.job')).json).toMatchObject({ updatedAt: '2024-11-01T10:07:00.000Z' });
    const expected = { name: 'upd-ns', createdAt: '2024-11-01T10:00:00.000Z', updatedAt: '2024-11-01T10:07:00.000Z' };
    expect((await get('/api/v1/namespaces/upd-ns')).json).toMatchObject(expected);
    expect((await get('/api/v1/namespaces?limit=1000')).json.namespaces.find((n: { name: string }) => n.name === 'upd-ns')).toMatchObject(expected);
  });

  it('gives native objects and transforms Marquez ids in the retrace namespace that the API accepts back', async () => {
    const ex = buildExampleLineage({ orders: 3 });
    await tc.coordinator.lineage.submit(ex.events);
    const res = await lineage('dataset:reports:daily-revenue', 2);
    expect(res.status).toBe(200);
    const graph = res.json.graph as GraphNode[];
    expect(graph.map((n) => n.id)).toEqual(expect.arrayContaining(['dataset:reports:daily-revenue', 'job:retrace:aggregate-daily', 'dataset:retrace:record:enriched:1', 'job:retrace:enrich-currency']));
    for (const n of graph) {
      expect(n.id, n.id).toMatch(/^(dataset|job):[^:]+:.+$/);
      expect(`${n.type === 'JOB' ? 'job' : 'dataset'}:${n.data['namespace']}:${n.data['name']}`).toBe(n.id);
      for (const e of [...n.inEdges, ...n.outEdges]) expect(graph.some((g) => g.id === e.origin) && graph.some((g) => g.id === e.destination), `${e.origin} -> ${e.destination}`).toBe(true);
      // Every id fed back answers with its own node.
      const back = await lineage(n.id, 1);
      expect(back.status, n.id).toBe(200);
      expect((back.json.graph as GraphNode[]).some((g) => g.id === n.id), n.id).toBe(true);
    }
    expect(node(graph, 'job:retrace:aggregate-daily').outEdges).toEqual([{ origin: 'job:retrace:aggregate-daily', destination: 'dataset:reports:daily-revenue' }]);
    expect((await get('/api/v1/namespaces')).json.namespaces.map((n: { name: string }) => n.name)).toContain('retrace');
    expect((await get('/api/v1/namespaces/retrace/jobs/aggregate-daily')).json).toMatchObject({ namespace: 'retrace', name: 'aggregate-daily', outputs: [{ namespace: 'reports', name: 'daily-revenue' }] });
    expect((await get(`/api/v1/namespaces/retrace/datasets/${encodeURIComponent('record:enriched:1')}`)).json).toMatchObject({ namespace: 'retrace', name: 'record:enriched:1' });
    const runs = (await get('/api/v1/namespaces/retrace/jobs/parse-order/runs')).json;
    expect(runs).toMatchObject({ totalCount: 1, runs: [{ id: 'example-run-3', state: 'COMPLETED' }] });
    const versions = (await get('/api/v1/namespaces/reports/datasets/daily-revenue/versions')).json;
    expect(versions).toMatchObject({ totalCount: 1, versions: [{ createdByRun: { id: 'example-run-3' } }] });
  });
});

describe('request body size limit', () => {
  /** POSTs with node:http: `declared` as Content-Length (else chunked), `chunks` written one by one while the socket takes them. */
  function rawPost(declared: number | undefined, chunks: number, chunkBytes: number): Promise<{ status: number; json: any; ms: number }> {
    const url = new URL(`${tc.httpUrl}/api/v1/lineage`);
    const started = Date.now();
    return new Promise((resolve, reject) => {
      const req = httpRequest({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers: { 'content-type': 'application/json', ...tc.httpAuth, ...(declared === undefined ? {} : { 'content-length': String(declared) }) } });
      req.on('response', (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(parts).toString('utf8')), ms: Date.now() - started });
        });
      });
      // The server may close the connection before the whole body is written: that is the point.
      req.on('error', (err) => (req.destroyed ? undefined : reject(err)));
      const chunk = Buffer.alloc(chunkBytes, 0x20);
      let sent = 0;
      const write = (): void => {
        while (sent < chunks && !req.destroyed) {
          sent++;
          if (!req.write(chunk)) return void req.once('drain', write);
        }
      };
      write();
    });
  }

  it('answers 413 RESOURCE_EXHAUSTED naming body, before reading it, when Content-Length is over 16 MiB', async () => {
    const before = tc.coordinator.lineage.treeSize;
    // 1 GB declared, 1 KiB sent: the answer must not wait for the rest.
    const res = await rawPost(1_000_000_000, 1, 1024);
    expect(res.status).toBe(413);
    expect(res.json).toMatchObject({ error: 'RESOURCE_EXHAUSTED', field: 'body', message: expect.stringMatching(/Content-Length is 1000000000 bytes; the limit is 16777216/) });
    expect(res.ms).toBeLessThan(5000);
    expect(tc.coordinator.lineage.treeSize).toBe(before);
  });

  it('answers 413 once a chunked body passes 16 MiB', async () => {
    const res = await rawPost(undefined, 40, 1024 * 1024);
    expect(res.status).toBe(413);
    expect(res.json).toMatchObject({ error: 'RESOURCE_EXHAUSTED', field: 'body', message: expect.stringMatching(/more than 16777216 bytes/) });
  });
});
