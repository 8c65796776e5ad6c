import type {
  GetNodeRequest,
  GetNodeResponse,
  NodeKind,
  TraceRequest,
  TraceResponse,
} from '../../common/gen/retrace/v1/lineage.js';
import type { LineageEvent, ObjectVersion, Run } from '../../common/gen/retrace/v1/provenance.js';

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
   * The graph's objects as listNodes(NODE_KIND_OBJECT, '') lists them (in the order first seen,
   * with the same times), each id made a string only when asked for: a namespace list over
   * 20,000 records of a 3-step pipeline made 80,000. Reads nothing from the store.
   */
  listObjects(): ObjectTable;
  /**
   * What a trace from transform `transformId` (depth 1, object level, either direction, as of
   * now, its first `pageSize` nodes with edges) tells of the transform, without a message per
   * node or edge: its latest step and the objects its steps read and wrote. Undefined for an
   * unknown transform. Reads nothing from the store.
   */
  transformObjects(transformId: string, pageSize: number): TransformObjects | undefined;
  /**
   * The run getNode gives for `runId` (folded from its events), or undefined for a run no event
   * names; without the run's steps (getNode's relatedSteps), which for a run of 60,000 steps
   * were most of a read's cost.
   */
  readRun(runId: string): Promise<Run | undefined>;
  /**
   * The versions getNode gives each of `objectIds` (its `object` body's versions, in that
   * order), or undefined for an unknown object; read together, at a fraction of a getNode each
   * (a job's lineage graph over 20,000 records reads 60,000 objects).
   */
  readObjects(objectIds: readonly string[]): Promise<(ObjectVersion[] | undefined)[]>;
  /**
   * The step of transform `transformId` in run `runId` that getNode's relatedSteps of the run
   * list first (the one recorded last), by id; undefined when the run has none or either is
   * unknown. Reads nothing from the store and makes no key of the run's other steps.
   */
  runStepOf(runId: string, transformId: string): string | undefined;
}

/** A transform's latest step and the objects its steps read and wrote (see LineageApi.transformObjects). */
export interface TransformObjects {
  /** The step first seen last (to the microsecond, as trace gives times); the first in the transform's member order on a tie. */
  latestStepId: string | undefined;
  /** The objects its steps read, each once. */
  used: ObjectList;
  /** The objects its steps wrote, each once. */
  generated: ObjectList;
}

/**
 * Objects of the graph as they are now, each id made a string only when asked for: the objects of
 * a job over 20,000 records are 40,000. Read it before the graph changes (before an await): it
 * holds the graph's node numbers.
 */
export interface ObjectList {
  readonly length: number;
  /** The id of object `i` (0 to length - 1). */
  objectId(i: number): string;
  /** When object `i` was first seen (ms since the epoch). */
  firstSeenMs(i: number): number;
  /** Whether the id of object `i` starts with `prefix`. */
  idStartsWith(i: number, prefix: string): boolean;
}

/** Every object of the graph (see LineageApi.listObjects); like an ObjectList, read it before the graph changes. */
export interface ObjectTable extends ObjectList {
  /** When object `i` last changed: its latest version's first sighting, else its own (ms since the epoch). */
  lastChangedMs(i: number): number;
  /** The place of the object `objectId` in the table; undefined when the graph has no such object. */
  indexOf(objectId: string): number | undefined;
  /** The code-unit order of the ids of objects `i` and `j` (as `<` orders the strings): negative, 0 or positive. */
  compareIds(i: number, j: number): number;
  /** Whether the id of object `i`, lower-cased, contains `needle` (`objectId(i).toLowerCase().includes(needle)`). */
  idIncludesLowerCase(i: number, needle: string): boolean;
}
