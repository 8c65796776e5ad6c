import type { CallContext } from 'nice-grpc';
import { AsyncQueue } from '../../common/async-queue.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, RetraceError, UnavailableError } from '../../common/errors.js';
import {
  NodeEventKind,
  ReadingSource,
  type ConnectRequest,
  type ConnectResponse,
  type DeepPartial,
  type ForecastRequest,
  type ForecastResponse,
  type GetHistoryRequest,
  type GetHistoryResponse,
  type NodeInfo,
  type NodeServiceImplementation,
  type WatchNodesRequest,
  type WatchNodesResponse,
} from '../../common/gen/retrace/v1/node.js';
import { createJsonLog, type LogFn } from '../../common/log.js';
import { isNodeId, resolveMetric } from '../../common/node-resources.js';
import { formatDurationMs, millisToNanos, parseNanos } from '../../common/time.js';
import type { Database } from '../store/database.js';
import { createHistoryStore, type HistoryStore } from '../store/history-store.js';
import { createForecaster } from '../forecast/forecaster.js';
import { BOUND_PRINCIPAL_HEADER } from '../grpc/principal.js';
import { ConnectSession, type SessionHost } from './connect-session.js';
import { MeshEmitter, type MeshEventName, type MeshEvents } from './mesh-events.js';
import { createNodeRecordStore } from './node-record-store.js';
import { NodeRegistry, fromProtoState, toNodeInfo, toNodeTransition, type LiveNode } from './node-registry.js';

/** The history store as the mesh uses it (coordinator/store/history-store.ts). Times in ms. */
export type MeshHistoryStore = Pick<HistoryStore, 'append' | 'query' | 'listMetrics'>;

/** What a forecaster returns (coordinator/forecast/). */
export interface MeshForecast {
  t: number[];
  mean: number[];
  lower: number[];
  upper: number[];
  method: string;
  coverage: number;
}

/**
 * The forecaster as the mesh uses it (coordinator/forecast/forecaster.ts): `fit` is the slow part
 * (the mesh caches fits), `forecast` conditions a fit on the latest history.
 */
export interface MeshForecaster<Fitted = unknown> {
  fit(series: { t: number[]; v: number[] }, stepMs: number): Fitted | Promise<Fitted>;
  forecast(fitted: Fitted, horizonSteps: number, history?: { t: number[]; v: number[] }): MeshForecast | Promise<MeshForecast>;
}

/** Tunables of the mesh; validated once by `compileMeshOptions`. Durations in ms. */
export interface NodeMeshOptions {
  /** Interval given to agents that ask for none (default 2000). */
  defaultReportIntervalMs?: number;
  /** Bounds an agent's requested interval is clamped to (defaults 100 and 60000). */
  minReportIntervalMs?: number;
  maxReportIntervalMs?: number;
  /** SUSPECT after this many silent intervals (default 3). */
  suspectAfterIntervals?: number;
  /** LOST after this many (default 10; more than suspectAfterIntervals). */
  lostAfterIntervals?: number;
  /** How often the missed-report timers run (default 100). */
  sweepIntervalMs?: number;
  /** Coordinator → agent ping period, for the coordinator's RTT figure (default 10000). */
  pingIntervalMs?: number;
  /** Events a WatchNodes caller may fall behind by before its stream fails (default 10000). */
  maxWatchBacklog?: number;
  /** Agent clock error tolerated for sample times (default 300000). */
  maxClockSkewMs?: number;
  /** Transitions kept per node (default 20). */
  maxTransitions?: number;
  /** Compaction period of the history store the mesh creates itself (default 600000). */
  compactIntervalMs?: number;
  /** A fitted forecast model is reused (conditioned on new history) for this long (default 600000). */
  forecastRefitMs?: number;
}

/** Compiled, frozen mesh options. */
export type CompiledMeshOptions = Readonly<Required<NodeMeshOptions>>;

