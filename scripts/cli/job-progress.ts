import type { Client } from 'nice-grpc';
import { JobState, TaskState, type Job, type JobServiceDefinition, type JobTask, type WatchJobResponse } from '../../common/gen/retrace/v1/job.js';
import { isRetraceError, UnavailableError } from '../../common/errors.js';
import { heldLines, progressBar } from './format.js';

/** How a watched job ended (or stood when the watch was aborted). */
export interface JobFinal {
  jobId: string;
  state: JobState;
  /** "SUCCEEDED", "FAILED", ... */
  stateName: string;
  /** The job with its tasks, as GetJob answered after the watch ended. */
  job: Job;
  /** The job ended (false when the watch was aborted before). */
  done: boolean;
}

const ENDED = new Set([JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED]);

/** "RUNNING" for JOB_STATE_RUNNING. */
export function jobStateName(state: JobState): string {
  return (JobState[state] ?? 'UNKNOWN').replace('JOB_STATE_', '');
}

/** "UPSTREAM_FAILED" for TASK_STATE_UPSTREAM_FAILED. */
export function taskStateName(state: TaskState): string {
  return (TaskState[state] ?? 'UNKNOWN').replace('TASK_STATE_', '');
}

export function isJobEnded(state: JobState): boolean {
  return ENDED.has(state);
}

/**
 * Tasks that ran to an end (succeeded, failed or upstream failed): what a job's bar fills with.
 * Cancelled tasks never ran, so a job cancelled half-way reads half done, not 100%.
 */
export function tasksDone(counts: Job['counts']): number {
  const c = counts;
  return Math.max(0, (c?.total ?? 0) - (c?.pending ?? 0) - (c?.running ?? 0) - (c?.cancelled ?? 0));
}

/**
 * One line for a job: "[#####.....] 50% 5/10 tasks, 1 failed, 2 running  message", the same bar
 * as `retrace replay watch` (format.ts progressBar). Cancelled tasks are not done: a cancelled
 * job's bar stops where it was ("CANCELLED 3/10 tasks, 7 cancelled").
 */
export function renderJobLine(job: Job, width = 30, withMessage = true): string {
  const c = job.counts;
  const total = c?.total ?? 0;
  const finished = tasksDone(c);
  const parts = [`${finished}/${total} tasks`];
  // The same words as `retrace jobs`: a cancelled task is not a failed one.
  if (c?.failed) parts.push(`${c.failed} failed`);
  if (c?.upstreamFailed) parts.push(`${c.upstreamFailed} upstream failed`);
  if (c?.cancelled) parts.push(`${c.cancelled} cancelled`);
  if ((c?.running ?? 0) > 0) parts.push(`${c?.running} running`);
  if (job.waiting.length > 0) parts.push(`${job.waiting.length} waiting for a node`);
  const label = `${jobStateName(job.state)} ${parts.join(', ')}${withMessage && job.message ? `  ${job.message}` : ''}`;
  return progressBar(finished, total, width, label.slice(0, 110));
}

/** A task change as one line, for logs and non-terminal output. */
export function renderTaskChange(t: JobTask): string {
  const outcome = t.outcome ? ` (${t.outcome})` : '';
  const error = t.error ? `: ${t.error}` : '';
  return `  ${taskStateName(t.state).padEnd(15)} ${t.label || t.id}${outcome}${t.attempts > 1 ? ` after ${t.attempts} attempts` : ''}${error}`;
}

/**
 * Follows a job through WatchJob and renders its progress on `out` until it ends, then returns
 * its final state (GetJob, with tasks). On a terminal: one live bar redrawn in place. Elsewhere
 * (pipes, logs): a line per task that fails, the bar at most every `lineEveryMs` (10 s) while
 * tasks finish, and one bar when it ends. With `json`: every
 * WatchJobResponse as one JSON line (NDJSON). Aborting `signal` stops watching (the job goes on)
 * and returns the state at that moment with `done: false`. Errors of the RPCs (NOT_FOUND naming
 * job_id, UNAVAILABLE) are thrown; a watch that loses the coordinator says the job is kept and how
 * to watch it again.
 */
export async function watchJobProgress(
  client: Client<typeof JobServiceDefinition>,
  jobId: string,
  options: { out: NodeJS.WriteStream | NodeJS.WritableStream; signal?: AbortSignal; json?: boolean; lineEveryMs?: number; now?: () => number },
): Promise<JobFinal> {
  const { out, json = false, lineEveryMs = 10_000, now = Date.now } = options;
  const lines = heldLines(lineEveryMs, (text) => out.write(`${text}\n`), now);
  const tty = !json && (out as { isTTY?: boolean }).isTTY === true;
  const watchAbort = new AbortController();
  const onAbort = (): void => watchAbort.abort();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  let last: Job | undefined;
  let line = '';
  try {
    for await (const update of client.watchJob({ jobId }, { signal: watchAbort.signal })) {
      if (!update.job) continue;
      last = update.job;
      if (json) {
        out.write(`${JSON.stringify(toWatchJson(update))}\n`);
        continue;
      }
      line = renderJobLine(update.job);
      if (tty) {
        out.write(`\r${line}\x1b[K`);
      } else {
        // Off a terminal, failures are worth a line each; successes only count in the bar.
        for (const t of update.changedTasks) {
          if (t.state === TaskState.TASK_STATE_FAILED) out.write(`${renderTaskChange(t)}\n`);
        }
        const done = tasksDone(update.job.counts);
        if (!isJobEnded(update.job.state)) lines.offer(String(done), line);
      }
      if (isJobEnded(update.job.state)) break;
    }
  } catch (err) {
    // Aborted by the caller: report where the job stood.
    if (options.signal?.aborted) {
      // fall through
    } else if (isRetraceError(err) && err.code === 'UNAVAILABLE') {
      // The watch lost the coordinator, not the job: jobs persist and resume on its next start.
      throw new UnavailableError(`lost the coordinator while watching job ${jobId} (${err.message}); the job is kept (a recompute job resumes when the coordinator starts again): retrace jobs watch ${jobId}`, err);
    } else throw err;
  } finally {
    lines.close();
    options.signal?.removeEventListener('abort', onAbort);
    watchAbort.abort();
  }
  if (!json && line) out.write(tty ? '\n' : `${line}\n`);
  const { job } = await client.getJob({ jobId });
  const final = job ?? last;
  if (!final) throw new Error(`job ${jobId}: the coordinator returned no job`);
  // The bar keeps to one line and cuts the job's message; where it ended, the message (what to
  // do next: "fix the cause and resume the job") is worth a line of its own, whole.
  if (!json && line && final.message && !line.includes(final.message)) out.write(`  ${final.message}\n`);
  return { jobId, state: final.state, stateName: jobStateName(final.state), job: final, done: isJobEnded(final.state) };
}

/** A WatchJobResponse as plain JSON with state names instead of enum numbers. */
function toWatchJson(update: WatchJobResponse): unknown {
  const job = update.job;
  return {
    jobId: job?.jobId,
    kind: job?.kind,
    state: job ? jobStateName(job.state) : undefined,
    percent: job?.percent,
    counts: job?.counts,
    message: job?.message,
    waiting: job?.waiting,
    changedTasks: update.changedTasks.map((t) => ({ ...t, state: taskStateName(t.state) })),
  };
}
