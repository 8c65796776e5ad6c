/**
 * The contract between the job orchestrator (job-manager.ts) and the executors that give jobs
 * their meaning (recompute). The orchestrator owns states, persistence, ordering, parallelism,
 * retries, cancellation and resumption; an executor only runs one task attempt.
 */

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export type JobState = 'PENDING' | 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'CANCELLED';

/**
 * UPSTREAM_FAILED: a dependency failed for good, so the task never ran; independent branches go on.
 * A resumed job runs FAILED, UPSTREAM_FAILED and CANCELLED tasks again, never SUCCEEDED ones.
 */
export type TaskState = 'PENDING' | 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'UPSTREAM_FAILED' | 'CANCELLED';

/** How a SUCCEEDED task got its result. */
export type TaskOutcome = 'executed' | 'cached' | 'cutoff';

export interface RetryPolicy {
  /** Attempts per task at most, first one included (default 3). */
  maxAttempts?: number;
  /** Backoff before attempt n+1 is a uniform draw in [0, min(maxMs, baseMs·2^(n-1))] (default 200 ms, 10 s). */
  baseMs?: number;
  maxMs?: number;
}

export interface JobTaskSpec {
  /** Unique within the job. */
  id: string;
  /** For people: e.g. "orders/classify key=o-17". */
  label: string;
  /** Task ids that must SUCCEED before this one runs. */
  dependsOn: string[];
  /** Overrides the job's retry.maxAttempts for this task. */
  maxAttempts?: number;
  /** Executor-specific input, persisted with the job. */
  payload: JsonValue;
}

export interface JobSpec {
  /** Selects the executor, e.g. 'recompute'. */
  kind: string;
  title: string;
  principal: string;
  tasks: JobTaskSpec[];
  /** Executor-specific job input, persisted. */
  payload: JsonValue;
  retry?: RetryPolicy;
  /** Tasks running at once at most (default 16). */
  concurrency?: number;
}

export interface TaskRunContext {
  jobId: string;
  job: JobSpec;
  task: JobTaskSpec;
  /** 1 for the first attempt. */
  attempt: number;
  /** Aborted when the job is cancelled or the coordinator stops. */
  signal: AbortSignal;
  /** Results of this task's dependencies (all SUCCEEDED), by task id. */
  deps: ReadonlyMap<string, JsonValue>;
}

export interface TaskRunResult {
  outcome: TaskOutcome;
  /** Persisted; handed to dependents as `deps`. */
  result: JsonValue;
}

/**
 * Runs task attempts of one job kind. `runTask` throwing fails the attempt; the orchestrator
 * retries it unless the error has `retryable === false` (bad input, unknown object). Attempts must
 * be idempotent: after a coordinator crash, tasks that were RUNNING are run again.
 */
export interface JobExecutor {
  kind: string;
  runTask(ctx: TaskRunContext): Promise<TaskRunResult>;
  /**
   * Told each time a job of this kind goes RUNNING: first run, `resume`, and resumption after a
   * coordinator restart (`afterRestart`). Awaited before the job's tasks start; a throw is logged
   * and changes nothing.
   */
  jobStarted?(event: JobLifecycleEvent): Promise<void>;
  /**
   * Told when a job of this kind ends (SUCCEEDED, FAILED or CANCELLED), a cancelled job that never
   * ran included; not when the coordinator stops with the job unfinished (it resumes on the next
   * start). Awaited before the job counts as ended; a throw is logged and changes nothing.
   */
  jobEnded?(event: JobLifecycleEvent): Promise<void>;
}

/** A job's state change as its executor hears of it. */
export interface JobLifecycleEvent {
  jobId: string;
  job: JobSpec;
  state: JobState;
  /** Wall clock of the change, ms. */
  atMs: number;
  /** Why it ended (the job's message), '' when it succeeded or started. */
  message: string;
  /** Only on jobStarted: the job resumes after a coordinator restart. */
  afterRestart: boolean;
}

/** A task's persisted progress. */
export interface TaskStatus {
  id: string;
  label: string;
  state: TaskState;
  attempts: number;
  outcome?: TaskOutcome;
  error?: string;
  startedAtMs?: number;
  endedAtMs?: number;
}

/** What the orchestrator offers the rest of the coordinator. */
export interface JobSubmitter {
  /**
   * Validates (unique task ids, known dependencies, no cycle: InvalidArgumentError naming the
   * field), persists the job as PENDING, then runs it. Resolves once it is persisted.
   */
  submit(spec: JobSpec): Promise<{ jobId: string }>;
  /** Registers the executor of a kind; jobs of that kind left unfinished by a crash resume then. */
  registerExecutor(executor: JobExecutor): void;
  /**
   * The stored jobs of `kind` with their persisted payloads, oldest first: after a crash, whether
   * work was submitted before its submitter could note it. Reads every job of the kind.
   */
  jobPayloads?(kind: string): Promise<{ jobId: string; payload: JsonValue }[]>;
}
