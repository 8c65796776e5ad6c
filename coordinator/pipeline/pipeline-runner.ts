import { randomUUID } from 'node:crypto';
import { sleep } from '../../common/abortable-sleep.js';
import { canonicalJson, sortKeys } from '../../common/canonical-json.js';
import { FailedPreconditionError, InvalidArgumentError, isRetraceError } from '../../common/errors.js';
import { EVENT_LIMITS, idProblem, isNonNegativeInt64 } from '../../common/event-validation.js';
import type { TransformRequirements } from '../../common/gen/retrace/v1/code.js';
import type { PipelineSource, PipelineStep, PipelineVersion } from '../../common/gen/retrace/v1/pipeline.js';
import { TriggerKind, type LineageEvent, type ObjectRef, type ObjectVersion, type Step } from '../../common/gen/retrace/v1/provenance.js';
import { ShardStatus, type ShardAssignment, type ShardInput, type ShardOutcome } from '../../common/gen/retrace/v1/shard.js';
import { contentHashOf, sha256Hex } from '../../common/hash.js';
import { versionKey } from '../../common/lineage-keys.js';
import { fullJitterBackoffMs } from '../../common/random.js';
import { stepOutputs } from '../../common/step-versions.js';
import type { NanoClock } from '../clock.js';
import { crashPointForTests } from '../test-crash-point.js';
import type { LineageEngine } from '../lineage/lineage-engine.js';
import type { PayloadStore } from '../store/payload-store.js';
import { latestWithSource, STEP_RETRY_LIMITS, validatePipeline, type CurrentRecord, type PipelineStore } from './pipeline-store.js';

/** What the scheduler's dispatcher returns for one shard. */
export interface ShardRunResult {
  outcome: ShardOutcome;
  nodeId: string;
  /** Placements made by this run (not counting `attemptsBefore`). */
  attempts: number;
  queuedMs: number;
  /** Host name of the node, when the runner knows it. */
  host?: string;
}

/** Runs one shard somewhere (the scheduler's dispatcher, or an in-process fake); always resolves with an outcome. */
export interface ShardRunner {
  /** `attemptsBefore`: placements made by earlier runs of the shard (a step's retries), numbered after. */
  run(assignment: ShardAssignment, options?: { requirements?: TransformRequirements; signal?: AbortSignal; attemptsBefore?: number }): Promise<ShardRunResult>;
}

/** An ingest running now, and the shards it has out. */
export interface RunningIngest {
  runId: string;
  pipeline: string;
  /** Shard id → step name, of the shards it waits for now. */
  shards: ReadonlyMap<string, string>;
}

/** One record as ingested. */
export interface IngestRecordInput {
  key: string;
  /** Nanoseconds since the epoch; '0' or '' means now. */
  eventTimeNs?: string;
  payload: Uint8Array;
  mediaType?: string;
}

/** What one Ingest call did. */
export interface IngestSummary {
  accepted: number;
  duplicates: number;
  runId: string;
  shardsRun: number;
  shardsFailed: number;
  firstError: string;
  pipelineVersion: number;
}

