import { JobServiceDefinition, JobState, TaskState, type Job } from '../../common/gen/retrace/v1/job.js';
import { isRetraceError } from '../../common/errors.js';
import { flag, hasFlag, intFlag, UsageError, type CliCommand, type CliIo, type ParsedArgs } from './command.js';
import { openClient } from './client.js';
import { DEFAULT_TABLE_LIMIT, limitRows, progressBar, renderTable, toJson } from './format.js';
import { jobStateName, renderJobLine, taskStateName, tasksDone, watchJobProgress } from './job-progress.js';

const STATES = ['pending', 'running', 'succeeded', 'failed', 'cancelled'];

function jobIdArg(args: ParsedArgs): string {
  const jobId = args.positionals[0];
  if (!jobId) throw new UsageError('JOB_ID is required');
  return jobId;
}

/** "3m", "2h", "5d" since `ns`. */
function age(ns: string, nowMs = Date.now()): string {
  const ms = nowMs - Number(BigInt(ns) / 1_000_000n);
  if (ns === '0' || ms < 0) return '';
  const s = ms / 1000;
  return s < 60 ? `${Math.floor(s)}s` : s < 3600 ? `${Math.floor(s / 60)}m` : s < 86_400 ? `${Math.floor(s / 3600)}h` : `${Math.floor(s / 86_400)}d`;
}

function countsText(j: Job): string {
  const c = j.counts;
  if (!c) return '';
  const parts = [`${c.succeeded}/${c.total} ok`];
  if (c.failed) parts.push(`${c.failed} failed`);
  if (c.upstreamFailed) parts.push(`${c.upstreamFailed} upstream failed`);
  if (c.cancelled) parts.push(`${c.cancelled} cancelled`);
  if (c.running) parts.push(`${c.running} running`);
  return parts.join(', ');
}

/** A job as JSON with state names instead of enum numbers. */
export function jobJson(j: Job): unknown {
  return { ...j, state: jobStateName(j.state), tasks: j.tasks.map((t) => ({ ...t, state: taskStateName(t.state) })) };
}

/** The job as text: its tasks at most `limit` (0: all; those not SUCCEEDED first), with a line saying how many were left out. */
function printJob(j: Job, io: CliIo, limit: number): void {
  const out = io.stdout;
  out.write(`job ${j.jobId} (${j.kind}): ${jobStateName(j.state)}${j.title ? `  ${j.title}` : ''}\n`);
  out.write(`  ${renderJobLine(j, 30, false)}\n`);
  out.write(`  by ${j.principal || '-'}, created ${age(j.createdAtNs)} ago${j.endedAtNs !== '0' ? `, ended ${age(j.endedAtNs)} ago` : ''}`);
  if (j.restarts > 0) out.write(`; resumed after ${j.restarts} coordinator restart(s), ${j.tasksRerunAfterRestart} task(s) rerun, running again ${j.restartToRunningMs.toFixed(0)} ms after the restart`);
  if (j.resumes > 0) out.write(`; resumed ${j.resumes} time(s)`);
  out.write('\n');
  if (j.message) out.write(`  ${j.message}\n`);
  if (j.waiting.length > 0) {
    out.write(`\nwaiting for a node (${j.waiting.length} shard(s)):\n`);
    out.write(renderTable(['shard', 'step', 'reason'], j.waiting.map((w) => [w.shardId, w.stepName, w.reason])));
  }
  if (j.tasks.length > 0) {
    out.write('\n');
    const shown = limitRows(j.tasks, limit, (t) => t.state !== TaskState.TASK_STATE_SUCCEEDED, { noun: 'tasks', notable: 'not succeeded', how: '--limit N, 0 for all' });
    out.write(renderTable(['task', 'state', 'attempts', 'outcome', 'label', 'error'], shown.rows.map((t) => [t.id, taskStateName(t.state), t.attempts, t.outcome, t.label, t.error.slice(0, 100)])));
    out.write(shown.footer);
  }
}

