import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deflateSync, gzipSync } from 'node:zlib';
import { buildExampleLineage } from '../scripts/cli/example-lineage.js';
import { getJson, postJson } from './helpers/openlineage-http.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * What a Marquez/OpenLineage user meets on the HTTP face (found in review): refusals that name
 * the field the sender wrote, and read answers that agree with each other and with Marquez's
 * shapes. A real coordinator: LevelDB in a temp dir, real sockets.
 */

const PRODUCER = 'https://github.com/OpenLineage/OpenLineage/tree/1.23.0/integration/spark';
const SCHEMA_URL = 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent';

let counter = 0;
function uuid(): string {
  counter++;
  return `00000000-0000-4000-8000-${(0xabc000 + counter).toString(16).padStart(12, '0')}`;
}

interface Dataset {
  namespace: string;
  name: string;
  facets?: Record<string, unknown>;
}

function runEvent(ns: string, job: string, runId: string, eventType: string, time: string, outputs: Dataset[], inputs: Dataset[] = []) {
  return { eventTime: time, producer: PRODUCER, schemaURL: SCHEMA_URL, eventType, run: { runId }, job: { namespace: ns, name: job }, inputs, outputs };
}

const versionFacet = (v: string) => ({ version: { _producer: PRODUCER, _schemaURL: 'https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json', datasetVersion: v } });

let tc: TestCoordinator;

beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true });
});

afterAll(async () => {
  await tc?.stop();
});

const post = (path: string, body: unknown) => postJson(tc, path, body);
const get = (path: string) => getJson(tc, path);

describe('store refusals name the OpenLineage field', () => {
  it('a run whose COMPLETE names another job than its START: 400 naming job.name, nothing of the batch stored', async () => {
    const runId = uuid();
    expect((await post('/api/v1/lineage', runEvent('ren', 'old_name', runId, 'START', '2026-02-05T00:00:00Z', [{ namespace: 'ren', name: 'out' }]))).status).toBe(201);
    const single = await post('/api/v1/lineage', runEvent('ren', 'new_name', runId, 'COMPLETE', '2026-02-05T00:03:00Z', [{ namespace: 'ren', name: 'out' }]));
    expect(single.status).toBe(400);
    expect(single.json.field).toBe('job.name');
    expect(single.json.message).toContain(runId);
    expect(single.json.message).toContain('"ren:old_name"');

    const other = uuid();
    const batch = await post('/api/v1/lineage/batch', [
      runEvent('ren2', 'first', other, 'START', '2026-02-06T00:00:00Z', [{ namespace: 'ren2', name: 'out' }]),
      runEvent('ren2', 'second', other, 'COMPLETE', '2026-02-06T00:01:00Z', [{ namespace: 'ren2', name: 'out' }]),
    ]);
    expect(batch.status).toBe(400);
    expect(batch.json).toMatchObject({ error: 'INVALID_ARGUMENT', field: '[1].job.name' });
    expect((await get('/api/v1/namespaces/ren2')).status).toBe(404);
  });

  it('a dataset version already written by another run: 400 naming that output', async () => {
    const out = { namespace: 'ver', name: 't', facets: versionFacet('v1') };
    const first = uuid();
    expect((await post('/api/v1/lineage', runEvent('ver', 'w', first, 'COMPLETE', '2026-05-02T00:00:00Z', [out]))).status).toBe(201);
    const res = await post('/api/v1/lineage/batch', [
      runEvent('ver', 'w', uuid(), 'COMPLETE', '2026-05-02T01:00:00Z', [{ namespace: 'ver', name: 'a' }, { namespace: 'ver', name: 'a' }, out]),
    ]);
    expect(res.status).toBe(400);
    expect(res.json.field).toBe('[0].outputs[2]');
    expect(res.json.message).toContain(first);
    expect((await get('/api/v1/namespaces/ver/datasets/a')).status).toBe(404);
  });
});

