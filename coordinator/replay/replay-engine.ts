import { checkTargetLabels } from '../scheduler/placement-targets.js';
import { logicalStepKey, retraceFacetOf, stepOutputs } from '../../common/step-versions.js';
import { randomBytes } from 'node:crypto';
import { EventEmitter, setMaxListeners } from 'node:events';
import { NodeKind } from '../../common/gen/retrace/v1/lineage.js';
import { TriggerKind, type LineageEvent, type ObjectRef, type Step } from '../../common/gen/retrace/v1/provenance.js';
import { ReplayReport, ReplayState, ReplayStepResult, type RecordSelector, type ReplaySummary, type StartReplayRequest, type WatchReplayResponse } from '../../common/gen/retrace/v1/replay.js';
import { ShardStatus, type ShardAssignment, type ShardInput, type ShardOutcome } from '../../common/gen/retrace/v1/shard.js';
import { FailedPreconditionError, InvalidArgumentError, isRetraceError, NotFoundError, RetraceError } from '../../common/errors.js';
import { contentHashOf, sha256Hex } from '../../common/hash.js';
import { versionKey } from '../../common/lineage-keys.js';
import type { NanoClock } from '../clock.js';
import { orderByDependencies, STEP_READ_BATCH, type LineageEngine } from '../lineage/lineage-engine.js';
import type { Database } from '../store/database.js';
import { faultDraw } from './fault-draw.js';
import { checkSelector, compileReplayPolicy, type CompiledReplayPolicy, type ReplayPlacement } from './replay-policy.js';
import { sleep } from '../../common/abortable-sleep.js';
import { formatSpanMs, nanosToIso } from '../../common/time.js';
import type { TransformRequirements } from '../../common/transform.js';
import { gpuCount, mergeRequirements } from '../../common/requirements.js';
import { crashPointForTests } from '../test-crash-point.js';

/** Runs one shard somewhere and always resolves with its outcome (the dispatcher). */
export interface ReplayShardRunner {
  /** `inputsAsSent`: the bytes differ from their content hash on purpose (an injected corruption) and must travel as they are. */
  run(
    assignment: ShardAssignment,
    options?: { requirements?: TransformRequirements; placement?: ReplayPlacement; signal?: AbortSignal; inputsAsSent?: boolean; onPlaced?: (nodeId: string) => void },
  ): Promise<{ outcome: ShardOutcome; nodeId: string; attempts: number; queuedMs: number }>;
  /**
   * Cuts the node's link from `fromMs` (default: now) until `untilMs`, both on the runner's
   * clock (Date.now()); a window set ahead must take effect at `fromMs` on its own. May return
   * a function that withdraws the window: one not begun never begins, one in force ends at once.
   */
  setLinkOutage?(nodeId: string, untilMs: number, fromMs?: number): (() => void) | void;
  /** Shards no node can take now and why, each with the job (replay id) its assignment names. */
  waiting?(): readonly { jobId?: string; reason: string }[];
}

/** Where original payloads are (content-addressed) and replay outputs go. */
export interface ReplayPayloads {
  find(hash: string): Promise<Uint8Array | undefined>;
  put(bytes: Uint8Array): Promise<string>;
  /** Stores many in one write (used when present); hashes in input order. */
  putMany?(payloads: readonly Uint8Array[]): Promise<string[]>;
}

export interface ReplayEngineDeps {
  db: Database;
  lineage: LineageEngine;
  runner: () => ReplayShardRunner | undefined;
  payloads: () => ReplayPayloads | undefined;
  /** Known nodes, to reject policies naming unknown ones or labels none carries. */
  nodes?: () => readonly { nodeId: string; labels: Readonly<Record<string, string>> }[];
  /** Why no node could take shards with these requirements under this placement now, or undefined when one can. */
  checkPlacement?: (placement: ReplayPlacement, requirements?: TransformRequirements) => string | undefined;
  clock: NanoClock;
  log: (line: string) => void;
  /** Records replayed at once at most (default 32). */
  concurrency?: number;
  /**
   * A pipeline step as version `version` of its pipeline defines it (0 or a version no longer
   * stored: the latest): its timeout (ms, 0 = the agent's default) and requirements; undefined
   * when unknown. Without it every replayed shard gets the agent's default timeout and no requirements.
   */
  pipelineStep?: (pipeline: string, version: number, step: string) => Promise<PipelineStepSpec | undefined>;
  /** What a code version's manifest declares (`defineTransform`'s requirements), or undefined. */
  codeRequirements?: (codeVersion: string) => Promise<TransformRequirements | undefined>;
  /**
   * The transform name a code version is published under (its manifest's `transform`), or null
   * when it is not published. A what-if's `code_versions` is checked with it before anything runs:
   * a version not published, or published for another transform, is refused. Without it, or when
   * it resolves undefined (no code store), none is refused.
   */
  publishedTransform?: (codeVersion: string) => Promise<string | null | undefined>;
  /**
   * The content hash a pipeline holds as current for a record (`record:<pipeline>/<dataset>:<key>`),
   * or undefined when none or unknown. It picks, among a record's executions of one step, the one
   * whose output is current (see planRecord); without it the newest execution is replayed.
   */
  currentVersion?: (objectId: string) => Promise<string | undefined>;
  /** Subscribes to the store taking writes again after a full data dir (CoordinatorContext): unsaved ends are saved on it. */
  onStoreWritable?: (listener: () => void) => () => void;
}

/** What replay keeps of a recorded step's pipeline definition. */
export interface PipelineStepSpec {
  timeoutMs: number;
  requirements?: TransformRequirements | undefined;
}

/** A recorded step's definition, looked up once per replay for each `pipeline@version/step`. */
interface StepSpec extends PipelineStepSpec {
  /** `step "label" of pipeline orders version 3`, for errors. */
  where: string;
}

/** One recorded step of a record's path, as replay needs it. */
interface PathStep {
  step: Step;
  name: string;
  /** Input name of each `used` ref, same order. */
  inputNames: string[];
}

interface RecordPlan {
  /** The source record version the path starts from. */
  source: ObjectRef;
  key: string;
  eventTimeNs: bigint;
  steps: PathStep[];
}

interface ReplayJob {
  id: string;
  report: ReplayReport;
  policy: CompiledReplayPolicy;
  plans: RecordPlan[];
  controller: AbortController;
  events: EventEmitter;
  progress: WatchReplayResponse;
  /** While a paced replay releases records: when the next one is due (and which), and a promise of its release. */
  pacing?: { nextAtMs: number; nextKey?: string; released: Promise<void> };
  /** Input payloads read ahead for records not yet prepared, by content hash. */
  prefetched?: Map<string, Promise<Uint8Array | undefined>>;
  /** What a restart needs to close the replay should the coordinator die (see ProgressHeader). */
  header?: ProgressHeader;
  /** Step results of finished records not yet written to the progress table. */
  unsaved: ReplayStepResult[];
  /** Progress rows written so far (the next row's number). */
  savedRows: number;
  lastFlushMs: number;
  flushTimer?: NodeJS.Timeout | undefined;
  /** The progress writes, in order. */
  flushing: Promise<void>;
  /** The recorded steps' pipeline definitions, by `pipeline@version/step` (see specKey). */
  specs: ReadonlyMap<string, StepSpec>;
  /**
   * When the scheduled outages' clocks started (Date.now(), the runner's clock): their `after`
   * counts from here, for the dispatcher's windows and the report's notes alike.
   */
  outagesFromMs?: number;
  /** When record offsets start counting (performance.now()), once execution has begun. */
  startedMs?: number;
}

/**
 * A running replay's totals in the progress table, with the finished records' step results as
 * rows beside it: enough for a restart to close a replay the coordinator died during with the
 * results it had, not an empty report.
 */
interface ProgressHeader {
  records: number;
  steps: number;
  overridesOrFaults: boolean;
  speed: number;
  originalSpanMs: number;
  /** Wall clock of the last write, ns: the interrupted replay's end as far as anyone knows. */
  updatedAtNs: string;
  /** performance.now() - start at the last write, ms. */
  wallMs: number;
}

/** Holds a prepared record at its release time: `prepared()` says it is ready, `released` opens. */
interface ReleaseGate {
  prepared(): void;
  released: Promise<void>;
}

/**
 * How long before a deadline the pacer stops sleeping on a timer and yields event-loop turns
 * instead: timers fire up to a millisecond or so late (whole-ms resolution, and timers due
 * together run in one batch), which is most of the error left once lateness does not
 * accumulate. Spent only at release points, so the cost is about this much CPU per record.
 */
const SPIN_MS = 2;

/** Records prepared ahead of the one due next (each holds its input payloads until released). */
const PREPARE_AHEAD = 16;

/**
 * Records whose first step's input payloads are read ahead, all at once: preparation itself is
 * sequential (one record after the other), and one store read at a time can fall behind the
 * release rate when the store's threads are busy with commits.
 */
