/**
 * `npm run bench -- resume [--workflow FILE] [--total-ms T] [--at 25,50,75] [--concurrency C]`
 *
 * Crash resume of recompute jobs: a `retrace coordinator` child process (LevelDB in a temp dir)
 * with two real agent processes runs a full recompute of a real workflow shape (WfInstances,
 * default blast-chameleon-small-001: 43 tasks, a 40-way fan-out; wf-recompute.ts has the
 * mapping). For each kill point (25/50/75% of the tasks finished) a new change is recomputed and
 * the coordinator is SIGKILLed at that point, then restarted on the same data dir and port (the
 * agents reconnect). Measured:
 * - restart latency: process spawn → gRPC listening → job RUNNING again (polled, and the job
 *   manager's own restartToRunningMs) → first task started → first shard running on an agent
 *   (the recorded step's start);
 * - work repeated: the job's tasks as the dead coordinator left them on disk (read from LevelDB
 *   between the kill and the restart) against the job at its end: tasks started before the kill
 *   and started again after it (goal: exactly the ones in flight), done tasks untouched, and the
 *   job manager's tasksRerunAfterRestart;
 * - total time of the crashed job against an uninterrupted one of the same size.
 * ratio = tasks repeated / tasks in flight at the kill, summed over the kills (goal ≤ 1).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createChannel, createClientFactory, Metadata } from 'nice-grpc';
import { JobState, type Job } from '../common/gen/retrace/v1/job.js';
import { LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { createJobStore, type StoredJob } from '../coordinator/jobs/job-store.js';
import { openDatabase } from '../coordinator/store/database.js';
import { startLocalAgents, stopLocalAgents, type LocalAgent } from '../scripts/cli/local-agents.js';
import { finish } from './report.js';
import { loadWorkflow } from './wf-instances.js';
import { connect, fileContent, flag, median, modelOf, notifyFiles, publishWfTask, setUpWorkflow, waitForJob, type Clients, type WfModel } from './wf-recompute.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'scripts', 'retrace.mjs');

interface Child {
  proc: ChildProcess;
  grpc: string;
  spawnedAtMs: number;
  listeningAtMs: number;
  exited: Promise<unknown>;
}

async function startCoordinator(dataDir: string, grpc: string): Promise<Child> {
  const spawnedAtMs = Date.now();
  const proc = spawn(process.execPath, [CLI, 'coordinator', '--data', dataDir, '--grpc', grpc, '--http', '127.0.0.1:0'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let errText = '';
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => (errText = (errText + d).slice(-10_000)));
  const exited = new Promise((r) => proc.once('exit', r));
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream });
  const first = await new Promise<string>((res, rej) => {
    lines.once('line', res);
    void exited.then(() => rej(new Error(`coordinator exited before listening:\n${errText}`)));
  });
  lines.on('line', () => {});
  return { proc, grpc: (JSON.parse(first) as { grpc: string }).grpc, spawnedAtMs, listeningAtMs: Date.now(), exited };
}

async function kill(c: Child): Promise<number> {
  c.proc.kill('SIGKILL');
  await c.exited;
  return Date.now();
}

const nsToMs = (ns: string): number => Number(BigInt(ns) / 1_000_000n);

interface KillRow {
  at: number;
  tasks: number;
  doneAtKill: number;
  inFlightAtKill: number;
  repeated: number;
  /** In-flight tasks whose shard ran again on an agent (the others found their step recorded). */
  shardsRerun: number;
  doneTouched: number;
  managerRerun: number;
  spawnToListeningMs: number;
  spawnToRunningMs: number;
  managerRestartToRunningMs: number;
  spawnToFirstTaskMs: number;
  spawnToFirstShardMs: number;
  downMs: number;
  totalMs: number;
}