describe('search', () => {
  it("dates a job as its own answer does (its latest run's end), and sorts UPDATE_AT by that", async () => {
    const dag = uuid();
    const task = uuid();
    const load = uuid();
    for (const e of [
      runEvent('srch', 'srchdag', dag, 'START', '2026-06-01T10:00:00Z', []),
      runEvent('srch', 'srchdag.task', task, 'START', '2026-06-01T10:00:01Z', [{ namespace: 'srch', name: 'srchout' }]),
      runEvent('srch', 'srchdag.task', task, 'COMPLETE', '2026-06-01T10:00:05Z', [{ namespace: 'srch', name: 'srchout' }]),
      runEvent('srch', 'srchdag', dag, 'COMPLETE', '2026-06-01T10:00:10Z', []),
      // A START naming its output, then a COMPLETE naming it again 7 minutes later.
      runEvent('srch', 'srchload', load, 'START', '2026-06-01T09:00:00Z', [{ namespace: 'srch', name: 'srchloaded' }]),
      runEvent('srch', 'srchload', load, 'COMPLETE', '2026-06-01T09:07:00Z', [{ namespace: 'srch', name: 'srchloaded' }]),
    ]) {
      expect((await post('/api/v1/lineage', e)).status).toBe(201);
    }
    const res = await get('/api/v1/search?q=srch&filter=JOB&sort=UPDATE_AT');
    expect(res.status).toBe(200);
    const results = res.json.results as { name: string; updatedAt: string }[];
    expect(results.map((r) => r.name)).toEqual(['srchdag', 'srchdag.task', 'srchload']);
    for (const r of results) {
      const job = await get(`/api/v1/namespaces/srch/jobs/${encodeURIComponent(r.name)}`);
      expect(r.updatedAt).toBe(job.json.updatedAt);
    }
    expect(results[0]?.updatedAt).toBe('2026-06-01T10:00:10.000Z');
    expect(results[2]?.updatedAt).toBe('2026-06-01T09:07:00.000Z');
  });
});

describe('GET /api/v1/lineage node data', () => {
  it("carries the createdAt, updatedAt (and a job's parentJobName) that the dataset's and job's own answers give", async () => {
    const dag = uuid();
    const task = uuid();
    const parent = { parent: { _producer: PRODUCER, _schemaURL: 'https://openlineage.io/spec/facets/1-0-1/ParentRunFacet.json', run: { runId: dag }, job: { namespace: 'lgt', name: 'lgtdag' } } };
    const start = runEvent('lgt', 'lgtdag.load', task, 'START', '2026-07-01T10:00:00Z', [{ namespace: 'lgt', name: 'lgtout' }], [{ namespace: 'lgt', name: 'lgtin' }]);
    const complete = runEvent('lgt', 'lgtdag.load', task, 'COMPLETE', '2026-07-01T10:07:00Z', [{ namespace: 'lgt', name: 'lgtout' }], [{ namespace: 'lgt', name: 'lgtin' }]);
    for (const e of [
      runEvent('lgt', 'lgtdag', dag, 'START', '2026-07-01T09:59:00Z', []),
      { ...start, run: { runId: task, facets: parent } },
      { ...complete, run: { runId: task, facets: parent } },
    ]) {
      expect((await post('/api/v1/lineage', e)).status).toBe(201);
    }
    const res = await get(`/api/v1/lineage?nodeId=${encodeURIComponent('job:lgt:lgtdag.load')}`);
    expect(res.status).toBe(200);
    const graph = res.json.graph as { id: string; type: string; data: Record<string, unknown> }[];
    expect(graph.map((n) => n.id)).toEqual(['dataset:lgt:lgtin', 'dataset:lgt:lgtout', 'job:lgt:lgtdag.load']);
    for (const n of graph) {
      const own = n.type === 'JOB' ? await get(`/api/v1/namespaces/lgt/jobs/${encodeURIComponent(String(n.data['name']))}`) : await get(`/api/v1/namespaces/lgt/datasets/${encodeURIComponent(String(n.data['name']))}`);
      expect(own.status).toBe(200);
      expect(n.data['createdAt']).toBe(own.json.createdAt);
      expect(n.data['updatedAt']).toBe(own.json.updatedAt);
      expect(typeof n.data['updatedAt']).toBe('string');
      if (n.type === 'JOB') expect(n.data['parentJobName']).toBe('lgtdag');
    }
    const job = graph[2] as { data: Record<string, unknown> };
    expect(job.data['updatedAt']).toBe('2026-07-01T10:07:00.000Z');
  });
});

describe('compressed bodies (OpenLineage transports with compression: gzip)', () => {
  async function postRaw(body: Buffer, encoding: string): Promise<{ status: number; json: any }> {
    const res = await fetch(`${tc.httpUrl}/api/v1/lineage`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-encoding': encoding, ...tc.httpAuth },
      body,
    });
    return { status: res.status, json: await res.json() };
  }

  it('reads a gzip or deflate body as the JSON it holds', async () => {
    const gz = uuid();
    const event = runEvent('zip', 'gzipped', gz, 'COMPLETE', '2026-08-01T00:00:00Z', [{ namespace: 'zip', name: 'zipped_out' }]);
    expect(await postRaw(gzipSync(JSON.stringify(event)), 'gzip')).toEqual({ status: 201, json: {} });
    expect((await get(`/api/v1/jobs/runs/${gz}`)).json).toMatchObject({ id: gz, state: 'COMPLETED' });
    const df = uuid();
    const other = runEvent('zip', 'deflated', df, 'COMPLETE', '2026-08-01T00:00:00Z', [{ namespace: 'zip', name: 'zipped_out2' }]);
    expect((await postRaw(deflateSync(JSON.stringify(other)), 'deflate')).status).toBe(201);
    expect((await get(`/api/v1/jobs/runs/${df}`)).status).toBe(200);
  });

  it('refuses an unknown encoding (415 naming content-encoding), a corrupt one (400) and one over 16 MiB once decompressed (413)', async () => {
    const body = gzipSync(JSON.stringify(runEvent('zip', 'x', uuid(), 'COMPLETE', '2026-08-01T00:00:00Z', [])));
    expect(await postRaw(body, 'br')).toMatchObject({ status: 415, json: { error: 'INVALID_ARGUMENT', field: 'content-encoding' } });
    expect(await postRaw(Buffer.from('{"not":"gzip"}'), 'gzip')).toMatchObject({ status: 400, json: { error: 'INVALID_ARGUMENT', field: 'body' } });
    const bomb = gzipSync(Buffer.alloc(17 * 1024 * 1024, 0x20));
    expect(bomb.length).toBeLessThan(1024 * 1024);
    expect(await postRaw(bomb, 'gzip')).toMatchObject({ status: 413, json: { error: 'RESOURCE_EXHAUSTED', field: 'body' } });
  });
});

