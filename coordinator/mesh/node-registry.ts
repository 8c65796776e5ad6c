import { FailedPreconditionError, NotFoundError, RetraceError } from '../../common/errors.js';
import { NodeState, type NodeInfo, type NodeTransition, type ResourceReading } from '../../common/gen/retrace/v1/node.js';
import type { LogFn } from '../../common/log.js';
import { LINK_READINGS } from '../../common/node-resources.js';
import { millisToNanos } from '../../common/time.js';
import type { MeshEmitter } from './mesh-events.js';
import type { NodeRecord, NodeRecordStore, NodeStateName, TransitionRecord } from './node-record-store.js';

/**
 * Legal state changes. READY/DRAINING fall to SUSPECT on missed reports and SUSPECT to LOST;
 * a report or a registration brings a node back; `leave` makes it LEFT from anywhere but LEFT.
 * DRAINING → READY only happens when a new agent process registers (a restart ends a drain).
 */
const ALLOWED: Readonly<Record<NodeStateName, readonly NodeStateName[]>> = {
  READY: ['SUSPECT', 'DRAINING', 'LEFT'],
  SUSPECT: ['READY', 'DRAINING', 'LOST', 'LEFT'],
  LOST: ['READY', 'DRAINING', 'LEFT'],
  DRAINING: ['SUSPECT', 'READY', 'LEFT'],
  LEFT: ['READY', 'DRAINING'],
};

/** Compiled registry thresholds. */
export interface RegistryOptions {
  /** SUSPECT after this many report intervals without a report. */
  readonly suspectAfterIntervals: number;
  /** LOST after this many. */
  readonly lostAfterIntervals: number;
  /** Transitions kept per node. */
  readonly maxTransitions: number;
}

/** A node as the registry holds it: the persisted record plus live, in-memory facts. */
export interface LiveNode {
  readonly record: NodeRecord;
  /** Readings of the last report, plus the latest link measurements (sent once each). */
  latest: ResourceReading[];
  /** True while a Connect stream of this node is open. */
  connected: boolean;
  /** Coordinator-measured round trip, ms; 0 before the first pong. */
  rttMs: number;
  /** When the node was last heard from (registration or report), ms since the epoch. */
  lastSeenMs: number;
  /** The Connect session that owns the node now; 0 when none. */
  sessionId: number;
  /** The process id of the node's last registration ('' when none or not sent). */
  processId: string;
  /** Serialises this node's record writes so they land in order. */
  persisting: Promise<void>;
}

/** A validated registration. */
export interface Registration {
  nodeId: string;
  host: string;
  labels: Record<string, string>;
  capabilities: ResourceReading[];
  codeVersions: string[];
  agentVersion: string;
  reportIntervalMs: number;
  /** The registering process was already draining (a reconnect, not a restart). */
  draining: boolean;
  /** The agent process's own id ('' when it sends none): another one under a known node id is a restart. */
  processId: string;
  /** What the agent process keeps for shards to use by reference, bytes (0: nothing). */
  payloadCacheBytes: number;
}

const STATE_TO_PROTO: Readonly<Record<NodeStateName, NodeState>> = {
  READY: NodeState.NODE_STATE_READY,
  SUSPECT: NodeState.NODE_STATE_SUSPECT,
  LOST: NodeState.NODE_STATE_LOST,
  DRAINING: NodeState.NODE_STATE_DRAINING,
  LEFT: NodeState.NODE_STATE_LEFT,
};

/** Proto enum of a state name. */
export function toProtoState(state: NodeStateName | null): NodeState {
  return state === null ? NodeState.NODE_STATE_UNSPECIFIED : STATE_TO_PROTO[state];
}

/** State name of a proto enum value; undefined for UNSPECIFIED and unknown values. */
export function fromProtoState(state: NodeState): NodeStateName | undefined {
  return (Object.keys(STATE_TO_PROTO) as NodeStateName[]).find((k) => STATE_TO_PROTO[k] === state);
}

const ns = (ms: number): string => (ms > 0 ? millisToNanos(ms).toString() : '0');

/** Proto transition of a record. */
export function toNodeTransition(t: TransitionRecord): NodeTransition {
  return { from: toProtoState(t.from), to: toProtoState(t.to), reason: t.reason, timeNs: ns(t.atMs) };
}

