import type {
  GetNodeRequest,
  GetNodeResponse,
  NodeKind,
  TraceRequest,
  TraceResponse,
} from '../../common/gen/retrace/v1/lineage.js';
import type { LineageEvent } from '../../common/gen/retrace/v1/provenance.js';

/** Outcome of one atomic submission. */
export interface SubmitResult {
  /** Events newly stored. */
  accepted: number;
  /** Events whose event_id was already stored (nothing written for them). */
  duplicates: number;
  /** Ledger sequence number of each input event, in input order (the existing one for duplicates). */
  seqs: bigint[];
  /** Ledger size after the submission. */
  treeSize: bigint;
}

/**
 * What the coordinator's front ends (gRPC handlers, HTTP routes, engines) may ask of the lineage
 * store. `submit` is atomic: every event is stored, or none, and it resolves only once the
 * events are durable (fsynced). Errors are RetraceErrors (InvalidArgumentError naming the field,
 * with `events[i]` as the path prefix).
 */
export interface LineageApi {
  submit(events: readonly LineageEvent[], options?: { signal?: AbortSignal }): Promise<SubmitResult>;
  getNode(request: GetNodeRequest): Promise<GetNodeResponse>;
  /** Unset fields take their proto defaults. */
  trace(request: Partial<TraceRequest>): Promise<TraceResponse>;
  /**
   * The graph's nodes of one kind whose id starts with `idPrefix`, in the order they were first
   * seen, with when that was and when they last changed (a new version of an object, a new step
   * of a transform; ms since the epoch). Scans every node of the kind.
   */
  listNodes(kind: NodeKind, idPrefix: string): { id: string; firstSeenMs: number; lastChangedMs: number }[];
  /**
   * What a trace from transform `transformId` (depth 1, object level, either direction, as of
   * now, its first `pageSize` nodes with edges) tells of the transform, without a message per
   * node or edge: its latest step and the objects its steps read and wrote. Undefined for an
   * unknown transform. Reads nothing from the store.
   */
  transformObjects(transformId: string, pageSize: number): TransformObjects | undefined;
}

/** A transform's latest step and the objects its steps read and wrote (see LineageApi.transformObjects). */
export interface TransformObjects {
  /** The step first seen last (to the microsecond, as trace gives times); the first in the transform's member order on a tie. */
  latestStepId: string | undefined;
  /** The objects its steps read, each once, with when each was first seen (ms since the epoch). */
  used: { objectId: string; firstSeenMs: number }[];
  /** The objects its steps wrote, each once. */
  generated: { objectId: string; firstSeenMs: number }[];
}