const PREFETCH_AHEAD = 64;

/**
 * A record's results are written (payloads, lineage events: a few ms of work on the event loop)
 * only when the next release is at least this far off, else right after it, so writes do not
 * delay releases.
 */
const QUIET_MS = 5;

/**
 * Finished records' step results are written to the progress table at most once per this many
 * ms: a crash loses at most about this much of the report (the ledger has the steps either way).
 */
const FLUSH_INTERVAL_MS = 1000;

/** The abort reason of a replay the coordinator's shutdown stopped. */
const STOPPING = 'coordinator stopping';

/** Progress sublevel keys: `<replay id>!h` (the header) and `<replay id>!s<row, 9 digits>`. */
const progressHeaderKey = (id: string): string => `${id}!h`;
const progressRowKey = (id: string, row: number): string => `${id}!s${String(row).padStart(9, '0')}`;
const progressRange = (id: string): { gte: string; lt: string } => ({ gte: `${id}!`, lt: `${id}"` });

/** Progress snapshots a watcher gets at most once per this many ms (the final one at once). */
const WATCH_INTERVAL_MS = 100;

/** How often a running replay looks for its shards that wait for a node. */
const WAITING_CHECK_MS = 1000;

/**
 * A paced replay that waits at least this long for its next record says so in its progress
 * message, with when the record is due: records hours or months apart keep their gaps, and a
 * watcher would otherwise see a replay that seems stuck.
 */
const LONG_WAIT_MS = 1000;

/** Resolves at `deadlineMs` (performance.now() clock) or when `signal` aborts. */
async function waitUntil(deadlineMs: number, signal: AbortSignal): Promise<void> {
  const early = deadlineMs - performance.now() - SPIN_MS;
  if (early > 0) await sleep(early, signal);
  // setImmediate, not a microtask loop: I/O (agents' outcomes, lineage commits) keeps flowing.
  while (!signal.aborted && performance.now() < deadlineMs) await new Promise<void>((r) => setImmediate(r));
}

/** How often the report of a replay that failed for a refused write is saved again. */
const SAVE_RETRY_MS = 2_000;
const STATE_DONE = new Set([ReplayState.REPLAY_STATE_SUCCEEDED, ReplayState.REPLAY_STATE_FAILED, ReplayState.REPLAY_STATE_CANCELLED]);

/**
 * The replay engine: resolves a selector to source records, rebuilds each record's processing
 * path from provenance, and re-executes it through the dispatcher under the policy (pacing,
 * placement, caps, seeded faults, what-if overrides). Outputs go to the `replay:<id>/` namespace
 * and every replayed step is recorded with why = the replay. The report compares each step's
 * outputs with the original's; reports persist in the `replays` sublevel.
 */
export class ReplayEngine {
  private readonly table;
  /** Progress of running replays (see ProgressHeader); emptied when each ends. */
  private readonly progressTable;
  private readonly jobs = new Map<string, ReplayJob>();
  /** Set by stop(): no more saving of reports a refused write left unsaved. */
  private stopped = false;
  /** Ended replays whose end the store refused, by id: each saves it, resolving whether it did. */
  private readonly unsavedEnds = new Map<string, () => Promise<boolean>>();
  private unsubscribeWritable: () => void = () => {};

  constructor(private readonly deps: ReplayEngineDeps) {
    this.table = deps.db.sublevel<string, string>('replays', {});
    this.progressTable = deps.db.sublevel<string, string>('replay-progress', {});
  }

  /**
   * Marks replays that a stopped coordinator left running as failed (they are not resumed), with
   * the step results of the records they had finished (as last written, at most a second old) and
   * a summary of those, and closes their lineage runs (FAIL, with why).
   */
  async start(): Promise<void> {
    this.unsubscribeWritable = this.deps.onStoreWritable?.(() => {
      for (const save of this.unsavedEnds.values()) void save();
    }) ?? (() => {});
    const saved = new Map<string, { header?: ProgressHeader; steps: ReplayStepResult[] }>();
    for await (const [key, json] of this.progressTable.iterator()) {
      const id = key.slice(0, key.lastIndexOf('!'));
      const entry = saved.get(id) ?? { steps: [] };
      saved.set(id, entry);
      if (key === progressHeaderKey(id)) entry.header = JSON.parse(json) as ProgressHeader;
      else entry.steps.push(ReplayStepResult.fromJSON(JSON.parse(json)));
    }
    for await (const [id, json] of this.table.iterator()) {
      const report = ReplayReport.fromJSON(JSON.parse(json));
      if (STATE_DONE.has(report.state)) continue;
      const progress = saved.get(id);
      report.state = ReplayState.REPLAY_STATE_FAILED;
      report.error = 'interrupted: the coordinator stopped during the replay; start it again';
      report.endedAtNs = progress?.header?.updatedAtNs ?? this.deps.clock().toString();
      if (progress?.header) {
        const h = progress.header;
        report.steps = progress.steps;
        report.summary = summarize(h, progress.steps, h.wallMs, h.originalSpanMs);
      }
      // The run is closed before the replay is saved ended: a stop between the two then leaves the
      // replay unended, and the next start closes it again (closeRun does nothing to a closed run).
      // Saved first, a replay stopped there was skipped as ended at every later start, its run open for good.
      // A run left open is a wrong answer in lineage, not a reason to refuse to start.
      await this.closeRun(id, report).catch((err: unknown) => this.deps.log(`replay ${id}: closing its run failed: ${String(err)}`));
      crashPointForTests('replay-recovery-between-writes');
      await this.save(id, report);
      this.deps.log(`replay ${id}: interrupted by a coordinator stop; marked FAILED with ${report.steps.length} step result(s) of finished records`);
    }
    for (const id of saved.keys()) await this.progressTable.clear(progressRange(id));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribeWritable();
    for (const job of this.jobs.values()) job.controller.abort(new Error(STOPPING));
    await Promise.all([...this.jobs.values()].map((j) => new Promise<void>((r) => (STATE_DONE.has(j.report.state) ? r() : j.events.once('done', () => r())))));
  }

  async startReplay(request: StartReplayRequest): Promise<{ replayId: string; records: number; steps: number }> {
    const runner = this.deps.runner();
    const payloads = this.deps.payloads();
    if (!runner || !payloads) throw new FailedPreconditionError('replay needs the scheduler and the payload store (start the coordinator with agents and pipelines)');
    const selector = checkSelector(request.selector);
    const known = this.deps.nodes?.();
    const policy = compileReplayPolicy(request.policy, known && new Set(known.map((n) => n.nodeId)));
    if (known) checkTargetLabels(policy.placement.labels ?? {}, known, 'policy.target_labels');
    const unplaceable = this.deps.checkPlacement?.(policy.placement);
    if (unplaceable) throw new InvalidArgumentError('policy', `no node can run the replay: ${unplaceable}`);
    const sources = await this.resolveSelector(selector);
    if (sources.length === 0) throw new NotFoundError('source records for the selector', 'selector');
    const plans: RecordPlan[] = [];
    for (const s of sources) plans.push(await this.planRecord(s));
    const stepCount = plans.reduce((n, p) => n + p.steps.length, 0);
    if (stepCount === 0) throw new FailedPreconditionError('the selected records were not processed by any recorded step: nothing to replay', 'selector');
    checkOverridesApply(policy, plans);
    for (const [transform, version] of Object.entries(policy.codeVersions)) {
      // Otherwise every shard of the transform fails CODE_UNAVAILABLE on every node it is tried on.
      const publishedFor = await this.deps.publishedTransform?.(version);
      if (publishedFor === null) throw new InvalidArgumentError(`policy.code_versions[${transform}]`, `code version ${version} is not published (retrace code list --transform ${transform})`);
      // A bundle is published for one transform name: another's code would run under this name.
      if (publishedFor !== undefined && publishedFor !== transform) {
        throw new InvalidArgumentError(`policy.code_versions[${transform}]`, `code version ${version} is published for transform ${JSON.stringify(publishedFor)}, not ${JSON.stringify(transform)} (retrace code list --transform ${transform})`);
      }
    }
    const specs = await this.stepSpecs(plans, policy.codeVersions);
    this.checkRequirements(policy, specs);
    const id = `replay-${new Date(Number(this.deps.clock() / 1_000_000n)).toISOString().replace(/[-:.TZ]/g, '').slice(0, 14)}-${randomBytes(3).toString('hex')}`;
    const report: ReplayReport = {
      replayId: id,
      state: ReplayState.REPLAY_STATE_PENDING,
      startedAtNs: this.deps.clock().toString(),
      endedAtNs: '0',
      selector: request.selector,
      policy: request.policy,
      summary: undefined,
      steps: [],
      error: '',
    };
    const job: ReplayJob = {
      id,
      report,
      policy,
      plans,
      controller: new AbortController(),
      events: new EventEmitter(),
      progress: { state: ReplayState.REPLAY_STATE_PENDING, stepsDone: 0, stepsTotal: stepCount, stepsFailed: 0, stepsSkipped: 0, recordsDone: 0, recordsTotal: plans.length, message: '' },
      unsaved: [],
      savedRows: 0,
      lastFlushMs: Number.NEGATIVE_INFINITY,
      flushing: Promise.resolve(),
      specs,
    };
    // Every paced record and every shard of the job listens on this one signal.
    setMaxListeners(0, job.controller.signal);
    this.jobs.set(id, job);
    await this.save(job.id, job.report);
    void this.execute(job, runner, payloads).catch((err: unknown) => this.abandon(job, err));
    return { replayId: id, records: plans.length, steps: stepCount };
  }

