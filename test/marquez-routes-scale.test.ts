import { describe, expect, it } from 'vitest';
import { NodeKind } from '../common/gen/retrace/v1/lineage.js';
import type { LineageApi, ObjectTable } from '../coordinator/lineage/lineage-api.js';
import { createMarquezRoutes } from '../coordinator/http/marquez-routes.js';
import type { HttpRequest, Route } from '../coordinator/http/router.js';

/**
 * The Marquez list routes at the scale of a real pipeline: 60,000 records through three steps
 * are 240,000 objects. The routes' listing spread them into one push(...) and every list route
 * answered 500 "Maximum call stack size exceeded". A stand-in lineage serves the node listing
 * (no step, run or version is read for a namespace list), so the test builds no 240,000-object store.
 */

const OBJECTS = 250_000;

function lineageWith(objects: number): LineageApi {
  const nodes = Array.from({ length: objects }, (_, i) => ({ id: `record:orders/raw:o${i}`, firstSeenMs: 1_700_000_000_000 + i, lastChangedMs: 1_700_000_000_000 + i }));
  const unused = (): never => {
    throw new Error('not read by this test');
  };
  return {
    submit: unused,
    getNode: unused,
    trace: unused,
    listNodes: (kind: NodeKind) => (kind === NodeKind.NODE_KIND_OBJECT ? nodes : []),
    listObjects: () => objectTableOf(nodes),
    transformObjects: unused,
    readRun: unused,
    runStepOf: unused,
    readObjects: unused,
  };
}

/** An ObjectTable over listed nodes, by their id strings. */
function objectTableOf(nodes: readonly { id: string; firstSeenMs: number; lastChangedMs: number }[]): ObjectTable {
  const at = (i: number): { id: string; firstSeenMs: number; lastChangedMs: number } => {
    const n = nodes[i];
    if (n === undefined) throw new RangeError(`no object ${i}`);
    return n;
  };
  const places = new Map(nodes.map((n, i) => [n.id, i]));
  return {
    length: nodes.length,
    objectId: (i) => at(i).id,
    firstSeenMs: (i) => at(i).firstSeenMs,
    lastChangedMs: (i) => at(i).lastChangedMs,
    idStartsWith: (i, prefix) => at(i).id.startsWith(prefix),
    indexOf: (id) => places.get(id),
    compareIds: (i, j) => (at(i).id < at(j).id ? -1 : at(i).id > at(j).id ? 1 : 0),
    idIncludesLowerCase: (i, needle) => at(i).id.toLowerCase().includes(needle),
  };
}

function get(routes: Route[], path: string, pattern: string, params: Record<string, string> = {}, query = ''): Promise<{ status: number; body?: unknown }> {
  const route = routes.find((r) => r.method === 'GET' && r.path === pattern);
  if (!route) throw new Error(`no route ${pattern}`);
  const req: HttpRequest = { method: 'GET', path, params, query: new URLSearchParams(query), body: undefined, headers: {}, boundPrincipal: undefined, signal: new AbortController().signal };
  return route.handler(req);
}

describe('Marquez list routes over many objects', () => {
  const { routes } = createMarquezRoutes(lineageWith(OBJECTS));

  it('lists namespaces with every dataset counted', async () => {
    const res = await get(routes, '/api/v1/namespaces', '/api/v1/namespaces');
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ namespaces: [{ name: 'retrace' }] });
  });

  it('counts the datasets of a namespace and pages them', async () => {
    const res = await get(routes, '/api/v1/namespaces/retrace', '/api/v1/namespaces/{namespace}', { namespace: 'retrace' });
    expect(res.status).toBe(200);
    // One page of a dataset list reads each dataset's data: only the total is checked here.
    const datasets = await get(routes, '/api/v1/namespaces/retrace/datasets', '/api/v1/namespaces/{namespace}/datasets', { namespace: 'retrace' }, 'limit=0');
    expect(datasets).toMatchObject({ status: 200, body: { totalCount: OBJECTS, datasets: [] } });
  });
});
