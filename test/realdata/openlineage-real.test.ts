import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toLineageEvents } from '../../common/openlineage/to-lineage-events.js';
import type { OpenLineageRunEvent } from '../../common/openlineage/types.js';
import { validateOpenLineageBatch, validateOpenLineageEvent } from '../../common/openlineage/validate.js';
import { getLineage, postJson, type GraphEdge as Edge, type GraphNode } from '../helpers/openlineage-http.js';
import { startTestCoordinator, type TestCoordinator } from '../helpers/test-coordinator.js';

/**
 * Real OpenLineage events (Airflow and Spark-on-Dataproc captures from OpenLineage's
 * compatibility tests, and Marquez's demo seed) through validation, conversion, the HTTP face
 * and lineage queries of a real coordinator.
 */

const DATA = new URL('../../../shared/data/openlineage-events/', import.meta.url);

/** The 74 captured events, as MANIFEST.tsv lists them. */
function capturedEvents(): { path: string; event: unknown }[] {
  const manifest = readFileSync(new URL('MANIFEST.tsv', DATA), 'utf8');
  return manifest
    .split('\n')
    .slice(1)
    .map((line) => line.split('\t')[0] ?? '')
    .filter((path) => /^real-captured\/.*\/events\/[^/]+\.json$/.test(path))
    .map((path) => ({ path, event: JSON.parse(readFileSync(new URL(path, DATA), 'utf8')) as unknown }));
}

/** Marquez's seed with its time placeholders filled: runs start at a fixed time, end N minutes later. */
function marquezSeed(): unknown[] {
  const start = Date.parse('2024-06-01T08:00:00.000Z');
  const text = readFileSync(new URL('marquez-demo-seed/metadata.template.json', DATA), 'utf8')
    .replaceAll('{{RUN_START_TIME}}', new Date(start).toISOString())
    .replace(/\{\{RUN_END_TIME_AFTER_(\d+)_MINUTES\}\}/g, (_, minutes: string) => new Date(start + Number(minutes) * 60_000).toISOString());
  expect(text).not.toContain('{{');
  return JSON.parse(text) as unknown[];
}

/** Marquez-level edges the events themselves declare: dataset -> job for inputs, job -> dataset for outputs. */
function expectedEdges(events: readonly OpenLineageRunEvent[]): Map<string, Edge> {
  const edges = new Map<string, Edge>();
  for (const e of events) {
    const job = `job:${e.job.namespace}:${e.job.name}`;
    for (const d of e.inputs ?? []) edges.set(`${d.namespace}|${d.name}|in|${job}`, { origin: `dataset:${d.namespace}:${d.name}`, destination: job });
    for (const d of e.outputs ?? []) edges.set(`${d.namespace}|${d.name}|out|${job}`, { origin: job, destination: `dataset:${d.namespace}:${d.name}` });
  }
  return edges;
}

function sortEdges(edges: Iterable<Edge>): Edge[] {
  return [...edges].sort((a, b) => `${a.origin}\n${a.destination}`.localeCompare(`${b.origin}\n${b.destination}`));
}

let tc: TestCoordinator;

beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true });
});

afterAll(async () => {
  await tc?.stop();
});

const post = (path: string, body: unknown) => postJson(tc, path, body);

async function graphOf(nodeId: string, depth?: number): Promise<GraphNode[]> {
  const res = await getLineage(tc, nodeId, depth);
  const json = res.json as { graph: GraphNode[] };
  expect(res.status, `${nodeId}: ${JSON.stringify(json)}`).toBe(200);
  return json.graph;
}

/** Checks that every node of the expected edges is served with exactly its in- and out-edges. */
async function expectGraphMatches(edges: Map<string, Edge>): Promise<void> {
  const ids = new Set([...edges.values()].flatMap((e) => [e.origin, e.destination]));
  for (const id of ids) {
    const graph = await graphOf(id, 1);
    const node = graph.find((n) => n.id === id);
    expect(node, id).toBeDefined();
    expect(node?.type).toBe(id.startsWith('job:') ? 'JOB' : 'DATASET');
    expect(node?.inEdges, `${id} inEdges`).toEqual(sortEdges([...edges.values()].filter((e) => e.destination === id)));
    expect(node?.outEdges, `${id} outEdges`).toEqual(sortEdges([...edges.values()].filter((e) => e.origin === id)));
  }
}