/** The NodeInfo the RPCs (ListNodes, GetNode, WatchNodes, DrainNode) and the scheduler see of a live node. */
export function toNodeInfo(node: LiveNode): NodeInfo {
  const r = node.record;
  return {
    nodeId: r.nodeId,
    host: r.host,
    labels: { ...r.labels },
    state: toProtoState(r.state),
    capabilities: r.capabilities,
    latest: node.latest,
    lastReportNs: ns(r.lastReportMs),
    registeredNs: ns(r.registeredMs),
    firstSeenNs: ns(r.firstSeenMs),
    reportIntervalNs: ns(r.reportIntervalMs),
    connected: node.connected,
    agentVersion: r.agentVersion,
    codeVersions: r.codeVersions,
    coordinatorRttMs: node.rttMs,
    transitions: r.transitions.map(toNodeTransition),
    drainReason: r.drainReason,
    // The name only (the record never holds the token); '' while no agent token has bound it.
    boundToken: r.boundToken ?? '',
  };
}

/** The new readings, plus the previous link measurements the report does not repeat. */
function withLinkCarried(previous: readonly ResourceReading[], readings: ResourceReading[]): ResourceReading[] {
  const carried = previous.filter((r) => LINK_READINGS.has(r.name));
  if (carried.length === 0) return readings;
  const names = new Set(readings.map((r) => r.name));
  return [...readings, ...carried.filter((r) => !names.has(r.name))];
}

/**
 * The node state machine over the node table. Policy only: it never builds keys (the record store
 * does) and never touches streams (sessions do). Every transition is checked against ALLOWED,
 * logged, persisted and emitted as `node:transition`.
 */
export class NodeRegistry {
  private readonly nodes = new Map<string, LiveNode>();

  constructor(
    private readonly store: NodeRecordStore,
    private readonly options: RegistryOptions,
    private readonly emitter: MeshEmitter,
    private readonly now: () => number,
    private readonly log: LogFn,
  ) {}

  /**
   * Loads the stored records. Nodes that were live when the coordinator stopped get a fresh grace
   * period (they are reconnecting now) instead of being judged on the coordinator's downtime.
   */
  async load(): Promise<void> {
    const now = this.now();
    for (const record of await this.store.all()) {
      this.nodes.set(record.nodeId, { record, latest: [], connected: false, rttMs: 0, lastSeenMs: now, sessionId: 0, processId: '', persisting: Promise.resolve() });
    }
    this.log('info', 'mesh:loaded', { nodes: this.nodes.size });
  }

  get(nodeId: string): LiveNode | undefined {
    return this.nodes.get(nodeId);
  }

  /** The node, or NotFoundError naming `field`. */
  require(nodeId: string, field = 'node_id'): LiveNode {
    const node = this.nodes.get(nodeId);
    if (!node) throw new NotFoundError(`node ${JSON.stringify(nodeId)}`, field);
    return node;
  }

  /** Every node, in id order. */
  list(): LiveNode[] {
    return [...this.nodes.values()].sort((a, b) => (a.record.nodeId < b.record.nodeId ? -1 : a.record.nodeId > b.record.nodeId ? 1 : 0));
  }

  get size(): number {
    return this.nodes.size;
  }

