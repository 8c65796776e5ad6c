import type { TestCoordinator } from './test-coordinator.js';

/** An edge of the Marquez-style lineage graph GET /api/v1/lineage serves. */
export interface GraphEdge {
  origin: string;
  destination: string;
}

/** A node of that graph. */
export interface GraphNode {
  id: string;
  type: 'DATASET' | 'JOB';
  data: Record<string, any>;
  inEdges: GraphEdge[];
  outEdges: GraphEdge[];
}

/** POSTs `body` (JSON-encoded, unless already a string) to the coordinator's HTTP `path` with its token; the status and the parsed answer. */
export async function postJson(tc: TestCoordinator, path: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${tc.httpUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...tc.httpAuth },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

/** GETs the coordinator's HTTP `path` with its token; the status and the parsed answer. */
export async function getJson(tc: TestCoordinator, path: string): Promise<{ status: number; json: any }> {
  const res = await fetch(`${tc.httpUrl}${path}`, { headers: tc.httpAuth });
  return { status: res.status, json: await res.json() };
}

/** GET /api/v1/lineage?nodeId=…[&depth=…] with the token; the status and the parsed answer. */
export async function getLineage(tc: TestCoordinator, nodeId: string, depth?: number): Promise<{ status: number; json: any }> {
  const q = new URLSearchParams({ nodeId });
  if (depth !== undefined) q.set('depth', String(depth));
  return getJson(tc, `/api/v1/lineage?${q}`);
}
