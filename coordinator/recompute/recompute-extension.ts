import type { CallContext } from 'nice-grpc';
import { InvalidArgumentError } from '../../common/errors.js';
import type { NodeInfo } from '../../common/gen/retrace/v1/node.js';
import type { PublishedCode } from '../../common/gen/retrace/v1/code.js';
import { DEFAULT_POLICY } from './change-store.js';
import { ChangePolicy, RecomputeServiceDefinition, type RecomputeServiceImplementation } from '../../common/gen/retrace/v1/recompute.js';
import type { CoordinatorExtension, ExtensionFactory } from '../coordinator.js';
import type { JobSubmitter } from '../jobs/job-types.js';
import type { PipelineHandles } from '../pipeline/pipeline-extension.js';
import { latestWithSource } from '../pipeline/pipeline-store.js';
import { ChangeDetector } from './change-detector.js';
import { createChangeStore, type ChangeStore } from './change-store.js';
import { createMemoStore, type MemoStore } from './memo-store.js';
import { RecomputeExecutor, type RecomputeShardRunner } from './recompute-executor.js';
import { toStepDefinition } from './recompute-planner.js';
import { Recomputer } from './recompute-service.js';

/** What the recompute extension publishes for later code (CLI demo, tests). */
export interface RecomputeHandles {
  recomputer: Recomputer;
  changes: ChangeStore;
  memo: MemoStore;
  detector: ChangeDetector;
  executor: RecomputeExecutor;
}

/** What it reads from the extensions before it, and publishes. */
export interface RecomputeShared {
  jobs?: JobSubmitter;
  pipelines?: PipelineHandles;
  dispatcher?: RecomputeShardRunner;
  mesh?: { nodes(): readonly NodeInfo[] };
  code?: { describe(codeVersion: string): Promise<PublishedCode | undefined>; followUps?(): Promise<{ codeVersion: string; principal: string }[]>; followUpDone?(codeVersion: string): Promise<void> };
  recompute?: RecomputeHandles;
}

function principalOf(context: CallContext): string {
  const p = context.metadata.get('x-retrace-principal');
  return typeof p === 'string' && p.trim() !== '' ? p.trim() : 'anonymous';
}

export interface RecomputeExtensionOptions {
  /** Directories `WatchPath` may read (the coordinator's `--watch-root`); none: watching is off. */
  watchRoots?: readonly string[];
}

/** RecomputeService over a Recomputer, the change store and the detector. */
export function createRecomputeHandlers(h: RecomputeHandles, checkTarget: (pipeline: string, source: string) => Promise<void>): RecomputeServiceImplementation {
  return {
    notifyChange: (request, context) => h.recomputer.notify(request, principalOf(context)),
    async listChanges(request) {
      return h.changes.list({ pipeline: request.pipeline, pageSize: request.pageSize, pageToken: request.pageToken });
    },
    async getChange(request) {
      if (request.changeId === '') throw new InvalidArgumentError('change_id', 'is required');
      return { change: await h.changes.get(request.changeId) };
    },
    async setChangePolicy(request) {
      if (request.pipeline !== '') await checkTarget(request.pipeline, request.source);
      return { entry: await h.changes.setPolicy(request.pipeline, request.source, request.policy) };
    },
    async listChangePolicies() {
      return { entries: await h.changes.policies(), defaultPolicy: DEFAULT_POLICY };
    },
    async watchPath(request) {
      if (request.policy !== 0 && request.pipeline !== '') {
        // The whole watch is checked before the policy is stored, so a refused one leaves nothing behind.
        await h.detector.check(request);
        await h.changes.setPolicy(request.pipeline, request.source, request.policy);
      }
      return { watch: await h.detector.watch(request) };
    },
    async listWatches() {
      return { watches: h.detector.list() };
    },
    async unwatchPath(request) {
      if (request.watchId === '') throw new InvalidArgumentError('watch_id', 'is required');
      return { removed: await h.detector.unwatch(request.watchId) };
    },
    impact: (request) => h.recomputer.impact(request),
    recompute: (request, context) => h.recomputer.recompute(request, principalOf(context), context.signal),
  };
}