  /**
   * Registers or re-registers a node for `sessionId`; resolves once its record is stored.
   * `token`: the name of the agent token the stream was opened with (undefined for the owner and
   * admin tokens); the node is bound to it, before any await, replacing another binding (the
   * caller checked that the other name was revoked; the move is logged). Undefined leaves the
   * binding as it is. When the record's write fails the binding taken here is undone and the
   * error (same code, naming the node) is thrown: a binding is kept only once stored.
   */
  async register(reg: Registration, sessionId: number, token?: string): Promise<{ node: LiveNode; rejoined: boolean }> {
    const now = this.now();
    let node = this.nodes.get(reg.nodeId);
    const rejoined = node !== undefined;
    const boundBefore = node?.record.boundToken;
    // Another process than the last one registered runs none of its shards. Without process ids
    // (an older agent) a restart cannot be told from a reconnect: counted as one, the safe side
    // (shards run again, and outputs are idempotent by shard id).
    const restarted = node !== undefined && (reg.processId === '' || node.processId !== reg.processId);
    if (!node) {
      node = {
        record: {
          nodeId: reg.nodeId,
          host: reg.host,
          labels: reg.labels,
          capabilities: reg.capabilities,
          codeVersions: reg.codeVersions,
          agentVersion: reg.agentVersion,
          state: reg.draining ? 'DRAINING' : 'READY',
          drainReason: reg.draining ? 'agent was draining' : '',
          reportIntervalMs: reg.reportIntervalMs,
          firstSeenMs: now,
          registeredMs: now,
          lastReportMs: 0,
          transitions: [],
        },
        latest: [],
        connected: true,
        rttMs: 0,
        lastSeenMs: now,
        sessionId,
        processId: reg.processId,
        persisting: Promise.resolve(),
      };
      if (token !== undefined) node.record.boundToken = token;
      this.nodes.set(reg.nodeId, node);
      this.record(node, null, node.record.state, 'registered');
    } else {
      const r = node.record;
      if (token !== undefined && r.boundToken !== token) {
        if (r.boundToken !== undefined) this.log('warn', 'node:token-rebound', { nodeId: reg.nodeId, from: r.boundToken, to: token, reason: `token ${JSON.stringify(r.boundToken)} is no longer in the token table` });
        r.boundToken = token;
      }
      if (r.host !== reg.host) this.log('warn', 'node:host-changed', { nodeId: reg.nodeId, from: r.host, to: reg.host });
      Object.assign(r, {
        host: reg.host,
        labels: reg.labels,
        capabilities: reg.capabilities,
        codeVersions: reg.codeVersions,
        agentVersion: reg.agentVersion,
        reportIntervalMs: reg.reportIntervalMs,
        registeredMs: now,
      });
      // A drain survives a reconnect of the same process; a restarted agent starts afresh.
      r.drainReason = reg.draining ? r.drainReason || 'agent was draining' : '';
      node.connected = true;
      node.sessionId = sessionId;
      node.processId = reg.processId;
      node.lastSeenMs = now;
      const target: NodeStateName = r.drainReason ? 'DRAINING' : 'READY';
      if (r.state !== target) this.transition(node, target, 'rejoined');
    }
    try {
      await this.persist(node);
    } catch (err) {
      // All or nothing: a binding kept in memory but not stored would hold the node id for this
      // token until a restart and then vanish. Undone unless a newer registration took the node.
      if (token !== undefined && token !== boundBefore && node.sessionId === sessionId && node.record.boundToken === token) {
        if (boundBefore === undefined) delete node.record.boundToken;
        else node.record.boundToken = boundBefore;
      }
      const message = `the registration of node ${JSON.stringify(reg.nodeId)} was not stored${token !== undefined && token !== boundBefore ? `, so it is not bound to token ${JSON.stringify(token)}` : ''}; connect again once the coordinator can write: ${err instanceof Error ? err.message : String(err)}`;
      this.log('error', 'node:register-not-stored', { nodeId: reg.nodeId, token: token ?? null, error: String(err) });
      throw new RetraceError(err instanceof RetraceError ? err.code : 'UNAVAILABLE', message, { cause: err });
    }
    this.log('info', 'node:registered', { nodeId: reg.nodeId, host: reg.host, rejoined, restarted, state: node.record.state, token: node.record.boundToken ?? null });
    this.emitter.emit('node:registered', { nodeId: reg.nodeId, rejoined, restarted, atMs: now, payloadCacheBytes: reg.payloadCacheBytes });
    return { node, rejoined };
  }

  /** Records a report's readings; a SUSPECT or LOST node that reports again is healthy again. */
  report(nodeId: string, sessionId: number, readings: ResourceReading[]): LiveNode {
    const node = this.owned(nodeId, sessionId);
    const now = this.now();
    node.latest = withLinkCarried(node.latest, readings);
    node.lastSeenMs = now;
    node.record.lastReportMs = now;
    const s = node.record.state;
    if (s === 'SUSPECT' || s === 'LOST') this.transition(node, this.healthy(node), 'reporting again');
    return node;
  }

  /** Stores the coordinator-measured round trip. */
  pong(nodeId: string, sessionId: number, rttMs: number): void {
    const node = this.nodes.get(nodeId);
    if (node && node.sessionId === sessionId) node.rttMs = rttMs;
  }

  /** A clean leave: LEFT at once. */
  leave(nodeId: string, sessionId: number, reason: string): void {
    const node = this.owned(nodeId, sessionId);
    node.connected = false;
    node.sessionId = 0;
    if (node.record.state !== 'LEFT') this.transition(node, 'LEFT', reason ? `left: ${reason}` : 'left');
  }