describe('real captured events (Airflow 1.14, Spark on Dataproc)', () => {
  const captured = capturedEvents();

  it('all 74 validate and convert', () => {
    expect(captured).toHaveLength(74);
    for (const { path, event } of captured) {
      const validated = validateOpenLineageEvent(event);
      expect(validated.kind, path).toBe('RunEvent');
      expect(toLineageEvents(validated).length, path).toBeGreaterThan(0);
    }
  });

  it('all are accepted over HTTP, one by one; resent as one batch they are all duplicates', async () => {
    let nativeEvents = 0;
    for (const { path, event } of captured) {
      const res = await post('/api/v1/lineage', event);
      expect(res, path).toEqual({ status: 201, json: {} });
      nativeEvents += toLineageEvents(validateOpenLineageEvent(event)).length;
    }
    expect(await post('/api/v1/lineage/batch', captured.map((c) => c.event))).toEqual({
      status: 201,
      json: { accepted: 0, duplicates: nativeEvents },
    });
  });

  it('every job and dataset shows up in GET lineage with the in- and out-edges the events declare', async () => {
    const events = validateOpenLineageBatch(captured.map((c) => c.event)).map((v) => v.event as OpenLineageRunEvent);
    const edges = expectedEdges(events);
    expect(edges.size).toBeGreaterThan(20);
    await expectGraphMatches(edges);
  });

  it('a Spark job carries its dataset schema and its latest run', async () => {
    const events = captured.map((c) => c.event as OpenLineageRunEvent);
    const withSchema = events.find((e) => (e.outputs ?? []).some((o) => (o.facets?.schema?.fields?.length ?? 0) > 0));
    const output = withSchema?.outputs?.find((o) => (o.facets?.schema?.fields?.length ?? 0) > 0);
    if (!withSchema || !output) throw new Error('no output with a schema among the captured events');
    const id = `dataset:${output.namespace}:${output.name}`;
    const graph = await graphOf(id);
    const dataset = graph.find((n) => n.id === id);
    expect(dataset?.data['namespace']).toBe(output.namespace);
    expect(dataset?.data['name']).toBe(output.name);
    expect((dataset?.data['fields'] as unknown[]).length).toBeGreaterThan(0);
    const job = graph.find((n) => n.id === `job:${withSchema.job.namespace}:${withSchema.job.name}`);
    expect(job?.data['latestRun']).toMatchObject({ id: withSchema.run.runId });
  });

  it("serves every job, those whose runs read or wrote no dataset (the Airflow DAG, the Spark application) too, with its runs and parent job", async () => {
    const get = async (path: string): Promise<{ status: number; json: any }> => {
      const res = await fetch(`${tc.httpUrl}${path}`, { headers: tc.httpAuth });
      return { status: res.status, json: await res.json() };
    };
    const events = captured.map((c) => c.event as OpenLineageRunEvent);
    const jobs = new Map<string, { namespace: string; name: string; runs: Set<string> }>();
    const jobOfRun = new Map<string, string>();
    const parentOf = new Map<string, string>();
    for (const e of events) {
      const key = `${e.job.namespace}\n${e.job.name}`;
      const job = jobs.get(key) ?? { namespace: e.job.namespace, name: e.job.name, runs: new Set<string>() };
      job.runs.add(e.run.runId);
      jobs.set(key, job);
      jobOfRun.set(e.run.runId, e.job.name);
      const parent = e.run.facets?.parent?.run.runId;
      if (parent !== undefined && parent !== e.run.runId) parentOf.set(e.run.runId, parent);
    }
    const datasetless = [...jobs.values()].filter((j) => events.every((e) => e.job.name !== j.name || e.job.namespace !== j.namespace || ((e.inputs ?? []).length === 0 && (e.outputs ?? []).length === 0)));
    expect(datasetless.map((j) => `${j.namespace}/${j.name}`)).toEqual(expect.arrayContaining(['airflow/BQ', 'default/cl_i_test_application']));

    for (const ns of new Set([...jobs.values()].map((j) => j.namespace))) {
      const listed = (await get(`/api/v1/namespaces/${encodeURIComponent(ns)}/jobs?limit=1000`)).json.jobs.map((j: { name: string }) => j.name);
      expect(listed, ns).toEqual([...jobs.values()].filter((j) => j.namespace === ns).map((j) => j.name).sort());
    }
    for (const j of jobs.values()) {
      const path = `/api/v1/namespaces/${encodeURIComponent(j.namespace)}/jobs/${encodeURIComponent(j.name)}`;
      const job = await get(path);
      expect(job.status, path).toBe(200);
      const latest = job.json.latestRun as { id: string; state: string };
      expect([...j.runs], path).toContain(latest.id);
      expect(['NEW', 'RUNNING', 'COMPLETED', 'ABORTED', 'FAILED'], path).toContain(latest.state);
      const parent = parentOf.get(latest.id);
      expect(job.json.parentJobName, path).toBe(parent === undefined ? null : (jobOfRun.get(parent) ?? null));
      const runs = await get(`${path}/runs`);
      expect(runs.json.totalCount, path).toBe(j.runs.size);
      expect(new Set(runs.json.runs.map((r: { id: string }) => r.id)), path).toEqual(j.runs);
      const graph = await graphOf(`job:${j.namespace}:${j.name}`);
      expect(graph.some((n) => n.id === `job:${j.namespace}:${j.name}`), path).toBe(true);
    }
    // The child runs of the DAG point to a job that is served.
    const bq = (await get('/api/v1/namespaces/airflow/jobs/BQ')).json;
    expect(bq.latestRun.state).toBe('COMPLETED');
    expect((await get('/api/v1/namespaces/airflow/jobs/BQ.copy')).json.parentJobName).toBe('BQ');
  });
});