/**
 * Change detection, impact analysis and selective recomputation as a coordinator extension:
 * mounts RecomputeService, listens to the pipeline runner (re-ingested records) and to
 * ApplyPipeline (step code/parameter changes), watches the persisted paths, and registers the
 * `recompute` executor with `shared.jobs`. Put it after the jobs and pipeline extensions.
 */
export function recomputeExtension(shared: RecomputeShared, options: RecomputeExtensionOptions = {}): ExtensionFactory {
  return (ctx): CoordinatorExtension => {
    const changes = createChangeStore(ctx.db, ctx.lineage, ctx.clock);
    const memo = createMemoStore(ctx.db);
    const recomputer = new Recomputer({
      lineage: ctx.lineage,
      changes,
      pipelines: () => shared.pipelines,
      jobs: () => shared.jobs,
      nodes: () => shared.mesh?.nodes() ?? [],
      code: () => shared.code,
      clock: ctx.clock,
      log: ctx.log,
    });
    // A watch or a change policy names a pipeline and source that exist (when pipelines are mounted).
    const checkTarget = async (pipeline: string, source: string): Promise<void> => {
      const store = shared.pipelines?.store;
      if (store) await latestWithSource(store, pipeline, source === '' ? undefined : source);
    };
    const detector = new ChangeDetector({
      changes,
      sink: (watch, files) => recomputer.onFiles(watch, files),
      clock: ctx.clock,
      log: ctx.log,
      checkTarget,
      watchRoots: options.watchRoots ?? [],
      dataDir: ctx.dataDir,
    });
    const executor = new RecomputeExecutor({
      lineage: ctx.lineage,
      payloads: () => shared.pipelines?.payloads,
      setCurrent: async (pipeline, entries) => shared.pipelines?.store.setCurrent(pipeline, entries),
      currentOf: (objectId) => recomputer.contentNow(objectId),
      memo,
      definitionOf: async (pipeline, step) => {
        const pv = await shared.pipelines?.store.get(pipeline).catch(() => undefined);
        const s = pv?.pipeline?.steps.find((x) => x.name === step);
        return s ? toStepDefinition(s) : undefined;
      },
      runner: () => shared.dispatcher,
      clock: ctx.clock,
    });
    const handles: RecomputeHandles = { recomputer, changes, memo, detector, executor };
    shared.recompute = handles;
    const pipelines = shared.pipelines;
    if (pipelines) {
      pipelines.runner.setChangeListener({
        onChange: (c) => recomputer.onRecordChange(c),
        onRecomputed: (changeId) => recomputer.onRecordRecomputed(changeId),
        reportedChangeTo: (r) => recomputer.reportedRecordChangeTo(r.pipeline, r.objectId, r.contentHash),
        runsSteps: async (pipeline, source) => (await changes.policyFor(pipeline, source)) !== ChangePolicy.CHANGE_POLICY_MANUAL,
        onStaleRun: (run) => recomputer.onStaleRun(run),
      });
      pipelines.applyListener = (e) => recomputer.onPipelineApplied(e);
    }
    let resuming: Promise<void> | undefined;
    return {
      name: 'recompute',
      services: [{ definition: RecomputeServiceDefinition, implementation: createRecomputeHandlers(handles, checkTarget) }],
      async start() {
        if (shared.jobs) shared.jobs.registerExecutor(executor);
        else ctx.log('recompute: no job manager; Recompute will answer FAILED_PRECONDITION');
        await detector.start();
        // In the background: planning a large pipeline's recompute takes a while, and the
        // coordinator answers meanwhile. It submits jobs, so the jobs extension must start first.
        resuming = recomputer.resumeFollowUps();
      },
      async stop() {
        await resuming;
        await detector.stop();
        if (pipelines) {
          pipelines.runner.setChangeListener(undefined);
          delete pipelines.applyListener;
        }
        if (shared.recompute === handles) delete shared.recompute;
      },
    };
  };
}
