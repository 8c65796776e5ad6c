import { RetraceError } from '../common/errors.js';
import type { Role } from './token-file.js';
import type { Identity } from './token-registry.js';

/**
 * What each role may call. One table for both faces (the gRPC interceptor, the HTTP server), so
 * they agree.
 *
 * - `agent`: exactly what `retrace agent` calls: NodeService/Connect (its session) and
 *   CodeService/GetCode (the bundles of the shards it runs). No HTTP route.
 * - `client`: every RPC but ADMIN_ONLY_METHODS; every HTTP route (OpenLineage POST, the GETs).
 * - `admin` (and the owner token): everything.
 */
export const AGENT_METHODS: ReadonlySet<string> = new Set(['/retrace.v1.NodeService/Connect', '/retrace.v1.CodeService/GetCode']);

/**
 * RPCs a client token may not call. PublishCode: published code runs on every agent. Connect:
 * only agents join the mesh (a client that joined would be sent shards and their inputs).
 * DrainNode: an operator's action on the cluster, not a user's on their data. SweepPayloads:
 * deletes stored payloads for everyone (a replay of a swept record then fails), dry run or not.
 *
 * Left to clients, on purpose: SetChangePolicy, WatchPath and UnwatchPath change shared settings
 * as ApplyPipeline does (a user's pipeline work), delete no data and can be set back; WatchPath
 * reads only under the roots the operator gave (`--watch-root`). Jobs and replays a client may
 * cancel or resume are its own principal's only (checkActsFor in grpc/principal.ts).
 */
export const ADMIN_ONLY_METHODS: ReadonlySet<string> = new Set([
  '/retrace.v1.CodeService/PublishCode',
  '/retrace.v1.NodeService/Connect',
  '/retrace.v1.NodeService/DrainNode',
  '/retrace.v1.PipelineService/SweepPayloads',
]);

/** Whether `role` may call the gRPC method at `path` (`/retrace.v1.Service/Method`). */
export function mayCall(role: Role, path: string): boolean {
  if (role === 'admin') return true;
  if (role === 'agent') return AGENT_METHODS.has(path);
  return !ADMIN_ONLY_METHODS.has(path);
}

/** Whether `role` may use the HTTP API (OpenLineage, Marquez): clients and admins may, agents may not. */
export function mayUseHttp(role: Role): boolean {
  return role !== 'agent';
}

/**
 * The principal a token is bound to: a client or agent token's name, which every principal its
 * calls record must be (x-retrace-principal, request fields, step events' why.principal).
 * Undefined for the owner token and admin tokens, which may name anyone.
 */
export function boundPrincipalOf(identity: Identity): string | undefined {
  return identity.owner || identity.role === 'admin' ? undefined : identity.name;
}

/** The PERMISSION_DENIED answer to `identity` calling `what` (a gRPC method path, or `HTTP POST /api/...`). */
export function permissionDenied(identity: Identity, what: string): RetraceError {
  const may =
    identity.role === 'agent'
      ? `role agent may call only ${[...AGENT_METHODS].map((m) => m.slice(1)).join(' and ')}`
      : `it needs role admin`;
  return new RetraceError('PERMISSION_DENIED', `token ${JSON.stringify(identity.name)} has role ${identity.role}, which may not call ${what.replace(/^\//, '')}: ${may}`);
}