export interface PipelineRunnerOptions {
  lineage: Pick<LineageEngine, 'submit' | 'readStep' | 'readVersion'> & { index: Pick<LineageEngine['index'], 'has'> & Partial<Pick<LineageEngine['index'], 'generatorOf'>> };
  pipelines: PipelineStore;
  payloads: PayloadStore;
  /** The runner, or a getter (the dispatcher may be attached after the extension is built). */
  runner: ShardRunner | (() => ShardRunner | undefined);
  clock: NanoClock;
  /**
   * Records processed at once (different keys run in parallel; one key's records in order).
   * Default 256: with 32, a 3-step pipeline on two local agents ran 15-25% slower than with 128,
   * and with 128 capture halved the shards per frame to the agents (bench capture-overhead: 20
   * against 38 without capture) and ran 10-12% slower than with 256; 512 and 1024 were no faster.
   */
  concurrency?: number;
  /**
   * Source payload bytes of the records an ingest holds at once (running, or waiting for their
   * provenance to be durable), default 64 MiB: a record past it waits, unless none is held.
   * Large records then run fewer at a time instead of holding `concurrency` times their size.
   */
  maxHeldBytes?: number;
  /**
   * false runs the same path without recording anything (no payloads, no lineage, no current
   * records): the benchmark's baseline. Default true.
   */
  capture?: boolean;
  producer?: string;
  /** Draws the retry backoff in [0, 1) (default Math.random): fixed in tests. */
  rng?: () => number;
  /** Waits between retries (default an abortable timer): replaced in tests. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

/**
 * Outcomes a retry may turn out otherwise: the transform threw or ran out of time. The others
 * would come out the same (an input that does not hash to its id, code that cannot be had, the
 * same heap limit) or were asked for (cancelled).
 */
const RETRIED_STATUSES: ReadonlySet<ShardStatus> = new Set([ShardStatus.SHARD_STATUS_FAILED, ShardStatus.SHARD_STATUS_TIMED_OUT]);

/**
 * The event that closes an ingest run. One builder for the run's own end and for the close of a
 * run a dead coordinator left open: both carry the same event id, so a run is ended once.
 */
function ingestRunEnd(producer: string, runId: string, pipeline: string, state: 'COMPLETE' | 'FAIL', startedAtNs: string, endedAtNs: string, retrace: Record<string, unknown>): LineageEvent {
  return {
    eventId: `run:${runId}:end`,
    eventTimeNs: endedAtNs,
    producer,
    body: { $case: 'run', value: { runId, name: `pipeline:${pipeline}`, parentRunId: '', state, startedAtNs, endedAtNs, facets: { retrace } } },
  };
}

/**
 * Closes the ingest runs that a coordinator which died during them left open: FAIL, with why in
 * the `retrace` facet (an ingest is not resumed: its client saw the stream break). A run noted open
 * whose start never reached the ledger is only forgotten. Returns the ids of the runs closed.
 */
export async function closeInterruptedIngestRuns(pipelines: PipelineStore, lineage: Pick<LineageEngine, 'submit' | 'readRun'>, clock: NanoClock, producer = PRODUCER): Promise<string[]> {
  const closed: string[] = [];
  for (const open of await pipelines.openRuns()) {
    const run = await lineage.readRun(open.runId);
    if (run && run.endedAtNs === '0') {
      const endedAtNs = clock().toString();
      const error = 'interrupted: the coordinator stopped during the ingest; records whose provenance was not recorded were not processed, ingest them again';
      await lineage.submit([ingestRunEnd(producer, open.runId, open.pipeline, 'FAIL', open.startedAtNs, endedAtNs, { pipeline: open.pipeline, pipelineVersion: open.pipelineVersion, source: open.source, principal: open.principal, error })]);
      closed.push(open.runId);
    }
    await pipelines.markRunClosed(open.runId);
  }
  return closed;
}

/** A source record ingested again under its key with new content. */
export interface RecordChange {
  pipeline: string;
  source: string;
  key: string;
  objectId: string;
  oldHash: string;
  newHash: string;
  principal: string;
  runId: string;
}

/** Change detection's view of ingest (set by the recompute extension). */
export interface RecordChangeListener {
  /**
   * Records a change and decides whether the record's downstream steps run in this ingest. The
   * change is recorded as reported: that the ingest recomputed it is said by `onRecomputed` once so.
   */
  onChange(change: RecordChange): Promise<{ runSteps: boolean; changeId?: string }>;
  /**
   * The record's downstream steps ran and succeeded and everything the ingest recorded for it is
   * durable: the change `onChange` recorded is now recomputed by this ingest. Not called when a
   * step failed or the coordinator stopped first, so the change says no more than is true.
   */
  onRecomputed?(changeId: string): Promise<void>;
  /**
   * The change, still reported, that made `contentHash` the record's current content, if any: a
   * step of the ingest that noticed it failed, so the record moved but the change was not done.
   * Asked for a record sent again unchanged whose missing steps this ingest ran, all successfully
   * (`onRecomputed` then completes it once they are durable).
   */
  reportedChangeTo?(record: { pipeline: string; objectId: string; contentHash: string }): Promise<string | undefined>;
  /** Whether a record sent again unchanged runs its steps (not under a manual policy, whose changes wait for a recompute). */
  runsSteps(pipeline: string, source: string): Promise<boolean>;
  /**
   * An ingest ran on a version of its pipeline that a newer one replaced while it ran: the steps
   * it recorded after the apply are outside what the apply's changes recomputed. Never throws.
   */
  onStaleRun?(run: { pipeline: PipelineVersion; runId: string }): Promise<void>;
}

/** The facets recorded under `retrace` on every step the runner records. */
export interface RetraceStepFacet {
  pipeline: string;
  pipelineVersion: number;
  step: string;
  shardId: string;
  /** Input name → object id. */
  inputs: Record<string, string>;
  /** Outputs that came out exactly as an earlier step made them: listed here, not as generated. */
  reproduced?: { objectId: string; contentHash: string }[];
}

/** Object id of a record of a source or a step's output. */
export function recordObjectId(pipeline: string, dataset: string, key: string): string {
  return `record:${pipeline}/${dataset}:${key}`;
}

/** Step id of a shard of a pipeline step. */
export function pipelineStepId(pipeline: string, step: string, shardId: string): string {
  return `${pipeline}/${step}/${shardId}`;
}

/**
 * Deterministic shard id: sha256 of the pipeline, step, code version, parameters and the inputs
 * (name, object id, content hash), so a retried or re-ingested shard is the same shard.
 */
export function computeShardId(pipeline: string, step: PipelineStep, inputs: readonly { name: string; objectId: string; contentHash: string }[]): string {
  return shardIdOf(shardIdText(pipeline, step), inputs.map((i) => [i.name, i.objectId, i.contentHash]));
}

/**
 * A shard id's hashed text, canonical JSON, around its inputs: `head` + the inputs' JSON +
 * `tail`. Made once per pipeline version's step, so a shard's id no longer copies and sorts its
 * step's parameters (a tenth of the in-process ingest's main-thread CPU went to shard ids).
 */
interface ShardIdText {
  head: string;
  tail: string;
}

function shardIdText(pipeline: string, step: PipelineStep): ShardIdText {
  const text = canonicalJson({ pipeline, step: step.name, codeVersion: step.codeVersion, parameters: step.parameters ?? {}, inputs: 0 });
  // Only the code version's string comes before "inputs", and a JSON string's quotes are escaped.
  const at = text.indexOf('"inputs":0') + '"inputs":'.length;
  return { head: text.slice(0, at), tail: text.slice(at + 1) };
}

/** Inputs as [name, object id, content hash]: an array of string arrays, whose JSON is canonical as it is. */
function shardIdOf(text: ShardIdText, inputs: readonly (readonly [string, string, string])[]): string {
  return sha256Hex(text.head + JSON.stringify(inputs) + text.tail);
}

/** A shard's start and end as its outcome reports them; an agent that sent none ran it "now". */
export function outcomeSpanNs(outcome: Pick<ShardOutcome, 'startedAtNs' | 'endedAtNs'>, clock: NanoClock): { startedAtNs: string; endedAtNs: string } {
  const endedAtNs = outcome.endedAtNs !== '0' && outcome.endedAtNs !== '' ? outcome.endedAtNs : clock().toString();
  const startedAtNs = outcome.startedAtNs !== '0' && outcome.startedAtNs !== '' ? outcome.startedAtNs : endedAtNs;
  return { startedAtNs, endedAtNs };
}

/** A record known while one record's path runs: its version, and the bytes when at hand. */
interface Known extends CurrentRecord {
  payload?: Uint8Array;
  /** Created in this path (so no stored step can have used it yet). */
  fresh: boolean;
}

/** What the runner derives once per pipeline version: step order, and each step's parameters with sorted keys and shard id text. */
interface Plan {
  order: number[];
  parameters: Record<string, unknown>[];
  shardIds: ShardIdText[];
}

interface Tally {
  accepted: number;
  duplicates: number;
  shardsRun: number;
  shardsFailed: number;
  firstError: string;
  /** The first MAX_RUN_FAILURES failures, as `step/key: what happened`. */
  failures: string[];
}

/**
 * Failures an ingest run's end event lists (its facet `failures`; `shardsFailed` counts them all).
 * A failed shard records no step, so without them only the first failure was told anywhere.
 */
const MAX_RUN_FAILURES = 100;

const PRODUCER = 'retrace://coordinator/pipeline';
/** Records waiting for their provenance to be durable, in slots' worth (see `ingest`). */
const COMMIT_WINDOW = 4;
const DEFAULT_MAX_HELD_BYTES = 64 * 2 ** 20;

/**
 * Runs pipelines over ingested records and records their provenance: for each record, its payload
 * and object version, then every step whose inputs are available for the record's key, in
 * dependency order, each as one shard through the ShardRunner; one `step` event per executed shard
 * describing its outputs' versions too (generated_versions) and the first to read the record
 * also its version (used_versions), all of one record's path in one atomic lineage submission.
 */
export class PipelineRunner {
  private readonly concurrency: number;
  private readonly maxHeldBytes: number;
  private readonly capture: boolean;
  private readonly producer: string;
  private readonly plans = new Map<string, Plan>();
  private changeListener: RecordChangeListener | undefined;
  private readonly runningIngests = new Map<string, { runId: string; pipeline: string; shards: Map<string, string> }>();
  /**
   * Run ends this process could not record (the store refused the write: a full data dir), by
   * run id: written again before the next ingest starts, so a run does not stay RUNNING until a
   * restart closes it as interrupted.
   */
  private readonly unrecordedEnds = new Map<string, LineageEvent>();