  /** Progress snapshots until the replay ends: the latest at most every 100 ms, the final one at once. */
  async *watch(replayId: string, signal: AbortSignal): AsyncGenerator<WatchReplayResponse> {
    const job = this.jobs.get(replayId);
    if (!job) {
      const report = await this.report(replayId);
      // Its planned steps, those that never ran included (as its summary and ListReplays count them):
      // the steps with a result only, an interrupted replay's 40 of 6,040 read as "40/40 tasks" in `jobs show`.
      yield { state: report.state, stepsDone: report.steps.length, stepsTotal: Math.max(report.summary?.steps ?? 0, report.steps.length), stepsFailed: report.summary?.failed ?? 0, stepsSkipped: (report.summary?.upstreamFailed ?? 0) + (report.summary?.cancelled ?? 0), recordsDone: report.summary?.records ?? 0, recordsTotal: report.summary?.records ?? 0, message: report.error };
      return;
    }
    // The latest snapshot only, at most one per WATCH_INTERVAL_MS (the final one at once): a
    // replay publishes several per record, and a watcher wants where it stands, not each step.
    let latest: WatchReplayResponse = { ...job.progress };
    let fresh = true;
    let wake: (() => void) | undefined;
    const onProgress = (p: WatchReplayResponse): void => {
      latest = { ...p };
      fresh = true;
      wake?.();
    };
    job.events.on('progress', onProgress);
    const onAbort = (): void => wake?.();
    signal.addEventListener('abort', onAbort);
    let nextAt = 0;
    try {
      for (;;) {
        if (signal.aborted) return;
        const wait = nextAt - performance.now();
        if (fresh && (wait <= 0 || STATE_DONE.has(latest.state))) {
          fresh = false;
          const p = latest;
          nextAt = performance.now() + WATCH_INTERVAL_MS;
          yield p;
          if (STATE_DONE.has(p.state)) return;
          continue;
        }
        // Woken by a new snapshot (a final one is sent at once) or, when one is pending, by the timer.
        let timer: NodeJS.Timeout | undefined;
        await new Promise<void>((r) => {
          wake = r;
          if (fresh) timer = setTimeout(r, wait);
        });
        clearTimeout(timer);
        wake = undefined;
      }
    } finally {
      job.events.off('progress', onProgress);
      signal.removeEventListener('abort', onAbort);
    }
  }

  async report(replayId: string): Promise<ReplayReport> {
    const live = this.jobs.get(replayId);
    if (live) return withLiveSummary(live);
    const json = await this.table.get(replayId);
    if (json === undefined) throw new NotFoundError(`replay ${JSON.stringify(replayId)}`, 'replay_id');
    return ReplayReport.fromJSON(JSON.parse(json));
  }

  /**
   * Every replay, without step results. A running replay is listed as it stands in memory: the
   * table holds it as it was saved at its start (PENDING) until it ends.
   */
  async list(): Promise<ReplayReport[]> {
    const out: ReplayReport[] = [];
    for await (const [id, json] of this.table.iterator()) {
      const job = this.jobs.get(id);
      const r = job ? withLiveSummary(job) : ReplayReport.fromJSON(JSON.parse(json));
      out.push({ ...r, steps: [] });
    }
    return out;
  }

  /**
   * Cancels the replay and resolves with its state once it has ended. Cancelling a CANCELLED
   * replay changes nothing (resolves CANCELLED); one that ended SUCCEEDED or FAILED is refused
   * with FailedPreconditionError naming `field`.
   */
  async cancel(replayId: string, field = 'replay_id'): Promise<ReplayState> {
    const job = this.jobs.get(replayId);
    const state = job ? job.report.state : (await this.report(replayId)).state;
    if (state === ReplayState.REPLAY_STATE_SUCCEEDED || state === ReplayState.REPLAY_STATE_FAILED) {
      throw new FailedPreconditionError(`replay ${replayId} has already ended ${ReplayState[state].replace('REPLAY_STATE_', '')}: there is nothing to cancel`, field);
    }
    if (!job) return state;
    job.controller.abort(new Error('cancelled by operator'));
    await new Promise<void>((r) => (STATE_DONE.has(job.report.state) ? r() : job.events.once('done', () => r())));
    return job.report.state;
  }

  // ---- selection and planning ----

  private async resolveSelector(s: NonNullable<RecordSelector['selector']>): Promise<{ ref: ObjectRef; eventTimeNs: bigint }[]> {
    const lineage = this.deps.lineage;
    const latest = async (objectId: string, field: string): Promise<{ ref: ObjectRef; eventTimeNs: bigint }> => {
      const versions = lineage.index.membersOf(`object:${objectId}`);
      const last = versions[versions.length - 1];
      if (!last) throw new NotFoundError(`record ${JSON.stringify(objectId)}`, field);
      const contentHash = last.slice(last.lastIndexOf('@') + 1);
      const v = await lineage.readVersion(objectId, contentHash);
      return { ref: { objectId, contentHash, unversioned: false }, eventTimeNs: recordTime(v) };
    };
    switch (s.$case) {
      case 'recordIds':
        return Promise.all(s.value.objectIds.map((id, i) => latest(id, `selector.record_ids.object_ids[${i}]`)));
      case 'window':
      case 'last': {
        const from = s.$case === 'window' ? BigInt(s.value.fromNs) : this.deps.clock() - BigInt(Math.round(s.value.minutes * 60e9));
        const to = s.$case === 'window' ? BigInt(s.value.toNs) : this.deps.clock() + 1n;
        const prefix = `record:${s.value.pipeline}/${s.value.source}:`;
        const out: { ref: ObjectRef; eventTimeNs: bigint }[] = [];
        const seen = new Set<string>();
        let first: bigint | undefined;
        let last: bigint | undefined;
        for await (const row of lineage.store.objectVersionsWithPrefix(prefix)) {
          const k = `${row.objectId}@${row.contentHash}`;
          if (seen.has(k)) continue;
          seen.add(k);
          const v = await lineage.readVersion(row.objectId, row.contentHash);
          const t = recordTime(v);
          if (first === undefined || t < first) first = t;
          if (last === undefined || t > last) last = t;
          if (t >= from && t < to) out.push({ ref: { objectId: row.objectId, contentHash: row.contentHash, unversioned: false }, eventTimeNs: t });
        }
        // An empty window says where the records are, so the next try can aim at them.
        if (out.length === 0) {
          const field = s.$case === 'window' ? 'selector.window' : 'selector.last';
          const source = `${s.value.pipeline}/${s.value.source}`;
          if (first === undefined || last === undefined) throw new RetraceError('NOT_FOUND', `no record of ${source} is in provenance (is the pipeline or source name right?)`, { field });
          throw new RetraceError('NOT_FOUND', `no record of ${source} has an event time in [${nanosToIso(from)}, ${nanosToIso(to)}): its ${seen.size} record version(s) run from ${nanosToIso(first)} to ${nanosToIso(last)}`, { field });
        }
        return out;
      }
      case 'runId': {
        const steps = lineage.index.membersOf(`run:${s.value}`);
        if (steps.length === 0) throw new NotFoundError(`run ${JSON.stringify(s.value)}`, 'selector.run_id');
        const out = new Map<string, { ref: ObjectRef; eventTimeNs: bigint }>();
        for (let i = 0; i < steps.length; i += STEP_READ_BATCH) {
          for (const step of await lineage.readSteps(steps.slice(i, i + STEP_READ_BATCH).map((key) => key.slice('step:'.length)))) {
            for (const u of step?.used ?? []) {
              const k = versionKey(u.objectId, u.contentHash);
              if (u.unversioned || out.has(k) || lineage.index.generatorOf(k)) continue;
              const v = await lineage.readVersion(u.objectId, u.contentHash);
              out.set(k, { ref: u, eventTimeNs: recordTime(v) });
            }
          }
        }
        return [...out.values()];
      }
    }
  }