describe('Marquez demo seed (food_delivery)', () => {
  const seed = marquezSeed();

  it('is accepted as one batch', async () => {
    expect(seed).toHaveLength(26);
    const res = await post('/api/v1/lineage/batch', seed);
    expect(res.status).toBe(201);
    expect(res.json.duplicates).toBe(0);
  });

  it('gives the 13-job DAG from any of its nodes, with the declared edges', async () => {
    const events = validateOpenLineageBatch(seed).map((v) => v.event as OpenLineageRunEvent);
    const edges = expectedEdges(events);
    const jobs = new Set(events.map((e) => `job:${e.job.namespace}:${e.job.name}`));
    const datasets = new Set([...edges.values()].flatMap((e) => [e.origin, e.destination]).filter((id) => id.startsWith('dataset:')));
    expect(jobs.size).toBe(13);
    for (const start of [...jobs, ...datasets]) {
      const graph = await graphOf(start);
      expect(graph.filter((n) => n.type === 'JOB').map((n) => n.id).sort(), start).toEqual([...jobs].sort());
      expect(graph.filter((n) => n.type === 'DATASET').map((n) => n.id).sort(), start).toEqual([...datasets].sort());
      const served = sortEdges(new Map(graph.flatMap((n) => [...n.inEdges, ...n.outEdges]).map((e) => [`${e.origin}\n${e.destination}`, e])).values());
      expect(served, start).toEqual(sortEdges(edges.values()));
    }
    await expectGraphMatches(edges);
  });

  it('serves job and dataset data as Marquez does', async () => {
    const graph = await graphOf('job:food_delivery:etl_menus');
    const job = graph.find((n) => n.id === 'job:food_delivery:etl_menus');
    expect(job?.data).toMatchObject({
      namespace: 'food_delivery',
      name: 'etl_menus',
      description: 'Loads newly added restaurant menus daily.',
      outputs: [{ namespace: 'food_delivery', name: 'public.menus' }],
      latestRun: { id: '4d3b8069-69b6-4708-ade0-3275112c9f04', state: 'COMPLETED', startedAt: '2024-06-01T08:00:00Z', endedAt: '2024-06-01T08:08:00Z' },
    });
    const menus = graph.find((n) => n.id === 'dataset:food_delivery:public.menus');
    expect((menus?.data['fields'] as { name: string }[]).map((f) => f.name)).toEqual(['id', 'name', 'restaurant_id', 'description']);
  });

  it("can be browsed through Marquez's read API: namespaces, datasets, jobs, a run, search", async () => {
    const get = async (path: string): Promise<{ status: number; json: any }> => {
      const res = await fetch(`${tc.httpUrl}${path}`, { headers: tc.httpAuth });
      return { status: res.status, json: await res.json() };
    };
    const events = validateOpenLineageBatch(seed).map((v) => v.event as OpenLineageRunEvent);
    const edges = expectedEdges(events);
    const jobNames = [...new Set(events.map((e) => e.job.name))].sort();
    const datasetNames = [...new Set([...edges.values()].flatMap((e) => [e.origin, e.destination]).filter((id) => id.startsWith('dataset:food_delivery:')).map((id) => id.slice('dataset:food_delivery:'.length)))].sort();

    const ns = await get('/api/v1/namespaces');
    expect(ns.status).toBe(200);
    expect(ns.json.namespaces.map((n: { name: string }) => n.name)).toContain('food_delivery');
    expect((await get('/api/v1/namespaces/food_delivery')).json).toMatchObject({ name: 'food_delivery', ownerName: 'anonymous' });

    const jobs = await get('/api/v1/namespaces/food_delivery/jobs');
    expect(jobs.status).toBe(200);
    expect(jobs.json.totalCount).toBe(13);
    expect(jobs.json.jobs.map((j: { name: string }) => j.name)).toEqual(jobNames);
    const page = await get('/api/v1/namespaces/food_delivery/jobs?limit=5&offset=10');
    expect(page.json.jobs.map((j: { name: string }) => j.name)).toEqual(jobNames.slice(10, 15));
    // As Marquez (@Min(0)): limit=0 is the count alone.
    const none = await get('/api/v1/namespaces/food_delivery/jobs?limit=0');
    expect([none.status, none.json.jobs, none.json.totalCount]).toEqual([200, [], 13]);
    const etl = await get('/api/v1/namespaces/food_delivery/jobs/etl_menus');
    expect(etl.json).toMatchObject({ name: 'etl_menus', outputs: [{ namespace: 'food_delivery', name: 'public.menus' }], latestRun: { id: '4d3b8069-69b6-4708-ade0-3275112c9f04', state: 'COMPLETED' } });

    const datasets = await get('/api/v1/namespaces/food_delivery/datasets');
    expect(datasets.json.totalCount).toBe(datasetNames.length);
    expect(datasets.json.datasets.map((d: { name: string }) => d.name)).toEqual(datasetNames);
    // A name with characters a path must encode, as Marquez's clients send it.
    const menus = await get(`/api/v1/namespaces/food_delivery/datasets/${encodeURIComponent('public.menus')}`);
    expect(menus.json.fields.map((f: { name: string }) => f.name)).toEqual(['id', 'name', 'restaurant_id', 'description']);

    const run = await get('/api/v1/jobs/runs/4d3b8069-69b6-4708-ade0-3275112c9f04');
    expect(run.json).toMatchObject({ id: '4d3b8069-69b6-4708-ade0-3275112c9f04', state: 'COMPLETED', startedAt: '2024-06-01T08:00:00Z', endedAt: '2024-06-01T08:08:00Z' });

    const found = await get('/api/v1/search?q=MENU&filter=dataset');
    expect(found.json.results.map((r: { name: string }) => r.name)).toEqual(datasetNames.filter((n) => n.includes('menu')));
    expect(found.json.results[0]).toMatchObject({ type: 'DATASET', namespace: 'food_delivery', nodeId: `dataset:food_delivery:${datasetNames.find((n) => n.includes('menu'))}` });

    for (const [path, status, field] of [
      ['/api/v1/namespaces/nope', 404, 'namespace'],
      ['/api/v1/namespaces/food_delivery/jobs/nope', 404, 'job'],
      ['/api/v1/namespaces/food_delivery/datasets/nope', 404, 'dataset'],
      ['/api/v1/jobs/runs/nope', 404, 'id'],
      ['/api/v1/namespaces/food_delivery/jobs?limit=-1', 400, 'limit'],
      ['/api/v1/search', 400, 'q'],
      ['/api/v1/search?q=x&filter=RUN', 400, 'filter'],
      ['/api/v1/namespaces/%E0%A4%A', 400, 'namespace'],
    ] as const) {
      const r = await get(path);
      expect([r.status, r.json.field], path).toEqual([status, field]);
    }
    const post = await fetch(`${tc.httpUrl}/api/v1/namespaces/food_delivery/jobs`, { method: 'POST', headers: tc.httpAuth });
    expect(post.status).toBe(405);
  });
});
