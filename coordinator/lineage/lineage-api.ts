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
}