/** Validates and defaults mesh options; InvalidArgumentError names the bad option. */
export function compileMeshOptions(o: NodeMeshOptions = {}): CompiledMeshOptions {
  const c: Required<NodeMeshOptions> = {
    defaultReportIntervalMs: o.defaultReportIntervalMs ?? 2000,
    minReportIntervalMs: o.minReportIntervalMs ?? 100,
    maxReportIntervalMs: o.maxReportIntervalMs ?? 60_000,
    suspectAfterIntervals: o.suspectAfterIntervals ?? 3,
    lostAfterIntervals: o.lostAfterIntervals ?? 10,
    sweepIntervalMs: o.sweepIntervalMs ?? 100,
    pingIntervalMs: o.pingIntervalMs ?? 10_000,
    maxWatchBacklog: o.maxWatchBacklog ?? 10_000,
    maxClockSkewMs: o.maxClockSkewMs ?? 300_000,
    maxTransitions: o.maxTransitions ?? 20,
    compactIntervalMs: o.compactIntervalMs ?? 600_000,
    forecastRefitMs: o.forecastRefitMs ?? 600_000,
  };
  for (const [k, v] of Object.entries(c)) {
    if (!Number.isFinite(v) || v <= 0) throw new InvalidArgumentError(k, `must be a positive number, got ${v}`);
  }
  if (c.minReportIntervalMs > c.maxReportIntervalMs) throw new InvalidArgumentError('minReportIntervalMs', 'exceeds maxReportIntervalMs');
  if (c.defaultReportIntervalMs < c.minReportIntervalMs || c.defaultReportIntervalMs > c.maxReportIntervalMs) {
    throw new InvalidArgumentError('defaultReportIntervalMs', 'outside [minReportIntervalMs, maxReportIntervalMs]');
  }
  if (c.lostAfterIntervals <= c.suspectAfterIntervals) throw new InvalidArgumentError('lostAfterIntervals', 'must exceed suspectAfterIntervals');
  return Object.freeze(c);
}

/** What `createNodeMesh` needs. */
export interface NodeMeshDeps {
  /** The coordinator's database; the mesh keeps node records in its `mesh-nodes` sublevel. */
  db: Database;
  /**
   * Where every report's samples go and GetHistory reads. Default: a history store over
   * `db.sublevel('history')` that this mesh also compacts (every `compactIntervalMs`).
   */
  history?: MeshHistoryStore;
  /** For Forecast. Default: `createForecaster()` (TF.js loads on the first fit). */
  forecaster?: MeshForecaster<never>;
  options?: NodeMeshOptions;
  /** Wall clock, ms since the epoch (default Date.now). */
  now?: () => number;
  log?: LogFn;
  /**
   * Whether a named token called `name` exists now (the coordinator's token table). A node bound
   * to a name that no longer exists may be claimed by another agent token. Default: every name
   * exists, so a binding never moves.
   */
  hasTokenNamed?: (name: string) => boolean;
}

/** Lifecycle of the mesh. */
export type MeshState = 'CREATED' | 'STARTING' | 'RUNNING' | 'STOPPING' | 'STOPPED' | 'FAILED';

const MESH_ALLOWED: Readonly<Record<MeshState, readonly MeshState[]>> = {
  CREATED: ['STARTING', 'STOPPED'],
  STARTING: ['RUNNING', 'FAILED'],
  RUNNING: ['STOPPING'],
  STOPPING: ['STOPPED'],
  STOPPED: [],
  FAILED: [],
};

/** The node mesh: the NodeService implementation plus its lifecycle and events. */
export interface NodeMesh {
  /**
   * Where Forecast learns what assigned shards hold on a node (the dispatcher's reservations),
   * so it can answer free capacity = capacity − forecast usage − reservations.
   */
  setReservationSource(source: (nodeId: string) => { cpuCores: number; memoryMb: number } | undefined): void;
  /** For `server.add(NodeServiceDefinition, mesh.implementation)`. */
  readonly implementation: NodeServiceImplementation;
  readonly state: MeshState;
  /** Loads stored nodes and starts the timers; call before the server listens. */
  start(): Promise<void>;
  /** Ends every Connect and WatchNodes stream, stops the timers, waits for pending writes. Idempotent. */
  stop(): Promise<void>;
  on<E extends MeshEventName>(event: E, listener: (payload: MeshEvents[E]) => void): () => void;
  /** Every node now (for the scheduler and the HTTP face). */
  nodes(): NodeInfo[];
  /** Queues a message on a node's Connect stream; false when the node has none open. */
  send(nodeId: string, message: ConnectResponse): boolean;
  /** Messages the mesh does not handle itself (cases added to ConnectRequest later). */
  onMessage(listener: (nodeId: string, message: ConnectRequest) => void): () => void;
}

const HOUR_MS = 3_600_000;
const MAX_POINTS = 10_000;

