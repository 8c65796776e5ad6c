import { Metadata, type CallContext } from 'nice-grpc';
import type { LogFn } from '../../common/log.js';
import type { CoordinatorExtension, ExtensionFactory } from '../coordinator.js';
import { createHeadroomCache, toNodeHeadroom, type HeadroomCache, type MetricForecast, type NodeHeadroom } from '../forecast/free-capacity.js';
import type { NodeMesh } from '../mesh/node-mesh.js';
import { toNodeView } from './allocator.js';
import { createDispatcher, type DispatchResult, type Dispatcher, type DispatcherOptions, type RunOptions } from './dispatcher.js';
import type { PublishedCode } from '../../common/gen/retrace/v1/code.js';
import type { TransformRequirements } from '../../common/transform.js';
import type { ShardAssignment } from '../../common/gen/retrace/v1/shard.js';
import { declaredRequirements, mergeRequirements } from '../../common/requirements.js';

/** Services the scheduler extension reads and publishes (filled in by the extensions before it). */
export interface SchedulerShared {
  /** Set by `meshExtension({ onMesh })`, which must come first. */
  mesh?: NodeMesh;
  /** Set by this extension when the coordinator starts its extensions. */
  dispatcher?: Dispatcher;
  /** Set by this extension: a node's forecast headroom as the allocator reads it (undefined = latest readings are used). */
  headroom?: (nodeId: string) => NodeHeadroom | undefined;
  /** Published code (set by codeExtension before this one): a transform's declared requirements count in placement. */
  code?: { describe(codeVersion: string): Promise<PublishedCode | undefined> };
  /**
   * Set by this extension: why no READY node could run a shard of `codeVersion` with a step's
   * `requirements` now (merged with the code's declared ones, as shards are placed), or
   * undefined when one could. Never rejects.
   */
  unmetRequirements?: (codeVersion: string, requirements: TransformRequirements | undefined) => Promise<string | undefined>;
}

/** Tunables passed to the dispatcher (mesh and log are the extension's), and of the forecast headroom. */
export type SchedulerExtensionOptions = Omit<DispatcherOptions, 'mesh' | 'log' | 'headroom'> & {
  /**
   * Rank nodes by forecast headroom (the mesh's Forecast of cpu.load and memory.used over
   * `headroomHorizonMs`) instead of their latest readings (default true). A node without enough
   * history to forecast falls back to its latest readings.
   */
  forecastHeadroom?: boolean;
  /** How far ahead the headroom looks, ms (default 60000): the least free capacity over it counts. */
  headroomHorizonMs?: number;
  /** A node's headroom is recomputed at most this often, on its reports, ms (default 5000). */
  headroomRefreshMs?: number;
};

/**
 * Shard dispatch as a coordinator extension: creates the dispatcher over `shared.mesh` and
 * stores it in `shared.dispatcher` for later extensions (pipelines, replay); stops it on
 * shutdown (open shards resolve CANCELLED). The allocator ranks nodes by forecast headroom,
 * cached per node and refreshed in the background when the node reports (see
 * `createHeadroomCache`); reservations of assigned shards are subtracted by the allocator.
 * Throws when no mesh was set (meshExtension missing or after this one).
 */
export function schedulerExtension(shared: SchedulerShared, options: SchedulerExtensionOptions = {}): ExtensionFactory {
  return (ctx): CoordinatorExtension => {
    const mesh = shared.mesh;
    if (!mesh) throw new Error('schedulerExtension needs the mesh: put meshExtension({ onMesh }) before it');
    const log: LogFn = (level, event, fields) => {
      if (level !== 'debug') ctx.log(`scheduler: ${event}${fields ? ` ${JSON.stringify(fields)}` : ''}`);
    };
    const { forecastHeadroom = true, headroomHorizonMs = 60_000, headroomRefreshMs = 5000, ...dispatcherOptions } = options;
    const headroom = forecastHeadroom ? createForecastHeadroom(mesh, { horizonMs: headroomHorizonMs, refreshMs: headroomRefreshMs, log }) : undefined;
    const { dispatcher, requirementsOf } = withCodeRequirements(
      createDispatcher({ shardTimeoutMs: 60_000, ...dispatcherOptions, mesh, log, ...(headroom ? { headroom: (id: string) => headroom.cache.get(id) } : {}) }),
      shared,
    );
    shared.dispatcher = dispatcher;
    const unmetRequirements = async (codeVersion: string, requirements: TransformRequirements | undefined): Promise<string | undefined> =>
      dispatcher.unmet(mergeRequirements(await requirementsOf(codeVersion), requirements));
    shared.unmetRequirements = unmetRequirements;
    if (headroom) shared.headroom = (id) => headroom.cache.get(id);
    // Forecasts of free capacity subtract what assigned shards hold.
    mesh.setReservationSource((nodeId) => dispatcher.reservedOn(nodeId));
    return {
      name: 'scheduler',
      async stop() {
        headroom?.stop();
        dispatcher.stop();
        if (shared.dispatcher === dispatcher) delete shared.dispatcher;
        if (shared.unmetRequirements === unmetRequirements) delete shared.unmetRequirements;
        delete shared.headroom;
      },
    };
  };
}