describe('run states', () => {
  it('an OTHER event after COMPLETE adds its facets and leaves the run COMPLETED, ended when it ended', async () => {
    const runId = uuid();
    expect((await post('/api/v1/lineage', runEvent('other', 'job', runId, 'START', '2026-02-06T00:00:00Z', []))).status).toBe(201);
    expect((await post('/api/v1/lineage', runEvent('other', 'job', runId, 'COMPLETE', '2026-02-06T00:10:00Z', []))).status).toBe(201);
    const late = { ...runEvent('other', 'job', runId, 'OTHER', '2026-02-06T00:20:00Z', []), run: { runId, facets: { note: { _producer: PRODUCER, _schemaURL: 'https://example.com/Note.json', text: 'late metadata' } } } };
    expect((await post('/api/v1/lineage', late)).status).toBe(201);
    const run = (await get(`/api/v1/jobs/runs/${runId}`)).json;
    expect(run).toMatchObject({ state: 'COMPLETED', endedAt: '2026-02-06T00:10:00Z', durationMs: 600_000 });
    expect(run.facets?.note?.text).toBe('late metadata');
  });
});

describe('run ids', () => {
  it('a run is found by its UUID in either case, as Marquez finds it; a native run id matches exactly', async () => {
    const lower = uuid();
    expect((await post('/api/v1/lineage', runEvent('case', 'lower', lower, 'COMPLETE', '2026-02-08T00:00:00Z', [{ namespace: 'case', name: 'out' }]))).status).toBe(201);
    expect((await get(`/api/v1/jobs/runs/${lower.toUpperCase()}`)).json).toMatchObject({ id: lower, state: 'COMPLETED' });
    expect((await get(`/api/v1/jobs/runs/${lower.toUpperCase()}/facets?type=job`)).json).toMatchObject({ runId: lower });
    // A producer that sends upper-case UUIDs is found by the lower-case one a user copies from elsewhere.
    const upper = uuid().toUpperCase();
    expect((await post('/api/v1/lineage', runEvent('case', 'upper', upper, 'COMPLETE', '2026-02-08T00:00:00Z', [{ namespace: 'case', name: 'out2' }]))).status).toBe(201);
    expect((await get(`/api/v1/jobs/runs/${upper.toLowerCase()}`)).json).toMatchObject({ id: upper, state: 'COMPLETED' });
    expect((await get(`/api/v1/jobs/runs/${upper}`)).json).toMatchObject({ id: upper });
    expect((await get(`/api/v1/jobs/runs/${uuid().toUpperCase()}`)).status).toBe(404);
    await tc.coordinator.lineage.submit(buildExampleLineage({ orders: 2 }).events);
    expect((await get('/api/v1/jobs/runs/example-run-2')).status).toBe(200);
    expect((await get('/api/v1/jobs/runs/EXAMPLE-RUN-2')).status).toBe(404);
  });
});

describe('names', () => {
  it('an empty namespace or name is refused with 400 naming it, and nothing of the event is stored', async () => {
    const emptyJob = await post('/api/v1/lineage', runEvent('', 'job', uuid(), 'COMPLETE', '2026-02-07T00:00:00Z', [{ namespace: 'names', name: 'out' }]));
    expect([emptyJob.status, emptyJob.json.field]).toEqual([400, 'job.namespace']);
    const emptyInput = await post('/api/v1/lineage/batch', [runEvent('names', 'job', uuid(), 'COMPLETE', '2026-02-07T00:00:00Z', [], [{ namespace: 'names', name: '' }])]);
    expect([emptyInput.status, emptyInput.json.field]).toEqual([400, '[0].inputs[0].name']);
    const names = ((await get('/api/v1/namespaces')).json.namespaces as { name: string }[]).map((n) => n.name);
    expect(names).not.toContain('');
    expect(names).not.toContain('names');
  });
});