  constructor(private readonly options: PipelineRunnerOptions) {
    this.concurrency = Math.max(1, options.concurrency ?? 256);
    this.maxHeldBytes = Math.max(1, options.maxHeldBytes ?? DEFAULT_MAX_HELD_BYTES);
    this.capture = options.capture ?? true;
    this.producer = options.producer ?? PRODUCER;
  }

  /**
   * The same runner (shard runner, stores, concurrency) recording nothing: the baseline the
   * capture-overhead benchmark compares a capturing run with.
   */
  withoutCapture(): PipelineRunner {
    return new PipelineRunner({ ...this.options, capture: false });
  }

  /** The ingests running now, with the shards each has out (GetIngestStatus reads them). */
  running(): RunningIngest[] {
    return [...this.runningIngests.values()];
  }

  /** Sets (or clears) the listener told about records re-ingested with new content. */
  setChangeListener(listener: RecordChangeListener | undefined): void {
    this.changeListener = listener;
  }

  private shardRunner(): ShardRunner {
    const r = this.options.runner;
    const runner = typeof r === 'function' ? r() : r;
    if (!runner) throw new FailedPreconditionError('no shard dispatcher: the coordinator runs no scheduler');
    return runner;
  }

  private plan(pv: PipelineVersion): Plan {
    const key = `${pv.pipeline?.name ?? ''}@${pv.version}`;
    let plan = this.plans.get(key);
    if (!plan) {
      const def = pv.pipeline as NonNullable<PipelineVersion['pipeline']>;
      plan = { order: validatePipeline(def), parameters: def.steps.map((s) => sortKeys(s.parameters ?? {})), shardIds: def.steps.map((s) => shardIdText(def.name, s)) };
      this.plans.set(key, plan);
    }
    return plan;
  }

