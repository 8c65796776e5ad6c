import { ReplayPolicy, ReplayServiceDefinition, type ReplayServiceImplementation } from '../../common/gen/retrace/v1/replay.js';
import { InvalidArgumentError } from '../../common/errors.js';
import type { CoordinatorExtension, ExtensionFactory } from '../coordinator.js';
import { checkActsFor, requestPrincipal } from '../grpc/principal.js';
import type { PublishedCode } from '../../common/gen/retrace/v1/code.js';
import type { NodeInfo } from '../../common/gen/retrace/v1/node.js';
import { declaredRequirements } from '../../common/requirements.js';
import { allocate, toNodeView } from '../scheduler/allocator.js';
import type { PipelineStore } from '../pipeline/pipeline-store.js';
import { ReplayEngine, type ReplayPayloads, type ReplayShardRunner } from './replay-engine.js';

/** What the replay extension reads from the extensions before it. */
export interface ReplayShared {
  dispatcher?: ReplayShardRunner;
  /** Published code (codeExtension): what a replayed code version declares counts in the up-front checks. */
  code?: { describe(codeVersion: string): Promise<PublishedCode | undefined> };
  pipelines?: { payloads: ReplayPayloads; store?: Pick<PipelineStore, 'get' | 'getCurrent'> };
  mesh?: { nodes(): readonly NodeInfo[] };
  replay?: ReplayEngine;
}

/** ReplayService as a coordinator extension; the engine is published on `shared.replay`. */
export function replayExtension(shared: ReplayShared): ExtensionFactory {
  return (ctx): CoordinatorExtension => {
    const engine = new ReplayEngine({
      db: ctx.db,
      lineage: ctx.lineage,
      runner: () => shared.dispatcher,
      payloads: () => shared.pipelines?.payloads,
      nodes: () => shared.mesh?.nodes() ?? [],
      checkPlacement: (placement, requirements) => {
        const nodes = (shared.mesh?.nodes() ?? []).map(toNodeView);
        // With requirements, among the nodes the placement allows only: the reason is then the
        // requirement those miss, not the placement rule that rules out the others.
        const allowed = requirements ? nodes.filter((n) => 'nodeId' in allocate([n], { placement }, new Map())) : nodes;
        const result = allocate(allowed, { placement, ...(requirements ? { requirements } : {}) }, new Map());
        return 'waiting' in result ? result.waiting : undefined;
      },
      clock: ctx.clock,
      log: ctx.log,
      onStoreWritable: ctx.onStoreWritable,
      codeRequirements: async (codeVersion) => declaredRequirements(await shared.code?.describe(codeVersion)),
      async publishedTransform(codeVersion) {
        if (!shared.code) return undefined;
        const code = await shared.code.describe(codeVersion);
        return code === undefined ? null : (code.manifest?.transform ?? '');
      },
      async pipelineStep(pipeline, version, step) {
        const store = shared.pipelines?.store;
        if (!store) return undefined;
        // The recorded version, else the latest (a version never stored reads as unknown).
        const pv = await store.get(pipeline, version).catch(() => store.get(pipeline));
        const found = pv.pipeline?.steps.find((s) => s.name === step);
        return found && { timeoutMs: found.timeoutMs, requirements: found.requirements };
      },
      async currentVersion(objectId) {
        const m = /^record:([^/]+)\/([^:]+):(.*)$/s.exec(objectId);
        const store = shared.pipelines?.store;
        if (!m || !store) return undefined;
        return (await store.getCurrent(m[1] as string, m[2] as string, m[3] as string))?.contentHash;
      },
    });
    shared.replay = engine;
    const implementation: ReplayServiceImplementation = {
      // The principal recorded is the caller's: a client token's own name (another is refused).
      startReplay: (request, context) => {
        const sent = request.policy?.principal ?? '';
        // Empty (the owner token naming no one): the default the replayed steps record, also in
        // the report and the replay's job, which showed an empty principal.
        const principal = requestPrincipal(context, 'policy.principal', sent) || 'replay';
        return engine.startReplay(principal === sent ? request : { ...request, policy: ReplayPolicy.fromPartial({ ...request.policy, principal }) });
      },
      async *watchReplay(request, context) {
        if (!request.replayId) throw new InvalidArgumentError('replay_id', 'is required');
        yield* engine.watch(request.replayId, context.signal);
      },
      async getReplayReport(request) {
        if (!request.replayId) throw new InvalidArgumentError('replay_id', 'is required');
        return { report: await engine.report(request.replayId) };
      },
      listReplays: async () => ({ replays: await engine.list() }),
      async cancelReplay(request, context) {
        if (!request.replayId) throw new InvalidArgumentError('replay_id', 'is required');
        // A client token cancels only its own principal's replays (as JobService/CancelJob).
        const report = await engine.report(request.replayId);
        checkActsFor(context, 'replay_id', `replay ${JSON.stringify(request.replayId)}`, 'cancel', report.policy?.principal ?? '');
        return { state: await engine.cancel(request.replayId) };
      },
    };
    return {
      name: 'replay',
      services: [{ definition: ReplayServiceDefinition, implementation }],
      start: () => engine.start(),
      stop: () => engine.stop(),
    };
  };
}
