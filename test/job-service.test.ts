import { Writable } from 'node:stream';
import { ClientError, Status } from 'nice-grpc';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RetraceError } from '../common/errors.js';
import { JobServiceDefinition, JobState, TaskState } from '../common/gen/retrace/v1/job.js';
import { PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ReplayServiceDefinition, type ReplayPolicy } from '../common/gen/retrace/v1/replay.js';
import { ShardStatus } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { jobsExtension } from '../coordinator/jobs/jobs-extension.js';
import type { JobSpec, TaskRunContext } from '../coordinator/jobs/job-types.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import { replayExtension } from '../coordinator/replay/replay-extension.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { watchJobProgress } from '../scripts/cli/job-progress.js';
import { stopLocalAgents, type LocalAgent } from '../scripts/cli/local-agents.js';
import { waitFor } from './helpers/mesh-server.js';
import { startAgentCoordinator, type AgentCoordinator } from './helpers/test-coordinator.js';
import { runCli } from './helpers/in-process-cli.js';

const SOURCE = `
import { defineTransform } from 'retrace/transform';
export default defineTransform({
  name: 'echo',
  async run(input) {
    return { json: { key: input.key, value: input.json() } };
  },
});
`;

const retrace = runCli;

// JobService over gRPC on a real coordinator (LevelDB in a temp dir), with the dispatcher and
// real agent processes for the "fits nowhere" case; the CLI runs in-process against it.
describe('JobService and retrace jobs', () => {
  let tc: AgentCoordinator;
  const shared: CoordinatorServices = {};
  let codeVersion = '';
  /** Tasks with payload {gate: name} wait until the gate is opened (or the job is cancelled). */
  const gates = new Map<string, { open: () => void; promise: Promise<void> }>();
  let broken = true;
  const gate = (name: string): { open: () => void; promise: Promise<void> } => {
    let g = gates.get(name);
    if (!g) {
      let open = (): void => {};
      const promise = new Promise<void>((r) => (open = r));
      g = { open, promise };
      gates.set(name, g);
    }
    return g;
  };
  const cli = (...argv: string[]) => retrace([...argv, '--coordinator', tc.grpcAddress, '--token', tc.token]);
  const client = () => tc.client(JobServiceDefinition);

  async function runTask(ctx: TaskRunContext) {
    const p = ctx.task.payload as { gate?: string; fail?: boolean; cpu?: number };
    if (p.fail && broken) throw new Error('input not there yet');
    if (p.gate) {
      // A job cancelled right after it was submitted may start its task with the signal already aborted.
      const aborted = new Promise((_r, reject) => (ctx.signal.aborted ? reject(new Error('aborted')) : ctx.signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true })));
      await Promise.race([gate(p.gate).promise, aborted]);
    }
    if (p.cpu !== undefined) {
      const payload = Buffer.from(JSON.stringify({ task: ctx.task.id }));
      const dispatcher = shared.dispatcher;
      if (!dispatcher) throw new Error('no dispatcher');
      const r = await dispatcher.run(
        {
          shardId: `${ctx.jobId}/${ctx.task.id}`,
          stepName: ctx.task.id,
          transform: 'echo',
          codeVersion,
          parameters: {},
          inputs: [{ name: 'in', objectId: `obj-${ctx.task.id}`, contentHash: contentHashOf(payload), payload, key: ctx.task.id, eventTimeNs: '0', mediaType: 'application/json', cached: false }],
          timeoutMs: 0,
          memoryLimitMb: 0,
          faults: undefined,
          jobId: ctx.jobId,
          attempt: 0,
        },
        { requirements: { cpu: p.cpu }, signal: ctx.signal },
      );
      if (r.outcome.status !== ShardStatus.SHARD_STATUS_SUCCEEDED) throw new Error(`shard ${ShardStatus[r.outcome.status]}: ${r.outcome.error}`);
      return { outcome: 'executed' as const, result: r.nodeId };
    }
    return { outcome: 'executed' as const, result: ctx.task.id };
  }

  const submit = (tasks: { id: string; deps?: string[]; payload?: Record<string, unknown> }[], extra: Partial<JobSpec> = {}) =>
    (shared.jobs ?? (() => {
      throw new Error('no job manager');
    })()).submit({
      kind: 'test',
      title: 'a test job',
      principal: 'tester',
      payload: null,
      retry: { maxAttempts: 2, baseMs: 1 },
      tasks: tasks.map((t) => ({ id: t.id, label: `step ${t.id}`, dependsOn: t.deps ?? [], payload: (t.payload ?? {}) as never })),
      ...extra,
    });

  beforeAll(async () => {
    tc = await startAgentCoordinator({
      tmpPrefix: 'retrace-jobsvc-',
      shared,
      mesh: { minReportIntervalMs: 50, suspectAfterIntervals: 5, lostAfterIntervals: 10 },
      extensions: () => [schedulerExtension(shared, { shardTimeoutMs: 20_000 }), pipelineExtension(shared), jobsExtension(shared, { waitingPollMs: 100 }), replayExtension(shared)],
      transforms: [{ name: 'echo', source: SOURCE }],
      agents: [{ name: 'small' }],
    });
    shared.jobs?.registerExecutor({ kind: 'test', runTask });
    codeVersion = tc.codeVersions.echo ?? '';
  }, 60_000);

  afterAll(async () => {
    for (const g of gates.values()) g.open();
    await tc?.stop();
  }, 30_000);

  it('GetJob, ListJobs (filters, newest first, paging) and WatchJob to the end', async () => {
    const { jobId: first } = await submit([{ id: 'a' }, { id: 'b', deps: ['a'] }]);
    const { jobId } = await submit([{ id: 'a', payload: { gate: 'g1' } }, { id: 'b', deps: ['a'] }, { id: 'c' }]);
    const updates: { state: JobState; changed: string[]; percent: number }[] = [];
    const watching = (async () => {
      for await (const u of client().watchJob({ jobId })) {
        updates.push({ state: u.job?.state ?? JobState.JOB_STATE_UNSPECIFIED, percent: u.job?.percent ?? -1, changed: u.changedTasks.map((t) => `${t.id}:${TaskState[t.state]}`) });
        if (updates.length === 1) gate('g1').open();
      }
    })();
    await watching;
    expect(updates[0]?.changed).toHaveLength(3);
    expect(updates.at(-1)?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    expect(updates.at(-1)?.percent).toBe(100);
    expect(updates.flatMap((u) => u.changed)).toEqual(expect.arrayContaining(['a:TASK_STATE_SUCCEEDED', 'b:TASK_STATE_SUCCEEDED']));

    const { job } = await client().getJob({ jobId });
    expect(job).toMatchObject({ jobId, kind: 'test', title: 'a test job', principal: 'tester', state: JobState.JOB_STATE_SUCCEEDED, counts: { total: 3, succeeded: 3 } });
    expect(job?.tasks.map((t) => [t.id, t.label, t.attempts, t.outcome])).toEqual([
      ['a', 'step a', 1, 'executed'],
      ['b', 'step b', 1, 'executed'],
      ['c', 'step c', 1, 'executed'],
    ]);
    expect(Number(job?.endedAtNs)).toBeGreaterThanOrEqual(Number(job?.startedAtNs));

    await waitFor(async () => (await client().getJob({ jobId: first })).job?.state === JobState.JOB_STATE_SUCCEEDED);
    const all = await client().listJobs({ state: JobState.JOB_STATE_SUCCEEDED, kind: 'test', pageSize: 0, pageToken: '' });
    expect(all.jobs.map((j) => j.jobId)).toEqual(expect.arrayContaining([jobId, first]));
    const times = all.jobs.map((j) => BigInt(j.createdAtNs));
    expect(times.every((t, i) => i === 0 || t <= (times[i - 1] as bigint))).toBe(true);
    expect(all.jobs.every((j) => j.tasks.length === 0)).toBe(true);
    const page1 = await client().listJobs({ state: JobState.JOB_STATE_SUCCEEDED, kind: 'test', pageSize: 1, pageToken: '' });
    expect(page1.jobs).toHaveLength(1);
    const page2 = await client().listJobs({ state: JobState.JOB_STATE_SUCCEEDED, kind: 'test', pageSize: 1, pageToken: page1.nextPageToken });
    expect(page2.jobs[0]?.jobId).not.toBe(page1.jobs[0]?.jobId);
    expect((await client().listJobs({ state: JobState.JOB_STATE_FAILED, kind: 'test', pageSize: 10, pageToken: '' })).jobs.filter((j) => j.jobId === jobId)).toEqual([]);
    // A kind an executor runs, with no job of it in the asked state, is an empty list.
    expect((await client().listJobs({ state: JobState.JOB_STATE_FAILED, kind: 'test', pageSize: 10, pageToken: '' })).jobs.filter((j) => j.kind !== 'test')).toEqual([]);
  }, 60_000);

  it('an unknown --kind is INVALID_ARGUMENT naming kind and the kinds there are (not "no jobs"); the CLI exits 2', async () => {
    const err = await client().listJobs({ state: 0, kind: 'bogus', pageSize: 10, pageToken: '' }).then(() => undefined, (e: unknown) => e);
    expect((err as ClientError).code).toBe(Status.INVALID_ARGUMENT);
    expect((err as ClientError).details).toBe('kind: unknown job kind "bogus": one of replay, test');
    const listed = await cli('jobs', '--kind', 'bogus');
    expect(listed.code).toBe(2);
    expect(listed.out).toBe('');
    expect(listed.err).toMatch(/^error: --kind: unknown job kind "bogus": one of replay, test\n/);
    expect((await cli('jobs', '--kind', 'replay', '--state', 'failed')).code).toBe(0);
  });

  it('CancelJob aborts a running job; ResumeJob reruns only what did not succeed; the CLI shows it', async () => {
    broken = true;
    const { jobId } = await submit([{ id: 'ok' }, { id: 'flaky', deps: ['ok'], payload: { fail: true } }, { id: 'after', deps: ['flaky'] }, { id: 'hold', payload: { gate: 'never' } }]);
    await waitFor(async () => (await client().getJob({ jobId })).job?.tasks.find((t) => t.id === 'flaky')?.state === TaskState.TASK_STATE_FAILED);
    expect((await client().cancelJob({ jobId })).state).toBe(JobState.JOB_STATE_CANCELLED);
    const cancelled = (await client().getJob({ jobId })).job;
    expect(Object.fromEntries((cancelled?.tasks ?? []).map((t) => [t.id, TaskState[t.state]]))).toEqual({
      ok: 'TASK_STATE_SUCCEEDED',
      flaky: 'TASK_STATE_FAILED',
      after: 'TASK_STATE_UPSTREAM_FAILED',
      hold: 'TASK_STATE_CANCELLED',
    });

    const shown = await cli('jobs', 'show', jobId);
    expect(shown.code).toBe(0);
    expect(shown.out).toContain(`job ${jobId} (test): CANCELLED`);
    expect(shown.out).toMatch(/flaky\s+FAILED\s+2\s+step flaky\s+input not there yet/);
    expect(shown.out).toMatch(/after\s+UPSTREAM_FAILED/);
    // The cancelled task never ran: the bar reads 3 of 4 tasks done (75%), not 100%.
    expect(shown.out).toContain('] 75% CANCELLED 3/4 tasks, 1 failed, 1 upstream failed, 1 cancelled');
    // --limit keeps the tasks that did not succeed first and says what it left out (a recompute of
    // 20,000 records printed 20,000 rows).
    const limited = await cli('jobs', 'show', jobId, '--limit', '2');
    expect(limited.out).toMatch(/flaky\s+FAILED/);
    expect(limited.out).toMatch(/after\s+UPSTREAM_FAILED/);
    expect(limited.out).not.toMatch(/^ok\s/m);
    expect(limited.out.endsWith('2 of 4 tasks shown (2 of 3 not succeeded among them; --limit N, 0 for all)\n')).toBe(true);
    const listed = await cli('jobs', '--kind', 'test');
    expect(listed.out).toMatch(new RegExp(`${jobId}\\s+test\\s+CANCELLED\\s+\\[#{15}\\.{5}\\] 75%\\s+1/4 ok, 1 failed, 1 upstream failed, 1 cancelled`));
    // A listing cut by --limit says there are more, and how to see them.
    const one = await cli('jobs', '--kind', 'test', '--limit', '1');
    expect(one.out).toMatch(new RegExp(`^job .*\\n-+.*\\n${jobId} .*\\nmore jobs than --limit 1 shows: retrace jobs --limit 2 \\(or --state, --kind\\)\\n$`));

    broken = false;
    gate('never').open();
    const resumed = await cli('jobs', 'resume', jobId);
    expect(resumed.out).toMatch(/3 task\(s\) to run again/);
    const watched = await cli('jobs', 'watch', jobId);
    expect(watched.code).toBe(0);
    expect(watched.out).toContain(`job ${jobId}: SUCCEEDED`);
    const json = JSON.parse((await cli('jobs', 'show', jobId, '--json')).out) as { state: string; resumes: number; tasks: { id: string; attempts: number }[] };
    expect(json.state).toBe('SUCCEEDED');
    expect(json.resumes).toBe(1);
    expect(json.tasks.find((t) => t.id === 'ok')?.attempts).toBe(1);
    expect(json.tasks.find((t) => t.id === 'flaky')?.attempts).toBe(3);
  }, 60_000);

  it('cancelling or resuming a job that already ended SUCCEEDED (or cancelling a FAILED one) is FAILED_PRECONDITION naming the job and its state; cancelling a CANCELLED job again is fine', async () => {
    const ended = async (jobId: string) => waitFor(async () => ((await client().getJob({ jobId })).job?.state ?? 0) >= JobState.JOB_STATE_SUCCEEDED);
    const { jobId: done } = await submit([{ id: 'one' }]);
    await ended(done);
    expect((await client().getJob({ jobId: done })).job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    for (const [call, what] of [[() => client().cancelJob({ jobId: done }), 'cancel'], [() => client().resumeJob({ jobId: done }), 'resume']] as const) {
      await expect(call()).rejects.toMatchObject({ code: Status.FAILED_PRECONDITION, details: `job_id: job ${done} has already ended SUCCEEDED: there is nothing to ${what}` });
    }
    broken = true;
    const { jobId: failed } = await submit([{ id: 'bad', payload: { fail: true } }]);
    await ended(failed);
    await expect(client().cancelJob({ jobId: failed })).rejects.toMatchObject({ code: Status.FAILED_PRECONDITION, details: expect.stringMatching(/has already ended FAILED: there is nothing to cancel \(jobs resume/) });
    const { jobId: held } = await submit([{ id: 'held', payload: { gate: 'held-forever' } }]);
    expect((await client().cancelJob({ jobId: held })).state).toBe(JobState.JOB_STATE_CANCELLED);
    expect((await client().cancelJob({ jobId: held })).state).toBe(JobState.JOB_STATE_CANCELLED);
    expect((await cli('jobs', 'cancel', held)).code).toBe(0);
    for (const command of ['cancel', 'resume']) {
      const r = await cli('jobs', command, done);
      expect(r.code).not.toBe(0);
      expect(r.err).toContain(`job ${done} has already ended SUCCEEDED: there is nothing to ${command}`);
    }
    // Nothing changed: the ended jobs keep their state and were not resumed.
    const after = (await client().getJob({ jobId: done })).job;
    expect([after?.state, after?.resumes]).toEqual([JobState.JOB_STATE_SUCCEEDED, 0]);
  }, 30_000);

  it('a failed job makes `retrace jobs watch` exit non-zero; watchJobProgress returns the final state', async () => {
    broken = true;
    const { jobId } = await submit([{ id: 'bad', payload: { fail: true } }]);
    const watched = await cli('jobs', 'watch', jobId);
    expect(watched.code).toBe(1);
    expect(watched.out).toContain(`job ${jobId}: FAILED`);
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    const final = await watchJobProgress(client(), jobId, { out: sink });
    expect(final).toMatchObject({ jobId, stateName: 'FAILED', done: true });
    expect(lines.join('')).toMatch(/\[\#+\] 100% FAILED 1\/1 tasks, 1 failed/);
    // The bar cuts the job's message to keep to one line; what to do next comes whole after it.
    expect(lines.join('')).toMatch(/\n  1 task\(s\) failed.*; fix the cause and resume the job\n$/);
  }, 60_000);

  it('off a terminal, a long job shows its bar as it advances (at most every lineEveryMs), not only when it ends', async () => {
    const running = (done: number) => ({ job: { jobId: 'job-x', state: JobState.JOB_STATE_RUNNING, counts: { total: 4, pending: 4 - done - 1, running: 1 }, waiting: [], message: '' }, changedTasks: [] });
    const ended = { jobId: 'job-x', state: JobState.JOB_STATE_SUCCEEDED, counts: { total: 4, pending: 0, running: 0, succeeded: 4 }, waiting: [], message: '', tasks: [] };
    const fake = {
      async *watchJob() {
        for (const done of [0, 1, 1, 2, 3]) yield running(done);
        yield { job: ended, changedTasks: [] };
      },
      async getJob() {
        return { job: ended };
      },
    };
    let clock = 0;
    let text = '';
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        text += chunk.toString();
        cb();
      },
    });
    // Each reading of the clock is 6 s after the one before.
    const now = (): number => (clock += 6_000);
    await watchJobProgress(fake as never, 'job-x', { out: sink, lineEveryMs: 10_000, now });
    const lines = text.trim().split('\n');
    // 12 s, 24 s, 36 s ...: a line each time 10 s passed and tasks finished since the last one.
    expect(lines.length).toBeGreaterThan(1);
    expect(lines.at(-1)).toMatch(/100% SUCCEEDED 4\/4 tasks/);
    expect(lines.slice(0, -1).every((l) => /RUNNING [0-3]\/4 tasks, 1 running/.test(l))).toBe(true);
    expect(new Set(lines.slice(0, -1)).size).toBe(lines.length - 1);
  });

  it('off a terminal, progress that came within lineEveryMs is written once its time is up, not dropped while the job stalls', async () => {
    const running = (done: number) => ({ job: { jobId: 'job-x', state: JobState.JOB_STATE_RUNNING, counts: { total: 4, pending: 4 - done - 1, running: 1 }, waiting: [], message: '' }, changedTasks: [] });
    const ended = { jobId: 'job-x', state: JobState.JOB_STATE_SUCCEEDED, counts: { total: 4, pending: 0, running: 0, succeeded: 4 }, waiting: [], message: '', tasks: [] };
    let release!: () => void;
    const stalled = new Promise<void>((r) => (release = r));
    const fake = {
      async *watchJob() {
        yield running(0);
        await new Promise((r) => setTimeout(r, 20));
        // Inside the 150 ms after the first line; then the job's last task takes long.
        yield running(3);
        await stalled;
        yield { job: ended, changedTasks: [] };
      },
      async getJob() {
        return { job: ended };
      },
    };
    let text = '';
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        text += chunk.toString();
        cb();
      },
    });
    const watching = watchJobProgress(fake as never, 'job-x', { out: sink, lineEveryMs: 150 });
    await new Promise((r) => setTimeout(r, 400));
    expect(text).toMatch(/RUNNING 3\/4 tasks/);
    release();
    await watching;
    expect(text.trim().split('\n').filter((l) => /RUNNING 3\/4 tasks/.test(l))).toHaveLength(1);
  });

  it('a watch that loses the coordinator says the job is kept and how to watch it again (not only "Connection dropped")', async () => {
    const fake = {
      async *watchJob() {
        yield { job: { jobId: 'job-x', state: JobState.JOB_STATE_RUNNING, counts: { total: 2, pending: 1, running: 1 }, waiting: [], message: '' }, changedTasks: [] };
        throw new RetraceError('UNAVAILABLE', 'Connection dropped');
      },
      async getJob() {
        throw new Error('not reached');
      },
    };
    const sink = new Writable({
      write(_chunk: Buffer, _e, cb) {
        cb();
      },
    });
    const err = await watchJobProgress(fake as never, 'job-x', { out: sink }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'UNAVAILABLE' });
    expect((err as Error).message).toBe('lost the coordinator while watching job job-x (Connection dropped); the job is kept (a recompute job resumes when the coordinator starts again): retrace jobs watch job-x');
  });

  it('unknown and missing ids: NOT_FOUND / INVALID_ARGUMENT naming job_id, over gRPC and in the CLI', async () => {
    for (const call of [() => client().getJob({ jobId: 'job-20000101000000-abcdef' }), () => client().cancelJob({ jobId: 'job-nope' }), () => client().resumeJob({ jobId: 'replay-nope' })]) {
      const err = await call().then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(ClientError);
      expect((err as ClientError).code).toBe(Status.NOT_FOUND);
      expect((err as ClientError).details).toMatch(/^job_id: /);
    }
    const empty = await client().getJob({ jobId: '' }).then(() => undefined, (e: unknown) => e);
    expect((empty as ClientError).code).toBe(Status.INVALID_ARGUMENT);
    const watchErr = await (async () => {
      for await (const _ of client().watchJob({ jobId: 'job-missing' })) void _;
    })().then(() => undefined, (e: unknown) => e);
    expect((watchErr as ClientError).code).toBe(Status.NOT_FOUND);
    const shown = await cli('jobs', 'show', 'job-missing');
    expect(shown.code).not.toBe(0);
    expect(shown.err).toMatch(/job_id: job "job-missing" not found/);
  });

  it('a shard that fits nowhere: `jobs show` names the requirement no node meets; it is placed when capacity appears', async () => {
    const { jobId } = await submit([{ id: 'fits', payload: { cpu: 0.01 } }, { id: 'huge', payload: { cpu: 512 } }]);
    const waiting = await waitFor(async () => {
      const j = (await client().getJob({ jobId })).job;
      return j && j.waiting.length > 0 && j.tasks.find((t) => t.id === 'fits')?.state === TaskState.TASK_STATE_SUCCEEDED ? j : undefined;
    }, 30_000, 'a waiting shard');
    expect(waiting.waiting).toEqual([{ shardId: `${jobId}/huge`, stepName: 'huge', reason: expect.stringMatching(/needs cpu ≥ 512: no READY node meets it/) as unknown as string }]);
    expect(waiting.state).toBe(JobState.JOB_STATE_RUNNING);
    const shown = await cli('jobs', 'show', jobId);
    expect(shown.out).toMatch(/waiting for a node \(1 shard\(s\)\)/);
    expect(shown.out).toMatch(/huge\s+needs cpu ≥ 512: no READY node meets it/);
    const listed = await cli('jobs');
    expect(listed.out).toMatch(new RegExp(`${jobId}\\s+test\\s+RUNNING \\(waiting\\)`));

    const [big] = await tc.startAgents([{ name: 'big', advertise: 'cpu=1024' }]);
    const done = await waitFor(async () => {
      const j = (await client().getJob({ jobId })).job;
      return j && j.state !== JobState.JOB_STATE_RUNNING ? j : undefined;
    }, 30_000, 'the job to end');
    expect(done.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    expect(done.waiting).toEqual([]);
    expect(await shared.jobs?.result(jobId, 'huge')).toBe(big?.nodeId);
  }, 90_000);

  it('replays are jobs of kind replay: `jobs show REPLAY_ID` lists its steps and the shards that wait for a node, and `jobs cancel` stops it', async () => {
    const t0 = 1_767_225_600_000_000_000n;
    const pipelines = tc.client(PipelineServiceDefinition);
    await pipelines.applyPipeline({
      pipeline: { name: 'jobtest', sources: [{ name: 'raw', mediaType: 'application/json' }], steps: [{ name: 'echo', transform: 'echo', codeVersion, parameters: {}, requirements: undefined, inputs: ['raw'], output: '', timeoutMs: 0 }] },
    } as never);
    // Two records 1 s apart in event time; replayed at 0.1x, the second is due 10 s after the first.
    const records = [0, 1].map((i) => ({ key: `r${i}`, eventTimeNs: (t0 + BigInt(i) * 1_000_000_000n).toString(), payload: Buffer.from(JSON.stringify({ i })), mediaType: '' }));
    await pipelines.ingest((async function* () {
      yield { pipeline: 'jobtest', source: 'raw', records };
    })());
    const [target] = await tc.startAgents([{ name: 'target', labels: ['pool=replay'] }]);
    const policy = { speed: 0.1, targetLabels: { pool: 'replay' }, principal: 'tester', faults: { seed: '1', outages: [], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 } } as unknown as ReplayPolicy;
    const { replayId } = await tc.client(ReplayServiceDefinition).startReplay({ selector: { selector: { $case: 'window', value: { pipeline: 'jobtest', source: 'raw', fromNs: t0.toString(), toNs: (t0 + 5_000_000_000n).toString() } } }, policy });
    await waitFor(async () => ((await client().getJob({ jobId: replayId })).job?.counts?.succeeded ?? 0) >= 1, 30_000, 'the first record replayed');
    // The only node the policy allows leaves: the second record's shard fits nowhere.
    await stopLocalAgents([target as LocalAgent], 3000);
    const waiting = await waitFor(async () => {
      const j = (await client().getJob({ jobId: replayId })).job;
      return j && j.waiting.length > 0 ? j : undefined;
    }, 30_000, 'a waiting replay shard');
    expect(waiting).toMatchObject({ kind: 'replay', state: JobState.JOB_STATE_RUNNING, principal: 'tester', counts: { total: 2, succeeded: 1 } });
    expect(waiting.waiting[0]?.reason).toMatch(/needs label pool=replay: no READY node meets it/);
    const shown = await cli('jobs', 'show', replayId);
    expect(shown.out).toContain(`job ${replayId} (replay): RUNNING`);
    expect(shown.out).toMatch(/echo\s+needs label pool=replay/);
    expect(shown.out).toMatch(/record:jobtest\/raw:r0 echo/);
    expect((await cli('jobs', '--kind', 'replay')).out).toContain(replayId);
    const listed = (await client().listJobs({ state: JobState.JOB_STATE_RUNNING, kind: 'replay', pageSize: 10, pageToken: '' })).jobs.find((j) => j.jobId === replayId);
    expect(listed?.counts).toMatchObject({ total: 2, succeeded: 1, running: 1 });
    const cancelled = await cli('jobs', 'cancel', replayId);
    expect(cancelled.out).toContain(`job ${replayId}: CANCELLED`);
    expect((await client().getJob({ jobId: replayId })).job?.waiting).toEqual([]);
  }, 90_000);
});
