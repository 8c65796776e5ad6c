import { Direction, NodeKind, type ExportProvRequest, type TraceResponse } from '../../common/gen/retrace/v1/lineage.js';
import type { ObjectVersion, Step } from '../../common/gen/retrace/v1/provenance.js';
import { toProvJson } from '../../common/prov-json.js';
import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import { nsToMs, type LineageEngine } from './lineage-engine.js';

/** Largest subgraph one export returns; beyond it the request is refused rather than cut. */
const MAX_EXPORT_NODES = 100_000;

/** The subgraph around `start` (walked like Trace) as a W3C PROV-JSON document. */
export async function exportProv(engine: LineageEngine, request: ExportProvRequest): Promise<Record<string, unknown>> {
  const asOfMs = request.asOfNs === '0' || request.asOfNs === '' ? Number.POSITIVE_INFINITY : nsToMs(BigInt(request.asOfNs));
  let trace: TraceResponse;
  try {
    trace = await engine.trace({
      start: request.start,
      direction: request.direction === Direction.DIRECTION_UNSPECIFIED ? Direction.DIRECTION_BOTH : request.direction,
      depth: request.depth,
      asOfNs: request.asOfNs,
      pageSize: MAX_EXPORT_NODES,
      pageToken: '',
      includeEdges: false,
      objectLevel: false,
    });
  } catch (err) {
    // A start recorded after as_of_ns: Trace answers NOT_FOUND, the export what the graph held then (nothing of it).
    if (err instanceof NotFoundError && request.start && Number.isFinite(asOfMs) && engine.hasNodeAsOf(request.start, Number.POSITIVE_INFINITY)) return toProvJson({ steps: [], versions: [], objects: [] });
    throw err;
  }
  if (trace.nextPageToken !== '') throw new InvalidArgumentError('depth', `the subgraph has ${trace.totalNodes} nodes, more than the ${MAX_EXPORT_NODES} one export holds: give a depth, a direction or an earlier as_of_ns`);
  // As of a time, what the graph held then: each step folded from its events up to then (its
  // used and generated references as they were).
  // Trace answered, so the start existed as of then.
  const start = request.start ? [request.start] : [];
  const refs = [...trace.nodes.map((n) => n.node), ...start];
  const steps: Step[] = [];
  const versions: ObjectVersion[] = [];
  const objects: string[] = [];
  await Promise.all(
    refs.map(async (ref) => {
      if (!ref) return;
      if (ref.kind === NodeKind.NODE_KIND_STEP) {
        const s = await engine.readStep(ref.id, asOfMs);
        if (s) steps.push(s);
      } else if (ref.kind === NodeKind.NODE_KIND_OBJECT_VERSION) {
        const v = await engine.readVersion(ref.id, ref.contentHash);
        if (v) versions.push(v);
      } else if (ref.kind === NodeKind.NODE_KIND_OBJECT) objects.push(ref.id);
    }),
  );
  // Endpoints of the steps' relations must exist in the document too.
  const known = new Set(versions.map((v) => `${v.objectId}@${v.contentHash}`));
  const knownObjects = new Set(objects);
  for (const s of steps) {
    for (const r of [...s.used, ...s.generated]) {
      if (r.unversioned) {
        if (!knownObjects.has(r.objectId)) {
          knownObjects.add(r.objectId);
          objects.push(r.objectId);
        }
      } else if (!known.has(`${r.objectId}@${r.contentHash}`)) {
        known.add(`${r.objectId}@${r.contentHash}`);
        const v = await engine.readVersion(r.objectId, r.contentHash);
        if (v) versions.push(v);
      }
    }
  }
  steps.sort((a, b) => a.stepId.localeCompare(b.stepId));
  versions.sort((a, b) => `${a.objectId}@${a.contentHash}`.localeCompare(`${b.objectId}@${b.contentHash}`));
  objects.sort();
  return toProvJson({ steps, versions, objects });
}