  /**
   * The record's processing path: one recorded execution of each logical step downstream of the
   * source record (a pipeline step over the same input objects, as impact analysis counts them),
   * dependencies first; earlier replays excluded. A step executed more than once (re-ingest,
   * recomputes) is replayed once, as the execution that made the step's current output: of those
   * whose outputs, generated or reproduced, include the pipeline's current version of an output
   * object, the newest; when none does (a step outside pipelines, no current record known), the
   * newest execution. Replaying every execution would re-run superseded work and compare it with
   * outputs that are no longer current. A recompute task the memo served (facet `cachedFrom`)
   * ran nothing, so it has no timing or placement to replay: it is taken only where the step has
   * no execution that ran (a result reused from another record or pipeline).
   */
  private async planRecord(source: { ref: ObjectRef; eventTimeNs: bigint }): Promise<RecordPlan> {
    const lineage = this.deps.lineage;
    const trace = await lineage.trace({ start: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: source.ref.objectId, contentHash: source.ref.contentHash }, pageSize: 100_000 });
    const executions = new Map<string, Step[]>();
    const stepIds = trace.nodes.flatMap((n) => (n.node?.kind === NodeKind.NODE_KIND_STEP ? [n.node.id] : []));
    for (const step of await lineage.readSteps(stepIds)) {
      if (!step || step.why?.kind === TriggerKind.TRIGGER_KIND_REPLAY) continue;
      const key = logicalStepKey(step);
      const group = executions.get(key);
      if (group) group.push(step);
      else executions.set(key, [step]);
    }
    const steps: Step[] = [];
    for (const group of executions.values()) {
      const ran = group.filter((s) => retraceFacetOf(s).cachedFrom === undefined);
      const candidates = ran.length > 0 ? ran : group;
      steps.push(candidates.length === 1 ? (candidates[0] as Step) : await this.currentExecution(candidates));
    }
    const key = source.ref.objectId.slice(source.ref.objectId.indexOf(':', 'record:'.length) + 1) || source.ref.objectId;
    return {
      source: source.ref,
      key,
      eventTimeNs: source.eventTimeNs,
      steps: orderByDependencies(steps).map((step) => {
        const meta = retraceFacetOf(step);
        const byObject = new Map(Object.entries(meta.inputs ?? {}).map(([name, objectId]) => [objectId, name]));
        return { step, name: meta.step ?? step.transform, inputNames: step.used.map((u) => byObject.get(u.objectId) ?? u.objectId) };
      }),
    };
  }

  /** Of several executions of one logical step, the one planRecord replays (see there). */
  private async currentExecution(group: readonly Step[]): Promise<Step> {
    const newestFirst = [...group].sort((a, b) => compareNewest(a, b));
    const current = this.deps.currentVersion;
    if (current) {
      const known = new Map<string, Promise<string | undefined>>();
      const currentOf = (objectId: string): Promise<string | undefined> => {
        let hash = known.get(objectId);
        if (!hash) known.set(objectId, (hash = current(objectId).catch(() => undefined)));
        return hash;
      };
      for (const step of newestFirst) {
        for (const o of stepOutputs(step)) if ((await currentOf(o.objectId)) === o.contentHash) return step;
      }
    }
    return newestFirst[0] as Step;
  }

  // ---- execution ----

  private async execute(job: ReplayJob, runner: ReplayShardRunner, payloads: ReplayPayloads): Promise<void> {
    const { policy } = job;
    job.report.state = ReplayState.REPLAY_STATE_RUNNING;
    this.publish(job, 'running');
    await this.deps.lineage.submit([
      {
        eventId: `replay:${job.id}:run`,
        eventTimeNs: this.deps.clock().toString(),
        producer: 'retrace-replay',
        body: { $case: 'run', value: { runId: job.id, name: `replay/${job.id}`, parentRunId: '', state: 'RUNNING', startedAtNs: job.report.startedAtNs, endedAtNs: '0', facets: undefined } },
      },
    ]);
    const timers: (() => void)[] = [];
    // Every outage's whole window is given to the runner now, before any shard goes out: it
    // drops the node's messages and outcomes from the window's first millisecond to its last on
    // its own clock. A timer here would fire late on a loaded machine (even a 0 ms one fires only
    // after the I/O below), and until it did the node was given shards and its outcomes taken,
    // and the outage ended that much late too, while the report's notes said otherwise.
    const outagesFromMs = Date.now();
    job.outagesFromMs = outagesFromMs;
    for (const o of policy.outages) {
      const fromMs = outagesFromMs + o.startAfterMs;
      const withdraw = runner.setLinkOutage?.(o.nodeId, fromMs + o.durationMs, fromMs);
      // When the replay ends (or is cancelled) its outage ends too: one not begun is withdrawn
      // and one in force is lifted, not left to cut the node off from later work.
      if (typeof withdraw === 'function') timers.push(withdraw);
    }
    // Shards no node can take now (a target node that died, a cap no node meets any more) leave
    // the progress at the last record's message, a replay that seems stuck: say what they wait for.
    let waitingSaid = '';
    const waitingCheck = setInterval(() => {
      const mine = (runner.waiting?.() ?? []).filter((w) => w.jobId === job.id);
      const said = mine.length === 0 ? '' : `${mine.length} shard${mine.length === 1 ? ' waits' : 's wait'} for a node: ${mine[0]?.reason ?? ''}`;
      if (said === waitingSaid) return;
      waitingSaid = said;
      if (said !== '') this.publish(job, said);
    }, WAITING_CHECK_MS);
    waitingCheck.unref();
    timers.push(() => clearInterval(waitingCheck));
    const plans = [...job.plans].sort((a, b) => (a.eventTimeNs < b.eventTimeNs ? -1 : a.eventTimeNs > b.eventTimeNs ? 1 : 0));
    const t0 = plans[0]?.eventTimeNs ?? 0n;
    const tLast = plans[plans.length - 1]?.eventTimeNs ?? 0n;
    const limit = this.deps.concurrency ?? 32;
    const spanMs = Number(tLast - t0) / 1e6;
    const meta = { records: job.plans.length, steps: job.progress.stepsTotal, overridesOrFaults: policy.overrides || policy.injectsFaults, speed: policy.speed };
    job.header = { ...meta, originalSpanMs: spanMs, updatedAtNs: this.deps.clock().toString(), wallMs: 0 };
    await this.progressTable.put(progressHeaderKey(job.id), JSON.stringify(job.header));
    // Offsets count from here, after the run event is committed: a group commit's wait would
    // otherwise make only the first record late.
    const started = performance.now();
    job.startedMs = started;
    const replayOne = async (plan: RecordPlan, targetMs: number, gate?: ReleaseGate): Promise<void> => {
      const results = await this.replayRecord(job, plan, runner, payloads, { startedMs: started, targetMs, ...(gate ? { gate } : {}) });
      job.progress.recordsDone++;
      this.publish(job, `record ${plan.key}`);
      job.unsaved.push(...results);
      this.scheduleFlush(job, started);
    };
    try {
      if (policy.speed > 0) {
        await this.pace(job, plans, started, (plan) => Number(plan.eventTimeNs - t0) / 1e6 / policy.speed, replayOne, Math.max(limit, 256), payloads);
      } else {
        let next = 0;
        const worker = async (): Promise<void> => {
          while (next < plans.length && !job.controller.signal.aborted) await replayOne(plans[next++] as RecordPlan, 0);
        };
        await Promise.all(Array.from({ length: Math.min(limit, plans.length) }, () => worker()));
      }
    } finally {
      for (const cancel of timers) cancel();
    }
    const results = job.report.steps;
    // Rows were added as records ran, interleaved by concurrency; the report reads in processing
    // order instead: records by event time (the order they were paced in), each record's steps
    // along its path (the order they were added: the sort is stable).
    const position = new Map(plans.map((p, i) => [p.source.objectId, i]));
    results.sort((a, b) => (position.get(a.record) ?? 0) - (position.get(b.record) ?? 0));
    const failed = results.filter((r) => r.status !== 'SUCCEEDED').length;
    job.report.summary = summarize(meta, results, performance.now() - started, spanMs);
    job.report.endedAtNs = this.deps.clock().toString();
    job.report.state = job.controller.signal.aborted ? ReplayState.REPLAY_STATE_CANCELLED : failed > 0 ? ReplayState.REPLAY_STATE_FAILED : ReplayState.REPLAY_STATE_SUCCEEDED;
    if (job.controller.signal.aborted) job.report.error = cancelText(job);
    await this.deps.lineage.submit([this.endEvent(job.id, job.report)]).catch((err: unknown) => this.deps.log(`replay ${job.id}: recording its end failed: ${String(err)}`));
    clearTimeout(job.flushTimer);
    await job.flushing;
    await this.save(job.id, job.report);
    // The full report is saved: the progress rows are not needed any more.
    await this.progressTable.clear(progressRange(job.id)).catch((err: unknown) => this.deps.log(`replay ${job.id}: clearing its progress failed: ${String(err)}`));
    // Why it ended, when it was cut short: a watcher may not reach the report (a coordinator shutting down).
    this.publish(job, job.report.error ? `done: ${job.report.error}` : 'done');
    this.jobs.delete(job.id);
    job.events.emit('done');
  }

  /**
   * Releases records at their recorded offsets from one start time (absolute deadlines, so
   * lateness never accumulates). Records are prepared (input payloads read, seeded faults drawn,
   * the first shard built) up to `PREPARE_AHEAD` records before their release, one after the
   * other in release order, and held at a gate; at its deadline the pacer
   * opens the gate and the shard goes to the dispatcher in the same event-loop turn, so a slow
   * store read lands before the deadline rather than after it. Released records run on while
   * later ones wait; at most `maxInFlight` records are open at once.
   */
  private async pace(job: ReplayJob, plans: readonly RecordPlan[], startedMs: number, offsetMs: (plan: RecordPlan) => number, replayOne: (plan: RecordPlan, targetMs: number, gate: ReleaseGate) => Promise<void>, maxInFlight: number, payloads: ReplayPayloads): Promise<void> {
    const signal = job.controller.signal;
    const prefetched = new Map<string, Promise<Uint8Array | undefined>>();
    job.prefetched = prefetched;
    let fetchedUpTo = 0;
    const prefetch = (upTo: number): void => {
      for (; fetchedUpTo < Math.min(upTo, plans.length); fetchedUpTo++) {
        for (const u of plans[fetchedUpTo]?.steps[0]?.step.used ?? []) {
          if (u.unversioned || prefetched.has(u.contentHash)) continue;
          const read = payloads.find(u.contentHash);
          // A failed read is retried by the record itself; it must not go unhandled here.
          read.catch(() => prefetched.delete(u.contentHash));
          prefetched.set(u.contentHash, read);
        }
      }
    };
    const open = new Set<Promise<void>>();
    const slots: { targetMs: number; ready: Promise<void>; release: () => void }[] = [];
    let prepared: Promise<void> = Promise.resolve();
    let failure: unknown;
    const launch = (plan: RecordPlan): void => {
      const targetMs = offsetMs(plan);
      let onReady!: () => void;
      let release!: () => void;
      const ready = new Promise<void>((r) => (onReady = r));
      const released = new Promise<void>((r) => (release = r));
      const done: Promise<void> = prepared
        .then(() => replayOne(plan, targetMs, { prepared: onReady, released }))
        .catch((err: unknown) => {
          failure ??= err;
        })
        .finally(() => open.delete(done));
      open.add(done);
      // Ready when prepared, or when done without a shard to release (a missing input payload).
      prepared = Promise.race([ready, done]);
      slots.push({ targetMs, ready: prepared, release });
    };
    let onReleased!: () => void;
    const pacing: NonNullable<ReplayJob['pacing']> = { nextAtMs: Number.POSITIVE_INFINITY, released: new Promise<void>((r) => (onReleased = r)) };
    job.pacing = pacing;
    let next = 0;
    for (let i = 0; i < plans.length && !signal.aborted && failure === undefined; i++) {
      prefetch(i + PREFETCH_AHEAD);
      while (next <= i || (next < plans.length && next <= i + PREPARE_AHEAD && open.size < maxInFlight)) {
        if (open.size >= maxInFlight) {
          // Open records must be able to finish (and write) for a slot to free up.
          pacing.nextAtMs = Number.POSITIVE_INFINITY;
          await Promise.race(open);
        } else launch(plans[next++] as RecordPlan);
      }
      const slot = slots[i] as (typeof slots)[number];
      pacing.nextAtMs = startedMs + slot.targetMs;
      pacing.nextKey = (plans[i] as RecordPlan).key;
      await slot.ready;
      if (pacing.nextAtMs - performance.now() >= LONG_WAIT_MS) this.publish(job, 'paced');
      await waitUntil(pacing.nextAtMs, signal);
      slot.release();
      pacing.nextAtMs = Number.POSITIVE_INFINITY;
      delete pacing.nextKey;
      const wake = onReleased;
      pacing.released = new Promise<void>((r) => (onReleased = r));
      wake();
    }
    delete job.pacing;
    delete job.prefetched;
    onReleased();
    // Cancelled or failed: records prepared but not released end now (their shards cancelled).
    for (const slot of slots) slot.release();
    await Promise.all(open);
    if (failure !== undefined) throw failure;
  }

  /** Replays one record's path; resolves with its step results once its outputs and provenance are written. */
  private async replayRecord(job: ReplayJob, plan: RecordPlan, runner: ReplayShardRunner, payloads: ReplayPayloads, timing: { startedMs: number; targetMs: number; gate?: ReleaseGate }): Promise<ReplayStepResult[]> {
    const { policy } = job;
    const results: ReplayStepResult[] = [];
    /** Why the rest of the record does not run: a step failed, or the replay was cancelled. */
    let stopped: 'failed' | 'cancelled' | undefined;
    /** original version key → replayed output */
    const produced = new Map<string, { ref: ObjectRef; payload: Uint8Array; mediaType: string }>();
    /**
     * Original version keys whose replayed output a what-if changed (the step's own parameters or
     * code, or its inputs changed so upstream): a step reading one runs differently than recorded
     * because of the what-if, so its differing output is the what-if's effect, not non-determinism.
     */
    const changedByWhatIf = new Set<string>();
    const events: LineageEvent[] = [];
    /** Output payloads, written with the record's events. */
    const toStore: Uint8Array[] = [];
    // When the record's first shard went to the dispatcher (ms since the replay started).
    let dispatchedMs: number | undefined;
    for (const ps of plan.steps) {
      const { step } = ps;
      const parameters = { ...((step.parameters ?? {}) as Record<string, unknown>), ...(policy.stepParameters[ps.name] ?? {}) };
      const codeVersion = policy.codeVersions[step.transform] ?? step.codeVersion;
      const overridden = codeVersion !== step.codeVersion || policy.stepParameters[ps.name] !== undefined || step.used.some((u) => changedByWhatIf.has(versionKey(u.objectId, u.contentHash)));
      // A recompute that reproduced an existing version lists it as reproduced, not generated.
      let originals = stepOutputs(step);
      const result: ReplayStepResult = {
        record: plan.source.objectId,
        step: ps.name,
        originalStepId: step.stepId,
        replayStepId: `replay:${job.id}/${step.stepId}`,
        transform: step.transform,
        codeVersion,
        originalOutputHashes: originals.map((g) => g.contentHash),
        replayOutputHashes: [],
        matches: false,
        overridden,
        originalNode: step.nodeId,
        replayNode: '',
        originalResources: step.resources,
        replayResources: undefined,
        status: 'PENDING',
        error: '',
        attempts: 0,
        dispatchedAtMs: dispatchedMs ?? 0,
        targetAtMs: timing.targetMs,
        valueDiffs: [],
        faults: [],
      };
      job.report.steps.push(result);
      results.push(result);
      if (stopped !== undefined || job.controller.signal.aborted) {
        result.status = 'SKIPPED';
        result.error = stopped === 'failed' ? 'an upstream step of this record failed' : cancelText(job);
        job.progress.stepsDone++;
        job.progress.stepsSkipped++;
        continue;
      }
      const inputs: ShardInput[] = [];
      let corrupted = false;
      const usedRefs: ObjectRef[] = [];
      for (const [i, u] of step.used.entries()) {
        const name = ps.inputNames[i] ?? u.objectId;
        const fromPath = produced.get(versionKey(u.objectId, u.contentHash));
        let payload: Uint8Array | undefined;
        let ref: ObjectRef;
        if (fromPath) {
          payload = fromPath.payload;
          ref = fromPath.ref;
        } else {
          const ahead = job.prefetched?.get(u.contentHash);
          // Taken once: a later record with the same bytes reads them again rather than pinning them.
          if (ahead) job.prefetched?.delete(u.contentHash);
          payload = u.unversioned ? undefined : await (ahead?.catch(() => payloads.find(u.contentHash)) ?? payloads.find(u.contentHash));
          ref = u;
        }
        if (!payload) {
          stopped = 'failed';
          result.status = 'FAILED';
          result.error = `payload of input ${name} (${u.objectId}@${u.contentHash}) is not kept (retention) or was never stored`;
          break;
        }
        let sent = payload;
        if (policy.corruptInputProbability > 0 && faultDraw(policy.seed, plan.source.objectId, step.stepId, 'corrupt', i) < policy.corruptInputProbability) {
          sent = Uint8Array.from(payload);
          if (sent.length > 0) sent[Math.floor(faultDraw(policy.seed, plan.source.objectId, step.stepId, 'corrupt-at', i) * sent.length)] = (sent[0] ?? 0) ^ 0xff ^ (sent[Math.floor(sent.length / 2)] ?? 0);
          else sent = Uint8Array.of(0);
          if (contentHashOf(sent) !== ref.contentHash) result.faults.push(`corrupted input ${name}`);
          corrupted = true;
        }
        inputs.push({ name, objectId: ref.objectId, contentHash: ref.contentHash, payload: Buffer.from(sent.buffer, sent.byteOffset, sent.byteLength), key: plan.key, eventTimeNs: plan.eventTimeNs.toString(), mediaType: '', cached: false });
        usedRefs.push(ref);
      }
      if (stopped !== undefined) {
        job.progress.stepsDone++;
        job.progress.stepsFailed++;
        continue;
      }
      const key = specKey(step);
      const spec = key === undefined ? undefined : job.specs.get(key);
      const requirements = spec?.requirements;
      const fail = policy.stepFailureProbability > 0 && faultDraw(policy.seed, plan.source.objectId, step.stepId, 'fail') < policy.stepFailureProbability;
      if (fail) result.faults.push('injected step failure');
      if (policy.addedLatencyMs > 0) result.faults.push(`added latency ${policy.addedLatencyMs} ms`);
      const assignment: ShardAssignment = {
        shardId: `replay-${sha256Hex(`${job.id}\u0000${step.stepId}`).slice(0, 32)}`,
        stepName: ps.name,
        transform: step.transform,
        codeVersion,
        parameters,
        inputs,
        timeoutMs: spec?.timeoutMs ?? 0,
        memoryLimitMb: memoryLimitMb(policy.placement.maxMemoryMb, requirements?.memoryMb),
        faults: { addedLatencyMs: policy.addedLatencyMs, fail },
        jobId: job.id,
        // Set by the dispatcher for each placement.
        attempt: 0,
      };
      // Drawn now, cut when the shard is sent: the record may be prepared early.
      const outage = policy.linkOutageProbability > 0 && faultDraw(policy.seed, plan.source.objectId, step.stepId, 'link-outage') < policy.linkOutageProbability && step.nodeId ? step.nodeId : undefined;
      if (outage) result.faults.push(`link outage of ${outage} for 1 s`);
      if (dispatchedMs === undefined) {
        if (timing.gate) {
          timing.gate.prepared();
          await timing.gate.released;
          // Released by a cancel, not by its due time: never dispatched, so no dispatch time to report.
          if (job.controller.signal.aborted) {
            stopped = 'cancelled';
            result.status = 'SKIPPED';
            result.error = cancelText(job);
            job.progress.stepsDone++;
            job.progress.stepsSkipped++;
            continue;
          }
        }
        // Measured here, as the shard goes to the dispatcher: what pacing accuracy is about.
        dispatchedMs = performance.now() - timing.startedMs;
        // Steps before the first dispatched one can only have failed, and then none is dispatched.
        result.dispatchedAtMs = dispatchedMs;
      }
      if (outage) runner.setLinkOutage?.(outage, Date.now() + 1000);
      // The runner's clock, on which it keeps the outage windows.
      const handedMs = Date.now();
      result.status = 'RUNNING';
      // Where it runs, shown while it runs (a report read mid-replay), and where it moves on a retry.
      const onPlaced = (node: string): void => {
        result.replayNode = node;
      };
      const { outcome, nodeId, attempts, queuedMs } = await runner.run(assignment, { ...(requirements ? { requirements } : {}), placement: policy.placement, signal: job.controller.signal, ...(corrupted ? { inputsAsSent: true } : {}), onPlaced });
      // A scheduled outage (--fault outage:NODE:after=..:for=..) said on the steps it met, so the
      // report shows where it struck and where they went instead, not only in the policy. Met
      // when the shard's last placement fell in the window: that decided where it ran, and a
      // shard handed over just before the window's start can be placed just after it.
      if (job.outagesFromMs !== undefined && attempts > 0) {
        const sinceMs = handedMs + queuedMs - job.outagesFromMs;
        for (const o of policy.outages) {
          if (sinceMs >= o.startAfterMs && sinceMs < o.startAfterMs + o.durationMs) result.faults.push(`sent during the outage of ${o.nodeId} (after ${formatSpanMs(o.startAfterMs)} for ${formatSpanMs(o.durationMs)})`);
        }
      }
      result.replayNode = nodeId;
      result.attempts = attempts;
      result.replayResources = outcome.resources;
      result.status = ShardStatus[outcome.status].replace('SHARD_STATUS_', '');
      result.error = outcome.error;
      job.progress.stepsDone++;
      if (outcome.status !== ShardStatus.SHARD_STATUS_SUCCEEDED) {
        stopped = outcome.status === ShardStatus.SHARD_STATUS_CANCELLED && job.controller.signal.aborted ? 'cancelled' : 'failed';
        // As the summary counts them: a shard the cancel stopped is cancelled, not failed.
        if (isCancelledStep(result)) job.progress.stepsSkipped++;
        else job.progress.stepsFailed++;
        this.publish(job, `${ps.name} ${result.status}`);
        continue;
      }
      const generated: ObjectRef[] = [];
      originals = alignOutputs(step, originals, outcome.outputs.map((o) => o.key || plan.key));
      result.originalOutputHashes = originals.map((g) => g.contentHash);
      for (const [i, out] of outcome.outputs.entries()) {
        const original = originals[i];
        const objectId = `replay:${job.id}/${original?.objectId ?? `${step.stepId}/out-${i}`}`;
        const hash = contentHashOf(out.payload);
        toStore.push(out.payload);
        const ref = { objectId, contentHash: hash, unversioned: false };
        generated.push(ref);
        result.replayOutputHashes.push(hash);
        if (original) {
          produced.set(versionKey(original.objectId, original.contentHash), { ref, payload: out.payload, mediaType: out.mediaType });
          if (overridden && hash !== original.contentHash) changedByWhatIf.add(versionKey(original.objectId, original.contentHash));
        }
        events.push({ eventId: `replay:${job.id}:obj:${objectId}@${hash}`, eventTimeNs: outcome.endedAtNs, producer: 'retrace-replay', body: { $case: 'objectVersion', value: { objectId, contentHash: hash, size: String(out.payload.length), mediaType: out.mediaType, createdAtNs: outcome.endedAtNs, attributes: { replayOf: original ? versionKey(original.objectId, original.contentHash) : '' }, facets: undefined } } });
      }
      result.matches = result.replayOutputHashes.length === result.originalOutputHashes.length && result.replayOutputHashes.every((h, i) => h === result.originalOutputHashes[i]);
      if (!result.matches) result.valueDiffs = await jsonDiffs(payloads, result.originalOutputHashes, outcome.outputs.map((o) => o.payload));
      events.push({
        eventId: `replay:${job.id}:step:${step.stepId}`,
        eventTimeNs: outcome.endedAtNs,
        producer: 'retrace-replay',
        body: {
          $case: 'step',
          value: {
            stepId: result.replayStepId,
            runId: job.id,
            transform: step.transform,
            codeVersion,
            parameters,
            nodeId,
            host: '',
            startedAtNs: outcome.startedAtNs,
            endedAtNs: outcome.endedAtNs,
            why: { kind: TriggerKind.TRIGGER_KIND_REPLAY, id: job.id, principal: policy.principal },
            resources: outcome.resources,
            used: usedRefs,
            generated,
            facets: { retrace: { ...retraceFacetOf(step), replayOf: step.stepId } },
          },
        },
      });
      this.publish(job, `${ps.name} on ${nodeId}`);
    }
    if (toStore.length > 0 || events.length > 0) await this.quiet(job);
    if (toStore.length > 0) {
      if (payloads.putMany) await payloads.putMany(toStore);
      else for (const bytes of toStore) await payloads.put(bytes);
    }
    if (events.length > 0) {
      // Replayed versions first: steps refer to them as inputs downstream.
      await this.deps.lineage.submit([...events.filter((e) => e.body?.$case === 'objectVersion'), ...events.filter((e) => e.body?.$case === 'step')]).catch((err: unknown) => {
        // A store that refuses writes ends the replay: its results would name steps never recorded.
        if (isRetraceError(err) && err.code === 'INSUFFICIENT_STORAGE') throw err;
        this.deps.log(`replay ${job.id}: recording ${plan.source.objectId} failed: ${String(err)}`);
      });
    }
    return results;
  }

  /**
   * Writes the finished records' step results to the progress table, at most once per
   * FLUSH_INTERVAL_MS (the first at once): rows of only what is new, so the cost follows the
   * replay's rate, not the report's size.
   */
  private scheduleFlush(job: ReplayJob, startedMs: number): void {
    if (job.flushTimer !== undefined || job.header === undefined) return;
    const header = job.header;
    const wait = Math.max(0, job.lastFlushMs + FLUSH_INTERVAL_MS - performance.now());
    job.flushTimer = setTimeout(() => {
      job.flushTimer = undefined;
      const rows = job.unsaved.splice(0);
      if (rows.length === 0) return;
      job.lastFlushMs = performance.now();
      header.updatedAtNs = this.deps.clock().toString();
      header.wallMs = job.lastFlushMs - startedMs;
      const batch = rows.map((r) => ({ type: 'put' as const, key: progressRowKey(job.id, job.savedRows++), value: JSON.stringify(ReplayStepResult.toJSON(r)) }));
      batch.push({ type: 'put', key: progressHeaderKey(job.id), value: JSON.stringify(header) });
      job.flushing = job.flushing.then(() => this.progressTable.batch(batch)).catch((err: unknown) => this.deps.log(`replay ${job.id}: saving its progress failed: ${String(err)}`));
    }, wait);
  }

  private async closeRun(id: string, report: ReplayReport): Promise<void> {
    const run = await this.deps.lineage.readRun(id);
    if (run && run.endedAtNs === '0') await this.deps.lineage.submit([this.endEvent(id, report)]);
  }

  /** The lineage event that closes a replay's run: COMPLETE, FAIL or ABORT, with the replay's state and why. */
  private endEvent(id: string, report: ReplayReport): LineageEvent {
    const state = report.state === ReplayState.REPLAY_STATE_SUCCEEDED ? 'COMPLETE' : report.state === ReplayState.REPLAY_STATE_CANCELLED ? 'ABORT' : 'FAIL';
    return {
      eventId: `replay:${id}:end`,
      eventTimeNs: report.endedAtNs,
      producer: 'retrace-replay',
      body: { $case: 'run', value: { runId: id, name: `replay/${id}`, parentRunId: '', state, startedAtNs: '0', endedAtNs: report.endedAtNs, facets: { retrace: { replayState: ReplayState[report.state].replace('REPLAY_STATE_', ''), error: report.error } } } },
    };
  }

  /**
   * The pipeline definitions of the planned steps (each distinct `pipeline@version/step` once):
   * a step's timeout and requirements as the pipeline version that recorded it (the runner's
   * `retrace` facet names both) defines them, as the pipeline runner and recompute set them, or as
   * the pipeline's latest version does when that one is gone. Steps recorded by other producers,
   * or of a pipeline no longer stored at all, have none: the agent's default timeout, no requirements.
   */
  private async stepSpecs(plans: readonly RecordPlan[], codeVersions: Readonly<Record<string, string>>): Promise<Map<string, StepSpec>> {
    const specs = new Map<string, StepSpec>();
    const lookup = this.deps.pipelineStep;
    if (!lookup) return specs;
    const wanted = new Map<string, { pipeline: string; version: number; step: string; codeVersion: string }>();
    for (const plan of plans) {
      for (const { step } of plan.steps) {
        const key = specKey(step);
        const facet = retraceFacetOf(step);
        const codeVersion = codeVersions[step.transform] ?? step.codeVersion;
        if (key !== undefined && !wanted.has(key)) wanted.set(key, { pipeline: facet.pipeline as string, version: facetVersion(step), step: facet.step as string, codeVersion });
      }
    }
    await Promise.all(
      [...wanted].map(async ([key, w]) => {
        const [found, declared] = await Promise.all([lookup(w.pipeline, w.version, w.step).catch(() => undefined), this.deps.codeRequirements?.(w.codeVersion).catch(() => undefined)]);
        if (!found) return;
        // What the replayed code declares counts as it does wherever that code runs.
        const requirements = mergeRequirements(declared, found.requirements);
        specs.set(key, { ...found, requirements, where: `step ${JSON.stringify(w.step)} of pipeline ${w.pipeline}${w.version > 0 ? ` version ${w.version}` : ''}` });
      }),
    );
    return specs;
  }

  /**
   * Refuses, before anything runs, a replay whose policy and a recorded step's requirements
   * cannot both be met (a memory cap below what the step needs, GPUs excluded for a step that
   * needs one, targets none of which meets them), or a step no node meets at all: otherwise its
   * shards would wait for a node forever, or run where the pipeline would never have put them.
   */
  private checkRequirements(policy: CompiledReplayPolicy, specs: ReadonlyMap<string, StepSpec>): void {
    const p = policy.placement;
    for (const { requirements: r, where } of specs.values()) {
      if (!r) continue;
      const memoryMb = r.memoryMb ?? 0;
      if (memoryMb > 0 && p.maxMemoryMb !== undefined && p.maxMemoryMb < memoryMb) {
        throw new InvalidArgumentError('policy.max_memory_mb', `${p.maxMemoryMb} MiB is less than the ${memoryMb} MiB ${where} requires`);
      }
      const gpus = gpuCount(r);
      if (gpus > 0 && p.gpu === 'none') throw new InvalidArgumentError('policy.gpu', `GPU_MODE_NONE excludes every node with a GPU, and ${where} requires ${gpus === 1 ? 'a GPU' : `${gpus} GPUs`}`);
      const check = this.deps.checkPlacement;
      if (!check || check(p, r) === undefined) continue;
      // Nowhere at all, or nowhere this policy allows.
      const anywhere = check({}, r);
      if (anywhere !== undefined) throw new FailedPreconditionError(`no node meets the requirements of ${where}: ${anywhere}`, 'selector');
      throw new InvalidArgumentError('policy', `no node the policy allows meets the requirements of ${where}: ${check(p, r) ?? ''}`);
    }
  }

  /** Resolves when the next release of a paced replay is at least QUIET_MS away (at once otherwise). */
  private async quiet(job: ReplayJob): Promise<void> {
    for (let p = job.pacing; p && p.nextAtMs - performance.now() < QUIET_MS; p = job.pacing) await p.released;
  }

  private publish(job: ReplayJob, message: string): void {
    job.progress.state = job.report.state;
    const p = job.pacing;
    const waitMs = p?.nextKey === undefined ? 0 : p.nextAtMs - performance.now();
    job.progress.message =
      waitMs >= LONG_WAIT_MS && p?.nextKey !== undefined
        ? `${message}; next record ${p.nextKey} due at ${new Date(Date.now() + waitMs).toISOString()} (in ${formatSpanMs(Math.max(1000, waitMs))}, at ${job.policy.speed}x)`
        : message;
    job.events.emit('progress', job.progress);
  }

  /**
   * Ends a replay whose execution threw (a store that refused a write: a full data dir) FAILED,
   * with the error, so watchers and the report say so instead of waiting for an end that never
   * comes. Its shards still out are cancelled. A report the store still refuses stays served
   * from memory and is saved again once the store takes writes (onStoreWritable), and every
   * SAVE_RETRY_MS until it is (a restart would otherwise close it as interrupted).
   */
  private async abandon(job: ReplayJob, err: unknown): Promise<void> {
    const message = err instanceof Error ? err.message : String(err);
    this.deps.log(`replay ${job.id}: failed: ${message}`);
    job.controller.abort(new Error(`replay failed: ${message}`));
    job.report.state = ReplayState.REPLAY_STATE_FAILED;
    job.report.error = `the replay stopped: ${message}`;
    job.report.endedAtNs = this.deps.clock().toString();
    clearTimeout(job.flushTimer);
    this.publish(job, job.report.error);
    job.events.emit('done');
    const saveEnd = async (): Promise<boolean> => {
      try {
        await this.deps.lineage.submit([this.endEvent(job.id, job.report)]);
        await this.save(job.id, job.report);
        this.jobs.delete(job.id);
        this.unsavedEnds.delete(job.id);
        return true;
      } catch {
        return false;
      }
    };
    // The store's signal and the timer may both fire: one attempt at a time.
    let attempt: Promise<boolean> | undefined;
    const saveOnce = (): Promise<boolean> => (attempt ??= saveEnd().finally(() => (attempt = undefined)));
    if (await saveOnce()) return;
    this.unsavedEnds.set(job.id, saveOnce);
    // Until saved or the coordinator stops: the next start then closes it as interrupted.
    const retry = (): void => {
      if (this.stopped || !this.unsavedEnds.has(job.id)) return;
      const t = setTimeout(() => void saveOnce().then((saved) => saved || retry()), SAVE_RETRY_MS);
      t.unref();
    };
    retry();
  }

  private async save(id: string, report: ReplayReport): Promise<void> {
    await this.table.put(id, JSON.stringify(ReplayReport.toJSON(report)));
  }
}

