import {
  JobState as JobStateProto,
  TaskState as TaskStateProto,
  type Job,
  type JobTask,
  type TaskCounts as TaskCountsProto,
  type WaitingShard as WaitingShardProto,
} from '../../common/gen/retrace/v1/job.js';
import { ReplayState, type ReplayReport, type ReplayStepResult, type WatchReplayResponse } from '../../common/gen/retrace/v1/replay.js';
import { isCancelledStep, isUpstreamFailedStep } from '../replay/replay-engine.js';
import type { JobView, TaskCounts } from './job-manager.js';
import type { JobState, TaskState, TaskStatus } from './job-types.js';

/** A shard of a job that waits for a node, as the dispatcher reports it. */
export interface WaitingShardInfo {
  shardId: string;
  stepName: string;
  reason: string;
}

const JOB_STATE: Readonly<Record<JobState, JobStateProto>> = {
  PENDING: JobStateProto.JOB_STATE_PENDING,
  RUNNING: JobStateProto.JOB_STATE_RUNNING,
  SUCCEEDED: JobStateProto.JOB_STATE_SUCCEEDED,
  FAILED: JobStateProto.JOB_STATE_FAILED,
  CANCELLED: JobStateProto.JOB_STATE_CANCELLED,
};

const TASK_STATE: Readonly<Record<TaskState, TaskStateProto>> = {
  PENDING: TaskStateProto.TASK_STATE_PENDING,
  RUNNING: TaskStateProto.TASK_STATE_RUNNING,
  SUCCEEDED: TaskStateProto.TASK_STATE_SUCCEEDED,
  FAILED: TaskStateProto.TASK_STATE_FAILED,
  UPSTREAM_FAILED: TaskStateProto.TASK_STATE_UPSTREAM_FAILED,
  CANCELLED: TaskStateProto.TASK_STATE_CANCELLED,
};

export function toJobStateProto(state: JobState): JobStateProto {
  return JOB_STATE[state];
}

/** The domain state of a proto state; undefined for JOB_STATE_UNSPECIFIED (any). */
export function fromJobStateProto(state: JobStateProto): JobState | undefined {
  return (Object.entries(JOB_STATE) as [JobState, JobStateProto][]).find(([, p]) => p === state)?.[0];
}

const msToNs = (ms: number | undefined): string => (ms === undefined ? '0' : (BigInt(Math.round(ms)) * 1_000_000n).toString());

export function toTaskCountsProto(c: TaskCounts): TaskCountsProto {
  return { total: c.total, pending: c.PENDING, running: c.RUNNING, succeeded: c.SUCCEEDED, failed: c.FAILED, upstreamFailed: c.UPSTREAM_FAILED, cancelled: c.CANCELLED };
}

export function toJobTaskProto(t: TaskStatus): JobTask {
  return {
    id: t.id,
    label: t.label,
    state: TASK_STATE[t.state],
    attempts: t.attempts,
    outcome: t.outcome ?? '',
    error: t.error ?? '',
    startedAtNs: msToNs(t.startedAtMs),
    endedAtNs: msToNs(t.endedAtMs),
  };
}

function toWaitingProto(w: readonly WaitingShardInfo[]): WaitingShardProto[] {
  return w.map((x) => ({ shardId: x.shardId, stepName: x.stepName, reason: x.reason }));
}

/** A manager job as the Job message; tasks only when the view has them. */
export function toJobProto(view: JobView, waiting: readonly WaitingShardInfo[] = []): Job {
  return {
    jobId: view.jobId,
    kind: view.kind,
    title: view.title,
    principal: view.principal,
    state: JOB_STATE[view.state],
    createdAtNs: msToNs(view.createdAtMs),
    startedAtNs: msToNs(view.startedAtMs),
    endedAtNs: msToNs(view.endedAtMs),
    counts: toTaskCountsProto(view.counts),
    percent: view.percent,
    message: waiting.length > 0 && view.state === 'RUNNING' ? `${waiting.length} shard(s) wait for a node: ${waiting[0]?.reason}` : view.message,
    tasks: (view.tasks ?? []).map(toJobTaskProto),
    waiting: toWaitingProto(waiting),
    restarts: view.restarts,
    tasksRerunAfterRestart: view.tasksRerunAfterRestart,
    restartToRunningMs: view.restartToRunningMs,
    resumes: view.resumes,
  };
}

const REPLAY_STATE: Readonly<Partial<Record<ReplayState, JobStateProto>>> = {
  [ReplayState.REPLAY_STATE_PENDING]: JobStateProto.JOB_STATE_PENDING,
  [ReplayState.REPLAY_STATE_RUNNING]: JobStateProto.JOB_STATE_RUNNING,
  [ReplayState.REPLAY_STATE_SUCCEEDED]: JobStateProto.JOB_STATE_SUCCEEDED,
  [ReplayState.REPLAY_STATE_FAILED]: JobStateProto.JOB_STATE_FAILED,
  [ReplayState.REPLAY_STATE_CANCELLED]: JobStateProto.JOB_STATE_CANCELLED,
};