/**
 * Creates the node mesh. Wire it as:
 *   const mesh = createNodeMesh({ db, history, forecaster, log });
 *   await mesh.start(); server.add(NodeServiceDefinition, mesh.implementation);
 *   ... await mesh.stop() before server.shutdown().
 * Handlers throw RetraceErrors only; the server's error middleware maps them to statuses.
 */
export function createNodeMesh(deps: NodeMeshDeps): NodeMesh {
  const options = compileMeshOptions(deps.options);
  const now = deps.now ?? Date.now;
  const log = deps.log ?? createJsonLog((line) => process.stderr.write(line), { name: 'mesh' });
  const emitter = new MeshEmitter(log);
  const ownHistory = deps.history === undefined ? createHistoryStore(deps.db.sublevel('history')) : undefined;
  const history: MeshHistoryStore = deps.history ?? (ownHistory as HistoryStore);
  let compactTimer: NodeJS.Timeout | undefined;
  let compacting: Promise<unknown> = Promise.resolve();
  const forecaster = (deps.forecaster ?? createForecaster()) as MeshForecaster<unknown>;
  let reservationSource: ((nodeId: string) => { cpuCores: number; memoryMb: number } | undefined) | undefined;
  // Fits are the expensive part (a backtest, maybe a small model); a fit is reused for
  // forecastRefitMs and conditioned on the latest history at each request.
  const fits = new Map<string, { atMs: number; points: number; fitted: Promise<unknown> }>();
  const registry = new NodeRegistry(createNodeRecordStore(deps.db), options, emitter, now, log);
  const sessions = new Map<string, ConnectSession>();
  const openSessions = new Set<ConnectSession>();
  const watchers = new Set<AsyncQueue<WatchNodesResponse>>();
  const messageListeners = new Set<(nodeId: string, message: ConnectRequest) => void>();
  let state: MeshState = 'CREATED';
  let timer: NodeJS.Timeout | undefined;

  function transition(to: MeshState, reason: string): void {
    if (!MESH_ALLOWED[state].includes(to)) throw new FailedPreconditionError(`mesh cannot go from ${state} to ${to}`);
    log('info', 'mesh:state', { from: state, to, reason });
    state = to;
  }

  function assertRunning(): void {
    if (state !== 'RUNNING') throw new UnavailableError(`node mesh is ${state.toLowerCase()}`);
  }

  /** Reports' readings are being dropped because the data dir is full (logged once until a write succeeds). */
  let droppingForSpace = false;
  const host: SessionHost = {
    registry,
    emitter,
    log,
    now,
    bounds: options,
    maxClockSkewMs: options.maxClockSkewMs,
    sessions,
    hasTokenNamed: deps.hasTokenNamed ?? (() => true),
    async append(nodeId, samples) {
      if (samples.length === 0) return;
      try {
        await history.append(nodeId, samples);
        droppingForSpace = false;
      } catch (err) {
        // Readings lost to a full data dir are a gap in the history, not a reason to drop the
        // agent: ending its session (as any other failed report does) kept every agent
        // disconnected, so an ingest's shards waited for a node forever.
        if (!(err instanceof RetraceError && err.code === 'INSUFFICIENT_STORAGE')) throw err;
        if (!droppingForSpace) log('warn', 'history:dropped', { nodeId, error: err.message });
        droppingForSpace = true;
      }
    },
    unhandled(nodeId, message) {
      if (messageListeners.size === 0) log('debug', 'session:ignored', { nodeId, case: message.body?.$case ?? 'empty' });
      for (const l of messageListeners) l(nodeId, message);
    },
  };

  function requireNodeId(id: string, field = 'node_id'): LiveNode {
    if (id === '') throw new InvalidArgumentError(field, 'required');
    if (!isNodeId(id)) throw new InvalidArgumentError(field, `not a node id: ${JSON.stringify(id)}`);
    return registry.require(id, field);
  }

  function positiveNs(value: string, field: string, required: boolean): number {
    const ms = Number(parseNanos(value || '0', field)) / 1e6;
    if (required && ms <= 0) throw new InvalidArgumentError(field, 'must be greater than 0');
    return ms;
  }

  function metricOf(value: string): string {
    if (value.trim() === '') throw new InvalidArgumentError('metric', 'required, e.g. cpu, memory or gpu.0.util');
    return resolveMetric(value);
  }

  async function queryPoints(nodeId: string, metric: string, fromMs: number, toMs: number, stepMs: number): Promise<{ t: number; value: number }[]> {
    const result = await history.query(nodeId, metric, Math.floor(fromMs), Math.ceil(toMs), stepMs > 0 ? { stepMs: Math.max(1, Math.round(stepMs)) } : {});
    const points = result.map((p) => ({ t: p.t, value: p.value }));
    if (points.length === 0) {
      const known = await history.listMetrics(nodeId);
      if (!known.includes(metric)) {
        // "… not found" after the list read as if the list was what was missing.
        throw new NotFoundError(`metric ${JSON.stringify(metric)} of node ${nodeId}`, 'metric', `(it has: ${known.slice(0, 20).join(', ') || 'none yet'})`);
      }
    }
    return points;
  }

  function watchEvent(kind: NodeEventKind, nodeId: string | undefined, extra: Partial<WatchNodesResponse> = {}): WatchNodesResponse {
    const node = nodeId === undefined ? undefined : registry.get(nodeId);
    return { kind, ...(node ? { node: toNodeInfo(node) } : {}), timeNs: millisToNanos(now()).toString(), ...extra };
  }

  const implementation: NodeServiceImplementation = {
    async *connect(requests: AsyncIterable<ConnectRequest>, context: CallContext): AsyncGenerator<DeepPartial<ConnectResponse>, void, undefined> {
      assertRunning();
      const bound = context.metadata.get(BOUND_PRINCIPAL_HEADER);
      const session = new ConnectSession(host, typeof bound === 'string' && bound !== '' ? bound : undefined);
      openSessions.add(session);
      void session.read(requests, context.signal);
      try {
        for await (const message of session.out) yield message;
      } finally {
        openSessions.delete(session);
        session.end('call finished');
      }
    },

    async listNodes(request) {
      assertRunning();
      const states = request.states.map((s, i) => {
        const name = fromProtoState(s);
        if (!name) throw new InvalidArgumentError(`states[${i}]`, `unknown node state ${s}`);
        return name;
      });
      const labels = Object.entries(request.labels);
      const nodes = registry
        .list()
        .filter((n) => states.length === 0 || states.includes(n.record.state))
        .filter((n) => labels.every(([k, v]) => n.record.labels[k] === v));
      return { nodes: nodes.map(toNodeInfo) };
    },

    async getNode(request) {
      assertRunning();
      return { node: toNodeInfo(requireNodeId(request.nodeId)) };
    },

    async *watchNodes(request: WatchNodesRequest, context: CallContext): AsyncGenerator<DeepPartial<WatchNodesResponse>, void, undefined> {
      assertRunning();
      const only = request.nodeId === '' ? undefined : requireNodeId(request.nodeId).record.nodeId;
      const match = (id: string): boolean => only === undefined || id === only;
      const queue = new AsyncQueue<WatchNodesResponse>(options.maxWatchBacklog);
      const push = (event: WatchNodesResponse): void => {
        if (!queue.push(event) && !queue.isClosed) {
          queue.fail(new RetraceError('RESOURCE_EXHAUSTED', `watcher fell ${options.maxWatchBacklog} events behind; watch again`));
        }
      };
      // Snapshot and subscription happen in one synchronous step, so no change falls between.
      for (const n of registry.list()) if (match(n.record.nodeId)) push(watchEvent(NodeEventKind.NODE_EVENT_KIND_SNAPSHOT, n.record.nodeId));
      push(watchEvent(NodeEventKind.NODE_EVENT_KIND_SYNCED, undefined));
      const offs = [
        emitter.on('node:registered', (e) => {
          if (match(e.nodeId)) push(watchEvent(NodeEventKind.NODE_EVENT_KIND_REGISTERED, e.nodeId));
        }),
        emitter.on('node:transition', (e) => {
          if (match(e.nodeId)) {
            push(watchEvent(NodeEventKind.NODE_EVENT_KIND_STATE_CHANGED, e.nodeId, { transition: toNodeTransition(e) }));
          }
        }),
        // A stream that ends (an agent killed) changes the node's `connected` long before the
        // missed-report timers change its state: a watcher learns it now, as `retrace nodes` does.
        emitter.on('node:disconnected', (e) => {
          if (match(e.nodeId)) push(watchEvent(NodeEventKind.NODE_EVENT_KIND_DISCONNECTED, e.nodeId));
        }),
      ];
      if (request.includeReports) {
        offs.push(
          emitter.on('node:reported', (e) => {
            if (match(e.nodeId)) push(watchEvent(NodeEventKind.NODE_EVENT_KIND_REPORTED, e.nodeId));
          }),
        );
      }
      const onAbort = (): void => queue.close();
      context.signal.addEventListener('abort', onAbort, { once: true });
      watchers.add(queue);
      try {
        for await (const event of queue) yield event;
      } finally {
        for (const off of offs) off();
        context.signal.removeEventListener('abort', onAbort);
        watchers.delete(queue);
        queue.close();
      }
    },

    async drainNode(request) {
      assertRunning();
      const node = await registry.drain(requireNodeId(request.nodeId).record.nodeId, request.reason.trim());
      sessions.get(node.record.nodeId)?.send({ body: { $case: 'drain', value: { reason: node.record.drainReason } } });
      return { node: toNodeInfo(node) };
    },

    async getHistory(request: GetHistoryRequest): Promise<GetHistoryResponse> {
      assertRunning();
      const node = requireNodeId(request.nodeId);
      const metric = metricOf(request.metric);
      const toMs = positiveNs(request.toNs, 'to_ns', false) || now();
      const fromMs = positiveNs(request.fromNs, 'from_ns', false) || toMs - HOUR_MS;
      if (fromMs > toMs) throw new InvalidArgumentError('from_ns', 'is after to_ns');
      const stepMs = positiveNs(request.stepNs, 'step_ns', false);
      if (stepMs > 0 && (toMs - fromMs) / stepMs > MAX_POINTS) throw new InvalidArgumentError('step_ns', `more than ${MAX_POINTS} points; use a larger step`);
      const points = await queryPoints(node.record.nodeId, metric, fromMs, toMs, stepMs);
      return {
        nodeId: node.record.nodeId,
        metric,
        points: points.map((p) => ({ timeNs: millisToNanos(p.t).toString(), value: p.value })),
      };
    },

    async forecast(request: ForecastRequest): Promise<ForecastResponse> {
      assertRunning();
      const node = requireNodeId(request.nodeId);
      const metric = metricOf(request.metric);
      const horizonMs = positiveNs(request.horizonNs, 'horizon_ns', true);
      // Whole milliseconds: the history store and the forecaster work on an integer-ms grid.
      const askedStepMs = positiveNs(request.stepNs, 'step_ns', false);
      const stepMs = Math.max(1, Math.round(askedStepMs || Math.max(node.record.reportIntervalMs, horizonMs / 60)));
      const horizonSteps = Math.ceil(horizonMs / stepMs);
      if (horizonSteps > MAX_POINTS) throw new InvalidArgumentError('step_ns', `horizon / step exceeds ${MAX_POINTS} points`);
      const lookbackMs = positiveNs(request.lookbackNs, 'lookback_ns', false) || Math.max(4 * horizonMs, 60 * stepMs);
      if (lookbackMs / stepMs > 10 * MAX_POINTS) throw new InvalidArgumentError('lookback_ns', 'too long for the step');
      const end = now();
      // A horizon of centuries asks for a lookback before the epoch: read from its start instead.
      const points = await queryPoints(node.record.nodeId, metric, Math.max(0, end - lookbackMs), end, stepMs);
      if (points.length < 3) {
        // A long horizon with no step asked for makes the step 1/60 of it: say so, since the
        // history may well be long enough at a finer step.
        const auto = askedStepMs === 0 ? ` at the automatic step of ${formatDurationMs(stepMs)} (1/60 of the horizon; a smaller step_ns may find enough)` : ` at a step of ${formatDurationMs(stepMs)}`;
        throw new FailedPreconditionError(`not enough history of ${metric} on ${node.record.nodeId} to forecast: ${points.length} points${auto}, need 3`, 'metric');
      }
      const series = { t: points.map((p) => p.t), v: points.map((p) => p.value) };
      const key = `${node.record.nodeId}\0${metric}\0${stepMs}\0${lookbackMs}`;
      let fit = fits.get(key);
      // A fit is also redone once the history has doubled since it was made: the first forecast
      // of a node (the scheduler's headroom asks right after it registers) sees a few points, and
      // a fit on those kept its intervals for forecastRefitMs however much history came after.
      if (!fit || end - fit.atMs > options.forecastRefitMs || series.t.length >= 2 * fit.points) {
        fit = { atMs: end, points: series.t.length, fitted: Promise.resolve(forecaster.fit(series, stepMs)) };
        fits.set(key, fit);
        // A failed fit must not stay cached.
        fit.fitted.catch(() => fits.delete(key));
        if (fits.size > 10_000) fits.delete(fits.keys().next().value as string);
      }
      const f = await forecaster.forecast(await fit.fitted, horizonSteps, series);
      const info = toNodeInfo(node);
      const capacity = capacityOf(info, metric);
      const reserved = reservedIn(info, metric, reservationSource?.(node.record.nodeId));
      return {
        nodeId: node.record.nodeId,
        metric,
        capacity,
        points: f.t.map((t, i) => {
          // Usage never exceeds a known capacity (100 % of the CPU, all of the memory), however
          // wide the interval the residuals give.
          const cap = (x: number): number => (x > capacity ? capacity : x);
          const mean = cap(f.mean[i] ?? Number.NaN);
          const lower = cap(f.lower[i] ?? Number.NaN);
          const upper = cap(f.upper[i] ?? Number.NaN);
          return { timeNs: millisToNanos(t).toString(), mean, lower, upper, reserved, free: capacity - mean - reserved, freeLower: capacity - upper - reserved, freeUpper: capacity - lower - reserved };
        }),
        method: f.method,
        coverage: f.coverage,
        stepNs: millisToNanos(stepMs).toString(),
        fittedPoints: fit.points,
      };
    },
  };

  return {
    implementation,
    get state() {
      return state;
    },
    async start() {
      transition('STARTING', 'start');
      try {
        await registry.load();
      } catch (err) {
        transition('FAILED', String(err));
        throw err;
      }
      timer = setInterval(() => {
        registry.sweep();
        const t = now();
        for (const s of openSessions) s.maybePing(t, options.pingIntervalMs);
      }, options.sweepIntervalMs);
      if (ownHistory) {
        compactTimer = setInterval(() => {
          compacting = ownHistory.compact().catch((err: unknown) => log('error', 'history:compact-failed', { error: String(err) }));
        }, options.compactIntervalMs);
      }
      transition('RUNNING', `${registry.size} nodes known`);
    },
    async stop() {
      if (state === 'STOPPED' || state === 'STOPPING' || state === 'FAILED') return;
      if (state === 'CREATED') {
        transition('STOPPED', 'never started');
        return;
      }
      transition('STOPPING', 'stop');
      if (timer) clearInterval(timer);
      if (compactTimer) clearInterval(compactTimer);
      // Agents see their stream end and reconnect with backoff (to this coordinator's successor).
      for (const s of openSessions) s.end('coordinator stopping');
      for (const w of watchers) w.close();
      await registry.flush();
      await compacting;
      transition('STOPPED', 'stopped');
    },
    on(event, listener) {
      return emitter.on(event, listener);
    },
    nodes() {
      return registry.list().map(toNodeInfo);
    },
    setReservationSource(source) {
      reservationSource = source;
    },
    send(nodeId, message) {
      return sessions.get(nodeId)?.send(message) ?? false;
    },
    onMessage(listener) {
      messageListeners.add(listener);
      return () => {
        messageListeners.delete(listener);
      };
    },
  };
}

/** A reading's value, declared over measured. */
function readingValue(info: NodeInfo, name: string): number | undefined {
  const all = [...info.capabilities, ...info.latest].filter((r) => r.name === name && Number.isFinite(r.value));
  return (all.find((r) => r.source === ReadingSource.READING_SOURCE_DECLARED) ?? all[0])?.value;
}

/** Capacity of a node in a usage metric's units; NaN when the metric has none. */
function capacityOf(info: NodeInfo, metric: string): number {
  if (metric === 'cpu.load' || metric === 'gpu.util') return 100;
  if (metric === 'memory.used') return readingValue(info, 'memory.total') ?? Number.NaN;
  return Number.NaN;
}

/** What assigned shards reserve on the node, in the metric's units. */
function reservedIn(info: NodeInfo, metric: string, r: { cpuCores: number; memoryMb: number } | undefined): number {
  if (!r) return 0;
  if (metric === 'cpu.load') {
    const cores = readingValue(info, 'cpu.threads') ?? readingValue(info, 'cpu.cores') ?? 0;
    return cores > 0 ? (100 * r.cpuCores) / cores : 0;
  }
  if (metric === 'memory.used') return r.memoryMb * 2 ** 20;
  return 0;
}