/** Why a cancelled replay's steps did not run: an operator's cancel, or the coordinator's shutdown. */
function cancelText(job: ReplayJob): string {
  const reason: unknown = job.controller.signal.reason;
  return reason instanceof Error && reason.message === STOPPING ? 'cancelled: the coordinator shut down during the replay; start it again' : 'cancelled';
}

/** A step that did not run because the replay was cancelled (its shard aborted, or never sent). */
export function isCancelledStep(r: Pick<ReplayStepResult, 'status' | 'error'>): boolean {
  return r.status === 'CANCELLED' || (r.status === 'SKIPPED' && r.error.startsWith('cancelled'));
}

/**
 * A running replay's report with a summary of the steps finished so far (a report read or listed
 * mid-replay would otherwise say nothing of its progress): steps still pending or running are in
 * `steps` but in none of the counts, and nothing is counted cancelled that was merely not reached.
 */
function withLiveSummary(job: ReplayJob): ReplayReport {
  const report = job.report;
  if (report.summary !== undefined || job.header === undefined || job.startedMs === undefined) return report;
  const finished = report.steps.filter((r) => r.status !== 'PENDING' && r.status !== 'RUNNING');
  const summary = summarize({ ...job.header, steps: finished.length }, finished, performance.now() - job.startedMs, job.header.originalSpanMs);
  return { ...report, summary: { ...summary, steps: job.header.steps } };
}

