import type { Database } from '../store/database.js';
import type { JobSpec, JobState, JsonValue, TaskState, TaskStatus } from './job-types.js';

/** Tasks of a job by state, plus the total. */
export type TaskCounts = Record<TaskState, number> & { total: number };

/** A job's persisted header: everything but its spec and tasks. Times in ms since the epoch. */
export interface JobRecord {
  jobId: string;
  kind: string;
  title: string;
  principal: string;
  state: JobState;
  createdAtMs: number;
  startedAtMs?: number;
  endedAtMs?: number;
  /** What it is doing or waiting for, or why it failed. */
  message: string;
  counts: TaskCounts;
  /** Coordinator restarts that found the job unfinished. */
  restarts: number;
  /** Tasks run again because a restart interrupted them. */
  tasksRerunAfterRestart: number;
  /** Last restart: from the job manager's start to the job RUNNING again, ms. */
  restartToRunningMs: number;
  /** Times `resume` ran it again. */
  resumes: number;
}

/** A task's persisted progress and result. */
export interface TaskRecord extends TaskStatus {
  /** Failed attempts in the current run (reset by resume, kept across restarts): the retry budget. */
  failures: number;
  /** The executor's result once SUCCEEDED; dependents get it as `deps`. */
  result?: JsonValue;
}

/** Everything persisted about one job. */
export interface StoredJob {
  spec: JobSpec;
  record: JobRecord;
  tasks: TaskRecord[];
}

/**
 * The job orchestrator's tables in the `jobs` sublevel: `spec` (job id → JobSpec, written once),
 * `job` (job id → JobRecord) and `task` (`<job id>!<task id>` → TaskRecord). Job ids never
 * contain "!", so one job's tasks are one key range. Every write is one atomic batch, so a
 * task's new state and the job's counts never disagree on disk.
 */
export interface JobStore {
  /** Writes a new job: spec, record and every task, atomically. */
  create(job: StoredJob): Promise<void>;
  /** Writes the job record and the given tasks, atomically. */
  update(record: JobRecord, tasks: readonly TaskRecord[]): Promise<void>;
  /** The whole job, or undefined. */
  read(jobId: string): Promise<StoredJob | undefined>;
  /** Job records, newest id first. */
  records(): AsyncIterable<JobRecord>;
}

const TASK_SEP = '!';

export function createJobStore(db: Database): JobStore {
  const root = db.sublevel<string, unknown>('jobs', { valueEncoding: 'json' });
  const specs = root.sublevel<string, JobSpec>('spec', { valueEncoding: 'json' });
  const records = root.sublevel<string, JobRecord>('job', { valueEncoding: 'json' });
  const tasks = root.sublevel<string, TaskRecord>('task', { valueEncoding: 'json' });
  const taskKey = (jobId: string, taskId: string): string => `${jobId}${TASK_SEP}${taskId}`;

  return {
    async create(job) {
      const batch = root.batch();
      batch.put(job.record.jobId, job.spec, { sublevel: specs });
      batch.put(job.record.jobId, job.record, { sublevel: records });
      for (const t of job.tasks) batch.put(taskKey(job.record.jobId, t.id), t, { sublevel: tasks });
      await batch.write();
    },
    async update(record, changed) {
      const batch = root.batch();
      batch.put(record.jobId, record, { sublevel: records });
      for (const t of changed) batch.put(taskKey(record.jobId, t.id), t, { sublevel: tasks });
      await batch.write();
    },
    async read(jobId) {
      const [spec, record] = await Promise.all([specs.get(jobId), records.get(jobId)]);
      if (spec === undefined || record === undefined) return undefined;
      const byId = new Map<string, TaskRecord>();
      // '"' is the character after '!': the range holds exactly this job's tasks.
      for await (const t of tasks.values({ gt: `${jobId}${TASK_SEP}`, lt: `${jobId}"` })) byId.set(t.id, t);
      // Spec order, so tables list tasks as submitted.
      const ordered = spec.tasks.map((s) => byId.get(s.id)).filter((t): t is TaskRecord => t !== undefined);
      return { spec, record, tasks: ordered };
    },
    records() {
      return records.values({ reverse: true });
    },
  };
}
