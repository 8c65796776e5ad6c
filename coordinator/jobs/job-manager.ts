import { randomBytes } from 'node:crypto';
import { EventEmitter, setMaxListeners } from 'node:events';
import { sleep } from '../../common/abortable-sleep.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, isRetraceError } from '../../common/errors.js';
import { createRng, fullJitterBackoffMs } from '../../common/random.js';
import { storeErrorOf, type Database } from '../store/database.js';
import { createJobStore, type JobRecord, type JobStore, type StoredJob, type TaskCounts, type TaskRecord } from './job-store.js';
import type { JobExecutor, JobSpec, JobState, JobSubmitter, JobTaskSpec, JsonValue, TaskOutcome, TaskState, TaskStatus } from './job-types.js';

export type { JobRecord, TaskCounts } from './job-store.js';

/** Options of a JobManager; defaults in brackets. */
export interface JobManagerOptions {
  db: Database;
  /** One line per state transition. */
  log?: (line: string) => void;
  /** Wall clock in ms [Date.now]. */
  now?: () => number;
  /** Seed of the backoff jitter [random]: fixed in tests so retries are repeatable. */
  seed?: number;
  /** Waits between attempts [common/abortable-sleep]; tests may shorten them. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** How long stop() waits for attempts that ignore their abort signal, ms [10000]; their jobs stay RUNNING on disk either way. */
  stopGraceMs?: number;
  /** Subscribes to the store taking writes again after a full data dir (CoordinatorContext); parked jobs resume on it. */
  onStoreWritable?: (listener: () => void) => () => void;
}

/** A job as the API shows it. `tasks` is left out by `list`. */
export interface JobView extends JobRecord {
  /** Finished tasks over all, 0..100. */
  percent: number;
  tasks?: TaskStatus[];
}

/** One WatchJob message: the job (without tasks) and the tasks that changed since the last one. */
export interface JobUpdate {
  job: JobView;
  changed: TaskStatus[];
}

export type ManagerState = 'CREATED' | 'RUNNING' | 'STOPPING' | 'STOPPED';

