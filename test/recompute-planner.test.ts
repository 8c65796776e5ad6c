import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../common/errors.js';
import type { PipelineVersion } from '../common/gen/retrace/v1/pipeline.js';
import { TriggerKind, type Step } from '../common/gen/retrace/v1/provenance.js';
import { ChangeKind } from '../common/gen/retrace/v1/recompute.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import type { JobSpec, JsonValue, TaskRunContext } from '../coordinator/jobs/job-types.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { createPayloadStore, type PayloadStore } from '../coordinator/store/payload-store.js';
import { stepChanges } from '../coordinator/recompute/change-detector.js';
import { collectAffected, hasAffected, toImpactResponse, topoOrder, type AffectedNode, type ImpactRoot } from '../coordinator/recompute/impact-analysis.js';
import { cacheKeyOf, createMemoStore } from '../coordinator/recompute/memo-store.js';
import { RecomputeExecutor, type RecomputeExecutorDeps } from '../coordinator/recompute/recompute-executor.js';
import { planRecompute, type RecomputeTaskPayload, type RecomputeTaskResult, type StepDefinition } from '../coordinator/recompute/recompute-planner.js';
import { objectEvent, pipelineFacet as facet, ref, runEvent, stepEvent, twoRecordPipelineEvents } from './helpers/lineage-events.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