/** A step that did not run because an earlier step of its record failed. */
export function isUpstreamFailedStep(r: Pick<ReplayStepResult, 'status' | 'error'>): boolean {
  return r.status === 'SKIPPED' && r.error.startsWith('an upstream step');
}

/**
 * The summary of a replay's step results. Planned steps that have no result (records a cancel or
 * a coordinator stop kept from starting) count as cancelled, so `steps` is always what was planned.
 */
function summarize(meta: { records: number; steps: number; overridesOrFaults: boolean; speed: number }, results: readonly ReplayStepResult[], wallMs: number, spanMs: number): ReplaySummary {
  const placements: Record<string, number> = {};
  for (const r of results) if (r.replayNode) placements[r.replayNode] = (placements[r.replayNode] ?? 0) + 1;
  const succeeded = results.filter((r) => r.status === 'SUCCEEDED');
  const differed = succeeded.filter((r) => !r.matches);
  // A record changed when the outputs of its last step differ from the original's.
  const lastByRecord = new Map<string, ReplayStepResult>();
  for (const r of results) lastByRecord.set(r.record, r);
  const changed = [...lastByRecord.values()].filter((r) => r.status === 'SUCCEEDED' && !r.matches).map((r) => r.record);
  const cancelled = results.filter(isCancelledStep).length + Math.max(0, meta.steps - results.length);
  const upstreamFailed = results.filter(isUpstreamFailedStep).length;
  return {
    records: meta.records,
    steps: Math.max(meta.steps, results.length),
    matched: succeeded.length - differed.length,
    differed: differed.length,
    failed: results.length - succeeded.length - results.filter(isCancelledStep).length - upstreamFailed,
    upstreamFailed,
    cancelled,
    nondeterministic: meta.overridesOrFaults ? 0 : differed.length,
    changedRecords: changed.length,
    firstChangedRecords: changed.slice(0, 10),
    corruptedInputsDetected: results.filter((r) => r.status === 'INPUT_CORRUPTED').length,
    reassigned: results.filter((r) => r.attempts > 1).length,
    placements,
    replayWallMs: wallMs,
    originalSpanMs: spanMs,
    speed: meta.speed,
  };
}