  /**
   * Ingests batches of records of one source of the latest version of `pipeline`, as one run.
   * NotFoundError (`pipeline`) / InvalidArgumentError (`source`, `records[i].key`) on bad input.
   */
  async ingest(
    pipelineName: string,
    source: string,
    batches: AsyncIterable<readonly IngestRecordInput[]> | Iterable<readonly IngestRecordInput[]>,
    options: { principal?: string; signal?: AbortSignal; onRunStarted?: (runId: string) => void } = {},
  ): Promise<IngestSummary> {
    const { pipelines, clock } = this.options;
    const found = await latestWithSource(pipelines, pipelineName, source);
    const pv = found.pv;
    const src = found.source as PipelineSource;
    const def = pv.pipeline as NonNullable<PipelineVersion['pipeline']>;
    const { order, parameters, shardIds } = this.plan(pv);
    const runId = `ingest:${pipelineName}:${randomUUID()}`;
    const principal = options.principal || 'ingest';
    const startedAtNs = clock().toString();
    const runFacets = { retrace: { pipeline: pipelineName, pipelineVersion: pv.version, source, principal } };
    await this.recordUnrecordedEnds();
    if (this.capture) {
      await pipelines.markRunOpen({ runId, pipeline: pipelineName, source, pipelineVersion: pv.version, principal, startedAtNs });
      await this.options.lineage.submit([
        {
          eventId: `run:${runId}:start`,
          eventTimeNs: startedAtNs,
          producer: this.producer,
          body: { $case: 'run', value: { runId, name: `pipeline:${pipelineName}`, parentRunId: '', state: 'RUNNING', startedAtNs, endedAtNs: '0', facets: runFacets } },
        },
      ]);
    }
    const shardsOut = new Map<string, string>();
    this.runningIngests.set(runId, { runId, pipeline: pipelineName, shards: shardsOut });
    options.onRunStarted?.(runId);
    const tally: Tally = { accepted: 0, duplicates: 0, shardsRun: 0, shardsFailed: 0, firstError: '', failures: [] };
    const keyTails = new Map<string, Promise<void>>();
    // A record holds one of `concurrency` slots until its provenance is submitted; waiting for
    // it to be durable (the engine's next group commit) and updating the current records happen
    // outside the slots, so the next records run meanwhile. `unfinished` (records not yet
    // durable, at most COMMIT_WINDOW slots' worth) bounds what waits in memory.
    const slots = new Set<Promise<void>>();
    const unfinished = new Set<Promise<void>>();
    const maxUnfinished = this.concurrency * COMMIT_WINDOW;
    let heldBytes = 0;
    let failure: unknown;
    let index = 0;
    const ctx = { pv, order, parameters, shardIds, runId, principal, source, mediaType: src.mediaType, signal: options.signal, shardsOut };
    // A key becomes part of the object id of the record and of every output of it.
    const keyRoom = EVENT_LIMITS.maxIdLength - Math.max(...[source, ...def.steps.map((st) => st.name)].map((d) => recordObjectId(pipelineName, d, '').length));
    try {
      for await (const batch of batches) {
        // The whole batch is checked before any of it runs: a bad record leaves none of its batch half done.
        batch.forEach((rec, j) => checkRecord(rec, index + j, keyRoom));
        for (const rec of batch) {
          index++;
          if (failure !== undefined) break;
          while (slots.size >= this.concurrency) await Promise.race(slots);
          const size = rec.payload.byteLength;
          while (unfinished.size >= maxUnfinished || (unfinished.size > 0 && heldBytes + size > this.maxHeldBytes)) await Promise.race(unfinished);
          heldBytes += size;
          const prev = keyTails.get(rec.key) ?? Promise.resolve();
          let release!: () => void;
          const slot = new Promise<void>((resolve) => (release = resolve));
          const p: Promise<void> = prev
            .then(() => this.processRecord(ctx, rec, tally, release))
            .catch((err: unknown) => {
              failure ??= err;
            })
            .finally(() => {
              release();
              heldBytes -= size;
              unfinished.delete(p);
              if (keyTails.get(rec.key) === p) keyTails.delete(rec.key);
            });
          void slot.then(() => slots.delete(slot));
          keyTails.set(rec.key, p);
          slots.add(slot);
          unfinished.add(p);
        }
        if (failure !== undefined) break;
      }
    } catch (err) {
      failure ??= err;
    }
    // Records already running finish before the run is closed (their promises never reject).
    await Promise.all(unfinished);
    // Nothing of the run is out any more (the loop above and these promises never throw).
    this.runningIngests.delete(runId);
    if (this.capture) {
      // A run that failed is closed too (FAIL, with its error), so it never stays RUNNING.
      const error = failure === undefined ? undefined : failure instanceof Error ? failure.message : String(failure);
      const endedAtNs = clock().toString();
      const end = ingestRunEnd(this.producer, runId, pipelineName, tally.shardsFailed > 0 || error !== undefined ? 'FAIL' : 'COMPLETE', startedAtNs, endedAtNs, {
        ...runFacets.retrace,
        accepted: tally.accepted,
        duplicates: tally.duplicates,
        shardsRun: tally.shardsRun,
        shardsFailed: tally.shardsFailed,
        ...(tally.failures.length === 0 ? {} : { failures: tally.failures }),
        ...(error === undefined ? {} : { error: error.slice(0, 1000) }),
      });
      // Once its end is recorded the run needs no closing at the next start.
      const closed = this.options.lineage.submit([end]).then(
        () => pipelines.markRunClosed(runId),
        (err: unknown) => {
          if (isRetraceError(err) && err.code === 'INSUFFICIENT_STORAGE') this.unrecordedEnds.set(runId, end);
          throw err;
        },
      );
      // The run's own failure is what the caller needs to hear about, not a failure to record it.
      if (failure === undefined) await closed;
      else await closed.catch(() => {});
    }
    // A run keeps the version it started on (its records and steps say which); if a newer one
    // was applied meanwhile, the recompute side learns which of its steps that leaves behind.
    const listener = this.changeListener;
    if (listener?.onStaleRun && tally.shardsRun > 0) {
      const latest = await pipelines.get(pipelineName).catch(() => undefined);
      if (latest && latest.version > pv.version) await listener.onStaleRun({ pipeline: pv, runId });
    }
    if (failure !== undefined) throw failure;
    const { failures: _listed, ...counts } = tally;
    return { ...counts, runId, pipelineVersion: pv.version };
  }

