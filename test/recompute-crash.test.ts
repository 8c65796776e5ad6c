import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from 'nice-grpc';
import { afterAll, describe, expect, it } from 'vitest';
import { until } from './helpers/until.js';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { JobServiceDefinition, JobState, TaskState, type Job } from '../common/gen/retrace/v1/job.js';
import { LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { PipelineServiceDefinition, type Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ChangePolicy, RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import { ReplayServiceDefinition, ReplayState, type ReplayPolicy } from '../common/gen/retrace/v1/replay.js';
import { createJobStore, type StoredJob } from '../coordinator/jobs/job-store.js';
import { openDatabase } from '../coordinator/store/database.js';
import { startLocalAgents } from '../scripts/cli/local-agents.js';
import { publishTransform } from './helpers/publish-transform.js';
import { ROOT, startCoordinatorProcess } from './helpers/coordinator-process.js';
import { processHarness } from './helpers/process-harness.js';

/**
 * A coordinator (the real CLI, a child process) is SIGKILLed while a recompute job runs on two
 * real agent processes, with some tasks done and some in flight; restarted on the same data dir
 * and port, the agents reconnect, the job resumes and ends with exactly the outputs of the same
 * change recomputed without interruption (a second pipeline of the same steps, same coordinator,
 * before the crash). The job's state on disk at the kill (read from LevelDB while the coordinator
 * is dead) says which tasks were done and which in flight: only the in-flight ones run again.
 */

const WF_TASK = join(ROOT, 'scripts', 'examples', 'transforms', 'wf-task.ts');
const KEYS = ['k0', 'k1', 'k2', 'k3', 'k4', 'k5'];
/** Per step while the crashed job runs: long enough to catch it mid-job on a loaded machine. */
const SLOW_MS = 700;

const h = processHarness();
const { children } = h;

afterAll(() => h.cleanup());

const client = h.client;

/** Polls through coordinator restarts: a call that fails counts as "not yet". */
function untilReachable<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 60_000, everyMs = 50): Promise<T> {
  return until(what, () => check().catch(() => undefined), timeoutMs, everyMs);
}

function pipelineOf(name: string, codeVersion: string, costMs: number): Pipeline {
  // `step` in the parameters: b and c read the same input, and must not be one memoized computation.
  const step = (n: string, inputs: string[]) => ({ name: n, transform: 'wf-task', codeVersion, parameters: { step: n, costMs }, requirements: undefined, inputs, output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 });
  // A diamond per key: a → (b, c) → d.
  return { name, sources: [{ name: 'raw', mediaType: 'application/json', description: '' }], steps: [step('a', ['raw']), step('b', ['a']), step('c', ['a']), step('d', ['b', 'c'])] } as Pipeline;
}

const payloadOf = (key: string, rev: number): Buffer => Buffer.from(JSON.stringify({ key, rev }));

/** `<step> key=<k>` → the content hash of its output, from the recompute steps the job recorded. */
async function outputsOf(lineage: Client<typeof LineageServiceDefinition>, job: Job): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const t of job.tasks) {
    const r = await lineage.getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: `recompute:${job.jobId}/${t.id}`, contentHash: '' } });
    const step = r.body?.$case === 'step' ? r.body.value : undefined;
    const outputs = ((step?.facets as Record<string, unknown> | undefined)?.retrace as { outputs?: Record<string, string> } | undefined)?.outputs ?? {};
    const hashes = Object.values(outputs);
    expect(hashes, `${t.label}: one output`).toHaveLength(1);
    out.set(t.label.replace(/^[^/]+\//, ''), hashes[0] as string);
  }
  return out;
}

