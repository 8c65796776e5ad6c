import { Status, type Client, type CompatServiceDefinition } from 'nice-grpc';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobServiceDefinition, JobState } from '../common/gen/retrace/v1/job.js';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ReplayServiceDefinition, ReplayState } from '../common/gen/retrace/v1/replay.js';
import { ShardStatus } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { jobsExtension } from '../coordinator/jobs/jobs-extension.js';
import type { TaskRunContext } from '../coordinator/jobs/job-types.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import type { ReplayShardRunner } from '../coordinator/replay/replay-engine.js';
import { replayExtension } from '../coordinator/replay/replay-extension.js';
import { addToken } from '../coordinator/token-file.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { runCli } from './helpers/in-process-cli.js';
import { processHarness } from './helpers/process-harness.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * A client token controls its own principal's jobs and replays, an admin or the owner token all of
 * them (as a Temporal or Dagster user controls their runs and an operator every run); payload
 * sweeps are an operator's. A real coordinator on 127.0.0.1:0, LevelDB in a temp dir, named
 * tokens in its tokens.json.
 */

let tc: TestCoordinator;
const shared: CoordinatorServices = {};
/** Client channels, closed after all. */
const clients = processHarness();
const tokens = { alice: '', bob: '', ops: '' };

function as<S extends CompatServiceDefinition>(token: string, definition: S): Client<S> {
  return clients.client(tc.grpcAddress, token, definition);
}

/** A job of kind `held` whose one task runs until the job is cancelled, started by `principal`. */
async function heldJob(principal: string): Promise<string> {
  const jobs = shared.jobs;
  if (!jobs) throw new Error('no job manager');
  const { jobId } = await jobs.submit({ kind: 'held', title: `held for ${principal}`, principal, payload: null, retry: { maxAttempts: 1 }, tasks: [{ id: 't', label: 'held', dependsOn: [], payload: {} }] });
  return jobId;
}

async function stateOf(jobId: string): Promise<JobState | undefined> {
  return (await tc.client(JobServiceDefinition).getJob({ jobId })).job?.state;
}

/** Runs until aborted (cancel, coordinator stop). */
function untilAborted(signal: AbortSignal | undefined): Promise<never> {
  return new Promise((_resolve, reject) => {
    if (signal?.aborted) reject(new Error('aborted'));
    signal?.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
  });
}

const CODE = contentHashOf('upper');

beforeAll(async () => {
  // Live ingest runs in-process; replayed shards are held until cancelled, so a replay stays RUNNING.
  const live: ShardRunner = {
    run: async (a) => {
      const now = String(BigInt(Date.now()) * 1_000_000n);
      return { outcome: { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from('OUT'), mediaType: 'text/plain' }], resources: undefined, error: '', attempt: a.attempt, startedAtNs: now, endedAtNs: now, nodeId: 'node-a' }, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
    },
  };
  // As the dispatcher does: a cancelled shard resolves CANCELLED (a rejection would fail the replay).
  const replaying: ReplayShardRunner = {
    run: (a, o) =>
      untilAborted(o?.signal).catch(() => ({ outcome: { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_CANCELLED, outputs: [], resources: undefined, error: 'cancelled', attempt: a.attempt, startedAtNs: '0', endedAtNs: '0', nodeId: '' }, nodeId: '', attempts: 0, queuedMs: 0 })),
    waiting: () => [],
  };
  Object.assign(shared, { dispatcher: replaying, mesh: { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-a', state: NodeState.NODE_STATE_READY })] } });
  tc = await startTestCoordinator({
    extensions: [pipelineExtension(shared, { runner: live, payloadRetentionMs: 3_600_000, sweepIntervalMs: 3_600_000 }), jobsExtension(shared), replayExtension(shared)],
  });
  shared.jobs?.registerExecutor({ kind: 'held', runTask: (ctx: TaskRunContext) => untilAborted(ctx.signal) });
  tokens.alice = addToken(tc.dataDir, 'alice', 'client').token;
  tokens.bob = addToken(tc.dataDir, 'bob', 'client').token;
  tokens.ops = addToken(tc.dataDir, 'ops', 'admin').token;
  const pipelines = tc.client(PipelineServiceDefinition);
  await pipelines.applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'orders', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'shout', transform: 'upper', codeVersion: CODE, inputs: ['raw'] }] }) });
  await pipelines.ingest(
    (async function* () {
      yield { pipeline: 'orders', source: 'raw', records: [{ key: 'a', eventTimeNs: '0', payload: Buffer.from('order a'), mediaType: '' }] };
    })(),
  );
}, 20_000);

afterAll(async () => {
  await clients.cleanup();
  await tc?.stop();
});

const deniedFor = (field: string, id: string, owner: string, caller: string) => ({
  code: Status.PERMISSION_DENIED,
  details: expect.stringContaining(`${field}: ${field === 'replay_id' ? 'replay' : 'job'} ${JSON.stringify(id)} was started by principal ${JSON.stringify(owner)}; this token acts as principal ${JSON.stringify(caller)}`),
});

