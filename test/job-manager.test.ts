import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../common/errors.js';
import { JobManager, type JobView } from '../coordinator/jobs/job-manager.js';
import { createJobStore, type JobStore } from '../coordinator/jobs/job-store.js';
import type { JobExecutor, JobSpec, JobTaskSpec, TaskRunContext, TaskRunResult } from '../coordinator/jobs/job-types.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { guardStorage } from '../coordinator/store/storage-guard.js';
import { waitFor } from './helpers/mesh-server.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'retrace-jobs-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A started manager on real LevelDB in `dir`; closed after the test. */
async function startManager(dir = tempDir(), sleeps?: number[], options: { crash?: boolean } = {}): Promise<{ manager: JobManager; db: Database; dir: string }> {
  const db = await openDatabase(dir);
  const manager = new JobManager({
    db,
    seed: 7,
    // Backoff waits are recorded and kept short, so retry tests do not sleep for seconds.
    sleep: (ms, signal) => {
      sleeps?.push(ms);
      return new Promise((r) => {
        const t = setTimeout(r, Math.min(ms, 5));
        signal.addEventListener('abort', () => {
          clearTimeout(t);
          r();
        }, { once: true });
      });
    },
  });
  await manager.start();
  cleanups.push(async () => {
    // A "crashed" manager is never stopped: its hung attempts would hold stop() for the grace period.
    if (!options.crash) await manager.stop();
    if (db.status === 'open') await db.close();
  });
  return { manager, db, dir };
}

const task = (id: string, dependsOn: string[] = [], extra: Partial<JobTaskSpec> = {}): JobTaskSpec => ({ id, label: `task ${id}`, dependsOn, payload: { id }, ...extra });

const spec = (tasks: JobTaskSpec[], extra: Partial<JobSpec> = {}): JobSpec => ({ kind: 'fake', title: 'test job', principal: 'tester', tasks, payload: null, ...extra });

/** An executor whose behaviour per task is a function; it logs every call. */
function fakeExecutor(behaviour: (ctx: TaskRunContext) => Promise<TaskRunResult> | TaskRunResult, kind = 'fake'): JobExecutor & { calls: { task: string; attempt: number }[] } {
  const calls: { task: string; attempt: number }[] = [];
  return {
    kind,
    calls,
    async runTask(ctx) {
      calls.push({ task: ctx.task.id, attempt: ctx.attempt });
      return behaviour(ctx);
    },
  };
}

async function untilEnded(manager: JobManager, jobId: string): Promise<JobView> {
  return waitFor(async () => {
    const j = await manager.get(jobId);
    return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state) ? j : undefined;
  }, 30_000, `job ${jobId} to end`);
}

const stateOf = (job: JobView, id: string): string | undefined => job.tasks?.find((t) => t.id === id)?.state;

const abortable = (signal: AbortSignal): Promise<never> =>
  new Promise((_r, reject) => {
    if (signal.aborted) reject(new Error('aborted'));
    else signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
  });

