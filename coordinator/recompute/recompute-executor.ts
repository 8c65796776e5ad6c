import { canonicalJson } from '../../common/canonical-json.js';
import { FailedPreconditionError } from '../../common/errors.js';
import type { TransformRequirements } from '../../common/gen/retrace/v1/code.js';
import { TriggerKind, type LineageEvent, type ObjectRef, type Step } from '../../common/gen/retrace/v1/provenance.js';
import { ShardStatus, type ShardAssignment, type ShardInput, type ShardOutcome } from '../../common/gen/retrace/v1/shard.js';
import { contentHashOf, sha256Hex } from '../../common/hash.js';
import { versionKey } from '../../common/lineage-keys.js';
import { retraceFacetOf, stepOutputs } from '../../common/step-versions.js';
import type { NanoClock } from '../clock.js';
import type { JobExecutor, JobLifecycleEvent, JobState, JsonValue, TaskRunContext, TaskRunResult } from '../jobs/job-types.js';
import type { LineageEngine } from '../lineage/lineage-engine.js';
import { computeShardId, outcomeSpanNs, pipelineStepId, recordObjectId } from '../pipeline/pipeline-runner.js';
import type { CurrentRecord } from '../pipeline/pipeline-store.js';
import type { Placement } from '../scheduler/allocator.js';
import type { PayloadStore } from '../store/payload-store.js';
import { recordKeyOf } from './impact-analysis.js';
import { cacheKeyOf, type MemoOutput, type MemoStore } from './memo-store.js';
import { rewiredReason, type RecomputeJobPayload, type RecomputeTaskPayload, type RecomputeTaskResult, type StepDefinition } from './recompute-planner.js';

/** Runs one shard (the dispatcher); always resolves with an outcome. */
export interface RecomputeShardRunner {
  run(assignment: ShardAssignment, options?: { requirements?: TransformRequirements; placement?: Placement; signal?: AbortSignal }): Promise<{ outcome: ShardOutcome; nodeId: string; attempts: number; queuedMs: number }>;
}

export interface RecomputeExecutorDeps {
  lineage: Pick<LineageEngine, 'submit' | 'readStep' | 'readRun' | 'readVersion' | 'index'>;
  payloads: () => Pick<PayloadStore, 'find' | 'putMany' | 'retain'> | undefined;
  /** Sets the pipelines' current records (pipeline outputs only). */
  setCurrent: (pipeline: string, entries: { dataset: string; key: string; record: CurrentRecord }[]) => Promise<void>;
  /** An object's content hash now, where its newest version first seen does not say it (Recomputer.contentNow); else undefined. */
  currentOf?: (objectId: string) => Promise<string | undefined>;
  memo: MemoStore;
  /**
   * A pipeline step's definition now (its pipeline's latest version), read at each attempt: a
   * retried or resumed task runs what the pipeline says then, so a fix applied after a failure
   * takes effect. undefined (or no function): the definition the job was planned with.
   */
  definitionOf?: (pipeline: string, step: string) => Promise<StepDefinition | undefined>;
  runner: () => RecomputeShardRunner | undefined;
  clock: NanoClock;
  /** Called after each task with its outcome (progress, tests). */
  onTask?: (jobId: string, taskId: string, outcome: TaskRunResult['outcome']) => void;
}

const PRODUCER = 'retrace://coordinator/recompute';

/** A job's end as its run's state (OpenLineage's words, as ingest runs use). */
const RUN_END_STATE: Readonly<Record<Exclude<JobState, 'PENDING' | 'RUNNING'>, string>> = { SUCCEEDED: 'COMPLETE', FAILED: 'FAIL', CANCELLED: 'ABORT' };

/** An error the job manager must not retry (missing payload, bad payload). */
class PermanentError extends Error {
  readonly retryable = false;
}

/** The step id a task records: deterministic, so a retried or resumed attempt finds it. */
export function recomputeStepId(jobId: string, taskId: string): string {
  return `recompute:${jobId}/${taskId}`;
}

/** One attempt of a task, as execute() and record() need it: resolved inputs, cache key and step id. */
interface TaskAttempt {
  ctx: TaskRunContext;
  t: RecomputeTaskPayload;
  job: RecomputeJobPayload;
  inputs: readonly { name: string; objectId: string; contentHash: string }[];
  cacheKey: string;
  stepId: string;
}