  /**
   * Records the run ends a refused write left unrecorded (called once the store takes writes
   * again, and before each ingest); those still refused wait for the next call.
   */
  async recordUnrecordedEnds(): Promise<void> {
    for (const [runId, end] of [...this.unrecordedEnds]) {
      try {
        await this.options.lineage.submit([end]);
        await this.options.pipelines.markRunClosed(runId);
        this.unrecordedEnds.delete(runId);
      } catch {
        // Still refused: the ingest that follows meets the same error and says so.
        return;
      }
    }
  }

  private async processRecord(
    ctx: {
      pv: PipelineVersion;
      order: number[];
      parameters: Record<string, unknown>[];
      shardIds: ShardIdText[];
      runId: string;
      principal: string;
      source: string;
      mediaType: string;
      signal: AbortSignal | undefined;
      shardsOut: Map<string, string>;
    },
    rec: IngestRecordInput,
    tally: Tally,
    releaseSlot: () => void,
  ): Promise<void> {
    const { lineage, pipelines, payloads, clock } = this.options;
    const capture = this.capture;
    const def = ctx.pv.pipeline as NonNullable<PipelineVersion['pipeline']>;
    const p = def.name;
    const nowNs = clock().toString();
    const eventTimeNs = rec.eventTimeNs && rec.eventTimeNs !== '0' ? rec.eventTimeNs : nowNs;
    const mediaType = rec.mediaType || ctx.mediaType || 'application/octet-stream';
    const srcId = recordObjectId(p, ctx.source, rec.key);
    const srcHash = contentHashOf(rec.payload);
    // A record equal to the current one of its key is a duplicate (an older version sent again
    // counts as accepted; its events are deduplicated by id all the same).
    const prev = capture ? await pipelines.getCurrent(p, ctx.source, rec.key) : undefined;
    const existed = prev?.contentHash === srcHash;
    if (existed) tally.duplicates++;
    else tally.accepted++;
    // New content under a known key is a change: the listener records it and says whether the
    // downstream steps run now (policy auto) or wait for a recompute (manual).
    let runSteps = true;
    let recordedChange: string | undefined;
    if (prev && this.changeListener) {
      if (existed) runSteps = await this.changeListener.runsSteps(p, ctx.source);
      else {
        const told = await this.changeListener.onChange({ pipeline: p, source: ctx.source, key: rec.key, objectId: srcId, oldHash: prev.contentHash, newHash: srcHash, principal: ctx.principal, runId: ctx.runId });
        runSteps = told.runSteps;
        if (runSteps) recordedChange = told.changeId;
        crashPointForTests('ingest-change-recorded');
      }
    }
    // Whether a step of this record failed: its change is then not recomputed by this ingest.
    let failedHere = false;
    // Whether a step of this record executed here (a duplicate's run none, unless some were missing).
    let ranHere = false;
    const fail = (message: string): void => {
      failedHere = true;
      this.fail(tally, message);
    };

    const events: LineageEvent[] = [];
    const toStore: Uint8Array[] = [rec.payload];
    const toStoreHashes: string[] = [srcHash];
    const currents: { dataset: string; key: string; record: CurrentRecord }[] = [];
    const known = new Map<string, Map<string, Known>>();
    const remember = (dataset: string, key: string, k: Known): void => {
      let m = known.get(dataset);
      if (!m) known.set(dataset, (m = new Map()));
      m.set(key, k);
      currents.push({ dataset, key, record: { objectId: k.objectId, contentHash: k.contentHash, size: k.size, mediaType: k.mediaType, eventTimeNs: k.eventTimeNs } });
    };
    const srcRecord: Known = { objectId: srcId, contentHash: srcHash, size: rec.payload.byteLength, mediaType, eventTimeNs, payload: rec.payload, fresh: !existed };
    remember(ctx.source, rec.key, srcRecord);
    // A new source version travels in the first step that reads it (used_versions), else alone.
    let srcVersion = existed ? undefined : this.version(srcRecord, nowNs, { dataset: ctx.source, event_time_ns: eventTimeNs, key: rec.key, pipeline: p });

    const changed = new Map<string, Set<string>>([[ctx.source, new Set([rec.key])]]);
    for (const si of runSteps ? ctx.order : []) {
      const step = def.steps[si] as PipelineStep;
      const parameters = ctx.parameters[si] as Record<string, unknown>;
      const keys = new Set<string>();
      for (const name of step.inputs) for (const k of changed.get(name) ?? []) keys.add(k);
      for (const key of keys) {
        const inputs: { name: string; rec: Known }[] = [];
        for (const name of step.inputs) {
          let r: Known | undefined = known.get(name)?.get(key);
          if (!r && capture) {
            const cur = await pipelines.getCurrent(p, name, key);
            if (cur) r = { ...cur, fresh: false };
          }
          if (!r) break;
          inputs.push({ name, rec: r });
        }
        if (inputs.length < step.inputs.length) continue;
        const shardId = shardIdOf(
          ctx.shardIds[si] as ShardIdText,
          inputs.map((i) => [i.name, i.rec.objectId, i.rec.contentHash] as const),
        );
        const stepId = pipelineStepId(p, step.name, shardId);
        const outputDataset = step.name;
        const outPrefix = recordObjectId(p, outputDataset, '');

        // Already recorded (re-ingest, retry, a record back at content it had): reuse its outputs,
        // run nothing, unless a payload retention swept them (the steps after it read them). The
        // step id covers code, parameters and inputs, so the recorded execution is this one; a
        // rerun's event would be dropped as its duplicate, and a transform whose output varies
        // would leave the current record naming an output provenance never recorded.
        if (capture && (inputs.every((i) => !i.rec.fresh) || lineage.index.has(`step:${stepId}`))) {
          const prior = await lineage.readStep(stepId);
          const reused = prior ? stepOutputs(prior).filter((g) => g.objectId.startsWith(outPrefix)) : [];
          if (prior && (await payloads.retain(reused.map((g) => g.contentHash)))) {
            for (const g of reused) {
              const v = await lineage.readVersion(g.objectId, g.contentHash);
              const outKey = g.objectId.slice(outPrefix.length);
              remember(outputDataset, outKey, {
                objectId: g.objectId,
                contentHash: g.contentHash,
                size: Number(v?.size ?? 0),
                mediaType: v?.mediaType ?? '',
                eventTimeNs: maxNs(inputs.map((i) => i.rec.eventTimeNs)),
                fresh: false,
              });
              addTo(changed, outputDataset, outKey);
            }
            continue;
          }
        }

        const shardInputs: ShardInput[] = [];
        let missing = '';
        for (const { name, rec: r } of inputs) {
          const payload = r.payload ?? (await payloads.find(r.contentHash));
          if (!payload) {
            missing = `input ${name} (${r.objectId}) payload ${r.contentHash} is no longer stored`;
            break;
          }
          shardInputs.push({ name, objectId: r.objectId, contentHash: r.contentHash, payload: Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), key, eventTimeNs: r.eventTimeNs, mediaType: r.mediaType, cached: false });
        }
        if (missing) {
          fail(`${step.name}/${key}: ${missing}`);
          continue;
        }
        const assignment: ShardAssignment = {
          shardId,
          stepName: step.name,
          transform: step.transform,
          codeVersion: step.codeVersion,
          parameters,
          inputs: shardInputs,
          timeoutMs: step.timeoutMs,
          memoryLimitMb: step.requirements?.memoryMb ?? 0,
          faults: undefined,
          jobId: '',
          // Set by the dispatcher for each placement.
          attempt: 0,
        };
        tally.shardsRun++;
        let result: ShardRunResult;
        let attempts: number;
        try {
          ({ result, attempts } = await this.runWithRetries(assignment, step, ctx));
        } catch (err) {
          fail(`${step.name}/${key}: ${(err as Error).message}`);
          continue;
        }
        const outcome = result.outcome;
        if (outcome.status !== ShardStatus.SHARD_STATUS_SUCCEEDED) {
          const tries = step.retries > 0 && RETRIED_STATUSES.has(outcome.status) ? ` (after ${attempts} attempts)` : '';
          fail(`${step.name}/${key}: ${ShardStatus[outcome.status] ?? outcome.status}${outcome.error ? `: ${outcome.error}` : ''}${tries}`);
          continue;
        }
        const outEventTime = maxNs(inputs.map((i) => i.rec.eventTimeNs));
        const outputs: Known[] = [];
        let bad = '';
        for (const [oi, o] of outcome.outputs.entries()) {
          const hash = contentHashOf(o.payload);
          if (o.contentHash !== '' && o.contentHash !== hash) {
            bad = `outputs[${oi}]: content hash ${o.contentHash} does not match its payload (${hash})`;
            break;
          }
          const outKey = o.key || key;
          const k: Known = { objectId: recordObjectId(p, outputDataset, outKey), contentHash: hash, size: o.payload.byteLength, mediaType: o.mediaType, eventTimeNs: outEventTime, payload: o.payload, fresh: true };
          outputs.push(k);
        }
        if (bad) {
          fail(`${step.name}/${key}: ${bad}`);
          continue;
        }
        const { startedAtNs, endedAtNs } = outcomeSpanNs(outcome, clock);
        // A version has one generating step: an output that came out exactly as an earlier step
        // made it (a re-ingest whose change this step does not see: `project`ed fields) is listed
        // in the facet (`reproduced`), not generated again, as a recompute lists it.
        const reproduced = outputs.filter((k) => {
          const by = lineage.index.generatorOf?.(versionKey(k.objectId, k.contentHash));
          return by !== undefined && by !== `step:${stepId}`;
        });
        const made = reproduced.length > 0 ? outputs.filter((k) => !reproduced.includes(k)) : outputs;
        const generated: ObjectRef[] = made.map((k) => ({ objectId: k.objectId, contentHash: k.contentHash, unversioned: false }));
        // The outputs' versions travel in the step event itself: one event per shard instead of
        // one more per output, each of which cost the engine as much as the step's own.
        const versions: ObjectVersion[] = made.map((k) => this.version(k, endedAtNs, { dataset: outputDataset, event_time_ns: k.eventTimeNs, key: k.objectId.slice(outPrefix.length), pipeline: p }));
        // Facets and attributes are built with their keys in canonical (sorted) order, so the
        // engine's normalisation keeps them as they are instead of copying them sorted.
        const facet: RetraceStepFacet & { attempts: number; output: string; queuedMs: number } = {
          attempts,
          inputs: inputs.length === 1 ? { [(inputs[0] as { name: string }).name]: (inputs[0] as { rec: Known }).rec.objectId } : sortKeys(Object.fromEntries(inputs.map((i) => [i.name, i.rec.objectId]))),
          output: step.output || step.name,
          pipeline: p,
          pipelineVersion: ctx.pv.version,
          queuedMs: result.queuedMs,
          ...(reproduced.length > 0 ? { reproduced: reproduced.map((k) => ({ contentHash: k.contentHash, objectId: k.objectId })) } : {}),
          shardId,
          step: step.name,
        };
        const stepBody: Step = {
          stepId,
          runId: ctx.runId,
          transform: step.transform,
          codeVersion: step.codeVersion,
          parameters,
          nodeId: result.nodeId || outcome.nodeId,
          host: result.host ?? '',
          startedAtNs,
          endedAtNs,
          why: { kind: TriggerKind.TRIGGER_KIND_EVENT, id: ctx.runId, principal: ctx.principal },
          resources: outcome.resources,
          used: inputs.map((i) => ({ objectId: i.rec.objectId, contentHash: i.rec.contentHash, unversioned: false })),
          generated,
          facets: { retrace: facet },
          generatedVersions: { versions },
          usedVersions: undefined,
        };
        if (srcVersion && inputs.some((i) => i.rec === srcRecord)) {
          stepBody.usedVersions = { versions: [srcVersion] };
          srcVersion = undefined;
        }
        events.push({ eventId: `step:${stepId}`, eventTimeNs: endedAtNs, producer: this.producer, body: { $case: 'step', value: stepBody } });
        ranHere = true;
        for (const k of outputs) {
          const outKey = k.objectId.slice(outPrefix.length);
          toStore.push(k.payload as Uint8Array);
          toStoreHashes.push(k.contentHash);
          remember(outputDataset, outKey, k);
          addTo(changed, outputDataset, outKey);
        }
      }
    }
    if (!capture) return;
    if (srcVersion) events.unshift({ eventId: `version:${srcId}@${srcHash}`, eventTimeNs: nowNs, producer: this.producer, body: { $case: 'objectVersion', value: srcVersion } });
    // Payloads first: the engine's synced write then makes them durable with the events.
    await payloads.putMany(toStore, toStoreHashes);
    const durable = events.length > 0 ? lineage.submit(events, ctx.signal ? { signal: ctx.signal } : undefined) : undefined;
    releaseSlot();
    if (durable) await durable;
    // Only once the provenance is durable, and before the current record moves (a restart then
    // finds the record still old, not a change marked done whose work was never recorded).
    const listener = this.changeListener;
    if (listener && !failedHere) {
      // A resend of a record whose change a failed step left reported: the steps missing then ran
      // now, so that change is done too (the record is current already: no new change noticed it).
      const changeId = recordedChange ?? (existed && ranHere ? await listener.reportedChangeTo?.({ pipeline: p, objectId: srcId, contentHash: srcHash }) : undefined);
      if (changeId !== undefined) await listener.onRecomputed?.(changeId);
    }
    // Only once the provenance is durable: a current record must never name unrecorded work.
    await pipelines.setCurrent(p, currents);
  }