describe('JobManager', () => {
  it('runs tasks in dependency order, hands results to dependents, and persists the job', async () => {
    const { manager } = await startManager();
    const ended = new Map<string, number>();
    const started = new Map<string, number>();
    let tick = 0;
    const exec = fakeExecutor(async (ctx) => {
      started.set(ctx.task.id, tick++);
      await new Promise((r) => setTimeout(r, 5));
      ended.set(ctx.task.id, tick++);
      const sum = [...ctx.deps.values()].reduce<number>((n, v) => n + (v as number), 0);
      return { outcome: ctx.task.id === 'c' ? 'cached' : 'executed', result: sum + 1 };
    });
    manager.registerExecutor(exec);
    // a → b, a → c, (b, c) → d
    const { jobId } = await manager.submit(spec([task('d', ['b', 'c']), task('b', ['a']), task('c', ['a']), task('a')]));
    expect(jobId).toMatch(/^job-\d{14}-[0-9a-f]{6}$/);
    const job = await untilEnded(manager, jobId);
    expect(job.state).toBe('SUCCEEDED');
    for (const [t, deps] of Object.entries({ b: ['a'], c: ['a'], d: ['b', 'c'] })) {
      for (const d of deps) expect(started.get(t)).toBeGreaterThan(ended.get(d) as number);
    }
    expect(await manager.result(jobId, 'd')).toBe(5);
    expect(job.tasks?.map((t) => [t.id, t.state, t.outcome, t.attempts])).toEqual([
      ['d', 'SUCCEEDED', 'executed', 1],
      ['b', 'SUCCEEDED', 'executed', 1],
      ['c', 'SUCCEEDED', 'cached', 1],
      ['a', 'SUCCEEDED', 'executed', 1],
    ]);
    expect(job.counts).toMatchObject({ total: 4, SUCCEEDED: 4, PENDING: 0 });
    expect(job.percent).toBe(100);
    expect((await manager.list()).map((j) => j.jobId)).toEqual([jobId]);
  });

  it('runs independent tasks in parallel up to the concurrency', async () => {
    const { manager } = await startManager();
    let running = 0;
    let peak = 0;
    // The first tasks hold until three run at once (or 3 s pass), so a slow machine cannot hide parallelism.
    let reached = (): void => {};
    const full = new Promise<void>((r) => (reached = r));
    manager.registerExecutor(
      fakeExecutor(async () => {
        running++;
        peak = Math.max(peak, running);
        if (running === 3) reached();
        await Promise.race([full, new Promise((r) => setTimeout(r, 3000))]);
        await new Promise((r) => setTimeout(r, 5));
        running--;
        return { outcome: 'executed', result: null };
      }),
    );
    const { jobId } = await manager.submit(spec(['1', '2', '3', '4', '5', '6', '7'].map((id) => task(id)), { concurrency: 3 }));
    expect((await untilEnded(manager, jobId)).state).toBe('SUCCEEDED');
    expect(peak).toBe(3);
  });

  it('retries with jittered exponential backoff, then succeeds', async () => {
    const sleeps: number[] = [];
    const { manager } = await startManager(undefined, sleeps);
    const exec = fakeExecutor((ctx) => {
      if (ctx.attempt < 4) throw new Error(`flaky ${ctx.attempt}`);
      return { outcome: 'executed', result: ctx.attempt };
    });
    manager.registerExecutor(exec);
    const { jobId } = await manager.submit(spec([task('x')], { retry: { maxAttempts: 5, baseMs: 100, maxMs: 250 } }));
    const job = await untilEnded(manager, jobId);
    expect(job.state).toBe('SUCCEEDED');
    expect(job.tasks?.[0]).toMatchObject({ state: 'SUCCEEDED', attempts: 4 });
    expect(exec.calls.map((c) => c.attempt)).toEqual([1, 2, 3, 4]);
    // Waits are uniform draws under min(maxMs, baseMs·2^(n-1)): caps 100, 200, 250.
    expect(sleeps).toHaveLength(3);
    [100, 200, 250].forEach((cap, i) => {
      expect(sleeps[i]).toBeGreaterThanOrEqual(0);
      expect(sleeps[i]).toBeLessThanOrEqual(cap);
    });
    expect(new Set(sleeps).size).toBeGreaterThan(1);
  });

  it('fails a task after its maximum attempts, fails its subtree only, and independent branches finish', async () => {
    const { manager } = await startManager();
    const exec = fakeExecutor((ctx) => {
      if (ctx.task.id === 'bad') throw new Error('disk on fire');
      return { outcome: 'executed', result: null };
    });
    manager.registerExecutor(exec);
    const { jobId } = await manager.submit(
      spec([task('root'), task('bad', ['root'], { maxAttempts: 2 }), task('child', ['bad']), task('grandchild', ['child']), task('side', ['root']), task('side2', ['side'])], { retry: { maxAttempts: 5, baseMs: 1 } }),
    );
    const job = await untilEnded(manager, jobId);
    expect(job.state).toBe('FAILED');
    expect(Object.fromEntries((job.tasks ?? []).map((t) => [t.id, t.state]))).toEqual({ root: 'SUCCEEDED', bad: 'FAILED', child: 'UPSTREAM_FAILED', grandchild: 'UPSTREAM_FAILED', side: 'SUCCEEDED', side2: 'SUCCEEDED' });
    expect(exec.calls.filter((c) => c.task === 'bad')).toHaveLength(2);
    expect(exec.calls.some((c) => c.task === 'child' || c.task === 'grandchild')).toBe(false);
    expect(job.tasks?.find((t) => t.id === 'bad')?.error).toBe('disk on fire');
    expect(job.tasks?.find((t) => t.id === 'child')?.error).toMatch(/dependency bad failed/);
    expect(job.message).toMatch(/1 task\(s\) failed, 2 not run/);
  });

  it('fails non-retryable errors at once', async () => {
    const { manager } = await startManager();
    const exec = fakeExecutor((ctx) => {
      if (ctx.task.id === 'invalid') throw new InvalidArgumentError('payload.step', 'no such step');
      if (ctx.task.id === 'missing') throw new NotFoundError('object x');
      throw Object.assign(new Error('bad input'), { retryable: false });
    });
    manager.registerExecutor(exec);
    const { jobId } = await manager.submit(spec([task('invalid'), task('missing'), task('flagged')], { retry: { maxAttempts: 5, baseMs: 1 } }));
    const job = await untilEnded(manager, jobId);
    expect(job.tasks?.map((t) => [t.id, t.state, t.attempts])).toEqual([
      ['invalid', 'FAILED', 1],
      ['missing', 'FAILED', 1],
      ['flagged', 'FAILED', 1],
    ]);
    expect(exec.calls).toHaveLength(3);
    expect(job.tasks?.[0]?.error).toMatch(/payload\.step: no such step \(not retryable\)/);
  });

  it('cancels: running attempts see the abort, pending tasks end CANCELLED; resume then finishes without redoing succeeded tasks', async () => {
    const { manager } = await startManager();
    let block = true;
    const aborted: string[] = [];
    const exec = fakeExecutor(async (ctx) => {
      if (ctx.task.id === 'slow' && block) {
        await abortable(ctx.signal).catch((err: unknown) => {
          aborted.push(ctx.task.id);
          throw err;
        });
      }
      return { outcome: 'executed', result: ctx.task.id };
    });
    manager.registerExecutor(exec);
    const { jobId } = await manager.submit(spec([task('first'), task('slow', ['first']), task('after', ['slow'])]));
    // Running in the executor, not only recorded as RUNNING (a cancel in between stops the
    // attempt before it starts: the next case).
    await waitFor(() => exec.calls.some((c) => c.task === 'slow'), 10_000, 'slow running');
    expect(await manager.cancel(jobId)).toBe('CANCELLED');
    expect(aborted).toEqual(['slow']);
    const cancelled = await manager.get(jobId);
    expect(Object.fromEntries((cancelled.tasks ?? []).map((t) => [t.id, t.state]))).toEqual({ first: 'SUCCEEDED', slow: 'CANCELLED', after: 'CANCELLED' });
    expect(await manager.cancel(jobId)).toBe('CANCELLED');

    block = false;
    expect(await manager.resume(jobId)).toEqual({ state: 'RUNNING', tasksToRun: 2 });
    const resumed = await untilEnded(manager, jobId);
    expect(resumed.state).toBe('SUCCEEDED');
    expect(resumed.resumes).toBe(1);
    expect(exec.calls.filter((c) => c.task === 'first')).toHaveLength(1);
    expect(exec.calls.filter((c) => c.task === 'slow')).toHaveLength(2);
    await expect(manager.resume(jobId)).rejects.toThrow(`job_id: job ${jobId} has already ended SUCCEEDED: there is nothing to resume`);
  });

  it('a cancel that comes while an attempt is being recorded stops it before it starts', async () => {
    const { manager } = await startManager();
    const exec = fakeExecutor(() => ({ outcome: 'executed', result: null }));
    manager.registerExecutor(exec);
    const store = (manager as unknown as { store: JobStore }).store;
    const update = store.update.bind(store);
    let release = (): void => {};
    const held = new Promise<void>((r) => (release = r));
    let holding = false;
    // The write that records the attempt as RUNNING waits until the job has been cancelled.
    store.update = async (record, changed) => {
      if (!holding && changed.some((t) => t.id === 'only' && t.state === 'RUNNING')) {
        holding = true;
        await held;
      }
      return update(record, changed);
    };
    const { jobId } = await manager.submit(spec([task('only')]));
    await waitFor(() => holding, 10_000, 'the attempt being recorded');
    const cancelled = manager.cancel(jobId);
    release();
    expect(await cancelled).toBe('CANCELLED');
    // The executor was never handed the attempt (and its already-aborted signal).
    expect(exec.calls).toEqual([]);
    expect(stateOf(await manager.get(jobId), 'only')).toBe('CANCELLED');
  });

  it('resumes a failed job after the cause is fixed, rerunning only failed and upstream-failed tasks', async () => {
    const { manager } = await startManager();
    let broken = true;
    const exec = fakeExecutor((ctx) => {
      if (ctx.task.id === 'b' && broken) throw new Error('missing config');
      return { outcome: 'executed', result: `${ctx.task.id}:${[...ctx.deps.values()].join(',')}` };
    });
    manager.registerExecutor(exec);
    const { jobId } = await manager.submit(spec([task('a'), task('b', ['a']), task('c', ['b']), task('d')], { retry: { maxAttempts: 2, baseMs: 1 } }));
    expect((await untilEnded(manager, jobId)).state).toBe('FAILED');
    broken = false;
    expect(await manager.resume(jobId)).toEqual({ state: 'RUNNING', tasksToRun: 2 });
    const job = await untilEnded(manager, jobId);
    expect(job.state).toBe('SUCCEEDED');
    expect(exec.calls.map((c) => c.task).sort()).toEqual(['a', 'b', 'b', 'b', 'c', 'd']);
    // The resumed task got a fresh retry budget and the SUCCEEDED dependency's persisted result.
    expect(await manager.result(jobId, 'c')).toBe('c:b:a:');
    expect(job.tasks?.find((t) => t.id === 'b')?.attempts).toBe(3);
  });

  it('keeps a job whose executor is not registered PENDING with a visible message, and runs it once one is', async () => {
    const { manager } = await startManager();
    const { jobId } = await manager.submit(spec([task('a')], { kind: 'later' }));
    const pending = await waitFor(async () => {
      const j = await manager.get(jobId);
      return j.message ? j : undefined;
    });
    expect(pending.state).toBe('PENDING');
    expect(pending.message).toMatch(/waiting for an executor of kind "later"/);
    manager.registerExecutor(fakeExecutor(() => ({ outcome: 'executed', result: 1 }), 'later'));
    expect((await untilEnded(manager, jobId)).state).toBe('SUCCEEDED');
  });

  it('stop() ends open watches and leaves the job RUNNING on disk; the next start resumes it', async () => {
    const dir = tempDir();
    const first = await startManager(dir);
    first.manager.registerExecutor(fakeExecutor((ctx) => (ctx.task.id === 'hang' ? abortable(ctx.signal) : { outcome: 'executed', result: null })));
    const { jobId } = await first.manager.submit(spec([task('quick'), task('hang', ['quick'])]));
    await waitFor(async () => stateOf(await first.manager.get(jobId), 'hang') === 'RUNNING');
    const seen: string[] = [];
    const watching = (async () => {
      for await (const u of first.manager.watch(jobId, new AbortController().signal)) seen.push(u.job.state);
    })();
    await first.manager.stop();
    await watching;
    expect(seen[0]).toBe('RUNNING');
    await first.db.close();
    const second = await startManager(dir);
    second.manager.registerExecutor(fakeExecutor(() => ({ outcome: 'executed', result: null })));
    const job = await untilEnded(second.manager, jobId);
    expect(job.state).toBe('SUCCEEDED');
    expect(job.tasks?.map((t) => [t.id, t.attempts])).toEqual([
      ['quick', 1],
      ['hang', 2],
    ]);
  });

  it('watch yields a snapshot at once and one per change, ending with the job', async () => {
    const { manager } = await startManager();
    let release: (() => void) | undefined;
    const gate = new Promise<void>((r) => (release = r));
    manager.registerExecutor(
      fakeExecutor(async (ctx) => {
        if (ctx.task.id === 'a') await gate;
        return { outcome: 'executed', result: null };
      }),
    );
    const { jobId } = await manager.submit(spec([task('a'), task('b', ['a'])]));
    const updates: { state: string; percent: number; changed: string[] }[] = [];
    const done = (async () => {
      for await (const u of manager.watch(jobId, new AbortController().signal)) {
        updates.push({ state: u.job.state, percent: u.job.percent, changed: u.changed.map((t) => `${t.id}:${t.state}`) });
        if (updates.length === 1) release?.();
      }
    })();
    await done;
    expect(updates[0]?.changed.sort()).toEqual(expect.arrayContaining(['b:PENDING']));
    expect(updates.at(-1)?.state).toBe('SUCCEEDED');
    expect(updates.at(-1)?.percent).toBe(100);
    const changes = updates.slice(1).flatMap((u) => u.changed);
    expect(changes).toEqual(expect.arrayContaining(['a:SUCCEEDED', 'b:RUNNING', 'b:SUCCEEDED']));
    // An ended job: one snapshot with every task.
    const after: string[][] = [];
    for await (const u of manager.watch(jobId, new AbortController().signal)) after.push(u.changed.map((t) => t.state));
    expect(after).toEqual([['SUCCEEDED', 'SUCCEEDED']]);
  });

  it('rejects bad specs naming the field, writes nothing, and answers unknown ids with NOT_FOUND naming job_id', async () => {
    const { manager } = await startManager();
    const cases: [JobSpec, string][] = [
      [spec([task('a'), task('a')]), 'tasks[1].id'],
      [spec([task('a', ['nope'])]), 'tasks[0].dependsOn[0]'],
      [spec([task('a', ['b']), task('b', ['a'])]), 'tasks[0].dependsOn'],
      [spec([task('a', [], { maxAttempts: 0 })]), 'tasks[0].maxAttempts'],
      [spec([task('a')], { kind: '' }), 'kind'],
      [spec([task('a')], { concurrency: 1.5 }), 'concurrency'],
      [spec([task('a')], { retry: { maxAttempts: -1 } }), 'retry.maxAttempts'],
      [spec([task('')]), 'tasks[0].id'],
    ];
    for (const [s, field] of cases) {
      const err = await manager.submit(s).then(() => undefined, (e: unknown) => e);
      expect(err, field).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).toBe(field);
    }
    expect(await manager.list()).toEqual([]);
    const missing = await manager.get('job-nope').then(() => undefined, (e: unknown) => e);
    expect(missing).toBeInstanceOf(NotFoundError);
    expect((missing as NotFoundError).field).toBe('job_id');
    await expect(manager.cancel('job-nope')).rejects.toBeInstanceOf(NotFoundError);
    await expect(manager.resume('job-nope')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('a manager restarted on the same data dir resumes the job, repeating only the in-flight task', async () => {
    const dir = tempDir();
    const first = await startManager(dir, undefined, { crash: true });
    const firstExec = fakeExecutor(async (ctx) => {
      // "b" hangs, as work does when the process dies under it; it never sees an abort.
      if (ctx.task.id === 'b') await new Promise(() => {});
      return { outcome: 'executed', result: ctx.task.id };
    });
    first.manager.registerExecutor(firstExec);
    const { jobId } = await first.manager.submit(spec([task('a'), task('b', ['a']), task('c', ['b']), task('d')]));
    await waitFor(async () => {
      const j = await first.manager.get(jobId);
      return stateOf(j, 'b') === 'RUNNING' && stateOf(j, 'd') === 'SUCCEEDED';
    });
    // No stop(): the database goes away under the manager, as in a crash.
    await first.db.close();

    const second = await startManager(dir);
    const restarted = await second.manager.get(jobId);
    expect(restarted.state).toBe('PENDING');
    expect(stateOf(restarted, 'b')).toBe('PENDING');
    const secondExec = fakeExecutor((ctx) => ({ outcome: 'executed', result: `${ctx.task.id}<${[...ctx.deps.values()].join(',')}` }));
    second.manager.registerExecutor(secondExec);
    const job = await untilEnded(second.manager, jobId);
    expect(job.state).toBe('SUCCEEDED');
    expect(secondExec.calls.map((c) => c.task)).toEqual(['b', 'c']);
    expect(secondExec.calls[0]?.attempt).toBe(2);
    expect(await second.manager.result(jobId, 'c')).toBe('c<b<a');
    expect(job.restarts).toBe(1);
    expect(job.tasksRerunAfterRestart).toBe(1);
    expect(job.restartToRunningMs).toBeGreaterThanOrEqual(0);
  });

  it('a SIGKILLed process: the job resumes in a new process with only in-flight tasks repeated', async () => {
    const dir = tempDir();
    const script = join(tempDir(), 'job-child.mts');
    const url = (p: string): string => pathToFileURL(join(ROOT, p)).href;
    // The child runs a manager whose executor appends each call to a log and holds task "slow"
    // until it is killed; the parent SIGKILLs it once "slow" runs.
    writeFileSync(
      script,
      `import { appendFileSync } from 'node:fs';
import { JobManager } from ${JSON.stringify(url('coordinator/jobs/job-manager.ts'))};
import { openDatabase } from ${JSON.stringify(url('coordinator/store/database.ts'))};
const [dir, mode, log] = process.argv.slice(2);
const db = await openDatabase(dir);
const manager = new JobManager({ db });
await manager.start();
manager.registerExecutor({ kind: 'fake', async runTask(ctx) {
  appendFileSync(log, ctx.task.id + '\\n');
  if (ctx.task.id === 'slow' && mode === 'first') { console.log('slow-running'); await new Promise(() => {}); }
  return { outcome: 'executed', result: ctx.task.id };
} });
if (mode === 'first') {
  setInterval(() => {}, 1000); // alive until killed
  await manager.submit({ kind: 'fake', title: 't', principal: 'p', payload: null, tasks: [
    { id: 'a', label: 'a', dependsOn: [], payload: null },
    { id: 'slow', label: 'slow', dependsOn: ['a'], payload: null },
    { id: 'z', label: 'z', dependsOn: ['slow'], payload: null },
  ] });
} else {
  for (;;) {
    const [job] = await manager.list();
    if (job && job.state === 'SUCCEEDED') { console.log(JSON.stringify(await manager.get(job.jobId))); break; }
    await new Promise((r) => setTimeout(r, 20));
  }
  await manager.stop();
  await db.close();
}
`,
    );
    const log = join(dir, '..', `calls-${Date.now()}.log`);
    cleanups.push(() => rmSync(log, { force: true }));
    const runChild = (mode: string, until?: string): Promise<string> =>
      new Promise((resolve, reject) => {
        const child = spawn(process.execPath, ['--import', 'tsx', script, dir, mode, log], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (until && out.includes(until)) child.kill('SIGKILL');
        });
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        child.on('exit', (code, signal) => (code === 0 || signal === 'SIGKILL' ? resolve(out) : reject(new Error(`child ${mode} exited ${code}: ${err}`))));
      });
    await runChild('first', 'slow-running');
    const out = await runChild('second');
    const job = JSON.parse(out.trim().split('\n').at(-1) as string) as JobView;
    expect(job.state).toBe('SUCCEEDED');
    expect(job.tasksRerunAfterRestart).toBe(1);
    expect(readFileSync(log, 'utf8').trim().split('\n')).toEqual(['a', 'slow', 'slow', 'z']);
  });

  it('tells the executor when a job starts and ends: success, failure, resume, cancel, and a stop that leaves the job to resume', async () => {
    const dir = tempDir();
    const { manager, db } = await startManager(dir);
    const heard: string[] = [];
    let failB = true;
    let gate: (() => void) | undefined;
    const exec: JobExecutor = {
      ...fakeExecutor(async (ctx) => {
        if (ctx.task.id === 'b' && failB) throw Object.assign(new Error('b broke'), { retryable: false });
        if (ctx.task.id === 'hold') await Promise.race([new Promise<void>((r) => (gate = r)), abortable(ctx.signal)]);
        return { outcome: 'executed', result: null };
      }),
      async jobStarted(e) {
        heard.push(`${e.jobId} started${e.afterRestart ? ' after restart' : ''}`);
      },
      async jobEnded(e) {
        heard.push(`${e.jobId} ${e.state}${e.message ? `: ${e.message.slice(0, 9)}` : ''}`);
        if (e.state === 'SUCCEEDED') throw new Error('a failing hook changes nothing');
      },
    };
    manager.registerExecutor(exec);
    const ok = (await manager.submit(spec([task('a')]))).jobId;
    expect((await untilEnded(manager, ok)).state).toBe('SUCCEEDED');
    const bad = (await manager.submit(spec([task('b')]))).jobId;
    expect((await untilEnded(manager, bad)).state).toBe('FAILED');
    failB = false;
    await manager.resume(bad);
    await waitFor(async () => ((await manager.get(bad)).state === 'SUCCEEDED' ? true : undefined), 10_000, 'resumed job');
    const held = (await manager.submit(spec([task('hold')]))).jobId;
    await waitFor(async () => (gate ? true : undefined), 10_000, 'hold running');
    expect(await manager.cancel(held)).toBe('CANCELLED');
    // cancel() resolves once the job ended, its executor told.
    expect(heard).toEqual([`${ok} started`, `${ok} SUCCEEDED`, `${bad} started`, `${bad} FAILED: 1 task(s)`, `${bad} started`, `${bad} SUCCEEDED`, `${held} started`, `${held} CANCELLED: cancelled`]);

    // A stop leaves a running job to resume: no end is told; the next start tells it started after a restart.
    gate = undefined;
    const again = (await manager.submit(spec([task('hold')]))).jobId;
    await waitFor(async () => (gate ? true : undefined), 10_000, 'hold running again');
    await manager.stop();
    expect(heard.slice(8)).toEqual([`${again} started`]);
    await db.close();
    const second = await startManager(dir);
    second.manager.registerExecutor({ ...exec, kind: 'fake' });
    await waitFor(async () => (heard.length === 10 ? true : undefined), 10_000, 'restart heard');
    expect(heard.slice(9)).toEqual([`${again} started after restart`]);
    (gate as (() => void) | undefined)?.();
    expect((await untilEnded(second.manager, again)).state).toBe('SUCCEEDED');
    await waitFor(async () => (heard.length === 11 ? true : undefined), 10_000, 'end after restart');
  });
});

describe('JobManager on a store that refuses writes (a full data dir)', () => {
  it('pauses the job instead of failing or stranding it, and resumes it without a restart once writes are taken again', async () => {
    const dir = tempDir();
    const db = await openDatabase(dir);
    // The job store writes through sublevel batches, which reach LevelDB as the root's _batch:
    // the one below fails as a full disk fails it, once, when armed. Wrapped before the guard is.
    const raw = db as unknown as { _batch: (...args: unknown[]) => Promise<void> };
    const batch = raw._batch.bind(db);
    let failNext = false;
    raw._batch = async (...args: unknown[]): Promise<void> => {
      if (!failNext) return batch(...args);
      failNext = false;
      throw Object.assign(new Error(`IO error: ${dir}/000005.ldb: No space left on device`), { code: 'LEVEL_IO_ERROR' });
    };
    const guard = guardStorage(db, { dir, probeIntervalMs: 3_600_000, probeSpace: async () => {} });
    const logs: string[] = [];
    // As the coordinator wires it (CoordinatorContext.onStoreWritable).
    const manager = new JobManager({ db, seed: 7, log: (l) => logs.push(l), onStoreWritable: (l) => guard.onChange((s) => s === 'WRITABLE' && l()) });
    await manager.start();
    cleanups.push(async () => {
      await manager.stop();
      await guard.stop();
      if (db.status === 'open') await db.close();
    });
    const exec = fakeExecutor((ctx) => {
      // Task b's result is the write that meets the full disk.
      if (ctx.task.id === 'b' && ctx.attempt === 1) failNext = true;
      return { outcome: 'executed', result: ctx.task.id };
    });
    manager.registerExecutor(exec);
    const { jobId } = await manager.submit(spec([task('a'), task('b', ['a']), task('c', ['b'])]));
    await waitFor(async () => (guard.state === 'FULL' ? true : undefined), 10_000, 'the store to refuse writes');
    const paused = await waitFor(async () => {
      const j = await manager.get(jobId);
      return j.state === 'PENDING' && j.message.startsWith('paused: the store refused a write') ? j : undefined;
    }, 10_000, 'the job to pause');
    // Not failed: b's result, whose write was refused, is kept in memory; c waits.
    expect(stateOf(paused, 'b')).toBe('SUCCEEDED');
    expect(stateOf(paused, 'c')).toBe('PENDING');
    expect(paused.message).toContain('is out of space');

    expect(await guard.probe()).toBe('WRITABLE');
    const job = await untilEnded(manager, jobId);
    expect(job.state).toBe('SUCCEEDED');
    // Resumed on the store's word, not on its backoff timer.
    expect(logs).toContain(`job ${jobId}: the store takes writes again; resuming`);
    // Nothing ran twice, and the result whose write was refused reached the store after the pause.
    expect(exec.calls).toEqual([
      { task: 'a', attempt: 1 },
      { task: 'b', attempt: 1 },
      { task: 'c', attempt: 1 },
    ]);
    const stored = await createJobStore(db).read(jobId);
    expect(stored?.record.state).toBe('SUCCEEDED');
    expect(stored?.tasks.map((t) => [t.id, t.state, t.failures])).toEqual([
      ['a', 'SUCCEEDED', 0],
      ['b', 'SUCCEEDED', 0],
      ['c', 'SUCCEEDED', 0],
    ]);
    expect(logs.some((l) => l.includes('run loop crashed'))).toBe(false);
  });
});