/**
 * A memo hit's outputs as this task's own: the hit may come from another record or pipeline
 * (the cache key leaves object ids out), whose output ids name that record. A pipeline output
 * keeps its key relative to the input record's; an entry from before keys were kept maps only
 * when it has one output (keyed as the record). undefined: it cannot be mapped (run the task).
 */
function ownOutputs(t: RecomputeTaskPayload, outputs: readonly MemoOutput[]): MemoOutput[] | undefined {
  if (t.pipeline === '') return outputs.map((o, i) => ({ ...o, objectId: t.outputs[i]?.objectId ?? `${t.originalStepId}/out-${i}` }));
  if (outputs.some((o) => o.key === undefined) && outputs.length !== 1) return undefined;
  return outputs.map((o) => ({ ...o, key: o.key ?? '', objectId: recordObjectId(t.pipeline, t.output, o.key || t.key) }));
}

function toResult(r: RecomputeTaskResult): JsonValue {
  return r as unknown as JsonValue;
}

/**
 * The `recompute` job executor. One attempt of a task:
 * 1. resolves each input's version (a root's new version, or the upstream task's result);
 * 2. early cutoff: nothing differs from what the original execution used (inputs, code version,
 *    parameters) → 'cutoff', the original outputs stand;
 * 3. an attempt of this task that already recorded its step (retry, resume) → that step's result;
 * 4. memo: a stored result for the cache key H(code version, parameters, input hashes), or the
 *    pipeline's own execution of exactly these inputs → 'cached': nothing runs, the step is
 *    recorded with `cachedFrom` and the outputs named as this record's;
 * 5. otherwise runs the shard through the dispatcher, stores the payloads, records the step
 *    (why = RECOMPUTE, the job) and its output versions, and memoizes → 'executed'.
 * Cached and executed outputs become the pipelines' current records; old versions stay.
 */
export class RecomputeExecutor implements JobExecutor {
  readonly kind = 'recompute';

  /**
   * Cache keys being looked up or executed now, by any job: a task whose key is in flight waits
   * for that attempt, then finds its result in the memo ('cached') instead of running the same
   * shard a second time (two recomputes of one change, or equal inputs within one job).
   */
  private readonly inFlight = new Map<string, Promise<void>>();

  constructor(private readonly deps: RecomputeExecutorDeps) {}

  /**
   * The job's run opens with its first recorded step (executed or served from the memo; a job of
   * cutoffs only records none). A job resumed after its run was closed reopens it; one resumed
   * after a coordinator restart finds it still RUNNING and leaves it so.
   */
  async jobStarted(e: JobLifecycleEvent): Promise<void> {
    const run = await this.deps.lineage.readRun(e.jobId);
    if (!run || (run.state === 'RUNNING' && run.endedAtNs === '0')) return;
    const atNs = (BigInt(e.atMs) * 1_000_000n).toString();
    await this.deps.lineage.submit([
      { eventId: `recompute:${e.jobId}:reopen:${e.atMs}`, eventTimeNs: atNs, producer: PRODUCER, body: { $case: 'run', value: { runId: e.jobId, name: `recompute/${e.jobId}`, parentRunId: '', state: 'RUNNING', startedAtNs: '0', endedAtNs: '0', facets: { retrace: { error: '', resumedAtNs: atNs } } } } },
    ]);
  }

  /** Closes the job's run (when a step opened one) with the job's end: COMPLETE, FAIL or ABORT, and why. */
  async jobEnded(e: JobLifecycleEvent): Promise<void> {
    if (e.state === 'PENDING' || e.state === 'RUNNING') return;
    const run = await this.deps.lineage.readRun(e.jobId);
    if (!run) return;
    const endedAtNs = (BigInt(e.atMs) * 1_000_000n).toString();
    await this.deps.lineage.submit([
      {
        eventId: `recompute:${e.jobId}:end:${e.atMs}`,
        eventTimeNs: endedAtNs,
        producer: PRODUCER,
        body: { $case: 'run', value: { runId: e.jobId, name: `recompute/${e.jobId}`, parentRunId: '', state: RUN_END_STATE[e.state], startedAtNs: '0', endedAtNs, facets: { retrace: { jobState: e.state, error: e.message.slice(0, 1000) } } } },
      },
    ]);
  }