describe('recompute jobs across a coordinator crash', () => {
  it('a coordinator SIGKILL mid-job resumes to identical outputs', async () => {
    const dataDir = h.tempDir('retrace-recompute-crash-');
    const first = await startCoordinatorProcess(join(dataDir, 'coordinator'), children);
    const token = readFileSync(join(dataDir, 'coordinator', 'auth-token'), 'utf8').trim();
    h.agents.push(
      ...(await startLocalAgents(first.grpc, token, dataDir, [
        { name: 'a1', reportInterval: '200ms' },
        { name: 'a2', reportInterval: '200ms' },
      ])),
    );
    let c = {
      code: client(first.grpc, token, CodeServiceDefinition),
      pipelines: client(first.grpc, token, PipelineServiceDefinition),
      recompute: client(first.grpc, token, RecomputeServiceDefinition),
      jobs: client(first.grpc, token, JobServiceDefinition),
      lineage: client(first.grpc, token, LineageServiceDefinition),
      replay: client(first.grpc, token, ReplayServiceDefinition),
    };
    const codeVersion = await publishTransform(c.code, WF_TASK, 'wf-task');
    // Two pipelines of the same steps: `ref` is recomputed without interruption, `wf` crashes.
    // wf-task's output leaves costMs out, so the two compute the same bytes at any speed.
    for (const name of ['ref', 'wf']) {
      await c.pipelines.applyPipeline({ pipeline: pipelineOf(name, codeVersion, 10) });
      await c.recompute.setChangePolicy({ pipeline: name, source: '', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
      const r = await c.pipelines.ingest((async function* () {
        yield { pipeline: name, source: 'raw', records: KEYS.map((key) => ({ key, payload: payloadOf(key, 0), eventTimeNs: '0', mediaType: 'application/json' })) };
      })());
      expect(Number(r.shardsRun)).toBe(KEYS.length * 4);
    }
    const change = (name: string) => ({ changeIds: [], objectIds: [], newContents: KEYS.map((key) => ({ objectId: `record:${name}/raw:${key}`, payload: payloadOf(key, 1), mediaType: 'application/json' })), policy: { maxAttempts: 3, concurrency: 4, targetNodeIds: [], targetLabels: {}, dryRun: false } });
    const ended = (j: Job | undefined): j is Job => j !== undefined && [JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED].includes(j.state);

    // Also caught by the crash: a paced replay (two records done, the third due in 10 minutes)
    // and an ingest whose client keeps its stream open.
    const T0 = 1_767_225_600_000_000_000n;
    await c.pipelines.applyPipeline({ pipeline: { ...pipelineOf('pr', codeVersion, 10), steps: pipelineOf('pr', codeVersion, 10).steps.slice(0, 1) } });
    await c.pipelines.ingest((async function* () {
      yield { pipeline: 'pr', source: 'raw', records: [0n, 200n, 600_000n].map((ms, i) => ({ key: `p${i}`, payload: payloadOf(`p${i}`, 0), eventTimeNs: (T0 + ms * 1_000_000n).toString(), mediaType: 'application/json' })) };
    })());
    const replayId = (await c.replay.startReplay({ selector: { selector: { $case: 'window', value: { pipeline: 'pr', source: 'raw', fromNs: T0.toString(), toNs: (T0 + 3_600_000_000_000n).toString() } } }, policy: { speed: 1 } as ReplayPolicy })).replayId;
    const hold = new AbortController();
    const heldIngest = c.pipelines
      .ingest((async function* () {
        yield { pipeline: 'pr', source: 'raw', records: [{ key: 'held', payload: payloadOf('held', 0), eventTimeNs: '0', mediaType: 'application/json' }] };
        await new Promise((r) => hold.signal.addEventListener('abort', r));
      })(), { signal: hold.signal })
      .catch(() => undefined);

    const refJobId = (await c.recompute.recompute(change('ref'))).jobId;
    const refJob = await untilReachable('the uninterrupted job', async () => {
      const j = (await c.jobs.getJob({ jobId: refJobId })).job;
      return ended(j) ? j : undefined;
    });
    expect(refJob.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    const want = await outputsOf(c.lineage, refJob);
    expect(want.size).toBe(KEYS.length * 4);

    await until('two records replayed', async () => ((await c.replay.getReplayReport({ replayId })).report?.steps.filter((st) => st.status === 'SUCCEEDED').length === 2 ? true : undefined));
    // The replay's progress is written at most once a second.
    await new Promise((r) => setTimeout(r, 1100));

    // The crashing run: slow steps (a new pipeline version; costMs is left out of the outputs).
    await c.pipelines.applyPipeline({ pipeline: pipelineOf('wf', codeVersion, SLOW_MS) });
    const jobId = (await c.recompute.recompute(change('wf'))).jobId;
    await untilReachable('some tasks done and some in flight', async () => {
      const j = (await c.jobs.getJob({ jobId })).job;
      return j && j.state === JobState.JOB_STATE_RUNNING && (j.counts?.succeeded ?? 0) >= 4 && (j.counts?.running ?? 0) >= 1 ? j : undefined;
    }, 90_000, 20);
    first.proc.kill('SIGKILL');
    await first.exited;
    const killedAtMs = Date.now();

    // The job as the dead coordinator left it on disk.
    const db = await openDatabase(join(dataDir, 'coordinator', 'db'));
    let atKill: StoredJob | undefined;
    try {
      atKill = await createJobStore(db).read(jobId);
    } finally {
      await db.close();
    }
    expect(atKill?.record.state).toBe('RUNNING');
    const doneAtKill = (atKill?.tasks ?? []).filter((t) => t.state === 'SUCCEEDED');
    const inFlightAtKill = (atKill?.tasks ?? []).filter((t) => t.state === 'RUNNING');
    expect(doneAtKill.length).toBeGreaterThanOrEqual(1);
    expect(doneAtKill.length).toBeLessThan(KEYS.length * 4);

    // Restart on the same data dir and port: the agents reconnect to it.
    h.closeClients();
    const second = await startCoordinatorProcess(join(dataDir, 'coordinator'), children, ['--grpc', first.grpc]);
    expect(second.grpc).toBe(first.grpc);
    c = {
      code: client(second.grpc, token, CodeServiceDefinition),
      pipelines: client(second.grpc, token, PipelineServiceDefinition),
      recompute: client(second.grpc, token, RecomputeServiceDefinition),
      jobs: client(second.grpc, token, JobServiceDefinition),
      lineage: client(second.grpc, token, LineageServiceDefinition),
      replay: client(second.grpc, token, ReplayServiceDefinition),
    };
    const job = await untilReachable('the resumed job to end', async () => {
      const j = (await c.jobs.getJob({ jobId })).job;
      return ended(j) ? j : undefined;
    }, 120_000, 100);
    expect(job.tasks.filter((t) => t.error !== '').map((t) => `${t.label}: ${t.error}`)).toEqual([]);
    expect(job.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    expect(job.restarts).toBe(1);
    expect(job.tasksRerunAfterRestart).toBe(inFlightAtKill.length);

    // The runs nothing resumes were closed on start, with why; the resumed job's run stayed open and closed with the job.
    const runs = new Map((await c.lineage.listRuns({ pageSize: 0, pageToken: '', namePrefix: '' })).runs.map((r) => [r.runId, r]));
    const ingestRuns = [...runs.values()].filter((r) => r.name === 'pipeline:pr');
    expect(ingestRuns.map((r) => r.state).sort()).toEqual(['COMPLETE', 'FAIL']);
    expect(ingestRuns.every((r) => r.endedAtNs !== '0')).toBe(true);
    expect(JSON.stringify(ingestRuns.find((r) => r.state === 'FAIL')?.facets)).toMatch(/interrupted: the coordinator stopped during the ingest/);
    expect(runs.get(replayId)).toMatchObject({ state: 'FAIL', facets: { retrace: { replayState: 'FAILED', error: expect.stringMatching(/^interrupted/) } } });
    expect(runs.get(replayId)?.endedAtNs).not.toBe('0');
    const jobRunStates = async () => (await c.lineage.getNode({ node: { kind: NodeKind.NODE_KIND_RUN, id: jobId, contentHash: '' } })).body;
    await untilReachable('the resumed job run closed', async () => {
      const b = await jobRunStates();
      return b?.$case === 'run' && b.value.state === 'COMPLETE' ? true : undefined;
    }, 10_000);
    // The interrupted replay kept the records it had finished; the one never run counts as cancelled.
    const { report } = await c.replay.getReplayReport({ replayId });
    expect(report?.state).toBe(ReplayState.REPLAY_STATE_FAILED);
    expect(report?.steps.map((st) => `${st.record} ${st.status}`).sort()).toEqual(['record:pr/raw:p0 SUCCEEDED', 'record:pr/raw:p1 SUCCEEDED']);
    expect(report?.summary).toMatchObject({ records: 3, steps: 3, matched: 2, failed: 0, upstreamFailed: 0, cancelled: 1 });
    const listed = (await c.jobs.listJobs({ state: JobState.JOB_STATE_UNSPECIFIED, kind: 'replay', pageSize: 0, pageToken: '' })).jobs.find((j) => j.jobId === replayId);
    expect(listed).toMatchObject({ title: 'replay of 3 record(s)', counts: { total: 3, succeeded: 2, failed: 0, cancelled: 1 } });
    hold.abort();
    await heldIngest;

    // Identical outputs to the uninterrupted run.
    const got = await outputsOf(c.lineage, job);
    expect(Object.fromEntries(got)).toEqual(Object.fromEntries(want));
    expect(job.tasks.every((t) => t.state === TaskState.TASK_STATE_SUCCEEDED && t.outcome === 'executed')).toBe(true);

    // Done before the kill: not run again (same attempt count, same start). In flight: run again.
    const byId = new Map(job.tasks.map((t) => [t.id, t]));
    for (const t of doneAtKill) {
      const now = byId.get(t.id);
      expect(now?.attempts, t.label).toBe(t.attempts);
      expect(Math.round(Number(now?.startedAtNs) / 1e6), t.label).toBe(t.startedAtMs);
    }
    for (const t of inFlightAtKill) {
      const now = byId.get(t.id);
      expect(now?.attempts, t.label).toBe(t.attempts + 1);
      expect(Math.round(Number(now?.startedAtNs) / 1e6), t.label).toBeGreaterThanOrEqual(killedAtMs);
    }
  }, 240_000);
});