  /**
   * Runs one shard, and again up to the step's `retries` times while it fails in a way a retry
   * may change (RETRIED_STATUSES), after a jittered exponential backoff. Resolves the last
   * outcome and the placements made in all (what the step's `attempts` facet records). While it
   * runs the shard is listed among its run's shards out.
   */
  private async runWithRetries(
    assignment: ShardAssignment,
    step: PipelineStep,
    ctx: { signal: AbortSignal | undefined; shardsOut: Map<string, string> },
  ): Promise<{ result: ShardRunResult; attempts: number }> {
    const runner = this.shardRunner();
    const retries = step.retries;
    const baseMs = step.retryBackoffMs || STEP_RETRY_LIMITS.defaultBackoffMs;
    const signal = ctx.signal ?? NEVER_ABORTED;
    let attempts = 0;
    ctx.shardsOut.set(assignment.shardId, step.name);
    try {
      for (let n = 0; ; n++) {
        const runOptions: { requirements?: TransformRequirements; signal?: AbortSignal; attemptsBefore?: number } = {};
        if (step.requirements) runOptions.requirements = step.requirements;
        if (ctx.signal) runOptions.signal = ctx.signal;
        if (attempts > 0) runOptions.attemptsBefore = attempts;
        const result = await runner.run(assignment, runOptions);
        // A runner that placed nothing (cancelled before placement) still made this try.
        attempts += Math.max(1, result.attempts);
        if (result.outcome.status === ShardStatus.SHARD_STATUS_SUCCEEDED || n >= retries || !RETRIED_STATUSES.has(result.outcome.status) || signal.aborted) return { result, attempts };
        await (this.options.sleep ?? sleep)(fullJitterBackoffMs(n + 1, baseMs, STEP_RETRY_LIMITS.backoffCapMs, this.options.rng ?? Math.random), signal);
        if (signal.aborted) return { result, attempts };
      }
    } finally {
      ctx.shardsOut.delete(assignment.shardId);
    }
  }