  async runTask(ctx: TaskRunContext): Promise<TaskRunResult> {
    const r = await this.attempt(ctx);
    this.deps.onTask?.(ctx.jobId, ctx.task.id, r.outcome);
    return r;
  }

  private async attempt(ctx: TaskRunContext): Promise<TaskRunResult> {
    const t = await this.currentDefinition(ctx.task.payload as unknown as RecomputeTaskPayload);
    const job = ctx.job.payload as unknown as RecomputeJobPayload;
    const inputs = t.inputs.map((i) => {
      let hash = i.newHash ?? i.originalHash;
      if (i.fromTask !== undefined) {
        const dep = ctx.deps.get(i.fromTask) as unknown as RecomputeTaskResult | undefined;
        hash = dep?.outputs[i.objectId] ?? i.originalHash;
      }
      return { name: i.name, objectId: i.objectId, contentHash: hash, changed: hash !== i.originalHash };
    });
    const sameCode = t.codeVersion === t.originalCodeVersion && canonicalJson(t.parameters) === canonicalJson(t.originalParameters);
    const original = Object.fromEntries(t.outputs.map((o) => [o.objectId, o.contentHash]));
    if (sameCode && inputs.every((i) => !i.changed)) {
      return { outcome: 'cutoff', result: toResult({ outputs: original, changed: false, stepId: t.originalStepId, nodeId: '', cachedFrom: '' }) };
    }
    const changedFrom = (outs: Record<string, string>): boolean => {
      const a = Object.keys(outs).sort();
      const b = Object.keys(original).sort();
      return a.length !== b.length || a.some((k, i) => k !== b[i] || outs[k] !== original[k]);
    };
    const stepId = recomputeStepId(ctx.jobId, ctx.task.id);
    const recorded = await this.deps.lineage.readStep(stepId);
    if (recorded) {
      const facet = retraceFacetOf(recorded);
      const outs = facet.outputs ?? Object.fromEntries(recorded.generated.map((g) => [g.objectId, g.contentHash]));
      const cachedFrom = typeof facet.cachedFrom === 'string' ? facet.cachedFrom : '';
      // The attempt that recorded it may have stopped before the current records moved.
      await this.updateCurrent(t, inputs, await this.versionsOf(outs));
      if (cachedFrom !== '') return { outcome: 'cached', result: toResult({ outputs: outs, changed: changedFrom(outs), stepId, nodeId: '', cachedFrom }) };
      return { outcome: 'executed', result: toResult({ outputs: outs, changed: changedFrom(outs), stepId, nodeId: recorded.nodeId, cachedFrom: '' }) };
    }
    const cacheKey = cacheKeyOf(t.codeVersion, t.parameters, inputs);
    const release = await this.claim(cacheKey, ctx.signal);
    try {
      return await this.lookupOrExecute({ ctx, t, job, inputs, cacheKey, stepId }, changedFrom);
    } finally {
      release();
    }
  }

  /** The task with its step's definition now, where the pipeline still has that step. */
  private async currentDefinition(planned: RecomputeTaskPayload): Promise<RecomputeTaskPayload> {
    const def = planned.pipeline !== '' ? await this.deps.definitionOf?.(planned.pipeline, planned.step) : undefined;
    if (!def) return planned;
    // Rewired after the job was planned (a pipeline applied while it waited, or before a resume).
    const rewired = rewiredReason(planned.pipeline, planned.step, planned.key, planned.inputs.map((i) => i.name), def);
    if (rewired) throw new FailedPreconditionError(rewired);
    const { requirements: _planned, ...rest } = planned;
    const t: RecomputeTaskPayload = { ...rest, transform: def.transform, codeVersion: def.codeVersion, parameters: def.parameters, timeoutMs: def.timeoutMs };
    if (def.requirements) t.requirements = def.requirements;
    return t;
  }

