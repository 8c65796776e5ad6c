import { setMaxListeners } from 'node:events';
import type { ConnectRequest, ConnectResponse, NodeInfo } from '../../common/gen/retrace/v1/node.js';
import { ShardStatus, type ShardAssignment, type ShardOutcome } from '../../common/gen/retrace/v1/shard.js';
import { InvalidArgumentError } from '../../common/errors.js';
import type { LogFn } from '../../common/log.js';
import { ByteLru, CACHED_PAYLOAD_MIN_BYTES } from '../../common/payload-locality.js';
import { millisToNanos } from '../../common/time.js';
import type { TransformRequirements } from '../../common/transform.js';
import type { NodeMesh } from '../mesh/node-mesh.js';
import { allocate, toNodeView, type NodeLoad, type NodeView, type Placement } from './allocator.js';

/** The parts of the node mesh the dispatcher uses. */
/** Budgets an attempt may wait on a node that keeps answering other shards, at most. */
const MAX_PARDONED_BUDGETS = 10;

export type DispatcherMesh = Pick<NodeMesh, 'nodes' | 'send' | 'onMessage' | 'on'>;

/** Options of `createDispatcher`, validated once. Durations in ms. */
export interface DispatcherOptions {
  mesh: DispatcherMesh;
  log: LogFn;
  /** Wall clock, ms (default Date.now). */
  now?: () => number;
  /** Shards in flight on one agent at most; more wait in the coordinator (default 64). */
  maxInFlightPerNode?: number;
  /**
   * How long an attempt of a shard without its own timeout (`timeoutMs` 0) may go unanswered
   * before it is given to another node (default 60000). A shard with a timeout gets that timeout
   * plus `deadlineMarginMs`. Either is counted from the later of its placement and the last
   * outcome its node reported, so that time spent queued behind other shards on a busy agent
   * does not count: only a node that answers nothing for that long loses its shards this way.
   */
  shardTimeoutMs?: number;
  /** Added to a shard's own timeout for its coordinator deadline: transfer and worker start, ms (default 10000). */
  deadlineMarginMs?: number;
  /** Attempts before a shard ends FAILED (default 3). */
  maxAttempts?: number;
  /** Shards per ShardBatch frame at most (default 256). */
  maxBatch?: number;
  /** Link outages to start with: node id → until (ms, `now()` clock). */
  linkFaults?: ReadonlyMap<string, number>;
  /** Forecast free capacity of a node, plugged into the allocator. */
  headroom?: (nodeId: string) => { cpuCores: number; memoryMb: number } | undefined;
}

/** Options of one `run`. */
export interface RunOptions {
  requirements?: TransformRequirements;
  placement?: Placement;
  signal?: AbortSignal;
  /** Nodes that hold every input already (besides those the dispatcher knows of itself). */
  inputsCachedOn?: ReadonlySet<string>;
  /**
   * Send every input's bytes as given, never by reference: a replay that corrupts inputs on
   * purpose sends bytes that differ from what their content hash names.
   */
  inputsAsSent?: boolean;
  /**
   * Placements of this shard made by earlier runs of it (a pipeline step's retries): this run's
   * are numbered after them, so that an outcome of an earlier run is never taken for one of this
   * run's. `maxAttempts` and the result's `attempts` count this run's placements only. Default 0.
   */
  attemptsBefore?: number;
  /** Told the node of each placement as it is made (a replay's report shows where its running steps are). */
  onPlaced?: (nodeId: string) => void;
}

/** What `run` resolves: always an outcome, never a rejection. */
export interface DispatchResult {
  outcome: ShardOutcome;
  /** The node whose outcome won ('' when none ran it). */
  nodeId: string;
  /** Placements made by this run (1 when the first node answered). */
  attempts: number;
  /** Time from `run` to the last placement, ms. */
  queuedMs: number;
}

/** A shard that no node can take now, and why. */
export interface WaitingShard {
  shardId: string;
  stepName: string;
  reason: string;
  /** Nodes fit but are all at capacity now (false: no READY node meets the shard's requirements). */
  busy: boolean;
  /** The replay or recompute job the shard belongs to (its assignment's job_id); absent for live runs. */
  jobId?: string;
}