/** "field: original -> replay" for JSON outputs that differ (top-level fields, at most 10). */
async function jsonDiffs(payloads: ReplayPayloads, originalHashes: readonly string[], replayed: readonly Uint8Array[]): Promise<string[]> {
  const out: string[] = [];
  for (const [i, bytes] of replayed.entries()) {
    const h = originalHashes[i];
    const original = h ? await payloads.find(h) : undefined;
    if (!original) continue;
    let a: unknown;
    let b: unknown;
    try {
      a = JSON.parse(Buffer.from(original).toString('utf8'));
      b = JSON.parse(Buffer.from(bytes).toString('utf8'));
    } catch {
      out.push(`output ${i}: bytes differ (not JSON)`);
      continue;
    }
    if (isRecord(a) && isRecord(b)) {
      for (const k of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
        if (JSON.stringify(a[k]) !== JSON.stringify(b[k])) out.push(`${k}: ${JSON.stringify(a[k])} -> ${JSON.stringify(b[k])}`);
        if (out.length >= 10) return out;
      }
    } else if (JSON.stringify(a) !== JSON.stringify(b)) out.push(`${JSON.stringify(a)} -> ${JSON.stringify(b)}`);
  }
  return out;
}

/** A source record's event time: the one its producer gave (pipelines keep it as an attribute), else when it was recorded. */
function recordTime(v: { createdAtNs: string; attributes: Record<string, string> } | undefined): bigint {
  const t = v?.attributes.event_time_ns;
  return BigInt(t && /^\d+$/.test(t) ? t : (v?.createdAtNs ?? '0'));
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A step's original outputs in the order of the replayed ones. Generated and reproduced outputs
 * are recorded apart, so when a pipeline step has both, the original order is lost: each
 * replayed output is matched with the original of the record it would write (pipeline, output
 * dataset, its key), and the rest keep their order.
 */
function alignOutputs(step: Step, originals: readonly ObjectRef[], replayedKeys: readonly string[]): ObjectRef[] {
  const { pipeline, output } = retraceFacetOf(step);
  // Nothing reproduced, or a count that differs anyway (the report says so).
  if (originals.length < 2 || originals.length === step.generated.length || replayedKeys.length !== originals.length) return [...originals];
  if (typeof pipeline !== 'string' || typeof output !== 'string') return [...originals];
  const left = [...originals];
  const byRecord = replayedKeys.map((key) => {
    const at = left.findIndex((o) => o.objectId === `record:${pipeline}/${output}:${key}`);
    return at < 0 ? undefined : left.splice(at, 1)[0];
  });
  return byRecord.map((o) => o ?? (left.shift() as ObjectRef));
}

/** Newest first: by end time, then by step id so that the order is always the same. */
function compareNewest(a: Step, b: Step): number {
  const x = BigInt(a.endedAtNs || '0');
  const y = BigInt(b.endedAtNs || '0');
  return x > y ? -1 : x < y ? 1 : a.stepId < b.stepId ? 1 : a.stepId > b.stepId ? -1 : 0;
}

/** A recorded pipeline step's `pipeline@version/step` (version 0: not recorded), or undefined for steps of other producers. */
function specKey(step: Step): string | undefined {
  const facet = retraceFacetOf(step);
  if (typeof facet.pipeline !== 'string' || typeof facet.step !== 'string') return undefined;
  return `${facet.pipeline}@${facetVersion(step)}/${facet.step}`;
}

function facetVersion(step: Step): number {
  const v = retraceFacetOf(step).pipelineVersion;
  return typeof v === 'number' ? v : 0;
}

/**
 * The worker's memory limit, MiB (0 = the agent's default): the step's requirement, as the
 * pipeline run had it, or the policy's cap, or the smaller of the two when both are set.
 */
function memoryLimitMb(policyCapMb: number | undefined, stepMb: number | undefined): number {
  const limits = [policyCapMb ?? 0, stepMb ?? 0].filter((mb) => mb > 0);
  return limits.length === 0 ? 0 : Math.min(...limits);
}

/**
 * A what-if must change something the replay runs: a step or transform name that no replayed step
 * has (a typo, another pipeline's step), or a parameter name the step's recorded parameters lack,
 * would otherwise replay unchanged and report no difference. A parameter the step never had is
 * added only on the caller's explicit opt-in (its "+" prefix, see CompiledReplayPolicy).
 */
function checkOverridesApply(policy: CompiledReplayPolicy, plans: readonly RecordPlan[]): void {
  const steps = new Set<string>();
  const transforms = new Set<string>();
  /** step name → the parameter names its replayed executions recorded (any of them) */
  const recorded = new Map<string, Set<string>>();
  for (const plan of plans) {
    for (const ps of plan.steps) {
      steps.add(ps.name);
      transforms.add(ps.step.transform);
      const names = recorded.get(ps.name) ?? new Set<string>();
      for (const k of Object.keys((ps.step.parameters ?? {}) as Record<string, unknown>)) names.add(k);
      recorded.set(ps.name, names);
    }
  }
  const list = (names: Set<string>): string => [...names].sort().join(', ');
  for (const [name, params] of Object.entries(policy.stepParameters)) {
    if (!steps.has(name)) throw new InvalidArgumentError(`policy.step_parameters[${name}]`, `no replayed step is named ${JSON.stringify(name)} (steps: ${list(steps)})`);
    const has = recorded.get(name) ?? new Set<string>();
    const added = new Set(policy.addedParameters[name] ?? []);
    for (const param of Object.keys(params)) {
      if (has.has(param) || added.has(param)) continue;
      throw new InvalidArgumentError(
        `policy.step_parameters[${name}]`,
        `step ${JSON.stringify(name)} has no parameter ${JSON.stringify(param)} (its parameters: ${has.size > 0 ? list(has) : 'none'}); to add a new one, give it as "+${param}" (retrace replay start --set ${name}.+${param}=JSON)`,
      );
    }
  }
  for (const name of Object.keys(policy.codeVersions)) {
    if (!transforms.has(name)) throw new InvalidArgumentError(`policy.code_versions[${name}]`, `no replayed step runs a transform named ${JSON.stringify(name)} (transforms: ${list(transforms)})`);
  }
}