  /**
   * Waits until no other attempt holds the cache key (or the signal aborts: cancelled), then
   * holds it; the returned function lets the next waiter go. Claimed with no await in between,
   * so two waiters woken together cannot both miss the memo and run.
   */
  private async claim(cacheKey: string, signal: AbortSignal): Promise<() => void> {
    for (let held = this.inFlight.get(cacheKey); held; held = this.inFlight.get(cacheKey)) {
      signal.throwIfAborted();
      await new Promise<void>((resolve) => {
        const done = (): void => {
          signal.removeEventListener('abort', done);
          resolve();
        };
        signal.addEventListener('abort', done, { once: true });
        void held.then(done);
      });
    }
    signal.throwIfAborted();
    let release = (): void => {};
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    this.inFlight.set(cacheKey, mine);
    return () => {
      if (this.inFlight.get(cacheKey) === mine) this.inFlight.delete(cacheKey);
      release();
    };
  }

  /** Steps 4 and 5 of an attempt: the memo (or the pipeline's own execution), else the shard runs. */
  private async lookupOrExecute(task: TaskAttempt, changedFrom: (outs: Record<string, string>) => boolean): Promise<TaskRunResult> {
    const { ctx, t, job, inputs, cacheKey, stepId } = task;
    const hit = await this.lookup(t, inputs, cacheKey);
    const own = hit && ownOutputs(t, hit.outputs);
    // A result whose payloads a retention swept is recomputed: the steps after it read them.
    const stored = own ? ((await this.deps.payloads()?.retain(own.map((o) => o.contentHash))) ?? true) : false;
    if (hit && own && stored) {
      // Recorded like an execution (nothing ran; `cachedFrom` names the step whose result it
      // is), so lineage shows what this task's outputs came from and a later change of these
      // inputs finds the steps downstream of them.
      const nowNs = this.deps.clock();
      await this.record({ ctx, t, job, inputs, cacheKey, stepId }, own, { nodeId: '', startedAtNs: nowNs.toString(), endedAtNs: nowNs.toString(), resources: undefined, shardId: '', cachedFrom: hit.stepId });
      await this.updateCurrent(t, inputs, own);
      const outs = Object.fromEntries(own.map((o) => [o.objectId, o.contentHash]));
      return { outcome: 'cached', result: toResult({ outputs: outs, changed: changedFrom(outs), stepId, nodeId: '', cachedFrom: hit.stepId }) };
    }
    const executed = await this.execute({ ctx, t, job, inputs, cacheKey, stepId });
    const outs = Object.fromEntries(executed.outputs.map((o) => [o.objectId, o.contentHash]));
    return { outcome: 'executed', result: toResult({ outputs: outs, changed: changedFrom(outs), stepId, nodeId: executed.nodeId, cachedFrom: '' }) };
  }

  /** A memoized result, or the pipeline runner's recording of this very execution (its step id is deterministic). */
  private async lookup(t: RecomputeTaskPayload, inputs: readonly { name: string; objectId: string; contentHash: string }[], cacheKey: string): Promise<{ outputs: MemoOutput[]; stepId: string } | undefined> {
    const memo = await this.deps.memo.get(cacheKey);
    if (memo) return memo;
    if (t.pipeline === '') return undefined;
    const shardId = computeShardId(t.pipeline, { name: t.step, codeVersion: t.codeVersion, parameters: t.parameters } as never, inputs);
    const prior = await this.deps.lineage.readStep(pipelineStepId(t.pipeline, t.step, shardId));
    if (!prior) return undefined;
    // This record's own execution: an output under the record's key is keyed '' as execute() keys
    // it; size and media type as its versions were recorded (a hit for another record names them).
    const recorded = await this.versionsOf(Object.fromEntries(stepOutputs(prior).map((g) => [g.objectId, g.contentHash])));
    const outputs = recorded.map((o) => {
      const key = recordKeyOf(o.objectId);
      return { ...o, key: key === t.key ? '' : key };
    });
    await this.deps.memo.put(cacheKey, { outputs, stepId: prior.stepId });
    return { outputs, stepId: prior.stepId };
  }