/** Sends shards to agents over the mesh and matches their outcomes. */
export interface Dispatcher {
  /**
   * Places the shard (allocator.ts), sends it batched on the node's Connect stream and resolves
   * with the first outcome reported for its shard id. A node that goes LOST/LEFT or registers
   * as a new process, a link outage or an attempt past its deadline (see `shardTimeoutMs`) moves
   * the shard to another node; after `maxAttempts` it resolves FAILED. Each placement is sent
   * with its attempt number; a failure reported for an earlier one is ignored. `signal` resolves
   * it CANCELLED (and cancels it on the agent). Running a shard id that is already running joins
   * that run.
   */
  run(assignment: ShardAssignment, options?: RunOptions): Promise<DispatchResult>;
  /** Shards no node can take now, with the reason. */
  waiting(): WaitingShard[];
  /**
   * Why no READY node could take a shard with these requirements now, however idle (the static
   * checks of the allocator: state, capacity, gpus, cpu flags, bandwidth), or undefined when one
   * could. Load and reservations are left out: they pass.
   */
  unmet(requirements: TransformRequirements | undefined): string | undefined;
  /**
   * Drops every message to and from `nodeId` from `fromMs` (default: now) until `untilMs`, both
   * on the `now()` clock; the shards it has at `fromMs` move elsewhere. A window set ahead takes
   * effect at `fromMs` exactly, needing no timer of the caller: sends and outcomes follow the
   * clock, and the shards in flight are taken back at its start (see armOutageEdge). A window
   * that begins at once and overlaps one in force extends it. Returns a function that withdraws
   * the window: one not begun yet never begins, one in force ends at once (the node's link is back).
   */
  setLinkOutage(nodeId: string, untilMs: number, fromMs?: number): () => void;
  /** Shards in flight per node. */
  inFlight(): Map<string, number>;
  /** CPU cores and memory reserved on a node by the shards assigned to it now. */
  reservedOn(nodeId: string): { cpuCores: number; memoryMb: number } | undefined;
  /** Resolves every open shard CANCELLED and stops listening. Idempotent. */
  stop(): void;
}

/** A link outage of one node: [fromMs, untilMs) on the `now()` clock. */
interface OutageWindow {
  fromMs: number;
  untilMs: number;
  /** Its start was acted on: the node's views marked stale, its shards taken back. */
  begun: boolean;
}

interface Entry {
  assignment: ShardAssignment;
  options: RunOptions;
  classKey: string;
  inputBytes: number;
  attempts: number;
  /** Placements made by earlier runs of the shard (`RunOptions.attemptsBefore`). */
  attemptsBefore: number;
  startedMs: number;
  queuedMs: number;
  nodeId: string | undefined;
  /** When the current attempt was placed (`now()` clock). */
  placedMs: number;
  /** How long the current attempt may go without an answer from its node, ms. */
  budgetMs: number;
  cpu: number;
  memMb: number;
  resolve: (r: DispatchResult) => void;
  promise: Promise<DispatchResult>;
  offAbort: (() => void) | undefined;
  /** Placed once already: lives in its class's retry list from now on. */
  requeued: boolean;
  /** Resolved and out of `active`: read for every shard, where a lookup in `active` cost a hash of its id. */
  finished: boolean;
  /** Placements a node answered with "input not cached": nothing ran, so they use up no attempt. */
  cacheMisses: number;
  /** The large inputs the current attempt sent in full, which its node's mirror counts as held from then on. */
  sentInFull: string[] | undefined;
}

interface ShardClass {
  retry: Entry[];
  /** FIFO with a moving head; finished entries are skipped lazily (Map iteration over deleted slots is O(n)). */
  queue: Entry[];
  head: number;
  /** Why the last placement failed; undefined after a success. */
  reason: string | undefined;
  /** The last failed placement found fitting nodes, all at capacity. */
  busy: boolean;
}

/** How long a node that could not fetch or verify a code version gets no shards of it. */
const CODE_UNAVAILABLE_MS = 60_000;
/** The share of an agent's payload cache its mirror assumes: the agent evicts in its own order. */
const MIRROR_SHARE = 0.75;
const NO_BYTES = Buffer.alloc(0);