  private fail(tally: Tally, message: string): void {
    tally.shardsFailed++;
    if (tally.firstError === '') tally.firstError = message;
    if (tally.failures.length < MAX_RUN_FAILURES) tally.failures.push(message.slice(0, 1000));
  }

  /** A record's object version; `attributes` with their keys in sorted order. */
  private version(k: Known, createdAtNs: string, attributes: Record<string, string>): ObjectVersion {
    return { objectId: k.objectId, contentHash: k.contentHash, size: String(k.size), mediaType: k.mediaType, createdAtNs, attributes, facets: undefined };
  }
}

/**
 * For an ingest nobody can cancel: a signal of its own per shard cost 3.6% of the main thread's
 * samples in capture-overhead's in-process case. Sleeps remove their listener when they end.
 */
const NEVER_ABORTED = new AbortController().signal;

/** Record `i` of an Ingest call: InvalidArgumentError naming its field when it cannot be ingested. */
function checkRecord(rec: IngestRecordInput, i: number, keyRoom: number): void {
  if (typeof rec.key !== 'string' || rec.key === '') throw new InvalidArgumentError(`records[${i}].key`, 'is required');
  const problem = idProblem(rec.key, keyRoom);
  if (problem !== undefined) throw new InvalidArgumentError(`records[${i}].key`, rec.key.length > keyRoom ? `${problem} (the record's object ids hold at most ${EVENT_LIMITS.maxIdLength})` : problem);
  if (rec.eventTimeNs !== undefined && rec.eventTimeNs !== '' && !isNonNegativeInt64(rec.eventTimeNs)) {
    throw new InvalidArgumentError(`records[${i}].event_time_ns`, 'must be non-negative nanoseconds since the epoch');
  }
}

function addTo(map: Map<string, Set<string>>, name: string, key: string): void {
  let s = map.get(name);
  if (!s) map.set(name, (s = new Set()));
  s.add(key);
}

function maxNs(values: readonly string[]): string {
  let max = 0n;
  for (const v of values) if (v !== '' && BigInt(v) > max) max = BigInt(v);
  return max.toString();
}