describe('job ownership', () => {
  it("a client may not cancel or resume another principal's job (PERMISSION_DENIED naming job_id and both names, the job untouched); its own it may", async () => {
    const jobId = await heldJob('alice');
    const bob = as(tokens.bob, JobServiceDefinition);
    await expect(bob.cancelJob({ jobId })).rejects.toMatchObject(deniedFor('job_id', jobId, 'alice', 'bob'));
    await expect(bob.resumeJob({ jobId })).rejects.toMatchObject(deniedFor('job_id', jobId, 'alice', 'bob'));
    expect(await stateOf(jobId)).toBe(JobState.JOB_STATE_RUNNING);
    const alice = as(tokens.alice, JobServiceDefinition);
    expect((await alice.cancelJob({ jobId })).state).toBe(JobState.JOB_STATE_CANCELLED);
    // Ended CANCELLED, it is still alice's to resume, not bob's.
    await expect(bob.resumeJob({ jobId })).rejects.toMatchObject(deniedFor('job_id', jobId, 'alice', 'bob'));
    expect(await stateOf(jobId)).toBe(JobState.JOB_STATE_CANCELLED);
    expect((await alice.resumeJob({ jobId })).tasksToRun).toBe(1);
    expect((await alice.cancelJob({ jobId })).state).toBe(JobState.JOB_STATE_CANCELLED);
  });

  it("an admin token and the owner token cancel anyone's job; a job the owner started with no principal is no client's", async () => {
    const ofAlice = await heldJob('alice');
    expect((await as(tokens.ops, JobServiceDefinition).cancelJob({ jobId: ofAlice })).state).toBe(JobState.JOB_STATE_CANCELLED);
    const ofBob = await heldJob('bob');
    expect((await tc.client(JobServiceDefinition).cancelJob({ jobId: ofBob })).state).toBe(JobState.JOB_STATE_CANCELLED);
    const ofOwner = await heldJob('');
    await expect(as(tokens.alice, JobServiceDefinition).cancelJob({ jobId: ofOwner })).rejects.toMatchObject(deniedFor('job_id', ofOwner, '', 'alice'));
    expect(await stateOf(ofOwner)).toBe(JobState.JOB_STATE_RUNNING);
    expect((await tc.client(JobServiceDefinition).cancelJob({ jobId: ofOwner })).state).toBe(JobState.JOB_STATE_CANCELLED);
  });

  it("a replay a client started is its own: another client's CancelReplay (replay_id) and CancelJob (job_id) are refused, the replay runs on", async () => {
    const { replayId } = await as(tokens.alice, ReplayServiceDefinition).startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:orders/raw:a'] } } }, policy: undefined });
    await expect(as(tokens.bob, ReplayServiceDefinition).cancelReplay({ replayId })).rejects.toMatchObject(deniedFor('replay_id', replayId, 'alice', 'bob'));
    await expect(as(tokens.bob, JobServiceDefinition).cancelJob({ jobId: replayId })).rejects.toMatchObject(deniedFor('job_id', replayId, 'alice', 'bob'));
    const report = await tc.client(ReplayServiceDefinition).getReplayReport({ replayId });
    expect(report.report?.state).toBe(ReplayState.REPLAY_STATE_RUNNING);
    expect((await as(tokens.alice, JobServiceDefinition).cancelJob({ jobId: replayId })).state).toBe(JobState.JOB_STATE_CANCELLED);
  }, 15_000);

  it('`retrace jobs cancel` with another client token exits 1 naming the job and both principals', async () => {
    const jobId = await heldJob('alice');
    const r = await runCli(['jobs', 'cancel', jobId, '--coordinator', tc.grpcAddress, '--token', tokens.bob]);
    expect(r.code).toBe(1);
    expect(r.err).toContain(`job_id: job ${JSON.stringify(jobId)} was started by principal "alice"; this token acts as principal "bob" and may cancel only what it started`);
    expect(await stateOf(jobId)).toBe(JobState.JOB_STATE_RUNNING);
    await tc.client(JobServiceDefinition).cancelJob({ jobId });
  });

  it('SweepPayloads is for admin tokens: a client is refused before the request is read, an admin sweeps', async () => {
    await expect(as(tokens.alice, PipelineServiceDefinition).sweepPayloads({ dryRun: true })).rejects.toMatchObject({
      code: Status.PERMISSION_DENIED,
      details: expect.stringMatching(/token "alice" has role client, which may not call retrace\.v1\.PipelineService\/SweepPayloads: it needs role admin/),
    });
    const swept = await as(tokens.ops, PipelineServiceDefinition).sweepPayloads({ dryRun: true });
    expect(swept).toBeDefined();
  });
});