  private async execute(task: TaskAttempt): Promise<{ outputs: MemoOutput[]; nodeId: string }> {
    const { ctx, t, job, inputs, cacheKey, stepId } = task;
    const runner = this.deps.runner();
    const payloads = this.deps.payloads();
    if (!runner || !payloads) throw new FailedPreconditionError('recompute needs the scheduler and the payload store');
    const shardInputs: ShardInput[] = [];
    for (const i of inputs) {
      const bytes = await payloads.find(i.contentHash);
      if (!bytes) throw new PermanentError(`input ${i.name} (${i.objectId}@${i.contentHash}): content is not stored: send its bytes (retrace notify ${i.objectId} FILE, or NotifyChange with the payload), then resume the job`);
      shardInputs.push({ name: i.name, objectId: i.objectId, contentHash: i.contentHash, payload: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), key: t.key, eventTimeNs: '0', mediaType: '', cached: false });
    }
    const assignment: ShardAssignment = {
      shardId: `recompute-${sha256Hex(`${ctx.jobId}\u0000${ctx.task.id}\u0000${ctx.attempt}`).slice(0, 32)}`,
      stepName: t.step,
      transform: t.transform,
      codeVersion: t.codeVersion,
      parameters: t.parameters,
      inputs: shardInputs,
      timeoutMs: t.timeoutMs,
      memoryLimitMb: t.requirements?.memoryMb ?? 0,
      faults: undefined,
      jobId: ctx.jobId,
      // Set by the dispatcher for each placement.
      attempt: 0,
    };
    const options: Parameters<RecomputeShardRunner['run']>[1] = { signal: ctx.signal };
    if (t.requirements) options.requirements = t.requirements;
    if (job.placement.nodeIds?.length || Object.keys(job.placement.labels ?? {}).length > 0) options.placement = job.placement;
    const { outcome, nodeId } = await runner.run(assignment, options);
    if (outcome.status !== ShardStatus.SHARD_STATUS_SUCCEEDED) {
      throw new Error(`${t.pipeline ? `${t.pipeline}/${t.step}` : t.transform} key=${t.key}: ${ShardStatus[outcome.status] ?? outcome.status}${outcome.error ? `: ${outcome.error}` : ''}`);
    }
    const outputs: (MemoOutput & { payload: Uint8Array })[] = outcome.outputs.map((o, i) => {
      const hash = contentHashOf(o.payload);
      const objectId = t.pipeline ? recordObjectId(t.pipeline, t.output, o.key || t.key) : (t.outputs[i]?.objectId ?? `${t.originalStepId}/out-${i}`);
      return { objectId, contentHash: hash, size: o.payload.byteLength, mediaType: o.mediaType, payload: o.payload, ...(t.pipeline ? { key: o.key } : {}) };
    });
    await payloads.putMany(
      outputs.map((o) => o.payload),
      outputs.map((o) => o.contentHash),
    );
    const { startedAtNs, endedAtNs } = outcomeSpanNs(outcome, this.deps.clock);
    const memoOutputs = outputs.map(({ payload: _payload, ...o }) => o);
    await this.record(task, memoOutputs, { nodeId: nodeId || outcome.nodeId, startedAtNs, endedAtNs, resources: outcome.resources, shardId: assignment.shardId, cachedFrom: '' });
    await this.deps.memo.put(cacheKey, { outputs: memoOutputs, stepId });
    await this.updateCurrent(t, inputs, memoOutputs);
    return { outputs: memoOutputs, nodeId: nodeId || outcome.nodeId };
  }

  /**
   * Records a task's step (why = RECOMPUTE, the job) and the output versions it is the first to
   * make: an execution, or a memo hit (`cachedFrom`, no node, no resources).
   */
  private async record(
    task: TaskAttempt,
    outputs: readonly MemoOutput[],
    how: { nodeId: string; startedAtNs: string; endedAtNs: string; resources: ShardOutcome['resources']; shardId: string; cachedFrom: string },
  ): Promise<void> {
    const { ctx, t, job, inputs, cacheKey, stepId } = task;
    const { startedAtNs, endedAtNs } = how;
    // A version has one generating step: an output that came out exactly as an earlier step made
    // it is listed in the facet (`reproduced`), not generated again.
    const index = this.deps.lineage.index;
    const reproduced = outputs.filter((o) => index.generatorOf(versionKey(o.objectId, o.contentHash)) !== undefined);
    const generated: ObjectRef[] = outputs.filter((o) => !reproduced.includes(o)).map((o) => ({ objectId: o.objectId, contentHash: o.contentHash, unversioned: false }));
    const step: Step = {
      stepId,
      runId: ctx.jobId,
      transform: t.transform,
      codeVersion: t.codeVersion,
      parameters: t.parameters,
      nodeId: how.nodeId,
      host: '',
      startedAtNs,
      endedAtNs,
      why: { kind: TriggerKind.TRIGGER_KIND_RECOMPUTE, id: ctx.jobId, principal: job.principal },
      resources: how.resources,
      used: inputs.map((i) => ({ objectId: i.objectId, contentHash: i.contentHash, unversioned: false })),
      generated,
      facets: {
        retrace: {
          pipeline: t.pipeline,
          step: t.step,
          output: t.output,
          ...(how.shardId ? { shardId: how.shardId } : {}),
          inputs: Object.fromEntries(inputs.map((i) => [i.name, i.objectId])),
          recomputeOf: t.originalStepId,
          cacheKey,
          ...(how.cachedFrom ? { cachedFrom: how.cachedFrom } : {}),
          changes: job.changeIds,
          outputs: Object.fromEntries(outputs.map((o) => [o.objectId, o.contentHash])),
          reproduced: reproduced.map((o) => ({ objectId: o.objectId, contentHash: o.contentHash })),
        },
      },
    };
    const events: LineageEvent[] = [
      // The job's run, once (the event id deduplicates it across tasks).
      { eventId: `recompute:${ctx.jobId}:run`, eventTimeNs: startedAtNs, producer: PRODUCER, body: { $case: 'run', value: { runId: ctx.jobId, name: `recompute/${ctx.jobId}`, parentRunId: '', state: 'RUNNING', startedAtNs, endedAtNs: '0', facets: { retrace: { changes: job.changeIds, principal: job.principal } } } } },
      ...outputs
        .filter((o) => !reproduced.includes(o))
        .map((o): LineageEvent => ({
        eventId: `version:${o.objectId}@${o.contentHash}`,
        eventTimeNs: endedAtNs,
        producer: PRODUCER,
        body: { $case: 'objectVersion', value: { objectId: o.objectId, contentHash: o.contentHash, size: String(o.size), mediaType: o.mediaType, createdAtNs: endedAtNs, attributes: t.pipeline ? { pipeline: t.pipeline, dataset: t.output, key: recordKeyOf(o.objectId), recompute_job: ctx.jobId } : { recompute_job: ctx.jobId }, facets: undefined } },
      })),
      { eventId: `step:${stepId}`, eventTimeNs: endedAtNs, producer: PRODUCER, body: { $case: 'step', value: step } },
    ];
    await this.deps.lineage.submit(events);
  }

  /** Outputs as recorded (object id → hash) with the size and media type of their versions. */
  private async versionsOf(outputs: Record<string, string>): Promise<MemoOutput[]> {
    return Promise.all(
      Object.entries(outputs).map(async ([objectId, contentHash]) => {
        const v = await this.deps.lineage.readVersion(objectId, contentHash);
        return { objectId, contentHash, size: Number(v?.size ?? 0), mediaType: v?.mediaType ?? '' };
      }),
    );
  }

  /**
   * Moves the task's output records to `outputs`, unless an input record is no longer at the
   * content the task read: a newer change moved it meanwhile, and the job recomputing that one
   * sets the outputs (an older job finishing last must not put them back).
   */
  private async updateCurrent(t: RecomputeTaskPayload, inputs: readonly { objectId: string; contentHash: string }[], outputs: readonly MemoOutput[]): Promise<void> {
    if (t.pipeline === '') return;
    const currentOf = this.deps.currentOf;
    if (currentOf) {
      for (const i of inputs) {
        const now = await currentOf(i.objectId);
        if (now !== undefined && now !== i.contentHash) return;
      }
    }
    const prefix = recordObjectId(t.pipeline, t.output, '');
    const entries = outputs
      .filter((o) => o.objectId.startsWith(prefix))
      .map((o) => ({ dataset: t.output, key: o.objectId.slice(prefix.length), record: { objectId: o.objectId, contentHash: o.contentHash, size: o.size, mediaType: o.mediaType, eventTimeNs: this.deps.clock().toString() } }));
    await this.deps.setCurrent(t.pipeline, entries);
  }
}