const JOB_ENDED: ReadonlySet<JobState> = new Set<JobState>(['SUCCEEDED', 'FAILED', 'CANCELLED']);
const TASK_STATES: readonly TaskState[] = ['PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'UPSTREAM_FAILED', 'CANCELLED'];
const TASK_FINISHED: ReadonlySet<TaskState> = new Set<TaskState>(['SUCCEEDED', 'FAILED', 'UPSTREAM_FAILED', 'CANCELLED']);
const OUTCOMES: ReadonlySet<string> = new Set<TaskOutcome>(['executed', 'cached', 'cutoff']);
const DEFAULT_MAX_ATTEMPTS = 3;
/** A job the store refused a write of tries again after this, doubling per refusal up to PARK_MAX_MS. */
const PARK_FIRST_MS = 500;
const PARK_MAX_MS = 5_000;
const DEFAULT_BASE_MS = 200;
const DEFAULT_MAX_MS = 10_000;
const DEFAULT_CONCURRENCY = 16;

/** A spec checked and defaulted once; nothing downstream re-checks it. */
interface CompiledJob {
  spec: JobSpec;
  maxAttempts: ReadonlyMap<string, number>;
  baseMs: number;
  maxMs: number;
  concurrency: number;
  /** Task id → ids of the tasks that depend on it. */
  dependents: ReadonlyMap<string, readonly string[]>;
  taskSpecs: ReadonlyMap<string, JobTaskSpec>;
}

/** A job held in memory while it is unfinished (or being resumed/watched). */
interface LiveJob {
  compiled: CompiledJob;
  record: JobRecord;
  tasks: Map<string, TaskRecord>;
  events: EventEmitter;
  controller: AbortController | undefined;
  /** The run loop, while one is going. */
  running: Promise<void> | undefined;
  cancelRequested: boolean;
  /** Set when a restart found it unfinished: the run that follows measures restart → running. */
  resumedAfterRestart: boolean;
  /** Writes of this job, in order (a later state never lands before an earlier one). */
  writes: Promise<void>;
  /** While the store refuses writes: the wait before the next try, doubled per refusal. */
  parkedDelayMs: number;
  parkTimer: NodeJS.Timeout | undefined;
}

/**
 * The job orchestrator. Jobs are DAGs of tasks; the manager persists them in LevelDB (spec once,
 * every job/task state change as it happens, awaited before dependents start, so a SIGKILL loses
 * no finished task), runs tasks in dependency order up to the job's concurrency through the
 * executor registered for the job's kind, retries failed attempts with jittered exponential
 * backoff, fails the downstream subtree of a task that keeps failing (UPSTREAM_FAILED) while
 * independent branches finish, cancels, resumes failed jobs without redoing SUCCEEDED tasks, and
 * after a coordinator restart resumes unfinished jobs once their executor is registered, repeating
 * only the tasks that were in flight.
 *
 * Lifecycle: CREATED → start() → RUNNING → stop() → STOPPED. stop() aborts running attempts but
 * leaves their jobs RUNNING on disk, so the next start resumes them.
 */
export class JobManager implements JobSubmitter {
  private readonly store: JobStore;
  private readonly log: (line: string) => void;
  private readonly now: () => number;
  private readonly rng: () => number;
  private readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly stopGraceMs: number;
  private readonly executors = new Map<string, JobExecutor>();
  private readonly live = new Map<string, LiveJob>();
  /** Wakes every watch loop, so open WatchJob streams end on stop(). */
  private readonly stopping = new EventEmitter();
  private state: ManagerState = 'CREATED';
  private startedAtMs = 0;
  private readonly onStoreWritable: ((listener: () => void) => () => void) | undefined;
  private unsubscribeWritable: () => void = () => {};

  constructor(options: JobManagerOptions) {
    this.store = createJobStore(options.db);
    this.log = options.log ?? (() => {});
    this.now = options.now ?? Date.now;
    this.rng = createRng(options.seed ?? randomBytes(4).readUInt32LE(0));
    this.sleep = options.sleep ?? sleep;
    this.stopGraceMs = options.stopGraceMs ?? 10_000;
    this.onStoreWritable = options.onStoreWritable;
    setMaxListeners(0, this.stopping);
  }

  get managerState(): ManagerState {
    return this.state;
  }

  /**
   * Loads the jobs a stopped or crashed coordinator left PENDING or RUNNING: their RUNNING tasks go
   * back to PENDING (only in-flight work is repeated) and they run as soon as their kind's executor
   * is registered.
   */
  async start(): Promise<void> {
    this.transition('RUNNING', ['CREATED']);
    this.startedAtMs = this.now();
    this.unsubscribeWritable = this.onStoreWritable?.(() => this.resumeParked()) ?? (() => {});
    const unfinished: string[] = [];
    for await (const r of this.store.records()) if (!JOB_ENDED.has(r.state)) unfinished.push(r.jobId);
    for (const jobId of unfinished) {
      const stored = await this.store.read(jobId);
      if (!stored) continue;
      const job = this.toLive(stored);
      const interrupted = [...job.tasks.values()].filter((t) => t.state === 'RUNNING');
      for (const t of interrupted) this.setTaskState(job, t, 'PENDING');
      job.record.restarts++;
      job.record.tasksRerunAfterRestart += interrupted.length;
      job.record.state = 'PENDING';
      job.record.message = `resuming after a coordinator restart (${interrupted.length} interrupted task(s) to run again)`;
      job.resumedAfterRestart = true;
      this.live.set(jobId, job);
      await this.persist(job, interrupted);
      this.log(`job ${jobId}: found ${stored.record.state} after a restart; ${interrupted.length} task(s) were in flight`);
      this.launch(job);
    }
  }

  /** Aborts running attempts and waits for the run loops; unfinished jobs stay as they are on disk. */
  async stop(): Promise<void> {
    if (this.state === 'STOPPED' || this.state === 'STOPPING') return;
    this.state = 'STOPPING';
    this.unsubscribeWritable();
    this.stopping.emit('stop');
    for (const job of this.live.values()) job.controller?.abort(new Error('coordinator stopping'));
    const settled = Promise.all(
      [...this.live.values()].map(async (j) => {
        await j.running;
        await j.writes;
      }),
    );
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), this.stopGraceMs)));
    if ((await Promise.race([settled, grace])) === 'timeout') this.log(`jobs: stopped with attempts still running after ${this.stopGraceMs} ms; their jobs resume on the next start`);
    clearTimeout(timer);
    this.live.clear();
    this.state = 'STOPPED';
  }

  registerExecutor(executor: JobExecutor): void {
    if (!executor.kind) throw new InvalidArgumentError('kind', 'an executor needs a kind');
    if (this.executors.has(executor.kind)) throw new FailedPreconditionError(`an executor of kind ${JSON.stringify(executor.kind)} is already registered`, 'kind');
    this.executors.set(executor.kind, executor);
    this.log(`jobs: executor ${executor.kind} registered`);
    for (const job of this.live.values()) if (job.compiled.spec.kind === executor.kind) this.launch(job);
  }

  /** The kinds of the registered executors, sorted. */
  kinds(): string[] {
    return [...this.executors.keys()].sort();
  }

  async submit(spec: JobSpec): Promise<{ jobId: string }> {
    this.requireRunning();
    const compiled = compileJob(spec);
    const createdAtMs = this.now();
    const jobId = `job-${new Date(createdAtMs).toISOString().replace(/[-:.TZ]/g, '').slice(0, 14)}-${randomBytes(3).toString('hex')}`;
    const tasks = compiled.spec.tasks.map((t): TaskRecord => ({ id: t.id, label: t.label, state: 'PENDING', attempts: 0, failures: 0 }));
    const record: JobRecord = {
      jobId,
      kind: spec.kind,
      title: spec.title,
      principal: spec.principal,
      state: 'PENDING',
      createdAtMs,
      message: '',
      counts: countTasks(tasks),
      restarts: 0,
      tasksRerunAfterRestart: 0,
      restartToRunningMs: 0,
      resumes: 0,
    };
    const stored: StoredJob = { spec: compiled.spec, record, tasks };
    await this.store.create(stored);
    const job = this.toLive(stored, compiled);
    this.live.set(jobId, job);
    this.log(`job ${jobId}: submitted (${spec.kind}, ${tasks.length} tasks)`);
    this.launch(job);
    return { jobId };
  }

  async jobPayloads(kind: string): Promise<{ jobId: string; payload: JsonValue }[]> {
    const out: { jobId: string; payload: JsonValue; createdAtMs: number }[] = [];
    for await (const r of this.store.records()) {
      if (r.kind !== kind) continue;
      const stored = await this.store.read(r.jobId);
      if (stored) out.push({ jobId: r.jobId, payload: stored.spec.payload, createdAtMs: r.createdAtMs });
    }
    return out.sort((a, b) => a.createdAtMs - b.createdAtMs).map(({ jobId, payload }) => ({ jobId, payload }));
  }

  /** The job with its tasks; NotFoundError naming `job_id`. */
  async get(jobId: string): Promise<JobView> {
    const live = this.live.get(jobId);
    if (live) return viewOf(live.record, [...live.tasks.values()]);
    const stored = await this.readStored(jobId);
    return viewOf(stored.record, stored.tasks);
  }

  /** Every job without its tasks, newest first. */
  async list(filter: { state?: JobState; kind?: string } = {}): Promise<JobView[]> {
    const out: JobView[] = [];
    for await (const stored of this.store.records()) {
      const r = this.live.get(stored.jobId)?.record ?? stored;
      if (filter.state !== undefined && r.state !== filter.state) continue;
      if (filter.kind && r.kind !== filter.kind) continue;
      out.push(viewOf(r));
    }
    // Ids made in the same second sort at random: creation time decides.
    return out.sort((a, b) => b.createdAtMs - a.createdAtMs || (a.jobId < b.jobId ? 1 : -1));
  }

  /** A task's result once it SUCCEEDED (what dependents get as `deps`). */
  async result(jobId: string, taskId: string): Promise<JsonValue | undefined> {
    const live = this.live.get(jobId);
    const task = live ? live.tasks.get(taskId) : (await this.readStored(jobId)).tasks.find((t) => t.id === taskId);
    if (!task) throw new NotFoundError(`task ${JSON.stringify(taskId)} of job ${jobId}`, 'task_id');
    return task.result;
  }

  /**
   * Cancels the job: running attempts are aborted through their signal, pending tasks end
   * CANCELLED. Resolves with the job's state once it has ended. Cancelling a CANCELLED job (or
   * one being cancelled) changes nothing and resolves CANCELLED, so a retried call is safe; a job
   * that ended SUCCEEDED or FAILED is refused with FailedPreconditionError (`job_id`).
   */
  async cancel(jobId: string): Promise<JobState> {
    const job = this.live.get(jobId);
    const ended = job ? job.record.state : (await this.readStored(jobId)).record.state;
    if (ended === 'SUCCEEDED' || ended === 'FAILED') {
      const hint = ended === 'FAILED' ? ' (jobs resume runs its failed tasks again)' : '';
      throw new FailedPreconditionError(`job ${jobId} has already ended ${ended}: there is nothing to cancel${hint}`, 'job_id');
    }
    if (!job || JOB_ENDED.has(job.record.state)) return ended;
    job.cancelRequested = true;
    clearTimeout(job.parkTimer);
    job.parkTimer = undefined;
    this.log(`job ${jobId}: cancel requested`);
    if (job.running) {
      job.controller?.abort(new Error('job cancelled'));
      await job.running;
    } else {
      // Never started (no executor yet): nothing runs, end it here.
      await this.finish(job);
    }
    return job.record.state;
  }

  /**
   * Runs a FAILED or CANCELLED job again: its FAILED, UPSTREAM_FAILED and CANCELLED tasks get a
   * fresh retry budget; SUCCEEDED tasks keep their results and are never rerun. A job that has not
   * ended is left as it is (tasksToRun 0), so a retried call is safe; a SUCCEEDED job is refused
   * with FailedPreconditionError (`job_id`).
   */
  async resume(jobId: string): Promise<{ state: JobState; tasksToRun: number }> {
    this.requireRunning();
    let job = this.live.get(jobId);
    if (!job) {
      const stored = await this.readStored(jobId);
      if (stored.record.state === 'SUCCEEDED') throw succeeded(jobId);
      job = this.toLive(stored);
      this.live.set(jobId, job);
    }
    if (job.record.state === 'SUCCEEDED') throw succeeded(jobId);
    if (job.record.state !== 'FAILED' && job.record.state !== 'CANCELLED') return { state: job.record.state, tasksToRun: 0 };
    const again = [...job.tasks.values()].filter((t) => t.state === 'FAILED' || t.state === 'UPSTREAM_FAILED' || t.state === 'CANCELLED');
    for (const t of again) {
      this.setTaskState(job, t, 'PENDING');
      t.failures = 0;
      delete t.error;
      delete t.endedAtMs;
    }
    job.cancelRequested = false;
    job.record.resumes++;
    job.record.state = 'PENDING';
    delete job.record.endedAtMs;
    job.record.message = `resumed: ${again.length} task(s) to run again`;
    await this.persist(job, again);
    this.log(`job ${jobId}: resumed, ${again.length} task(s) to run again`);
    this.launch(job);
    return { state: job.record.state, tasksToRun: again.length };
  }

  /**
   * Progress of a job: a snapshot at once (every task in `changed`), then one per change, ending
   * after the update that shows the job ended, or when `signal` aborts. NotFoundError naming `job_id`.
   */
  async *watch(jobId: string, signal: AbortSignal): AsyncGenerator<JobUpdate> {
    const job = this.live.get(jobId);
    if (!job) {
      const stored = await this.readStored(jobId);
      yield { job: viewOf(stored.record), changed: stored.tasks.map(statusOf) };
      return;
    }
    const queue: JobUpdate[] = [];
    let wake: (() => void) | undefined;
    const onChange = (u: JobUpdate): void => {
      queue.push(u);
      wake?.();
    };
    const onAbort = (): void => wake?.();
    job.events.on('change', onChange);
    signal.addEventListener('abort', onAbort, { once: true });
    this.stopping.on('stop', onAbort);
    try {
      yield { job: viewOf(job.record), changed: [...job.tasks.values()].map(statusOf) };
      if (JOB_ENDED.has(job.record.state)) return;
      for (;;) {
        while (queue.length > 0) {
          const u = queue.shift() as JobUpdate;
          yield u;
          if (JOB_ENDED.has(u.job.state)) return;
        }
        if (signal.aborted || this.state !== 'RUNNING') return;
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    } finally {
      job.events.off('change', onChange);
      signal.removeEventListener('abort', onAbort);
      this.stopping.off('stop', onAbort);
    }
  }

  // ---- running ----

  /** Starts the job's run loop if it is PENDING, its executor is registered and none is going. */
  private launch(job: LiveJob): void {
    if (this.state !== 'RUNNING' || job.running || job.record.state !== 'PENDING') return;
    const executor = this.executors.get(job.compiled.spec.kind);
    if (!executor) {
      const message = `waiting for an executor of kind ${JSON.stringify(job.compiled.spec.kind)} (none is registered on this coordinator)`;
      if (job.record.message !== message) {
        job.record.message = message;
        void this.persist(job, []).catch((err: unknown) => this.log(`job ${job.record.jobId}: ${String(err)}`));
      }
      return;
    }
    job.running = this.run(job, executor)
      .then(() => {
        job.parkedDelayMs = 0;
      })
      .catch((err: unknown) => {
        if (isStoreRefusal(err) && this.state === 'RUNNING' && !job.cancelRequested) this.park(job, err);
        else this.log(`job ${job.record.jobId}: run loop crashed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      })
      .finally(() => {
        job.running = undefined;
        // Ended jobs need not stay in memory; watchers already hold their last update.
        if (JOB_ENDED.has(job.record.state) && this.live.get(job.record.jobId) === job) this.live.delete(job.record.jobId);
      });
  }

  private async run(job: LiveJob, executor: JobExecutor): Promise<void> {
    const { compiled } = job;
    const controller = new AbortController();
    // Every attempt of the job listens on this one signal.
    setMaxListeners(0, controller.signal);
    job.controller = controller;
    const signal = controller.signal;
    job.record.state = 'RUNNING';
    job.record.startedAtMs ??= this.now();
    job.record.message = '';
    const afterRestart = job.resumedAfterRestart;
    if (job.resumedAfterRestart) {
      job.record.restartToRunningMs = this.now() - this.startedAtMs;
      job.resumedAfterRestart = false;
    }
    // After a pause every task is written again: results noted in memory while the store refused writes never reached it.
    await this.persist(job, job.parkedDelayMs > 0 ? [...job.tasks.values()] : []);
    this.log(`job ${job.record.jobId}: RUNNING`);
    await this.tell(executor, 'jobStarted', job, afterRestart);

    // Unmet dependencies per pending task; tasks reach the ready queue when theirs reach 0.
    const unmet = new Map<string, number>();
    const ready: string[] = [];
    for (const spec of compiled.spec.tasks) {
      const t = job.tasks.get(spec.id) as TaskRecord;
      if (t.state !== 'PENDING') continue;
      const n = spec.dependsOn.filter((d) => job.tasks.get(d)?.state !== 'SUCCEEDED').length;
      unmet.set(spec.id, n);
      if (n === 0) ready.push(spec.id);
    }
    // A dependency that failed before (and was not resumed) fails its pending dependents now.
    const upstream: TaskRecord[] = [];
    for (const t of job.tasks.values()) if (t.state === 'FAILED' || t.state === 'UPSTREAM_FAILED') this.markUpstreamFailed(job, t.id, upstream);
    if (upstream.length > 0) await this.persist(job, upstream);

    const inFlight = new Map<string, Promise<void>>();
    try {
      await this.runReady(job, executor, { ready, unmet, signal, inFlight });
    } catch (err) {
      // A write the store refused: the job's other attempts stop before launch parks it.
      controller.abort(err);
      await Promise.allSettled(inFlight.values());
      throw err;
    }
    if (this.state !== 'RUNNING' && !job.cancelRequested) {
      // Stopping: the job stays RUNNING on disk and the next start resumes it.
      return;
    }
    await this.finish(job);
  }

  /** Runs the ready tasks, at most the job's concurrency at a time, until none is left or the signal aborts. */
  private async runReady(
    job: LiveJob,
    executor: JobExecutor,
    loop: { ready: string[]; unmet: Map<string, number>; signal: AbortSignal; inFlight: Map<string, Promise<void>> },
  ): Promise<void> {
    const { compiled } = job;
    const { ready, unmet, signal, inFlight } = loop;
    // A moving head instead of shift(): shift is O(n) and jobs may have many thousand tasks.
    let head = 0;
    for (;;) {
      while (!signal.aborted && inFlight.size < compiled.concurrency && head < ready.length) {
        const id = ready[head++] as string;
        const t = job.tasks.get(id) as TaskRecord;
        if (t.state !== 'PENDING') continue;
        const p = this.runTask(job, executor, t, signal).then(async (state) => {
          if (state === 'SUCCEEDED') {
            for (const d of compiled.dependents.get(id) ?? []) {
              const n = (unmet.get(d) ?? 1) - 1;
              unmet.set(d, n);
              if (n === 0 && job.tasks.get(d)?.state === 'PENDING') ready.push(d);
            }
          } else if (state === 'FAILED') {
            const changed: TaskRecord[] = [];
            this.markUpstreamFailed(job, id, changed);
            if (changed.length > 0) await this.persist(job, changed);
          }
          // Only now: the loop must not end while a failure's subtree is still being written.
          inFlight.delete(id);
        });
        inFlight.set(id, p);
      }
      if (inFlight.size === 0) break;
      await Promise.race(inFlight.values());
    }
  }

  /**
   * A job whose write the store refused (a full data dir, the database reopening) waits, in
   * memory, as a restart would leave it: its in-flight tasks PENDING again (a result already
   * handed back is kept, and written with every other task when the job runs again). It is launched again
   * as soon as the store says it takes writes again (onStoreWritable), or else after a wait that
   * doubles per refusal up to PARK_MAX_MS (a refusal the storage guard did not see, or a guard
   * that was writable again before the job parked), so it resumes without a restart.
   */
  private park(job: LiveJob, err: unknown): void {
    const interrupted = [...job.tasks.values()].filter((t) => t.state === 'RUNNING');
    for (const t of interrupted) this.setTaskState(job, t, 'PENDING');
    job.record.state = 'PENDING';
    job.controller = undefined;
    job.parkedDelayMs = Math.min(PARK_MAX_MS, Math.max(PARK_FIRST_MS, job.parkedDelayMs * 2));
    job.record.message = `paused: the store refused a write (${errorMessage(err)}); trying again once it takes writes, or in ${job.parkedDelayMs} ms`;
    this.log(`job ${job.record.jobId}: ${job.record.message}`);
    // Watchers hear of it when the store takes this write; else the next try says it again.
    void this.persist(job, interrupted).catch(() => {});
    clearTimeout(job.parkTimer);
    job.parkTimer = setTimeout(() => {
      job.parkTimer = undefined;
      this.launch(job);
    }, job.parkedDelayMs);
    job.parkTimer.unref();
  }

  /** Launches every parked job now: the store takes writes again, so their timers need not run out. */
  private resumeParked(): void {
    for (const job of this.live.values()) {
      // One still settling its refused run keeps its timer: launch() would not start it yet.
      if (job.parkTimer === undefined || job.running || job.cancelRequested) continue;
      clearTimeout(job.parkTimer);
      job.parkTimer = undefined;
      this.log(`job ${job.record.jobId}: the store takes writes again; resuming`);
      this.launch(job);
    }
  }

  /** Ends a job that has nothing left to run: CANCELLED, FAILED or SUCCEEDED. */
  private async finish(job: LiveJob): Promise<void> {
    const changed: TaskRecord[] = [];
    if (job.cancelRequested) {
      for (const t of job.tasks.values()) {
        if (t.state === 'PENDING' || t.state === 'RUNNING') {
          this.setTaskState(job, t, 'CANCELLED');
          t.endedAtMs = this.now();
          changed.push(t);
        }
      }
    }
    const c = job.record.counts;
    job.record.state = job.cancelRequested ? 'CANCELLED' : c.FAILED + c.UPSTREAM_FAILED > 0 || c.PENDING > 0 ? 'FAILED' : 'SUCCEEDED';
    job.record.endedAtMs = this.now();
    job.record.message =
      job.record.state === 'CANCELLED'
        ? 'cancelled'
        : job.record.state === 'FAILED'
          ? `${c.FAILED} task(s) failed, ${c.UPSTREAM_FAILED} not run because a dependency failed; fix the cause and resume the job`
          : '';
    await this.persist(job, changed);
    this.log(`job ${job.record.jobId}: ${job.record.state}`);
    const executor = this.executors.get(job.compiled.spec.kind);
    if (executor) await this.tell(executor, 'jobEnded', job, false);
  }

  /** Calls an executor's lifecycle hook; its failure is the executor's to report, never the job's. */
  private async tell(executor: JobExecutor, hook: 'jobStarted' | 'jobEnded', job: LiveJob, afterRestart: boolean): Promise<void> {
    const fn = executor[hook];
    if (!fn) return;
    const r = job.record;
    try {
      await fn.call(executor, { jobId: r.jobId, job: job.compiled.spec, state: r.state, atMs: hook === 'jobEnded' ? (r.endedAtMs ?? this.now()) : this.now(), message: hook === 'jobEnded' ? r.message : '', afterRestart });
    } catch (err) {
      this.log(`job ${r.jobId}: executor ${executor.kind} ${hook}: ${errorMessage(err)}`);
    }
  }

  /** Runs one task's attempts until it succeeds, fails for good, is cancelled, or the manager stops. */
  private async runTask(job: LiveJob, executor: JobExecutor, t: TaskRecord, signal: AbortSignal): Promise<TaskState> {
    const { compiled } = job;
    const spec = compiled.taskSpecs.get(t.id) as JobTaskSpec;
    const maxAttempts = compiled.maxAttempts.get(t.id) ?? DEFAULT_MAX_ATTEMPTS;
    const deps = new Map<string, JsonValue>(spec.dependsOn.map((d) => [d, job.tasks.get(d)?.result ?? null]));
    for (;;) {
      t.attempts++;
      this.setTaskState(job, t, 'RUNNING');
      t.startedAtMs = this.now();
      delete t.endedAtMs;
      await this.persist(job, [t]);
      // Cancelled (or stopping) while the attempt was being recorded: it does not start. The
      // executor would be handed a signal already aborted, whose abort event never comes.
      if (signal.aborted) return this.abortedTask(job, t);
      let outcome: { outcome: TaskOutcome; result: JsonValue } | undefined;
      let error: unknown;
      try {
        const r = await executor.runTask({ jobId: job.record.jobId, job: compiled.spec, task: spec, attempt: t.attempts, signal, deps });
        if (!OUTCOMES.has(r.outcome)) throw new Error(`executor ${executor.kind} returned outcome ${JSON.stringify(r.outcome)}; expected executed, cached or cutoff`);
        // The result is persisted and handed to dependents: it must survive JSON.
        outcome = { outcome: r.outcome, result: JSON.parse(JSON.stringify(r.result ?? null)) as JsonValue };
      } catch (err) {
        error = err;
      }
      if (outcome) {
        this.setTaskState(job, t, 'SUCCEEDED');
        t.outcome = outcome.outcome;
        t.result = outcome.result;
        t.endedAtMs = this.now();
        delete t.error;
        await this.persist(job, [t]);
        return 'SUCCEEDED';
      }
      if (signal.aborted) return this.abortedTask(job, t);
      // Not the task's failure: its attempt runs again once the job is launched after the pause.
      if (isStoreRefusal(error)) throw error;
      t.failures++;
      t.error = errorMessage(error);
      const retryable = isRetryable(error);
      if (!retryable || t.failures >= maxAttempts) {
        this.setTaskState(job, t, 'FAILED');
        t.endedAtMs = this.now();
        if (!retryable) t.error = `${t.error} (not retryable)`;
        await this.persist(job, [t]);
        this.log(`job ${job.record.jobId}: task ${t.id} FAILED after ${t.failures} attempt(s): ${t.error}`);
        return 'FAILED';
      }
      const delayMs = fullJitterBackoffMs(t.failures, compiled.baseMs, compiled.maxMs, this.rng);
      job.record.message = `task ${t.id}: attempt ${t.attempts} failed (${t.error}); retrying in ${delayMs} ms`;
      await this.persist(job, [t]);
      await this.sleep(delayMs, signal);
      if (signal.aborted) return this.abortedTask(job, t);
    }
  }

  /** An attempt stopped by the job's signal: CANCELLED when the job was cancelled, else left for the next start. */
  private async abortedTask(job: LiveJob, t: TaskRecord): Promise<TaskState> {
    if (!job.cancelRequested) return 'RUNNING';
    this.setTaskState(job, t, 'CANCELLED');
    t.endedAtMs = this.now();
    t.error = 'cancelled';
    await this.persist(job, [t]);
    return 'CANCELLED';
  }

  /** Marks every PENDING transitive dependent of `taskId` UPSTREAM_FAILED (collected in `changed`). */
  private markUpstreamFailed(job: LiveJob, taskId: string, changed: TaskRecord[]): void {
    const stack = [taskId];
    while (stack.length > 0) {
      const id = stack.pop() as string;
      for (const d of job.compiled.dependents.get(id) ?? []) {
        const t = job.tasks.get(d);
        if (!t || t.state !== 'PENDING') continue;
        this.setTaskState(job, t, 'UPSTREAM_FAILED');
        t.error = `dependency ${id} failed`;
        t.endedAtMs = this.now();
        changed.push(t);
        stack.push(d);
      }
    }
  }

  // ---- state and persistence ----

  private setTaskState(job: LiveJob, t: TaskRecord, state: TaskState): void {
    job.record.counts[t.state]--;
    job.record.counts[state]++;
    t.state = state;
  }

  /** Writes the job record and `tasks` (in this job's write order), then tells watchers. */
  private persist(job: LiveJob, tasks: readonly TaskRecord[]): Promise<void> {
    // Copies now: the objects go on changing while the write waits its turn.
    const record = structuredClone(job.record);
    const copies = tasks.map((t) => structuredClone(t));
    const write = job.writes.then(() => this.store.update(record, copies));
    job.writes = write.catch(() => {});
    return write.then(() => {
      job.events.emit('change', { job: viewOf(record), changed: copies.map(statusOf) } satisfies JobUpdate);
    });
  }

  private toLive(stored: StoredJob, compiled?: CompiledJob): LiveJob {
    const events = new EventEmitter();
    setMaxListeners(0, events);
    return {
      compiled: compiled ?? compileJob(stored.spec),
      record: stored.record,
      tasks: new Map(stored.tasks.map((t) => [t.id, t])),
      events,
      controller: undefined,
      running: undefined,
      cancelRequested: false,
      resumedAfterRestart: false,
      writes: Promise.resolve(),
      parkedDelayMs: 0,
      parkTimer: undefined,
    };
  }

  private async readStored(jobId: string): Promise<StoredJob> {
    if (!jobId) throw new InvalidArgumentError('job_id', 'is required');
    const stored = jobId.includes('!') ? undefined : await this.store.read(jobId);
    if (!stored) throw new NotFoundError(`job ${JSON.stringify(jobId)}`, 'job_id');
    return stored;
  }

  private requireRunning(): void {
    if (this.state !== 'RUNNING') throw new FailedPreconditionError(`the job manager is ${this.state}`);
  }

  private transition(to: ManagerState, from: readonly ManagerState[]): void {
    if (!from.includes(this.state)) throw new Error(`job manager: illegal transition ${this.state} → ${to}`);
    this.state = to;
  }
}

/**
 * Checks a spec (InvalidArgumentError naming the field: `kind`, `tasks[3].id`,
 * `tasks[2].dependsOn[0]`, `retry.maxAttempts`...) and defaults it once.
 */
export function compileJob(spec: JobSpec): CompiledJob {
  if (typeof spec !== 'object' || spec === null) throw new InvalidArgumentError('spec', 'must be an object');
  if (typeof spec.kind !== 'string' || !/^[a-z][a-z0-9_-]{0,62}$/.test(spec.kind)) throw new InvalidArgumentError('kind', `must be a lower-case name like "recompute", got ${JSON.stringify(spec.kind)}`);
  if (typeof spec.title !== 'string') throw new InvalidArgumentError('title', 'must be a string');
  if (typeof spec.principal !== 'string') throw new InvalidArgumentError('principal', 'must be a string');
  if (!Array.isArray(spec.tasks)) throw new InvalidArgumentError('tasks', 'must be an array');
  const positive = (v: number | undefined, field: string, fallback: number, min = 1): number => {
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new InvalidArgumentError(field, `must be an integer ≥ ${min}, got ${JSON.stringify(v)}`);
    return v;
  };
  const jobMax = positive(spec.retry?.maxAttempts, 'retry.maxAttempts', DEFAULT_MAX_ATTEMPTS);
  const baseMs = positive(spec.retry?.baseMs, 'retry.baseMs', DEFAULT_BASE_MS, 0);
  const maxMs = positive(spec.retry?.maxMs, 'retry.maxMs', DEFAULT_MAX_MS, 0);
  const concurrency = positive(spec.concurrency, 'concurrency', DEFAULT_CONCURRENCY);
  const index = new Map<string, number>();
  const maxAttempts = new Map<string, number>();
  for (const [i, t] of spec.tasks.entries()) {
    if (typeof t?.id !== 'string' || t.id === '') throw new InvalidArgumentError(`tasks[${i}].id`, 'is required');
    if (index.has(t.id)) throw new InvalidArgumentError(`tasks[${i}].id`, `${JSON.stringify(t.id)} is already the id of tasks[${index.get(t.id)}]`);
    if (typeof t.label !== 'string') throw new InvalidArgumentError(`tasks[${i}].label`, 'must be a string');
    if (!Array.isArray(t.dependsOn)) throw new InvalidArgumentError(`tasks[${i}].dependsOn`, 'must be an array of task ids');
    index.set(t.id, i);
    maxAttempts.set(t.id, positive(t.maxAttempts, `tasks[${i}].maxAttempts`, jobMax));
  }
  const dependents = new Map<string, string[]>();
  for (const [i, t] of spec.tasks.entries()) {
    for (const [j, d] of t.dependsOn.entries()) {
      if (!index.has(d)) throw new InvalidArgumentError(`tasks[${i}].dependsOn[${j}]`, `no task has id ${JSON.stringify(d)}`);
      if (d === t.id) throw new InvalidArgumentError(`tasks[${i}].dependsOn[${j}]`, 'a task cannot depend on itself');
      const list = dependents.get(d) ?? [];
      list.push(t.id);
      dependents.set(d, list);
    }
  }
  // Kahn's algorithm: tasks left over sit on a cycle (or downstream of one).
  const indegree = new Map(spec.tasks.map((t) => [t.id, new Set(t.dependsOn).size]));
  const queue = spec.tasks.filter((t) => indegree.get(t.id) === 0).map((t) => t.id);
  let seen = 0;
  while (queue.length > 0) {
    const id = queue.pop() as string;
    seen++;
    for (const d of new Set(dependents.get(id) ?? [])) {
      const n = (indegree.get(d) ?? 0) - 1;
      indegree.set(d, n);
      if (n === 0) queue.push(d);
    }
  }
  if (seen < spec.tasks.length) {
    const onCycle = spec.tasks.findIndex((t) => (indegree.get(t.id) ?? 0) > 0);
    throw new InvalidArgumentError(`tasks[${onCycle}].dependsOn`, `dependency cycle through ${JSON.stringify(spec.tasks[onCycle]?.id)}`);
  }
  let payload: JsonValue;
  try {
    payload = JSON.parse(JSON.stringify(spec.payload ?? null)) as JsonValue;
    for (const [i, t] of spec.tasks.entries()) JSON.stringify(t.payload ?? null, (_k, v: unknown) => checkJson(v, `tasks[${i}].payload`));
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw err;
    throw new InvalidArgumentError('payload', `must be JSON: ${errorMessage(err)}`);
  }
  // Dedupe dependencies: unmet counters count each dependency once.
  const normalized: JobSpec = { ...spec, payload, tasks: spec.tasks.map((t) => ({ ...t, dependsOn: [...new Set(t.dependsOn)], payload: t.payload ?? null })) };
  const dedupedDependents = new Map([...dependents].map(([k, v]) => [k, [...new Set(v)]]));
  return { spec: normalized, maxAttempts, baseMs, maxMs, concurrency, dependents: dedupedDependents, taskSpecs: new Map(normalized.tasks.map((t) => [t.id, t])) };
}

function checkJson(v: unknown, field: string): unknown {
  if (typeof v === 'bigint' || typeof v === 'function' || typeof v === 'symbol') throw new InvalidArgumentError(field, `must be JSON, found a ${typeof v}`);
  return v;
}

/** Tasks by state. */
export function countTasks(tasks: Iterable<{ state: TaskState }>): TaskCounts {
  const c = Object.fromEntries(TASK_STATES.map((s) => [s, 0])) as Record<TaskState, number>;
  let total = 0;
  for (const t of tasks) {
    c[t.state]++;
    total++;
  }
  return { ...c, total };
}

function viewOf(record: JobRecord, tasks?: readonly TaskRecord[]): JobView {
  const c = record.counts;
  const finished = TASK_STATES.filter((s) => TASK_FINISHED.has(s)).reduce((n, s) => n + c[s], 0);
  const percent = c.total === 0 ? (JOB_ENDED.has(record.state) ? 100 : 0) : (100 * finished) / c.total;
  const view: JobView = { ...structuredClone(record), percent };
  if (tasks) view.tasks = tasks.map(statusOf);
  return view;
}

function statusOf(t: TaskRecord): TaskStatus {
  const s: TaskStatus = { id: t.id, label: t.label, state: t.state, attempts: t.attempts };
  if (t.outcome !== undefined) s.outcome = t.outcome;
  if (t.error !== undefined) s.error = t.error;
  if (t.startedAtMs !== undefined) s.startedAtMs = t.startedAtMs;
  if (t.endedAtMs !== undefined) s.endedAtMs = t.endedAtMs;
  return s;
}

/** Bad input and unknown objects fail at once; so does anything marked `retryable: false`. */
export function isRetryable(err: unknown): boolean {
  if (typeof err === 'object' && err !== null && (err as { retryable?: unknown }).retryable === false) return false;
  if (err instanceof InvalidArgumentError || err instanceof NotFoundError) return false;
  if (isRetraceError(err) && (err.code === 'INVALID_ARGUMENT' || err.code === 'NOT_FOUND')) return false;
  return true;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A write refused by the store rather than a bug: a full data dir, or the database closed while it reopens. */
function isStoreRefusal(err: unknown): boolean {
  return (isRetraceError(err) && err.code === 'INSUFFICIENT_STORAGE') || storeErrorOf(err) !== undefined;
}

/** The refusal to resume a job that has nothing left to run. */
function succeeded(jobId: string): FailedPreconditionError {
  return new FailedPreconditionError(`job ${jobId} has already ended SUCCEEDED: there is nothing to resume`, 'job_id');
}