/** Creates a dispatcher over the mesh; it listens to the mesh until `stop()`. */
export function createDispatcher(options: DispatcherOptions): Dispatcher {
  const now = options.now ?? Date.now;
  const log = options.log;
  const maxInFlight = options.maxInFlightPerNode ?? 64;
  const shardTimeoutMs = options.shardTimeoutMs ?? 60_000;
  // One sweep for every deadline instead of a timer per shard.
  const sweepMs = Math.max(10, Math.min(500, Math.floor(shardTimeoutMs / 4)));
  const maxAttempts = options.maxAttempts ?? 3;
  const maxBatch = options.maxBatch ?? 256;
  const deadlineMarginMs = options.deadlineMarginMs ?? 10_000;
  for (const [k, v] of Object.entries({ maxInFlightPerNode: maxInFlight, shardTimeoutMs, maxAttempts, maxBatch })) {
    if (!Number.isFinite(v) || v <= 0) throw new InvalidArgumentError(k, `must be a positive number, got ${v}`);
  }
  if (!Number.isFinite(deadlineMarginMs) || deadlineMarginMs < 0) throw new InvalidArgumentError('deadlineMarginMs', `must be a number ≥ 0, got ${deadlineMarginMs}`);
  const mesh = options.mesh;
  const active = new Map<string, Entry>();
  const classes = new Map<string, ShardClass>();
  const onNode = new Map<string, Map<string, Entry>>();
  const load = new Map<string, NodeLoad>();
  const outbox = new Map<string, ShardAssignment[]>();
  /** Link outage windows by node, in force or set ahead; ended ones are removed by `turnOutages`. */
  const outages = new Map<string, OutageWindow[]>([...(options.linkFaults ?? [])].map(([nodeId, untilMs]) => [nodeId, [{ fromMs: Number.NEGATIVE_INFINITY, untilMs, begun: true }]]));
  /** When `turnOutages` next has a window to begin or end (`now()` clock). */
  let nextOutageTurnMs = Number.NEGATIVE_INFINITY;
  /** The timer that runs `turnOutages` at an edge due before the next sweep, and the edge it is for. */
  let edgeTimer: ReturnType<typeof setTimeout> | undefined;
  let edgeTimerFor = Number.NaN;
  /** When each node last reported an outcome (`now()` clock): its queue is moving. */
  const progressed = new Map<string, number>();
  /** The CPU fraction last sent to each node (absent or 0: no cap). */
  const throttled = new Map<string, number>();
  /** Capped shards placed on each node, by their maxCpuFraction: the node's cap is the smallest. */
  const capsOn = new Map<string, Map<number, number>>();
  /**
   * What each agent's payload cache holds, as far as the dispatcher sent or received it: inputs
   * in it travel by reference and count as local. A smaller capacity than the agent's own keeps
   * the mirror within what the agent still has; a miss costs one resend.
   */
  const mirrors = new Map<string, ByteLru<true>>();
  /** Code version → node → until when (`now()` clock) it gets no shards of that code. */
  const codeTrouble = new Map<string, Map<string, number>>();
  let views: NodeView[] = [];
  let viewsStale = true;
  let scheduled = false;
  let stopped = false;

  /**
   * Whether the node's link is down now. Read from the clock, not from `turnOutages`' flags, so
   * sends and outcomes follow each window from its first millisecond to its last however late
   * the round that begins or ends it runs.
   */
  function inOutage(nodeId: string): boolean {
    const windows = outages.get(nodeId);
    if (windows === undefined) return false;
    const t = now();
    return windows.some((w) => t >= w.fromMs && t < w.untilMs);
  }

  /**
   * Begins and ends the outage windows whose time has come: a node's views are recomputed at
   * either edge, and at the start the shards it holds are taken back (their messages and outcomes
   * are dropped from `fromMs` on). Run before each placement round and on each sweep; cheap when
   * no edge is due.
   */
  function turnOutages(): void {
    const t = now();
    if (t >= nextOutageTurnMs) beginAndEndOutages(t);
    armOutageEdge(t);
  }

  function beginAndEndOutages(t: number): void {
    let next = Number.POSITIVE_INFINITY;
    for (const [nodeId, windows] of [...outages]) {
      for (const w of [...windows]) {
        if (!w.begun) {
          if (t < w.fromMs) {
            next = Math.min(next, w.fromMs);
            continue;
          }
          w.begun = true;
          viewsStale = true;
          log('warn', 'link:outage', { nodeId, fromMs: w.fromMs, untilMs: w.untilMs });
          // Shards placed after the window ended (when this round comes that late) did reach the node.
          evacuate(nodeId, 'link outage', Math.min(t, w.untilMs));
          schedule();
        }
        if (t < w.untilMs) {
          next = Math.min(next, w.untilMs);
          continue;
        }
        windows.splice(windows.indexOf(w), 1);
        viewsStale = true;
        if (!inOutage(nodeId)) log('info', 'link:restored', { nodeId });
        schedule();
      }
      if (windows.length === 0) outages.delete(nodeId);
    }
    nextOutageTurnMs = next;
  }

  /**
   * Times the next edge when it comes before the next sweep could: shards on a node whose window
   * begins are taken back at its start, not up to a sweep later (half a second by default), when
   * no placement round happens to run in between. Later edges are left to the sweeps, which
   * arm this again as they near, so the timer never waits longer than a sweep.
   */
  function armOutageEdge(t: number): void {
    if (nextOutageTurnMs === edgeTimerFor || stopped) return;
    clearTimeout(edgeTimer);
    edgeTimer = undefined;
    edgeTimerFor = Number.NaN;
    const wait = nextOutageTurnMs - t;
    if (!(wait < sweepMs)) return;
    edgeTimerFor = nextOutageTurnMs;
    edgeTimer = setTimeout(() => {
      edgeTimer = undefined;
      edgeTimerFor = Number.NaN;
      turnOutages();
    }, Math.max(0, wait));
    edgeTimer.unref();
  }

  function send(nodeId: string, message: ConnectResponse): boolean {
    if (inOutage(nodeId)) return true; // dropped on the (simulated) wire
    return mesh.send(nodeId, message);
  }

  function refreshViews(): void {
    if (!viewsStale) return;
    viewsStale = false;
    views = mesh.nodes().map((n: NodeInfo) => {
      const v = toNodeView(n);
      // Not connected (e.g. restored from disk by a restarted coordinator before its agent is
      // back): a shard placed there fails at once with "no open stream" and burns its attempts.
      return inOutage(v.nodeId) || !n.connected ? { ...v, state: 'UNREACHABLE' } : v;
    });
  }

  function schedule(): void {
    if (scheduled || stopped) return;
    scheduled = true;
    // After the I/O callbacks of this loop turn, not after the current one: shards that become
    // ready across many callbacks (a pipeline's records as their LevelDB reads return) go out in
    // one frame per agent instead of one each. Each frame costs an agent a wake-up of its worker
    // and a message each way (about 0.3 ms of CPU); a pipeline run with capture sent 8 shards a
    // frame this way round, 2.5x as many frames as without capture.
    setImmediate(() => {
      scheduled = false;
      pump();
      flush();
    });
  }

  function loadOf(nodeId: string): NodeLoad {
    let l = load.get(nodeId);
    if (!l) load.set(nodeId, (l = { inFlight: 0, reservedCpu: 0, reservedMemMb: 0 }));
    return l;
  }

  function unplace(e: Entry): void {
    const nodeId = e.nodeId;
    if (nodeId === undefined) return;
    e.nodeId = undefined;
    onNode.get(nodeId)?.delete(e.assignment.shardId);
    const l = loadOf(nodeId);
    l.inFlight--;
    if (l.inFlight === 0) {
      // Adding and taking back fractions (0.1 + 0.2 − 0.1 − 0.2) leaves a residue of 1e-17 or so,
      // which an idle node's forecast showed as reserved capacity (free -0.000).
      l.reservedCpu = 0;
      l.reservedMemMb = 0;
    } else {
      l.reservedCpu -= e.cpu;
      l.reservedMemMb -= e.memMb;
    }
    const fraction = e.options.placement?.maxCpuFraction;
    if (fraction !== undefined) {
      const caps = capsOn.get(nodeId);
      const n = (caps?.get(fraction) ?? 0) - 1;
      if (n > 0) caps?.set(fraction, n);
      else caps?.delete(fraction);
      if (caps?.size === 0) capsOn.delete(nodeId);
      syncThrottle(nodeId);
    }
  }

  /** The cap the node's placed shards call for: the smallest maxCpuFraction among them, 0 when none is capped. */
  function capOf(nodeId: string): number {
    let cap = 0;
    for (const f of capsOn.get(nodeId)?.keys() ?? []) if (cap === 0 || f < cap) cap = f;
    return cap;
  }

  /**
   * Sends the node its cap when it changed. A tighter cap goes out ahead of the shards it covers
   * (the outbox is flushed first, so shards already placed keep the old one); a looser cap or
   * none (0) goes out as soon as the last shard that needed the old one is done, so later
   * uncapped work is not left capped.
   */
  function syncThrottle(nodeId: string): void {
    const cap = capOf(nodeId);
    const sent = throttled.get(nodeId) ?? 0;
    if (cap === sent) return;
    if (cap !== 0 && (sent === 0 || cap < sent)) flushNode(nodeId);
    sendThrottle(nodeId, cap);
  }

  function sendThrottle(nodeId: string, cap: number): void {
    if (cap === 0) throttled.delete(nodeId);
    else throttled.set(nodeId, cap);
    log('debug', 'node:throttle', { nodeId, cpuFraction: cap });
    send(nodeId, { body: { $case: 'throttle', value: { cpuFraction: cap, maxConcurrent: 0 } } });
  }

  function classOf(key: string): ShardClass {
    let c = classes.get(key);
    if (!c) classes.set(key, (c = { retry: [], queue: [], head: 0, reason: undefined, busy: false }));
    return c;
  }

  function finish(e: Entry, outcome: ShardOutcome, nodeId: string): void {
    if (e.finished) return;
    e.finished = true;
    active.delete(e.assignment.shardId);
    unplace(e);
    // Only an entry placed before can be in a retry list.
    const c = e.requeued ? classes.get(e.classKey) : undefined;
    if (c) {
      const i = c.retry.indexOf(e);
      if (i >= 0) c.retry.splice(i, 1);
    }
    e.offAbort?.();
    e.resolve({ outcome, nodeId, attempts: e.attempts, queuedMs: e.queuedMs });
    schedule();
  }

  function failed(e: Entry, status: ShardStatus, error: string): ShardOutcome {
    const t = millisToNanos(now()).toString();
    return { shardId: e.assignment.shardId, status, outputs: [], error, startedAtNs: t, endedAtNs: t, nodeId: '', attempt: e.attemptsBefore + e.attempts };
  }

  /** Takes the shard back from its node (lost, outage, timeout) and queues it again, or fails it. */
  function requeue(e: Entry, why: string): void {
    const from = e.nodeId;
    // No answer came, so the frame may never have arrived: the node's cache need not hold what it carried.
    if (from !== undefined && e.sentInFull) {
      const mirror = mirrors.get(from);
      for (const hash of e.sentInFull) mirror?.delete(hash);
    }
    e.sentInFull = undefined;
    unplace(e);
    if (e.attempts - e.cacheMisses >= maxAttempts) {
      log('warn', 'shard:failed', { shardId: e.assignment.shardId, attempts: e.attempts, reason: why });
      finish(e, failed(e, ShardStatus.SHARD_STATUS_FAILED, `gave up after ${e.attempts} attempts: ${why}`), '');
      return;
    }
    log('info', 'shard:reassigned', { shardId: e.assignment.shardId, from, reason: why, attempts: e.attempts });
    e.requeued = true;
    classOf(e.classKey).retry.push(e);
    schedule();
  }

  /** Takes back the node's shards (those placed by `placedByMs` when given) to place them again. */
  function evacuate(nodeId: string, why: string, placedByMs = Number.POSITIVE_INFINITY): void {
    const list = onNode.get(nodeId);
    if (!list || list.size === 0) return;
    for (const e of [...list.values()]) if (e.placedMs <= placedByMs) requeue(e, `${why} (node ${nodeId})`);
  }

  /** The nodes that lately could not fetch or verify the shard's code, for the allocator to pass over. */
  function withCodeTrouble(e: Entry): { codeUnavailableOn?: ReadonlySet<string> } {
    const nodes = codeTrouble.get(e.assignment.codeVersion);
    if (!nodes) return {};
    const t = now();
    for (const [nodeId, until] of nodes) if (until <= t) nodes.delete(nodeId);
    if (nodes.size === 0) {
      codeTrouble.delete(e.assignment.codeVersion);
      return {};
    }
    return { codeUnavailableOn: new Set(nodes.keys()) };
  }

  /** The nodes that hold every large input of the shard, for the allocator's locality term. */
  function withCachedOn(e: Entry): { inputsCachedOn?: ReadonlySet<string> } {
    const given = e.options.inputsCachedOn;
    if (mirrors.size === 0 || e.inputBytes < CACHED_PAYLOAD_MIN_BYTES) return given ? { inputsCachedOn: given } : {};
    const large = e.assignment.inputs.filter((i) => i.payload.byteLength >= CACHED_PAYLOAD_MIN_BYTES);
    const on = new Set(given ?? []);
    for (const [nodeId, m] of mirrors) if (large.length > 0 && large.every((i) => m.has(i.contentHash))) on.add(nodeId);
    return on.size > 0 ? { inputsCachedOn: on } : {};
  }

  /** The shard's inputs as sent to `nodeId`: large ones it holds by reference, the others noted as held from now on. */
  function inputsFor(e: Entry, nodeId: string): ShardAssignment['inputs'] {
    const mirror = mirrors.get(nodeId);
    e.sentInFull = undefined;
    if (!mirror || e.options.inputsAsSent || e.inputBytes < CACHED_PAYLOAD_MIN_BYTES) return e.assignment.inputs;
    return e.assignment.inputs.map((i) => {
      const n = i.payload.byteLength;
      if (n < CACHED_PAYLOAD_MIN_BYTES) return i;
      if (mirror.get(i.contentHash)) return { ...i, payload: NO_BYTES, cached: true };
      mirror.set(i.contentHash, true, n);
      (e.sentInFull ??= []).push(i.contentHash);
      return i;
    });
  }

  function place(e: Entry, nodeId: string): void {
    e.nodeId = nodeId;
    e.attempts++;
    const t = now();
    e.queuedMs = t - e.startedMs;
    e.placedMs = t;
    const own = e.assignment.timeoutMs;
    e.budgetMs = own > 0 ? own + deadlineMarginMs : shardTimeoutMs;
    let m = onNode.get(nodeId);
    if (!m) onNode.set(nodeId, (m = new Map()));
    m.set(e.assignment.shardId, e);
    const l = loadOf(nodeId);
    l.inFlight++;
    l.reservedCpu += e.cpu;
    l.reservedMemMb += e.memMb;
    const fraction = e.options.placement?.maxCpuFraction;
    if (fraction !== undefined) {
      // The agent enforces the job's CPU cap on its workers (all of them: the cap is per node).
      let caps = capsOn.get(nodeId);
      if (!caps) capsOn.set(nodeId, (caps = new Map()));
      caps.set(fraction, (caps.get(fraction) ?? 0) + 1);
      syncThrottle(nodeId);
    }
    let box = outbox.get(nodeId);
    if (!box) outbox.set(nodeId, (box = []));
    // Numbered, so that the agent's outcome says which placement it answers.
    box.push({ ...e.assignment, inputs: inputsFor(e, nodeId), attempt: e.attemptsBefore + e.attempts });
    e.options.onPlaced?.(nodeId);
  }

  /** Still to be placed from its class's queue (not finished, not placed). */
  function pending(e: Entry): boolean {
    return e.nodeId === undefined && !e.finished && !e.requeued;
  }

  function pump(): void {
    if (stopped || active.size === 0) return;
    turnOutages();
    refreshViews();
    for (const [key, c] of classes) {
      for (;;) {
        while (c.head < c.queue.length && !pending(c.queue[c.head] as Entry)) c.head++;
        if (c.head > 1024 && c.head * 2 > c.queue.length) {
          c.queue = c.queue.slice(c.head);
          c.head = 0;
        }
        const e = c.retry[0] ?? c.queue[c.head];
        if (!e) break;
        const result = allocate(
          views,
          {
            ...(e.options.requirements ? { requirements: e.options.requirements } : {}),
            ...(e.options.placement ? { placement: e.options.placement } : {}),
            codeVersion: e.assignment.codeVersion,
            inputBytes: e.inputBytes,
            ...withCachedOn(e),
            ...withCodeTrouble(e),
          },
          load,
          { maxInFlight, ...(options.headroom ? { headroom: options.headroom } : {}) },
        );
        if ('waiting' in result) {
          if (c.reason !== result.waiting && !result.busy) log('info', 'shard:waiting', { shardId: e.assignment.shardId, reason: result.waiting });
          c.reason = result.waiting;
          c.busy = result.busy;
          break;
        }
        c.reason = undefined;
        if (c.retry[0] === e) c.retry.shift();
        else c.head++;
        place(e, result.nodeId);
      }
      if (c.retry.length === 0 && c.head >= c.queue.length) classes.delete(key);
    }
  }

  function flushNode(nodeId: string): void {
    const box = outbox.get(nodeId);
    if (!box || box.length === 0) return;
    outbox.delete(nodeId);
    for (let i = 0; i < box.length; i += maxBatch) {
      const shards = box.slice(i, i + maxBatch);
      if (!send(nodeId, { body: { $case: 'assign', value: { shards } } })) {
        // No open stream: the node is gone as far as these shards are concerned.
        viewsStale = true;
        for (const s of shards) {
          const e = active.get(s.shardId);
          if (e && e.nodeId === nodeId) requeue(e, `node ${nodeId} has no open stream`);
        }
      }
    }
  }

  function flush(): void {
    for (const nodeId of [...outbox.keys()]) flushNode(nodeId);
  }

  function onOutcomes(nodeId: string, msg: ConnectRequest): void {
    if (msg.body?.$case !== 'outcomes') return;
    if (inOutage(nodeId)) return; // dropped on the (simulated) wire
    progressed.set(nodeId, now());
    for (const o of msg.body.value.outcomes) {
      const e = active.get(o.shardId);
      // The first outcome of a shard id wins; late ones (a reassigned shard finishing on its
      // first node too) are ignored: outputs are idempotent by shard id.
      if (!e) continue;
      const ranOn = o.nodeId || nodeId;
      // An outcome of an earlier placement (0: an agent that does not number them) says nothing
      // about the current one: a success still settles the shard (same shard id, same outputs),
      // anything else is left to the current attempt.
      const earlier = o.attempt !== 0 && o.attempt !== e.attemptsBefore + e.attempts;
      if (o.status === ShardStatus.SHARD_STATUS_CANCELLED) {
        // Not ours (ours resolve before the cancel is sent): the agent stopped it, e.g. while
        // shutting down. Run it elsewhere; a cancel echo from a node it has left, or of an
        // attempt cancelled on a timeout, is ignored.
        if (e.nodeId === ranOn && !earlier) requeue(e, `cancelled on ${ranOn}: ${o.error}`);
        continue;
      }
      if (earlier && o.status !== ShardStatus.SHARD_STATUS_SUCCEEDED) continue;
      if (o.status === ShardStatus.SHARD_STATUS_INPUT_NOT_CACHED) {
        // The mirror was wrong about this node: forget what it thought, send the bytes.
        const mirror = mirrors.get(ranOn);
        for (const i of e.assignment.inputs) mirror?.delete(i.contentHash);
        if (e.nodeId === ranOn) {
          e.cacheMisses++;
          requeue(e, `inputs no longer in the payload cache of node ${ranOn}`);
        }
        continue;
      }
      if (o.status === ShardStatus.SHARD_STATUS_CODE_UNAVAILABLE && e.nodeId === ranOn) {
        // That node cannot run this code now (its fetch or its check failed): another may.
        let nodes = codeTrouble.get(e.assignment.codeVersion);
        if (!nodes) codeTrouble.set(e.assignment.codeVersion, (nodes = new Map()));
        nodes.set(ranOn, now() + CODE_UNAVAILABLE_MS);
        log('warn', 'node:code-unavailable', { nodeId: ranOn, codeVersion: e.assignment.codeVersion, error: o.error });
        refreshViews();
        if (views.some((v) => v.state === 'READY' && !nodes.has(v.nodeId))) {
          requeue(e, `code unavailable on ${ranOn}: ${o.error}`);
          continue;
        }
        // No node left to try: the outcome stands, naming the last node's reason.
      }
      if (o.status === ShardStatus.SHARD_STATUS_SUCCEEDED && o.outputs.length > 0) {
        const mirror = mirrors.get(ranOn);
        if (mirror) for (const out of o.outputs) if (out.payload.byteLength >= CACHED_PAYLOAD_MIN_BYTES) mirror.set(out.contentHash, true, out.payload.byteLength);
      }
      if (e.nodeId !== undefined && e.nodeId !== ranOn) {
        send(e.nodeId, { body: { $case: 'cancel', value: { shardIds: [o.shardId], reason: `completed on ${ranOn}` } } });
      }
      finish(e, o, ranOn);
    }
  }

  const offs = [
    mesh.onMessage(onOutcomes),
    mesh.on('node:registered', (r) => {
      viewsStale = true;
      progressed.delete(r.nodeId);
      // A new agent process under a known id runs none of the shards placed on the old one:
      // they go elsewhere (or back to it) now, not when their deadline passes.
      // The registry makes the node READY before this event (after persisting it), so shards may
      // already have gone to the new process: only those placed before it registered go back.
      if (r.restarted) evacuate(r.nodeId, 'node restarted', r.atMs);
      // A new process may fetch and verify code that the old one could not.
      if (r.restarted) for (const nodes of codeTrouble.values()) nodes.delete(r.nodeId);
      // The agent's cache lives as long as its process: a restart starts it empty.
      const capacity = Math.floor(r.payloadCacheBytes * MIRROR_SHARE);
      const mirror = mirrors.get(r.nodeId);
      if (capacity < CACHED_PAYLOAD_MIN_BYTES) mirrors.delete(r.nodeId);
      else if (r.restarted || !mirror) mirrors.set(r.nodeId, new ByteLru(capacity));
      else mirror.resize(capacity);
      // A rejoining agent may still hold a cap from before it was lost: tell it the current one.
      if (r.rejoined) sendThrottle(r.nodeId, capOf(r.nodeId));
      schedule();
    }),
    mesh.on('node:transition', (t) => {
      viewsStale = true;
      if (t.to === 'LOST' || t.to === 'LEFT') {
        throttled.delete(t.nodeId);
        mirrors.delete(t.nodeId);
        progressed.delete(t.nodeId);
        evacuate(t.nodeId, t.to);
      }
      schedule();
    }),
    mesh.on('node:reported', () => {
      viewsStale = true;
      if (classes.size > 0) schedule();
    }),
  ];

  const sweeper = setInterval(() => {
    turnOutages();
    const t = now();
    for (const [nodeId, m] of onNode) {
      const moved = progressed.get(nodeId) ?? 0;
      for (const e of [...m.values()]) {
        // A node that keeps answering other shards pardons one still queued behind them, but
        // only for so long: an outcome lost on a stream that reconnected, or a run that ignores
        // its cancel, would otherwise be pardoned for as long as the node stays busy.
        if (t >= Math.min(Math.max(e.placedMs, moved) + e.budgetMs, e.placedMs + MAX_PARDONED_BUDGETS * e.budgetMs)) {
          send(nodeId, { body: { $case: 'cancel', value: { shardIds: [e.assignment.shardId], reason: 'timed out; reassigned' } } });
          requeue(e, `attempt timed out after ${e.budgetMs} ms without an answer from node ${nodeId}`);
        }
      }
    }
  }, sweepMs);
  sweeper.unref();

  return {
    run(assignment, runOptions = {}) {
      const existing = active.get(assignment.shardId);
      if (existing) return existing.promise;
      let resolve!: (r: DispatchResult) => void;
      const promise = new Promise<DispatchResult>((res) => (resolve = res));
      const r = runOptions.requirements;
      const e: Entry = {
        assignment,
        options: runOptions,
        classKey: r === undefined && runOptions.placement === undefined ? '' : JSON.stringify([r ?? null, runOptions.placement ?? null]),
        inputBytes: assignment.inputs.reduce((n, i) => n + i.payload.byteLength, 0),
        attempts: 0,
        attemptsBefore: runOptions.attemptsBefore ?? 0,
        startedMs: now(),
        queuedMs: 0,
        nodeId: undefined,
        placedMs: 0,
        budgetMs: shardTimeoutMs,
        cpu: r?.cpu ?? 0,
        memMb: r?.memoryMb ?? 0,
        resolve,
        promise,
        offAbort: undefined,
        requeued: false,
        finished: false,
        cacheMisses: 0,
        sentInFull: undefined,
      };
      if (stopped) {
        resolve({ outcome: failed(e, ShardStatus.SHARD_STATUS_CANCELLED, 'dispatcher stopped'), nodeId: '', attempts: 0, queuedMs: 0 });
        return promise;
      }
      const signal = runOptions.signal;
      if (signal?.aborted) {
        resolve({ outcome: failed(e, ShardStatus.SHARD_STATUS_CANCELLED, 'cancelled before it was placed'), nodeId: '', attempts: 0, queuedMs: 0 });
        return promise;
      }
      active.set(assignment.shardId, e);
      classOf(e.classKey).queue.push(e);
      if (signal) {
        const onAbort = (): void => {
          if (e.nodeId !== undefined) send(e.nodeId, { body: { $case: 'cancel', value: { shardIds: [assignment.shardId], reason: 'cancelled' } } });
          finish(e, failed(e, ShardStatus.SHARD_STATUS_CANCELLED, 'cancelled'), e.nodeId ?? '');
        };
        // One job's signal is shared by all of its shards: many listeners on it are expected.
        setMaxListeners(0, signal);
        signal.addEventListener('abort', onAbort, { once: true });
        e.offAbort = () => signal.removeEventListener('abort', onAbort);
      }
      schedule();
      return promise;
    },
    waiting() {
      const out: WaitingShard[] = [];
      for (const c of classes.values()) {
        if (c.reason === undefined) continue;
        for (const e of [...c.retry, ...c.queue.slice(c.head).filter(pending)]) out.push({ shardId: e.assignment.shardId, stepName: e.assignment.stepName, reason: c.reason, busy: c.busy, jobId: e.assignment.jobId || undefined });
      }
      return out;
    },
    unmet(requirements) {
      turnOutages();
      refreshViews();
      const result = allocate(views, requirements ? { requirements } : {}, new Map(), { maxInFlight: Number.POSITIVE_INFINITY });
      return 'waiting' in result ? result.waiting : undefined;
    },
    setLinkOutage(nodeId, untilMs, fromMs = now()) {
      turnOutages();
      const windows = outages.get(nodeId) ?? [];
      if (untilMs <= fromMs) return () => {};
      // A cut from now while one is in force (a replay's per-step link faults, drawn again and
      // again) lengthens that one: the list stays one window long however often it is cut.
      const current = fromMs <= now() ? windows.find((w) => w.begun && fromMs <= w.untilMs) : undefined;
      if (current) {
        current.untilMs = Math.max(current.untilMs, untilMs);
        nextOutageTurnMs = Number.NEGATIVE_INFINITY;
        return () => {};
      }
      const w: OutageWindow = { fromMs, untilMs, begun: false };
      windows.push(w);
      outages.set(nodeId, windows);
      nextOutageTurnMs = Number.NEGATIVE_INFINITY;
      if (fromMs > now()) log('info', 'link:outage-set', { nodeId, fromMs, untilMs });
      turnOutages();
      // Withdrawn (its replay ended or was cancelled): one not begun never strikes, and one in
      // force ends now. A 30-day outage of a cancelled replay used to keep the node cut off from
      // every later shard (live ingest, other replays) until its nominal end.
      return () => {
        const list = outages.get(nodeId);
        const i = list?.indexOf(w) ?? -1;
        if (!list || i < 0) return;
        if (!w.begun) {
          list.splice(i, 1);
          if (list.length === 0) outages.delete(nodeId);
          return;
        }
        w.untilMs = Math.min(w.untilMs, now());
        nextOutageTurnMs = Number.NEGATIVE_INFINITY;
        turnOutages();
      };
    },
    inFlight() {
      const out = new Map<string, number>();
      for (const [nodeId, l] of load) if (l.inFlight > 0) out.set(nodeId, l.inFlight);
      return out;
    },
    reservedOn(nodeId) {
      const l = load.get(nodeId);
      return l ? { cpuCores: Math.max(0, l.reservedCpu), memoryMb: Math.max(0, l.reservedMemMb) } : undefined;
    },
    stop() {
      if (stopped) return;
      clearInterval(sweeper);
      clearTimeout(edgeTimer);
      for (const off of offs) off();
      for (const e of [...active.values()]) {
        if (e.nodeId !== undefined) send(e.nodeId, { body: { $case: 'cancel', value: { shardIds: [e.assignment.shardId], reason: 'dispatcher stopped' } } });
        finish(e, failed(e, ShardStatus.SHARD_STATUS_CANCELLED, 'dispatcher stopped'), '');
      }
      stopped = true;
    },
  };
}