/**
 * A replayed step as a task. The engine records a step PENDING before its shard is sent and
 * RUNNING until its outcome (reports saved before that kept such steps as SKIPPED with no error);
 * either in a replay that has ended never ran, as if cancelled.
 */
function replayStepTask(s: ReplayStepResult, live: boolean): JobTask {
  let state: TaskStateProto;
  if (s.status === 'SUCCEEDED') state = TaskStateProto.TASK_STATE_SUCCEEDED;
  else if (isCancelledStep(s)) state = TaskStateProto.TASK_STATE_CANCELLED;
  else if (isUpstreamFailedStep(s)) state = TaskStateProto.TASK_STATE_UPSTREAM_FAILED;
  else if (s.status === 'PENDING') state = live ? TaskStateProto.TASK_STATE_PENDING : TaskStateProto.TASK_STATE_CANCELLED;
  else if (s.status === 'RUNNING' || (s.status === 'SKIPPED' && !s.error)) state = live ? TaskStateProto.TASK_STATE_RUNNING : TaskStateProto.TASK_STATE_CANCELLED;
  else state = TaskStateProto.TASK_STATE_FAILED;
  return {
    id: s.replayStepId,
    label: `${s.record} ${s.step}`,
    state,
    attempts: s.attempts,
    outcome: state === TaskStateProto.TASK_STATE_SUCCEEDED ? 'executed' : '',
    error: s.error,
    startedAtNs: '0',
    endedAtNs: '0',
  };
}

/**
 * A replay as a Job of kind "replay": its recorded steps are the tasks. `progress` (the engine's
 * live snapshot) gives the counts of a running replay, whose report has only the steps begun so far.
 */
export function replayToJobProto(report: ReplayReport, progress: WatchReplayResponse | undefined, waiting: readonly WaitingShardInfo[] = [], withTasks = true): Job {
  const live = progress !== undefined && (report.state === ReplayState.REPLAY_STATE_PENDING || report.state === ReplayState.REPLAY_STATE_RUNNING);
  const tasks = report.steps.map((s) => replayStepTask(s, live));
  const by = (st: TaskStateProto): number => tasks.filter((t) => t.state === st).length;
  const total = progress?.stepsTotal ?? report.summary?.steps ?? tasks.length;
  const running = by(TaskStateProto.TASK_STATE_RUNNING);
  const pending = by(TaskStateProto.TASK_STATE_PENDING);
  // ListReplays leaves the steps out: an ended replay's summary, or a running one's live
  // progress, still has the totals.
  const stepless = tasks.length === 0 && total > 0;
  const summary = stepless && !live ? report.summary : undefined;
  let counts: TaskCountsProto;
  let finished: number;
  if (summary) {
    counts = { total, pending: 0, running: 0, succeeded: summary.matched + summary.differed, failed: summary.failed, upstreamFailed: summary.upstreamFailed, cancelled: summary.cancelled };
    finished = total;
  } else if (stepless && live && progress) {
    counts = { total, pending: total - progress.stepsDone, running: 0, succeeded: progress.stepsDone - progress.stepsFailed, failed: progress.stepsFailed, upstreamFailed: 0, cancelled: 0 };
    finished = progress.stepsDone;
  } else {
    counts = {
      total,
      // Steps without a result in a replay that has ended never started: cancelled with it.
      pending: (live ? Math.max(0, total - tasks.length) : 0) + pending,
      running,
      succeeded: by(TaskStateProto.TASK_STATE_SUCCEEDED),
      failed: by(TaskStateProto.TASK_STATE_FAILED),
      upstreamFailed: by(TaskStateProto.TASK_STATE_UPSTREAM_FAILED),
      cancelled: by(TaskStateProto.TASK_STATE_CANCELLED) + (live ? 0 : Math.max(0, total - tasks.length)),
    };
    finished = live ? tasks.length - running - pending : total;
  }
  const records = report.summary?.records ?? progress?.recordsTotal ?? 0;
  const message = waiting.length > 0 ? `${waiting.length} shard(s) wait for a node: ${waiting[0]?.reason}` : report.error || (progress?.message ?? '');
  return {
    jobId: report.replayId,
    kind: 'replay',
    title: `replay of ${records} record(s)`,
    principal: report.policy?.principal ?? '',
    state: REPLAY_STATE[report.state] ?? JobStateProto.JOB_STATE_UNSPECIFIED,
    createdAtNs: report.startedAtNs,
    startedAtNs: report.startedAtNs,
    endedAtNs: report.endedAtNs,
    counts,
    percent: total === 0 ? 100 : (100 * finished) / total,
    message,
    tasks: withTasks ? tasks : [],
    waiting: toWaitingProto(waiting),
    restarts: 0,
    tasksRerunAfterRestart: 0,
    restartToRunningMs: 0,
    resumes: 0,
  };
}