// raw:a (v1) → X → mid:a → Y → out:a, and raw:b (v1) → X → mid:b → Y → out:b; later raw:a v2 re-ran X
// (X') and Y (Y'). Times: the first pipeline pass at 2 s, the second at 5 s (event times in ns).
describe('impact analysis and recompute planning', () => {
  let tc: TestCoordinator;
  const S = 1_000_000_000n;

  /** What the executors' runners answer: the shard succeeded on n1 with one output `a` holding `text`. */
  const succeeded = (shardId: string, text: string) =>
    ({ nodeId: 'n1', attempts: 1, queuedMs: 0, outcome: { shardId, nodeId: 'n1', status: ShardStatus.SHARD_STATUS_SUCCEEDED, error: '', outputs: [{ key: 'a', payload: Buffer.from(text), mediaType: 'text/plain', contentHash: '' }], startedAtNs: '1', endedAtNs: '2', resources: undefined } as never });
  /** An executor on the test coordinator's lineage with `payloads` and a memo in `db`; `deps` gives the rest (setCurrent: none unless given). */
  const executorOn = (db: Database, payloads: PayloadStore, deps: Pick<RecomputeExecutorDeps, 'runner' | 'clock'> & Partial<RecomputeExecutorDeps>): RecomputeExecutor =>
    new RecomputeExecutor({ lineage: tc.coordinator.lineage, payloads: () => payloads, setCurrent: async () => {}, memo: createMemoStore(db), ...deps });
  /** Records `content` as raw:a's new version at `eventTimeNs`; the recompute of raw:a's change from a2 to it. */
  async function recomputeOfA(content: string, eventTimeNs: string): Promise<JobSpec> {
    await tc.coordinator.lineage.submit([objectEvent(content, 'record:p/raw:a', content, eventTimeNs)]);
    const g = await collectAffected(tc.coordinator.lineage, [{ kind: 'version', objectId: 'record:p/raw:a', oldHash: contentHashOf('a2') }]);
    return planRecompute(g, { newVersions: new Map([['record:p/raw:a', contentHashOf(content)]]), definitions: new Map(), changeIds: [], principal: 'me', title: 't' });
  }

  beforeAll(async () => {
    tc = await startTestCoordinator();
    const at = (s: bigint) => (s * S).toString();
    await tc.coordinator.lineage.submit([
      ...twoRecordPipelineEvents(),
      // A later replay of X over raw:a v2, in its own namespace: never part of an impact.
      runEvent('rr', 'replay-1'),
      stepEvent('x-replay', 'replay:replay-1/p/X/a2', [ref('record:p/raw:a', 'a2')], [ref('replay:replay-1/record:p/X:a', 'xa2')], { timeNs: at(6n), runId: 'replay-1', why: { kind: TriggerKind.TRIGGER_KIND_REPLAY, id: 'replay-1', principal: '' }, facets: facet('X', { raw: 'record:p/raw:a' }) }),
    ]);
  });
  afterAll(async () => tc?.stop());

  it('a replaced version affects exactly the steps downstream of it, in dependency order', async () => {
    const g = await collectAffected(tc.coordinator.lineage, [{ kind: 'version', objectId: 'record:p/raw:a', oldHash: contentHashOf('a2') }]);
    expect(g.nodes.map((n) => n.step.stepId)).toEqual(['p/X/a2', 'p/Y/a2']);
    expect(g.nodes.map((n) => [n.stepName, n.key, n.depth, n.inputNames])).toEqual([
      ['X', 'a', 1, ['raw']],
      ['Y', 'a', 2, ['X']],
    ]);
    expect(g.nodes[1]?.dependsOn).toEqual(['p/X/a2']);
    expect(g.objects.map((o) => o.objectId)).toEqual(['record:p/X:a', 'record:p/Y:a']);
    const impact = await toImpactResponse(g, '0');
    expect(impact).toMatchObject({ stepCount: 2, objectCount: 2, estimatedWallTimeNs: '4000000', criticalPathWallTimeNs: '4000000', estimatedCpuTimeNs: '2000000' });
  });

  it('a pipeline step change affects its latest execution per input, and their downstream', async () => {
    const g = await collectAffected(tc.coordinator.lineage, [{ kind: 'pipelineStep', pipeline: 'p', step: 'X', transform: 'upper' }]);
    // X over raw:a ran twice: only the latest counts (and its Y).
    expect(g.nodes.map((n) => n.step.stepId).sort()).toEqual(['p/X/a2', 'p/X/b1', 'p/Y/a2', 'p/Y/b1']);
  });

  it('as of an earlier time, later steps do not exist', async () => {
    const asOfMs = 3000;
    const g = await collectAffected(tc.coordinator.lineage, [{ kind: 'pipelineStep', pipeline: 'p', step: 'X', transform: 'upper' }], asOfMs);
    expect(g.nodes.map((n) => n.step.stepId).sort()).toEqual(['p/X/a1', 'p/X/b1', 'p/Y/a1', 'p/Y/b1']);
  });

  it('whether a version has anything downstream is answered as the walk would, from the first steps below it only', async () => {
    const lineage = tc.coordinator.lineage;
    const version = (objectId: string, content: string): ImpactRoot[] => [{ kind: 'version', objectId, oldHash: contentHashOf(content) }];
    // Read by steps; read by nothing; read by a replay only (raw:a v2 is read by X' and the replay).
    for (const roots of [version('record:p/raw:a', 'a1'), version('record:p/Y:a', 'ya1'), version('record:p/X:a', 'xa2')]) {
      expect(await hasAffected(lineage, roots)).toBe((await collectAffected(lineage, roots)).nodes.length > 0);
    }
    expect(await hasAffected(lineage, version('record:p/Y:a', 'ya1'))).toBe(false);
    await expect(hasAffected(lineage, version('nope', 'x'))).rejects.toMatchObject({ code: 'NOT_FOUND', field: 'roots[0]' });
    // A lookup table read by 600 steps (3 pages of reads), each step's output read again: the
    // walk reads all 1,200 steps; the check, the first page of the 600 only.
    const T = 3_000_000_000n;
    const events = [objectEvent('rates', 'table:rates', 'rates-1', T.toString())];
    for (let i = 0; i < 600; i++) {
      events.push(stepEvent(`use-${i}`, `p/U/${i}`, [ref('table:rates', 'rates-1')], [ref(`record:p/U:${i}`, `u${i}`)], { timeNs: T.toString(), facets: facet('U', { rates: 'table:rates' }) }));
      events.push(stepEvent(`then-${i}`, `p/V/${i}`, [ref(`record:p/U:${i}`, `u${i}`)], [ref(`record:p/V:${i}`, `v${i}`)], { timeNs: T.toString(), facets: facet('V', { U: `record:p/U:${i}` }) }));
    }
    await lineage.submit(events);
    const read: number[] = [];
    const readSteps = lineage.readSteps.bind(lineage);
    const counting = { index: lineage.index, readSteps: (ids: readonly string[]) => (read.push(ids.length), readSteps(ids)) };
    expect(await hasAffected(counting, version('table:rates', 'rates-1'))).toBe(true);
    expect(read).toEqual([256]);
    read.length = 0;
    // The 600 U steps are one logical step (same pipeline, step and inputs): its latest is kept.
    expect((await collectAffected(counting, version('table:rates', 'rates-1'))).nodes).toHaveLength(601);
    expect(read.reduce((a, b) => a + b, 0)).toBe(1200);
  });

  it('unknown roots and cycles are refused', async () => {
    await expect(collectAffected(tc.coordinator.lineage, [{ kind: 'version', objectId: 'nope', oldHash: contentHashOf('x') }])).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(collectAffected(tc.coordinator.lineage, [{ kind: 'step', stepId: 'nope' }])).rejects.toMatchObject({ code: 'NOT_FOUND', field: 'step_id' });
    const node = (id: string, deps: string[]): AffectedNode => ({ step: { stepId: id } as Step, pipeline: 'p', stepName: id, key: 'k', output: id, outputs: [], inputNames: [], depth: 1, dependsOn: deps });
    expect(() => topoOrder([node('a', ['b']), node('b', ['a'])])).toThrow(InvalidArgumentError);
    expect(() => topoOrder([node('a', ['b']), node('b', ['a'])])).toThrow(/^pipeline: .*cycle/);
    expect(topoOrder([node('b', ['a']), node('a', [])]).map((n) => n.step.stepId)).toEqual(['a', 'b']);
  });

  it('plans one task per step, wiring inputs to the new version or the upstream task, with the current definition', async () => {
    const g = await collectAffected(tc.coordinator.lineage, [{ kind: 'version', objectId: 'record:p/raw:a', oldHash: contentHashOf('a2') }]);
    const spec = planRecompute(g, {
      newVersions: new Map([['record:p/raw:a', contentHashOf('a3')]]),
      definitions: new Map([['p/Y', { transform: 'upper', codeVersion: contentHashOf('code:v2'), parameters: { factor: 3 }, timeoutMs: 0, inputs: ['X'] }]]),
      changeIds: ['chg-1'],
      principal: 'me',
      title: 't',
      maxAttempts: 2,
    });
    expect(spec).toMatchObject({ kind: 'recompute', retry: { maxAttempts: 2 }, payload: { changeIds: ['chg-1'], principal: 'me' } });
    expect(spec.tasks.map((t) => [t.id, t.label, t.dependsOn])).toEqual([
      ['t0001', 'p/X key=a', []],
      ['t0002', 'p/Y key=a', ['t0001']],
    ]);
    const [x, y] = spec.tasks.map((t) => t.payload as unknown as RecomputeTaskPayload);
    expect(x?.inputs).toEqual([{ name: 'raw', objectId: 'record:p/raw:a', originalHash: contentHashOf('a2'), newHash: contentHashOf('a3') }]);
    expect(y?.inputs).toEqual([{ name: 'X', objectId: 'record:p/X:a', originalHash: contentHashOf('xa2'), fromTask: 't0001' }]);
    expect(y).toMatchObject({ codeVersion: contentHashOf('code:v2'), originalCodeVersion: contentHashOf('code:upper'), parameters: { factor: 3 }, originalParameters: { factor: 2 } });
  });

  it('cache keys depend on code, parameters and input contents, not on input order', () => {
    const a = cacheKeyOf('sha256:c', { x: 1 }, [
      { name: 'a', contentHash: 'h1' },
      { name: 'b', contentHash: 'h2' },
    ]);
    expect(cacheKeyOf('sha256:c', { x: 1 }, [{ name: 'b', contentHash: 'h2' }, { name: 'a', contentHash: 'h1' }])).toBe(a);
    expect(cacheKeyOf('sha256:d', { x: 1 }, [{ name: 'a', contentHash: 'h1' }, { name: 'b', contentHash: 'h2' }])).not.toBe(a);
    expect(cacheKeyOf('sha256:c', { x: 2 }, [{ name: 'a', contentHash: 'h1' }, { name: 'b', contentHash: 'h2' }])).not.toBe(a);
    expect(cacheKeyOf('sha256:c', { x: 1 }, [{ name: 'a', contentHash: 'h1' }, { name: 'b', contentHash: 'h3' }])).not.toBe(a);
  });

  it('pipeline versions whose steps changed code or parameters are changes', () => {
    const pv = (version: number, code: string, params: Record<string, unknown>): PipelineVersion =>
      ({ version, definitionHash: '', createdAtNs: '0', pipeline: { name: 'p', sources: [], steps: [{ name: 'X', transform: 'upper', codeVersion: code, parameters: params, inputs: ['raw'], output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0, requirements: undefined }] } }) as PipelineVersion;
    expect(stepChanges(undefined, pv(1, 'c1', {}), 'apply:me')).toEqual([]);
    expect(stepChanges(pv(1, 'c1', {}), pv(2, 'c1', {}), 'apply:me')).toEqual([]);
    expect(stepChanges(pv(1, 'c1', {}), pv(2, 'c2', {}), 'apply:me')).toMatchObject([{ kind: ChangeKind.CHANGE_KIND_CODE_VERSION, oldHash: 'c1', newHash: 'c2', step: 'X', noticedBy: 'apply:me' }]);
    expect(stepChanges(pv(1, 'c1', { f: 1 }), pv(2, 'c1', { f: 2 }), 'apply:me')).toMatchObject([{ kind: ChangeKind.CHANGE_KIND_PARAMETERS, step: 'X' }]);
  });

  it('the executor cuts off unchanged inputs, executes once, and a retried attempt reuses the recorded step', async () => {
    const db = await openDatabase(null);
    const runs: ShardAssignment[] = [];
    let nowMs = 1_000;
    const payloads = createPayloadStore(db, { retentionMs: 60_000, now: () => nowMs });
    await payloads.put(Buffer.from('a3'));
    const executor = executorOn(db, payloads, {
      runner: () => ({
        async run(assignment) {
          runs.push(assignment);
          return succeeded(assignment.shardId, 'xa3');
        },
      }),
      clock: () => 9_000_000_000n,
    });
    const job = await recomputeOfA('a3', '8000000000');
    const ctx = (taskIndex: number, deps: Map<string, JsonValue>, attempt = 1): TaskRunContext => ({ jobId: 'job-1', job, task: job.tasks[taskIndex] as JobSpec['tasks'][number], attempt, signal: new AbortController().signal, deps });
    const x = await executor.runTask(ctx(0, new Map()));
    expect(x.outcome).toBe('executed');
    expect(runs).toHaveLength(1);
    expect((x.result as unknown as RecomputeTaskResult).outputs).toEqual({ 'record:p/X:a': contentHashOf('xa3') });
    const again = await executor.runTask(ctx(0, new Map(), 2));
    expect(again.outcome).toBe('executed');
    expect(runs).toHaveLength(1);
    // Y with an upstream result equal to what it used originally: cut off without running.
    const same: RecomputeTaskResult = { outputs: { 'record:p/X:a': contentHashOf('xa2') }, changed: false, stepId: '', nodeId: '', cachedFrom: '' };
    const y = await executor.runTask(ctx(1, new Map([['t0001', same as unknown as JsonValue]])));
    expect(y.outcome).toBe('cutoff');
    expect(runs).toHaveLength(1);
    // Another job with the same inputs: served from the memo.
    const other = await executor.runTask({ ...ctx(0, new Map()), jobId: 'job-2' });
    expect(other.outcome).toBe('cached');
    expect(runs).toHaveLength(1);
    // Once a retention sweeps the memoised output's payload, a job with the same inputs runs the
    // step again (the steps after it would find nothing to read) and stores the payload anew.
    nowMs += 120_000;
    const swept = await payloads.sweep({ inUse: () => [contentHashOf('a3')] });
    expect(swept).toMatchObject({ expired: 2, kept: 1, deleted: 1 });
    expect(await payloads.has(contentHashOf('xa3'))).toBe(false);
    const rerun = await executor.runTask({ ...ctx(0, new Map()), jobId: 'job-3' });
    expect(rerun.outcome).toBe('executed');
    expect(runs).toHaveLength(2);
    expect(await payloads.has(contentHashOf('xa3'))).toBe(true);
    await db.close();
  });

  it('a retried attempt that finds its step recorded still moves the current records (the attempt before stopped in between)', async () => {
    const db = await openDatabase(null);
    const payloads = createPayloadStore(db);
    await payloads.put(Buffer.from('a4'));
    const moved: string[][] = [];
    let stopBeforeCurrent = true;
    const executor = executorOn(db, payloads, {
      async setCurrent(pipeline, entries) {
        if (stopBeforeCurrent) {
          stopBeforeCurrent = false;
          throw new Error('the coordinator stopped');
        }
        moved.push(...entries.map((e) => [pipeline, e.dataset, e.key, e.record.contentHash, String(e.record.size), e.record.mediaType]));
      },
      runner: () => ({
        async run(assignment) {
          return succeeded(assignment.shardId, 'xa4');
        },
      }),
      clock: () => 10_000_000_000n,
    });
    const job = await recomputeOfA('a4', '9500000000');
    const ctx = (attempt: number): TaskRunContext => ({ jobId: 'job-stop', job, task: job.tasks[0] as JobSpec['tasks'][number], attempt, signal: new AbortController().signal, deps: new Map() });
    await expect(executor.runTask(ctx(1))).rejects.toThrow('the coordinator stopped');
    expect((await executor.runTask(ctx(2))).outcome).toBe('executed');
    expect(moved).toEqual([['p', 'X', 'a', contentHashOf('xa4'), '3', 'text/plain']]);
    await db.close();
  });

  it('a task whose input record moved on meanwhile leaves the current records to the newer change', async () => {
    const db = await openDatabase(null);
    const payloads = createPayloadStore(db);
    await payloads.putMany([Buffer.from('a5'), Buffer.from('a6')]);
    const moved: string[] = [];
    let rawNow = contentHashOf('a6');
    const executor = executorOn(db, payloads, {
      async setCurrent(_pipeline, entries) {
        moved.push(...entries.map((e) => e.record.contentHash));
      },
      currentOf: async (objectId) => (objectId === 'record:p/raw:a' ? rawNow : undefined),
      runner: () => ({
        async run(assignment) {
          const text = `x${Buffer.from(assignment.inputs[0]?.payload ?? []).toString()}`;
          return succeeded(assignment.shardId, text);
        },
      }),
      clock: () => 11_000_000_000n,
    });
    await tc.coordinator.lineage.submit([objectEvent('a5', 'record:p/raw:a', 'a5', '10500000000'), objectEvent('a6', 'record:p/raw:a', 'a6', '10600000000')]);
    const g = await collectAffected(tc.coordinator.lineage, [{ kind: 'version', objectId: 'record:p/raw:a', oldHash: contentHashOf('a2') }]);
    const jobFor = (content: string): JobSpec => planRecompute(g, { newVersions: new Map([['record:p/raw:a', contentHashOf(content)]]), definitions: new Map(), changeIds: [], principal: 'me', title: 't' });
    const ctx = (jobId: string, job: JobSpec): TaskRunContext => ({ jobId, job, task: job.tasks[0] as JobSpec['tasks'][number], attempt: 1, signal: new AbortController().signal, deps: new Map() });
    // The job for a5 ends after the record moved on to a6: it runs, records, and moves nothing.
    expect((await executor.runTask(ctx('job-a5', jobFor('a5')))).outcome).toBe('executed');
    expect(moved).toEqual([]);
    expect((await executor.runTask(ctx('job-a6', jobFor('a6')))).outcome).toBe('executed');
    expect(moved).toEqual([contentHashOf('xa6')]);
    rawNow = contentHashOf('a5');
    // Back at a5 (served from the memo): moved again.
    expect((await executor.runTask(ctx('job-a5-again', jobFor('a5')))).outcome).toBe('cached');
    expect(moved).toEqual([contentHashOf('xa6'), contentHashOf('xa5')]);
    await db.close();
  });
  it('two jobs recomputing the same task at once run its shard once: the second waits and is served from the memo', async () => {
    const db = await openDatabase(null);
    const payloads = createPayloadStore(db);
    await payloads.put(Buffer.from('a7'));
    const runs: ShardAssignment[] = [];
    let release = (): void => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const executor = executorOn(db, payloads, {
      runner: () => ({
        async run(assignment) {
          runs.push(assignment);
          await gate;
          return succeeded(assignment.shardId, 'xa7');
        },
      }),
      clock: () => 12_000_000_000n,
    });
    const job = await recomputeOfA('a7', '11500000000');
    const ctx = (jobId: string, signal = new AbortController().signal): TaskRunContext => ({ jobId, job, task: job.tasks[0] as JobSpec['tasks'][number], attempt: 1, signal, deps: new Map() });
    const first = executor.runTask(ctx('job-dup-1'));
    const second = executor.runTask(ctx('job-dup-2'));
    // A third, cancelled while it waits: it stops waiting at once.
    const cancel = new AbortController();
    const third = executor.runTask(ctx('job-dup-3', cancel.signal));
    // One of them runs the shard; the others wait for it (50 ms more shows no second run).
    for (let waited = 0; runs.length === 0 && waited < 10_000; waited += 10) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 50));
    expect(runs).toHaveLength(1);
    cancel.abort();
    await expect(third).rejects.toThrow();
    release();
    // Whichever reached the shard first ran it (job-dup-1, unless a loaded machine let the
    // second overtake it); the other waited and was served its result from the memo.
    const both = [await first, await second];
    const ran = both.findIndex((r) => r.outcome === 'executed');
    expect(ran).toBeGreaterThanOrEqual(0);
    const again = both[1 - ran] as (typeof both)[number];
    expect(again.outcome).toBe('cached');
    expect((again.result as unknown as RecomputeTaskResult).cachedFrom).toBe(`recompute:job-dup-${ran + 1}/t0001`);
    expect(runs).toHaveLength(1);
    await db.close();
  });
  it('a retried or resumed task runs its step as the pipeline defines it now: a fix applied after a failure takes effect', async () => {
    const db = await openDatabase(null);
    const payloads = createPayloadStore(db);
    await payloads.put(Buffer.from('a8'));
    const ran: unknown[] = [];
    let current: StepDefinition | undefined;
    const executor = executorOn(db, payloads, {
      definitionOf: async (pipeline, step) => (pipeline === 'p' && step === 'X' ? current : undefined),
      runner: () => ({
        async run(assignment) {
          ran.push(assignment.parameters);
          const failed = (assignment.parameters as { failIf?: string }).failIf !== undefined;
          return { nodeId: 'n1', attempts: 1, queuedMs: 0, outcome: { shardId: assignment.shardId, nodeId: 'n1', status: failed ? ShardStatus.SHARD_STATUS_FAILED : ShardStatus.SHARD_STATUS_SUCCEEDED, error: failed ? 'boom' : '', outputs: failed ? [] : [{ key: 'a', payload: Buffer.from('xa8'), mediaType: 'text/plain', contentHash: '' }], startedAtNs: '1', endedAtNs: '2', resources: undefined } as never };
        },
      }),
      clock: () => 13_000_000_000n,
    });
    await tc.coordinator.lineage.submit([objectEvent('a8', 'record:p/raw:a', 'a8', '12500000000')]);
    const g = await collectAffected(tc.coordinator.lineage, [{ kind: 'version', objectId: 'record:p/raw:a', oldHash: contentHashOf('a2') }]);
    const planned: StepDefinition = { transform: 'tx', codeVersion: contentHashOf('code-x'), parameters: { failIf: 'a' }, timeoutMs: 0, inputs: ['raw'] };
    const job: JobSpec = planRecompute(g, { newVersions: new Map([['record:p/raw:a', contentHashOf('a8')]]), definitions: new Map([['p/X', planned]]), changeIds: [], principal: 'me', title: 't' });
    const ctx = (attempt: number): TaskRunContext => ({ jobId: 'job-fix', job, task: job.tasks[0] as JobSpec['tasks'][number], attempt, signal: new AbortController().signal, deps: new Map() });
    await expect(executor.runTask(ctx(1))).rejects.toThrow('boom');
    // Rewired meanwhile: the task refuses to run the new wiring's code over the old input.
    current = { ...planned, inputs: ['Y'] };
    await expect(executor.runTask(ctx(2))).rejects.toThrow(/step p\/X reads Y in the pipeline's current version, but its execution for key "a" read raw/);
    expect(ran).toEqual([{ failIf: 'a' }]);
    // The step is fixed (a new pipeline version without failIf), then the job is resumed.
    current = { ...planned, parameters: { fixed: true } };
    expect((await executor.runTask(ctx(2))).outcome).toBe('executed');
    expect(ran).toEqual([{ failIf: 'a' }, { fixed: true }]);
    await db.close();
  });
});