/**
 * The dispatcher with each shard's requirements made of its step's and its code's: what
 * `defineTransform` declared (stored in the code's manifest) holds wherever the transform runs,
 * so a pipeline step, replay or recompute need not repeat it. The code's memory is also the
 * worker's heap limit when the shard sets none. Manifests are read once per code version (a
 * version's bytes and manifest never change); shards of unknown code run on their step's alone.
 */
function withCodeRequirements(dispatcher: Dispatcher, shared: SchedulerShared): { dispatcher: Dispatcher; requirementsOf(codeVersion: string): Promise<TransformRequirements | undefined> } {
  const declared = new Map<string, TransformRequirements | undefined>();
  const requirementsOf = async (v: string): Promise<TransformRequirements | undefined> => {
    if (declared.has(v) || !shared.code) return declared.get(v);
    const c = await shared.code.describe(v).catch(() => undefined);
    const r = declaredRequirements(c);
    // Unknown versions are not remembered: they may be published later.
    if (c) declared.set(v, r);
    return r;
  };
  const run = (assignment: ShardAssignment, options: RunOptions, code: TransformRequirements | undefined): Promise<DispatchResult> => {
    const requirements = mergeRequirements(code, options.requirements);
    if (requirements === options.requirements) return dispatcher.run(assignment, options);
    const memoryMb = requirements?.memoryMb ?? 0;
    return dispatcher.run(assignment.memoryLimitMb === 0 && memoryMb > 0 ? { ...assignment, memoryLimitMb: memoryMb } : assignment, { ...options, ...(requirements ? { requirements } : {}) });
  };
  return {
    requirementsOf,
    dispatcher: {
      ...dispatcher,
      run(assignment, options = {}) {
        const v = assignment.codeVersion;
        if (declared.has(v) || !shared.code) return run(assignment, options, declared.get(v));
        return requirementsOf(v).then((r) => run(assignment, options, r));
      },
    },
  };
}

/**
 * Forecast headroom per node from the mesh's own Forecast (the RPC's implementation, called in
 * process): refreshed on `node:reported`, forgotten on LOST/LEFT.
 */
function createForecastHeadroom(mesh: NodeMesh, o: { horizonMs: number; refreshMs: number; log: LogFn }): { cache: HeadroomCache; stop(): void } {
  const forecast = async (nodeId: string, metric: string, signal: AbortSignal): Promise<MetricForecast | undefined> => {
    const context: CallContext = { metadata: Metadata(), peer: 'in-process:scheduler', header: Metadata(), trailer: Metadata(), sendHeader: () => {}, signal };
    try {
      const r = await mesh.implementation.forecast({ nodeId, metric, horizonNs: (BigInt(Math.round(o.horizonMs)) * 1_000_000n).toString(), stepNs: '0', lookbackNs: '0' }, context);
      return { capacity: r.capacity ?? Number.NaN, points: (r.points ?? []).map((p) => ({ mean: p?.mean ?? Number.NaN })) };
    } catch {
      // Not enough history yet, or a metric the node does not report: readings stand in.
      return undefined;
    }
  };
  const cache = createHeadroomCache({
    minRefreshMs: o.refreshMs,
    async compute(nodeId, signal) {
      const info = mesh.nodes().find((n) => n.nodeId === nodeId);
      if (!info) return undefined;
      const view = toNodeView(info);
      const [cpu, memory] = await Promise.all([forecast(nodeId, 'cpu.load', signal), forecast(nodeId, 'memory.used', signal)]);
      const h = toNodeHeadroom(cpu, memory, view.cpuCores);
      return h ? { cpuCores: h.cpuCores ?? view.cpuFreeCores, memoryMb: h.memoryMb ?? view.memoryAvailableMb } : undefined;
    },
    onError: (nodeId, error) => o.log('warn', 'headroom:failed', { nodeId, error: String(error) }),
  });
  const offs = [
    mesh.on('node:reported', (e) => cache.refresh(e.nodeId)),
    mesh.on('node:transition', (t) => {
      if (t.to === 'LOST' || t.to === 'LEFT') cache.forget(t.nodeId);
    }),
  ];
  return {
    cache,
    stop() {
      for (const off of offs) off();
      cache.stop();
    },
  };
}