const list: CliCommand = {
  path: ['jobs'],
  summary: 'jobs and replays, newest first: state, progress, task counts, age',
  usage: `retrace jobs [--state ${STATES.join('|')}] [--kind KIND] [--limit N] [--json]`,
  integers: { limit: 'uint32' },
  async run(args, io) {
    // `retrace jobs shwo ID` must not list every job and exit 0.
    const sub = args.positionals[0];
    if (sub !== undefined) throw new UsageError(`unknown subcommand ${JSON.stringify(sub)}: show, watch, cancel or resume (no word: the list)`);
    const stateText = flag(args, 'state');
    let state = JobState.JOB_STATE_UNSPECIFIED;
    if (stateText !== undefined) {
      if (!STATES.includes(stateText.toLowerCase())) throw new UsageError(`--state must be one of ${STATES.join(', ')}`);
      state = JobState[`JOB_STATE_${stateText.toUpperCase()}` as keyof typeof JobState];
    }
    const limit = intFlag(args, 'limit', 50);
    if (limit <= 0) throw new UsageError('--limit must be a positive integer');
    const { client, close } = openClient(JobServiceDefinition, args);
    try {
      const r = await client.listJobs({ state, kind: flag(args, 'kind') ?? '', pageSize: Math.min(limit, 1000), pageToken: '' }, { signal: io.signal }).catch((err: unknown) => {
        // The coordinator knows which kinds exist: its refusal of one is a bad flag value (exit 2).
        if (isRetraceError(err) && err.code === 'INVALID_ARGUMENT' && err.message.startsWith('kind: ')) throw new UsageError(`--kind${err.message.slice('kind'.length)}`);
        throw err;
      });
      if (hasFlag(args, 'json')) {
        io.stdout.write(toJson({ jobs: r.jobs.map(jobJson), nextPageToken: r.nextPageToken }));
        return 0;
      }
      if (r.jobs.length === 0) {
        io.stdout.write('no jobs\n');
        return 0;
      }
      io.stdout.write(
        renderTable(
          ['job', 'kind', 'state', 'progress', 'tasks', 'age', 'title'],
          r.jobs.map((j) => {
            return [j.jobId, j.kind, jobStateName(j.state) + (j.waiting.length > 0 ? ' (waiting)' : ''), progressBar(tasksDone(j.counts), j.counts?.total ?? 0, 20), countsText(j), age(j.createdAtNs), j.title.slice(0, 40)];
          }),
        ),
      );
      // A listing cut by --limit would otherwise read as every job there is.
      if (r.nextPageToken !== '') {
        const shown = Math.min(limit, 1000);
        io.stdout.write(`more jobs than --limit ${shown} shows: ${shown < 1000 ? `retrace jobs --limit ${Math.min(shown * 2, 1000)} (or --state, --kind)` : 'narrow it with --state or --kind'}\n`);
      }
      return 0;
    } finally {
      close();
    }
  },
};

const show: CliCommand = {
  path: ['jobs', 'show'],
  summary: 'one job or replay: tasks, attempts, errors, and which requirement no node meets for shards that wait',
  usage: `retrace jobs show JOB_ID [--limit N] [--json]
  --limit N  tasks listed, at most (default ${DEFAULT_TABLE_LIMIT}, 0 for all): those not SUCCEEDED first; --json lists all`,
  integers: { limit: 'uint32' },
  async run(args, io) {
    const jobId = jobIdArg(args);
    const { client, close } = openClient(JobServiceDefinition, args);
    try {
      const { job } = await client.getJob({ jobId }, { signal: io.signal });
      if (!job) return 1;
      if (hasFlag(args, 'json')) io.stdout.write(toJson(jobJson(job)));
      else printJob(job, io, intFlag(args, 'limit', DEFAULT_TABLE_LIMIT));
      return 0;
    } finally {
      close();
    }
  },
};

const watch: CliCommand = {
  path: ['jobs', 'watch'],
  summary: 'live progress bar of a job until it ends (exit code 1 unless it SUCCEEDED)',
  usage: 'retrace jobs watch JOB_ID [--json]',
  async run(args, io) {
    const jobId = jobIdArg(args);
    const json = hasFlag(args, 'json');
    const { client, close } = openClient(JobServiceDefinition, args);
    try {
      const final = await watchJobProgress(client, jobId, { out: json ? io.stdout : io.stderr, signal: io.signal, json });
      if (!json) io.stdout.write(`job ${jobId}: ${final.stateName}${final.job.message ? ` (${final.job.message})` : ''}\n`);
      return final.state === JobState.JOB_STATE_SUCCEEDED ? 0 : 1;
    } finally {
      close();
    }
  },
};

const cancel: CliCommand = {
  path: ['jobs', 'cancel'],
  summary: 'cancel a job or replay (running attempts are aborted)',
  usage: 'retrace jobs cancel JOB_ID [--json]',
  async run(args, io) {
    const jobId = jobIdArg(args);
    const { client, close } = openClient(JobServiceDefinition, args);
    try {
      const r = await client.cancelJob({ jobId }, { signal: io.signal });
      io.stdout.write(hasFlag(args, 'json') ? toJson({ jobId, state: jobStateName(r.state) }) : `job ${jobId}: ${jobStateName(r.state)}\n`);
      return 0;
    } finally {
      close();
    }
  },
};

const resume: CliCommand = {
  path: ['jobs', 'resume'],
  summary: 'run a failed or cancelled job again, without redoing its succeeded tasks',
  usage: 'retrace jobs resume JOB_ID [--watch]',
  async run(args, io) {
    const jobId = jobIdArg(args);
    const { client, close } = openClient(JobServiceDefinition, args);
    try {
      const r = await client.resumeJob({ jobId }, { signal: io.signal });
      io.stdout.write(`job ${jobId}: ${jobStateName(r.state)}, ${r.tasksToRun} task(s) to run again\n`);
      if (!hasFlag(args, 'watch')) return 0;
      const final = await watchJobProgress(client, jobId, { out: io.stderr, signal: io.signal });
      io.stdout.write(`job ${jobId}: ${final.stateName}\n`);
      return final.state === JobState.JOB_STATE_SUCCEEDED ? 0 : 1;
    } finally {
      close();
    }
  },
};

export const commands: CliCommand[] = [list, show, watch, cancel, resume];
