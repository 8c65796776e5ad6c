import type { CallContext } from 'nice-grpc';
import { JobServiceDefinition, JobState as JobStateProto, type Job, type JobServiceImplementation, type WatchJobResponse } from '../../common/gen/retrace/v1/job.js';
import { ReplayState, type WatchReplayResponse } from '../../common/gen/retrace/v1/replay.js';
import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import type { CoordinatorExtension, ExtensionFactory } from '../coordinator.js';
import { checkActsFor } from '../grpc/principal.js';
import type { ReplayEngine } from '../replay/replay-engine.js';
import { fromJobStateProto, replayToJobProto, toJobProto, toJobTaskProto, type WaitingShardInfo } from './job-convert.js';
import { JobManager, type JobManagerOptions } from './job-manager.js';

/** What the jobs extension reads from the extensions before/after it, and publishes. */
export interface JobsShared {
  /** Shards no node can take now; `jobId` ties them to a job (dispatcher.ts). */
  dispatcher?: { waiting(): (WaitingShardInfo & { jobId?: string })[] };
  /** Replays are listed as jobs of kind "replay" (set by replayExtension, after this one). */
  replay?: ReplayEngine;
  /** Set by this extension. */
  jobs?: JobManager;
}

/** Options of the extension: the manager's tunables, and how often WatchJob re-reads waiting shards. */
export interface JobsExtensionOptions extends Omit<JobManagerOptions, 'db'> {
  /** ms [1000] */
  waitingPollMs?: number;
}

const DEFAULT_PAGE = 50;
const MAX_PAGE = 1000;
const ENDED = new Set([JobStateProto.JOB_STATE_SUCCEEDED, JobStateProto.JOB_STATE_FAILED, JobStateProto.JOB_STATE_CANCELLED]);

const isReplayId = (id: string): boolean => id.startsWith('replay-');

/**
 * JobService as a coordinator extension: builds the JobManager on the coordinator's database,
 * publishes it on `shared.jobs` (recompute registers its executor there), and answers for jobs
 * and for replays alike (kind "replay", read from `shared.replay`), with the shards of each that
 * wait for a node and why. List it before replayExtension.
 */