async function stepStartMs(address: string, token: string, jobId: string, taskIds: readonly string[]): Promise<Map<string, number>> {
  const channel = createChannel(address);
  const lineage = createClientFactory().create(LineageServiceDefinition, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${token}` }) } });
  const out = new Map<string, number>();
  try {
    for (const id of taskIds) {
      const r = await lineage.getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: `recompute:${jobId}/${id}`, contentHash: '' } }).catch(() => undefined);
      if (r?.body?.$case === 'step') out.set(id, nsToMs(r.body.value.startedAtNs));
    }
  } finally {
    channel.close();
  }
  return out;
}

export async function main(argv: string[]): Promise<void> {
  const file = resolve(flag(argv, 'workflow', '../shared/data/wfinstances/makeflow/blast/blast-chameleon-small-001.json'));
  const totalMs = Number(flag(argv, 'total-ms', '12000'));
  const points = flag(argv, 'at', '25,50,75').split(',').map(Number);
  const concurrency = Number(flag(argv, 'concurrency', '4'));
  const wf = loadWorkflow(file);
  const m: WfModel = modelOf(wf, 'wf', totalMs / wf.tasks.reduce((s, t) => s + t.runtime, 0));
  const files = [...m.sourceOf.keys()];
  console.log(`resume: ${file} (${wf.tasks.length} tasks, ${files.length} sources, ${totalMs} ms of task cost), kills at ${points.join('/')}% of the tasks finished, job concurrency ${concurrency}, 2 local agents, coordinator as a child process`);

  const data = mkdtempSync(join(tmpdir(), 'retrace-bench-resume-'));
  const dataDir = join(data, 'coordinator');
  let child = await startCoordinator(dataDir, '127.0.0.1:0');
  const token = readFileSync(join(dataDir, 'auth-token'), 'utf8').trim();
  let agents: LocalAgent[] = [];
  let c: Clients = connect(child.grpc, token);
  const rows: KillRow[] = [];
  const baselines: number[] = [];
  let rev = 0;
  /** A full recompute (every source changes): resolves with the job id. */
  const submit = async (): Promise<string> => {
    rev++;
    const ids = await notifyFiles(c, m, files.map((f) => [f, fileContent(f, rev)]));
    const r = await c.recompute.recompute({ changeIds: ids, objectIds: [], newContents: [], policy: { maxAttempts: 3, concurrency, targetNodeIds: [], targetLabels: {}, dryRun: false } });
    return r.jobId;
  };
  try {
    agents = await startLocalAgents(child.grpc, token, data, [
      { name: 'a1', reportInterval: '500ms' },
      { name: 'a2', reportInterval: '500ms' },
    ]);
    const codeVersion = await publishWfTask(c);
    const first = await setUpWorkflow(c, m, wf, codeVersion);
    console.log(`first run: ${first.shardsRun} shards in ${Math.round(first.ms)} ms`);

    const baseline = async (): Promise<void> => {
      const r = await waitForJob(c, await submit());
      if (r.job.state !== JobState.JOB_STATE_SUCCEEDED) throw new Error(`baseline job ${r.job.jobId} ended ${JobState[r.job.state]}`);
      baselines.push(r.ms);
      console.log(`uninterrupted: ${r.job.tasks.length} tasks in ${Math.round(r.ms)} ms`);
    };
    await baseline();

    for (const at of points) {
      const jobId = await submit();
      let seen: Job | undefined;
      for (;;) {
        seen = (await c.jobs.getJob({ jobId })).job;
        const n = seen?.counts?.total ?? 1;
        if (seen && (seen.state !== JobState.JOB_STATE_RUNNING || (100 * (seen.counts?.succeeded ?? 0)) / n >= at)) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      if (seen.state !== JobState.JOB_STATE_RUNNING) throw new Error(`job ${jobId} ended (${JobState[seen.state]}) before ${at}%: make --total-ms larger`);
      c.close();
      const killedAtMs = await kill(child);
      // The job as the dead coordinator left it.
      const db = await openDatabase(join(dataDir, 'db'));
      let atKill: StoredJob | undefined;
      try {
        atKill = await createJobStore(db).read(jobId);
      } finally {
        await db.close();
      }
      if (!atKill) throw new Error(`job ${jobId} is not on disk`);
      const grpc = child.grpc;
      child = await startCoordinator(dataDir, grpc);
      c = connect(child.grpc, token);
      const spawned = child.spawnedAtMs;
      let runningAtMs = 0;
      for (;;) {
        const j = (await c.jobs.getJob({ jobId }).catch(() => undefined))?.job;
        if (j && j.state !== JobState.JOB_STATE_PENDING) {
          runningAtMs = Date.now();
          break;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      const end = await waitForJob(c, jobId);
      if (end.job.state !== JobState.JOB_STATE_SUCCEEDED) throw new Error(`job ${jobId} ended ${JobState[end.job.state]} after the restart: ${end.job.message}`);
      const before = new Map(atKill.tasks.map((t) => [t.id, t]));
      const startedBefore = atKill.tasks.filter((t) => t.attempts > 0);
      const inFlight = atKill.tasks.filter((t) => t.state === 'RUNNING');
      const done = atKill.tasks.filter((t) => t.state === 'SUCCEEDED');
      const final = new Map(end.job.tasks.map((t) => [t.id, t]));
      const repeated = startedBefore.filter((t) => (final.get(t.id)?.attempts ?? 0) > t.attempts);
      const doneTouched = done.filter((t) => final.get(t.id)?.attempts !== t.attempts || nsToMs(final.get(t.id)?.startedAtNs ?? '0') !== t.startedAtMs);
      const afterRestart = end.job.tasks.filter((t) => nsToMs(t.startedAtNs) >= spawned && (before.get(t.id)?.state !== 'SUCCEEDED'));
      const stepStarts = await stepStartMs(child.grpc, token, jobId, afterRestart.map((t) => t.id));
      const shardStarts = [...stepStarts.values()].filter((ms) => ms >= spawned);
      const row: KillRow = {
        at,
        tasks: atKill.tasks.length,
        doneAtKill: done.length,
        inFlightAtKill: inFlight.length,
        repeated: repeated.length,
        shardsRerun: inFlight.filter((t) => (stepStarts.get(t.id) ?? 0) >= spawned).length,
        doneTouched: doneTouched.length,
        managerRerun: end.job.tasksRerunAfterRestart,
        spawnToListeningMs: child.listeningAtMs - spawned,
        spawnToRunningMs: runningAtMs - spawned,
        managerRestartToRunningMs: end.job.restartToRunningMs,
        spawnToFirstTaskMs: Math.min(...afterRestart.map((t) => nsToMs(t.startedAtNs))) - spawned,
        spawnToFirstShardMs: shardStarts.length > 0 ? Math.min(...shardStarts) - spawned : Number.NaN,
        downMs: spawned - killedAtMs,
        totalMs: end.ms,
      };
      rows.push(row);
      console.log(
        `kill at ${at}%: ${row.doneAtKill} done, ${row.inFlightAtKill} in flight; after restart ${row.repeated} repeated (${row.shardsRerun} shards ran again, job manager says ${row.managerRerun}), ${row.doneTouched} done tasks touched; ` +
          `spawn → listening ${row.spawnToListeningMs} ms → job RUNNING ${row.spawnToRunningMs} ms (manager: ${Math.round(row.managerRestartToRunningMs)} ms after its start) → first task ${row.spawnToFirstTaskMs} ms → first shard on an agent ${row.spawnToFirstShardMs} ms; job ${Math.round(row.totalMs)} ms in all`,
      );
    }
    await baseline();
  } finally {
    c.close();
    await stopLocalAgents(agents);
    if (child.proc.exitCode === null && child.proc.signalCode === null) {
      child.proc.kill('SIGTERM');
      await Promise.race([child.exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (child.proc.exitCode === null && child.proc.signalCode === null) await kill(child);
    }
    rmSync(data, { recursive: true, force: true });
  }
  const repeated = rows.reduce((s, r) => s + r.repeated, 0);
  const inFlight = rows.reduce((s, r) => s + r.inFlightAtKill, 0);
  const uninterrupted = median(baselines);
  finish({
    bench: 'resume',
    ratio: inFlight === 0 ? Number.NaN : repeated / inFlight,
    goal: '<= 1 (only the tasks in flight at the kill run again)',
    kills: rows.length,
    tasksRepeated: repeated,
    tasksInFlightAtKill: inFlight,
    shardsRerun: rows.reduce((s, r) => s + r.shardsRerun, 0),
    doneTasksTouched: rows.reduce((s, r) => s + r.doneTouched, 0),
    jobManagerRerunCount: rows.reduce((s, r) => s + r.managerRerun, 0),
    medianSpawnToListeningMs: median(rows.map((r) => r.spawnToListeningMs)),
    medianSpawnToRunningMs: median(rows.map((r) => r.spawnToRunningMs)),
    medianManagerRestartToRunningMs: Math.round(median(rows.map((r) => r.managerRestartToRunningMs))),
    medianListeningToRunningMs: median(rows.map((r) => r.spawnToRunningMs - r.spawnToListeningMs)),
    medianSpawnToFirstTaskMs: median(rows.map((r) => r.spawnToFirstTaskMs)),
    medianSpawnToFirstShardMs: median(rows.map((r) => r.spawnToFirstShardMs)),
    medianCrashedJobMs: Math.round(median(rows.map((r) => r.totalMs))),
    uninterruptedJobMs: Math.round(uninterrupted),
    crashedVsUninterrupted: median(rows.map((r) => r.totalMs)) / uninterrupted,
    kill: rows,
    note: 'shared 2-core machine: times are noisy; task counts are exact. Job times include the coordinator being down (kill → respawn) and its ~1-2 s start through tsx',
  });
}