  /**
   * A stream ended without a leave (crash, network, coordinator shutdown). The state is left to
   * the missed-report timers: a short blip must not cost a node its work.
   */
  disconnected(nodeId: string, sessionId: number, reason: string): void {
    const node = this.nodes.get(nodeId);
    if (!node || node.sessionId !== sessionId) return;
    node.connected = false;
    node.sessionId = 0;
    this.log('info', 'node:disconnected', { nodeId, reason, state: node.record.state });
    this.emitter.emit('node:disconnected', { nodeId, reason, atMs: this.now() });
  }

  /**
   * Requests a drain. READY becomes DRAINING; a SUSPECT node keeps its state and becomes DRAINING
   * when it reports again. Idempotent. LEFT and LOST nodes: FailedPreconditionError.
   */
  async drain(nodeId: string, reason: string): Promise<LiveNode> {
    const node = this.require(nodeId);
    const r = node.record;
    if (r.state === 'LEFT' || r.state === 'LOST') {
      throw new FailedPreconditionError(`node ${nodeId} is ${r.state}; only connected nodes can be drained`, 'node_id');
    }
    if (r.drainReason === '') {
      r.drainReason = reason || 'drained by operator';
      if (r.state === 'READY') this.transition(node, 'DRAINING', r.drainReason);
      else this.log('info', 'node:drain-requested', { nodeId, state: r.state, reason: r.drainReason });
      await this.persist(node);
    }
    return node;
  }

  /** Applies the missed-report timers to every live node. Call it periodically. */
  sweep(): void {
    const now = this.now();
    for (const node of this.nodes.values()) {
      const r = node.record;
      if (r.state === 'LOST' || r.state === 'LEFT') continue;
      const silentMs = now - node.lastSeenMs;
      if (silentMs >= this.options.lostAfterIntervals * r.reportIntervalMs) {
        if (r.state !== 'SUSPECT') this.transition(node, 'SUSPECT', `no report for ${Math.round(silentMs)} ms`);
        this.transition(node, 'LOST', `no report for ${Math.round(silentMs)} ms (${this.options.lostAfterIntervals} intervals)`);
        this.emitter.emit('node:lost', { nodeId: r.nodeId, atMs: now });
      } else if (r.state !== 'SUSPECT' && silentMs >= this.options.suspectAfterIntervals * r.reportIntervalMs) {
        this.transition(node, 'SUSPECT', `no report for ${Math.round(silentMs)} ms (${this.options.suspectAfterIntervals} intervals)`);
      }
    }
  }

  /** Waits for every pending record write. */
  async flush(): Promise<void> {
    await Promise.all([...this.nodes.values()].map((n) => n.persisting));
  }

  private healthy(node: LiveNode): NodeStateName {
    return node.record.drainReason ? 'DRAINING' : 'READY';
  }

  private owned(nodeId: string, sessionId: number): LiveNode {
    const node = this.require(nodeId);
    if (node.sessionId !== sessionId) {
      throw new FailedPreconditionError(`node ${nodeId} is registered on a newer connection`);
    }
    return node;
  }

  private transition(node: LiveNode, to: NodeStateName, reason: string): void {
    const from = node.record.state;
    if (!ALLOWED[from].includes(to)) {
      this.log('error', 'node:transition-rejected', { nodeId: node.record.nodeId, from, to, reason });
      throw new FailedPreconditionError(`node ${node.record.nodeId} cannot go from ${from} to ${to}`);
    }
    node.record.state = to;
    this.record(node, from, to, reason);
    // Logged by persist; the in-memory state stays authoritative for this process.
    this.persist(node).catch(() => {});
  }

  private record(node: LiveNode, from: NodeStateName | null, to: NodeStateName, reason: string): void {
    const t: TransitionRecord = { from, to, reason, atMs: this.now() };
    node.record.transitions.unshift(t);
    node.record.transitions.length = Math.min(node.record.transitions.length, this.options.maxTransitions);
    this.log(to === 'LOST' ? 'warn' : 'info', 'node:transition', { nodeId: node.record.nodeId, from, to, reason });
    this.emitter.emit('node:transition', { nodeId: node.record.nodeId, ...t });
  }

  private persist(node: LiveNode): Promise<void> {
    // Snapshot now: the record keeps changing while the write waits its turn.
    const snapshot = JSON.parse(JSON.stringify(node.record)) as NodeRecord;
    const write = node.persisting.then(() => this.store.put(snapshot));
    node.persisting = write.catch((err: unknown) => this.log('error', 'node:persist-failed', { nodeId: snapshot.nodeId, error: String(err) }));
    return write;
  }
}