export function jobsExtension(shared: JobsShared, options: JobsExtensionOptions = {}): ExtensionFactory {
  return (ctx): CoordinatorExtension => {
    const manager = new JobManager({ log: (l) => ctx.log(l), onStoreWritable: ctx.onStoreWritable, ...options, db: ctx.db });
    shared.jobs = manager;
    const waitingPollMs = options.waitingPollMs ?? 1000;

    const waitingOf = (jobId: string): WaitingShardInfo[] => (shared.dispatcher?.waiting() ?? []).filter((w) => w.jobId === jobId);

    /** A running replay's counts come from its live progress: one snapshot of its watch. */
    const replayProgress = async (replayId: string): Promise<WatchReplayResponse | undefined> => {
      const abort = new AbortController();
      try {
        for await (const p of (shared.replay as ReplayEngine).watch(replayId, abort.signal)) return p;
      } finally {
        abort.abort();
      }
      return undefined;
    };

    const getJob = async (jobId: string, withTasks = true): Promise<Job> => {
      if (!jobId) throw new InvalidArgumentError('job_id', 'is required');
      if (isReplayId(jobId)) {
        if (!shared.replay) throw new NotFoundError(`job ${JSON.stringify(jobId)} (replay is not enabled on this coordinator)`, 'job_id');
        const report = await shared.replay.report(jobId).catch((err: unknown) => {
          throw err instanceof NotFoundError ? new NotFoundError(`job ${JSON.stringify(jobId)}`, 'job_id') : err;
        });
        return replayToJobProto(report, await replayProgress(jobId), waitingOf(jobId), withTasks);
      }
      const view = await manager.get(jobId);
      if (!withTasks) delete view.tasks;
      return toJobProto(view, waitingOf(jobId));
    };

    /**
     * The job (or replay) `jobId` names, when the caller may change it: a client token only its own
     * principal's (checkActsFor), the owner and admin tokens any. Read first, so a refused call
     * leaves the job as it was.
     */
    const ownJob = async (jobId: string, context: CallContext, action: string): Promise<Job> => {
      const job = await getJob(jobId, false);
      checkActsFor(context, 'job_id', `job ${JSON.stringify(jobId)}`, action, job.principal);
      return job;
    };

    const implementation: JobServiceImplementation = {
      getJob: async (request) => ({ job: await getJob(request.jobId) }),

      async listJobs(request) {
        const state = fromJobStateProto(request.state);
        if (request.pageSize > MAX_PAGE) throw new InvalidArgumentError('page_size', `at most ${MAX_PAGE}`);
        const pageSize = request.pageSize || DEFAULT_PAGE;
        const jobs: Job[] = [];
        if (!request.kind || request.kind !== 'replay') {
          for (const v of await manager.list({ ...(state ? { state } : {}), ...(request.kind ? { kind: request.kind } : {}) })) jobs.push(toJobProto(v, waitingOf(v.jobId)));
          // A misspelt kind would otherwise read as "no jobs". A kind no executor here runs but a
          // stored job has (its executor not registered yet) is still a kind.
          if (request.kind && jobs.length === 0 && !manager.kinds().includes(request.kind) && !(await manager.list({ kind: request.kind })).length) {
            const kinds = [...new Set([...manager.kinds(), ...(shared.replay ? ['replay'] : [])])].sort();
            throw new InvalidArgumentError('kind', `unknown job kind ${JSON.stringify(request.kind)}: ${kinds.length > 0 ? `one of ${kinds.join(', ')}` : 'this coordinator runs no jobs'}`);
          }
        }
        if (shared.replay && (!request.kind || request.kind === 'replay')) {
          for (const listed of await shared.replay.list()) {
            // The stored entry of an unfinished replay is as of its start: the live report and
            // progress have its state and counts.
            const live = listed.state === ReplayState.REPLAY_STATE_PENDING || listed.state === ReplayState.REPLAY_STATE_RUNNING;
            const r = live ? await shared.replay.report(listed.replayId) : listed;
            const job = replayToJobProto(r, live ? await replayProgress(r.replayId) : undefined, waitingOf(r.replayId), false);
            if (request.state && job.state !== request.state) continue;
            jobs.push(job);
          }
        }
        // Newest first across jobs and replays; the page token is the last item's (time, id).
        const key = (j: Job): [bigint, string] => [BigInt(j.createdAtNs), j.jobId];
        const newer = (a: [bigint, string], b: [bigint, string]): boolean => a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);
        jobs.sort((a, b) => (newer(key(a), key(b)) ? -1 : newer(key(b), key(a)) ? 1 : 0));
        let start = 0;
        if (request.pageToken) {
          const m = /^(\d+):(.+)$/.exec(Buffer.from(request.pageToken, 'base64url').toString());
          if (!m) throw new InvalidArgumentError('page_token', 'is not a token from ListJobs');
          const after: [bigint, string] = [BigInt(m[1] as string), m[2] as string];
          start = jobs.findIndex((j) => newer(after, key(j)));
          if (start < 0) start = jobs.length;
        }
        const page = jobs.slice(start, start + pageSize);
        const last = page.at(-1);
        const more = start + pageSize < jobs.length && last !== undefined;
        return { jobs: page, nextPageToken: more ? Buffer.from(`${last.createdAtNs}:${last.jobId}`).toString('base64url') : '' };
      },

      async *watchJob(request, context) {
        const jobId = request.jobId;
        if (!jobId) throw new InvalidArgumentError('job_id', 'is required');
        if (isReplayId(jobId)) {
          yield* watchReplay(jobId, context.signal);
          return;
        }
        yield* watchManagerJob(jobId, context.signal);
      },

      async cancelJob(request, context) {
        await ownJob(request.jobId, context, 'cancel');
        if (isReplayId(request.jobId)) {
          await (shared.replay as ReplayEngine).cancel(request.jobId, 'job_id');
          return { state: (await getJob(request.jobId, false)).state };
        }
        await manager.cancel(request.jobId);
        return { state: (await getJob(request.jobId, false)).state };
      },

      async resumeJob(request, context) {
        await ownJob(request.jobId, context, 'resume');
        if (isReplayId(request.jobId)) {
          throw new InvalidArgumentError('job_id', 'replays are not resumed; start the replay again (retrace replay start ...)');
        }
        const r = await manager.resume(request.jobId);
        return { state: (await getJob(request.jobId, false)).state, tasksToRun: r.tasksToRun };
      },
    };

    /**
     * Manager updates, plus a fresh update whenever the job's waiting shards change (the
     * dispatcher does not announce them, so they are polled every `waitingPollMs`).
     */
    async function* watchManagerJob(jobId: string, signal: AbortSignal): AsyncGenerator<WatchJobResponse> {
      const stop = new AbortController();
      const onAbort = (): void => stop.abort();
      signal.addEventListener('abort', onAbort, { once: true });
      const queue: WatchJobResponse[] = [];
      let wake: (() => void) | undefined;
      let ended = false;
      let failure: unknown;
      let lastWaiting = '';
      let lastJob: Job | undefined;
      const push = (m: WatchJobResponse): void => {
        queue.push(m);
        wake?.();
      };
      const pump = (async () => {
        try {
          for await (const u of manager.watch(jobId, stop.signal)) {
            const waiting = waitingOf(jobId);
            lastWaiting = JSON.stringify(waiting);
            lastJob = toJobProto(u.job, waiting);
            push({ job: lastJob, changedTasks: u.changed.map(toJobTaskProto) });
          }
        } catch (err) {
          failure = err;
        } finally {
          ended = true;
          wake?.();
        }
      })();
      const timer = setInterval(() => {
        if (!lastJob || ended) return;
        const waiting = waitingOf(jobId);
        const text = JSON.stringify(waiting);
        if (text === lastWaiting) return;
        lastWaiting = text;
        void manager
          .get(jobId)
          .then((view) => {
            delete view.tasks;
            if (!ended) push({ job: toJobProto(view, waiting), changedTasks: [] });
          })
          .catch(() => {});
      }, waitingPollMs);
      try {
        for (;;) {
          while (queue.length > 0) {
            const m = queue.shift() as WatchJobResponse;
            yield m;
            if (m.job && ENDED.has(m.job.state)) return;
          }
          if (ended || signal.aborted) break;
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
        if (failure) throw failure;
      } finally {
        clearInterval(timer);
        stop.abort();
        signal.removeEventListener('abort', onAbort);
        await pump;
      }
    }

    async function* watchReplay(replayId: string, signal: AbortSignal): AsyncGenerator<WatchJobResponse> {
      const first = await getJob(replayId);
      yield { job: { ...first, tasks: [] }, changedTasks: first.tasks };
      if (ENDED.has(first.state)) return;
      const seen = new Map(first.tasks.map((t) => [t.id, t.state]));
      for await (const p of (shared.replay as ReplayEngine).watch(replayId, signal)) {
        const report = await (shared.replay as ReplayEngine).report(replayId);
        const job = replayToJobProto(report, p, waitingOf(replayId));
        const changed = job.tasks.filter((t) => seen.get(t.id) !== t.state);
        for (const t of changed) seen.set(t.id, t.state);
        yield { job: { ...job, tasks: [] }, changedTasks: changed };
        if (ENDED.has(job.state)) return;
      }
    }

    return {
      name: 'jobs',
      services: [{ definition: JobServiceDefinition, implementation }],
      start: () => manager.start(),
      async stop() {
        await manager.stop();
        if (shared.jobs === manager) delete shared.jobs;
      },
    };
  };
}
