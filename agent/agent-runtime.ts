import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { join } from 'node:path';
import { ChannelCredentials, ClientError, Metadata, Status, createChannel, createClient, type Channel } from 'nice-grpc';
import { AsyncQueue } from '../common/async-queue.js';
import { describeConnectFailure } from '../common/connect-failure.js';
import { NodeServiceConnectWireDefinition } from '../common/connect-wire.js';
import { FailedPreconditionError, InvalidArgumentError, RetraceError } from '../common/errors.js';
import { CodeServiceDefinition, type CodeServiceClient } from '../common/gen/retrace/v1/code.js';
import type { ShardAssignment, ShardOutcome } from '../common/gen/retrace/v1/shard.js';
import { FLOW_CONTROL_WINDOW_BYTES, FLOW_CONTROL_WINDOW_OPTION } from '../common/grpc-flow-control.js';
import {
  ReadingSource,
  type ConnectRequest,
  type ConnectResponse,
  type NodeServiceClient,
  type ResourceReading,
} from '../common/gen/retrace/v1/node.js';
import { createJsonLog, type LogFn } from '../common/log.js';
import { millisToNanos } from '../common/time.js';
import { DEFAULT_BACKOFF, backoffDelayMs, type BackoffPolicy } from './backoff.js';
import { codeServiceFetcher, createCodeCache, type CodeCache } from './code-cache.js';
import { loadOrCreateIdentity, saveIdentity } from './identity-store.js';
import { capOutcome, frameOutcomes, outcomeBytes } from './outcome-frames.js';
import { createResourceProbe, type ResourceProbe } from './resource-probe.js';
import { createShardExecutor, type ShardExecutor, type ShardExecutorOptions } from './shard-executor.js';
import { sleep } from '../common/abortable-sleep.js';
// A Struct key `__proto__` (a step parameter) is kept as an own property, not dropped.
import '../common/struct-own-keys.js';

/**
 * Lifecycle of an agent process:
 *   STARTING → CONNECTING ⇄ RUNNING → DRAINING → STOPPED, and FAILED from anywhere but STOPPED.
 * CONNECTING covers first connection and every reconnect; DRAINING is the clean shutdown (leave,
 * half-close, wait for the coordinator to end the stream).
 */
export type AgentState = 'STARTING' | 'CONNECTING' | 'RUNNING' | 'DRAINING' | 'STOPPED' | 'FAILED';

const ALLOWED: Readonly<Record<AgentState, readonly AgentState[]>> = {
  STARTING: ['CONNECTING', 'DRAINING', 'FAILED'],
  CONNECTING: ['RUNNING', 'DRAINING', 'FAILED'],
  RUNNING: ['CONNECTING', 'DRAINING', 'FAILED'],
  DRAINING: ['STOPPED', 'FAILED'],
  STOPPED: [],
  FAILED: [],
};

/** Events of the agent runtime, by name. */
export interface AgentEvents {
  'agent:state': { from: AgentState; to: AgentState; reason: string };
  'agent:registered': { nodeId: string; rejoined: boolean; reportIntervalMs: number };
  'agent:reported': { seq: number; readings: number };
  'agent:link': AgentLink;
  /** The coordinator asked this node to take no new work. */
  'agent:drain': { reason: string };
}

/** The agent's own measurement of its link to the coordinator. */
export interface AgentLink {
  rttMs: number;
  /** Upload, bytes/s. */
  upBytesPerSec: number;
  /** Download, bytes/s. */
  downBytesPerSec: number;
  atMs: number;
}

/** Options of `createAgentRuntime`; validated once into a frozen compiled object. */
export interface AgentOptions {
  /** Coordinator address, HOST:PORT. */
  coordinator: string;
  /** Holds the node identity (a restarted agent keeps its node id) and the code cache. */
  dataDir: string;
  /** Sent as `authorization: Bearer <token>`. */
  token?: string;
  /** PEM CA certificate(s) of a coordinator that serves TLS: the channel is then TLS, trusting these only. Default: plaintext. */
  tlsCa?: Buffer | undefined;
  labels?: Readonly<Record<string, string>>;
  /** DECLARED capabilities (`--advertise`), reported next to the measured ones. */
  advertised?: readonly ResourceReading[];
  /** Report period, ms (default 2000, at least 50). The coordinator's ack may change it. */
  reportIntervalMs?: number;
  /**
   * Period of the link measurement, ms (default 120000; 0 disables). With the default size that
   * is ~2 KiB/s per agent, ~2 MiB/s at the coordinator for 1000 agents.
   */
  linkProbeIntervalMs?: number;
  /** Bytes moved each way by one link measurement (default 128 KiB). */
  linkProbeBytes?: number;
  /** Reconnect after this long without any message from the coordinator, ms (default 45000). */
  silenceTimeoutMs?: number;
  /** How long a clean shutdown waits for the coordinator to close the stream, ms (default 3000). */
  leaveTimeoutMs?: number;
  backoff?: Partial<BackoffPolicy>;
  agentVersion?: string;
  /** Host name reported (default os.hostname()). */
  host?: string;
  /** Code versions held in the local cache, "sha256:<hex>" (default: the bundles in `<dataDir>/code`). */
  codeVersions?: () => Promise<string[]>;
  /** Tunables of the shard executor (node id and code cache are the runtime's). */
  executor?: Omit<ShardExecutorOptions, 'codeCache' | 'nodeId' | 'log'>;
  /** Defaults to a probe of this host. */
  probe?: ResourceProbe;
  /** Wall clock, ms since the epoch. */
  now?: () => number;
  /** Uniform [0, 1), for backoff jitter. */
  rng?: () => number;
  log?: LogFn;
}

interface CompiledAgentOptions {
  readonly coordinator: string;
  readonly dataDir: string;
  readonly token: string | undefined;
  readonly tlsCa: Buffer | undefined;
  readonly labels: Readonly<Record<string, string>>;
  readonly advertised: readonly ResourceReading[];
  readonly reportIntervalMs: number;
  readonly linkProbeIntervalMs: number;
  readonly linkProbeBytes: number;
  readonly silenceTimeoutMs: number;
  readonly leaveTimeoutMs: number;
  readonly backoff: BackoffPolicy;
  readonly agentVersion: string;
  readonly host: string;
  readonly codeVersions: (() => Promise<string[]>) | undefined;
  readonly now: () => number;
  readonly rng: () => number;
  readonly log: LogFn;
}

/** Validates and defaults agent options. Throws InvalidArgumentError naming the option. */
export function compileAgentOptions(o: AgentOptions): CompiledAgentOptions {
  if (!/^[^\s:]+:\d{1,5}$/.test(o.coordinator) && !/^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(o.coordinator)) {
    throw new InvalidArgumentError('coordinator', `expected HOST:PORT, got ${JSON.stringify(o.coordinator)}`);
  }
  if (o.dataDir.trim() === '') throw new InvalidArgumentError('data', 'must not be empty');
  const positive = (field: string, v: number | undefined, def: number, min: number): number => {
    const value = v ?? def;
    if (!Number.isFinite(value) || value < min) throw new InvalidArgumentError(field, `must be at least ${min}, got ${value}`);
    return value;
  };
  const backoff = { ...DEFAULT_BACKOFF, ...o.backoff };
  if (!(backoff.initialMs > 0 && backoff.maxMs >= backoff.initialMs && backoff.multiplier >= 1)) {
    throw new InvalidArgumentError('backoff', 'needs initialMs > 0, maxMs >= initialMs, multiplier >= 1');
  }
  const linkProbeIntervalMs = o.linkProbeIntervalMs ?? 120_000;
  if (linkProbeIntervalMs !== 0) positive('linkProbeIntervalMs', linkProbeIntervalMs, 120_000, 100);
  const dataDir = o.dataDir;
  return Object.freeze({
    coordinator: o.coordinator,
    dataDir,
    token: o.token && o.token.trim() !== '' ? o.token.trim() : undefined,
    tlsCa: o.tlsCa,
    labels: Object.freeze({ ...(o.labels ?? {}) }),
    advertised: Object.freeze((o.advertised ?? []).map((r) => ({ ...r, source: ReadingSource.READING_SOURCE_DECLARED }))),
    reportIntervalMs: positive('reportIntervalMs', o.reportIntervalMs, 2000, 50),
    linkProbeIntervalMs,
    linkProbeBytes: positive('linkProbeBytes', o.linkProbeBytes, 128 * 1024, 1024),
    silenceTimeoutMs: positive('silenceTimeoutMs', o.silenceTimeoutMs, 45_000, 100),
    leaveTimeoutMs: positive('leaveTimeoutMs', o.leaveTimeoutMs, 3000, 0),
    backoff: Object.freeze(backoff),
    agentVersion: o.agentVersion ?? '0.0.0',
    host: o.host ?? hostname(),
    codeVersions: o.codeVersions,
    now: o.now ?? Date.now,
    rng: o.rng ?? Math.random,
    log: o.log ?? createJsonLog((line) => process.stderr.write(line), { name: 'agent' }),
  });
}

/** A running agent: one node of the mesh. */
export interface AgentRuntime {
  readonly state: AgentState;
  /** Known once the identity is loaded (during start). */
  readonly nodeId: string | undefined;
  /** Latest link measurement, if any. */
  readonly link: AgentLink | undefined;
  /** Loads the identity and capabilities, then connects in the background. Call once. */
  start(): Promise<void>;
  /** Resolves on the next successful registration (or at once with the current one when RUNNING). */
  registered(signal?: AbortSignal): Promise<{ nodeId: string; rejoined: boolean }>;
  /** Clean shutdown: leave, half-close, wait for the coordinator (bounded), STOPPED. Idempotent. */
  stop(reason?: string): Promise<void>;
  /** Settles when the runtime is STOPPED (resolves) or FAILED (rejects with the cause). */
  readonly done: Promise<void>;
  on<E extends keyof AgentEvents>(event: E, listener: (payload: AgentEvents[E]) => void): () => void;
}

interface Session {
  out: AsyncQueue<ConnectRequest>;
  abort: AbortController;
  registered: boolean;
  reportSeq: number;
  pendingProbes: Map<string, { resolve: () => void; reject: (err: unknown) => void }>;
  timers: NodeJS.Timeout[];
  lastHeardMs: number;
}

/** Creates an agent runtime; nothing happens until `start()`. */
export function createAgentRuntime(options: AgentOptions): AgentRuntime {
  const opts = compileAgentOptions(options);
  const log = opts.log;
  const probe = options.probe ?? createResourceProbe({ dataDir: opts.dataDir, advertised: opts.advertised });
  const listeners = new Map<keyof AgentEvents, Set<(p: never) => void>>();
  let state: AgentState = 'STARTING';
  let nodeId: string | undefined;
  let capabilities: ResourceReading[] = [];
  let reportIntervalMs = opts.reportIntervalMs;
  let link: AgentLink | undefined;
  let linkSentAtMs = 0;
  let drainRequested = false;
  let executorStopped = false;
  let started = false;
  let stopping = false;
  let session: Session | undefined;
  let channel: Channel | undefined;
  let probeSeq = 0;
  // Shards: bundles come from CodeService on the agent's own channel (set in loop()).
  let codeClient: CodeServiceClient | undefined;
  const codeCache: CodeCache = createCodeCache({
    dir: join(opts.dataDir, 'code'),
    fetch: (v) => {
      if (!codeClient) return Promise.reject(new Error('not connected to the coordinator'));
      return codeServiceFetcher(codeClient)(v);
    },
  });
  const codeVersions = opts.codeVersions ?? (() => codeCache.list());
  let executor: ShardExecutor | undefined;
  /**
   * Shard ids given to the executor and not yet answered. A re-assignment of a running shard id
   * (the coordinator placed it again, e.g. after a reconnect) joins the run, whose outcome then
   * answers the newer attempt; one that comes after the run was cancelled waits for the
   * cancelled run to end and runs then (see runShard).
   */
  const running = new Map<string, { attempt: number; cancelled: boolean; next: ShardAssignment | undefined }>();
  /** Drawn once per process: a registration with another one tells the coordinator this is a new process. */
  const processId = randomUUID();
  let outgoing: ShardOutcome[] = [];
  let flushScheduled = false;
  const stopController = new AbortController();
  let resolveDone!: () => void;
  let rejectDone!: (err: unknown) => void;
  const done = new Promise<void>((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  // Callers that never await `done` must not see an unhandled rejection.
  done.catch(() => {});
  let loopDone: Promise<void> = Promise.resolve();

  function emit<E extends keyof AgentEvents>(event: E, payload: AgentEvents[E]): void {
    for (const l of listeners.get(event) ?? []) {
      try {
        (l as (p: AgentEvents[E]) => void)(payload);
      } catch (err) {
        log('error', 'agent:listener-failed', { event, error: String(err) });
      }
    }
  }

  function transition(to: AgentState, reason: string): void {
    if (state === to) return;
    if (!ALLOWED[state].includes(to)) {
      throw new FailedPreconditionError(`agent cannot go from ${state} to ${to}`);
    }
    const from = state;
    state = to;
    log(to === 'FAILED' ? 'error' : 'info', 'agent:state', { from, to, reason, nodeId });
    emit('agent:state', { from, to, reason });
  }

  function fail(err: unknown): void {
    if (state === 'STOPPED' || state === 'FAILED') return;
    transition('FAILED', err instanceof Error ? err.message : String(err));
    stopController.abort();
    session?.abort.abort();
    channel?.close();
    executorStopped = true;
    void executor?.stop();
    rejectDone(err);
  }

  function registration(codeVersions: string[]): ConnectRequest {
    return {
      body: {
        $case: 'register',
        value: {
          nodeId: nodeId ?? '',
          host: opts.host,
          labels: { ...opts.labels },
          capabilities,
          codeVersions,
          agentVersion: opts.agentVersion,
          reportIntervalNs: millisToNanos(opts.reportIntervalMs).toString(),
          draining: drainRequested,
          processId,
          // The cache lives as long as this process: a reconnect keeps it, a restart (new
          // process id) starts empty, and the coordinator's mirror of it follows.
          payloadCacheBytes: String(executor?.payloadCacheBytes ?? 0),
        },
      },
    };
  }

  async function sendReport(s: Session): Promise<void> {
    const readings = await probe.sample();
    // A link measurement goes out once: it is one sample, however many reports follow it.
    if (link && link.atMs !== linkSentAtMs) {
      linkSentAtMs = link.atMs;
      readings.push(
        { name: 'net.rtt', value: link.rttMs, text: '', unit: 'ms', source: ReadingSource.READING_SOURCE_MEASURED },
        { name: 'net.up', value: link.upBytesPerSec, text: '', unit: 'bytes/s', source: ReadingSource.READING_SOURCE_MEASURED },
        { name: 'net.down', value: link.downBytesPerSec, text: '', unit: 'bytes/s', source: ReadingSource.READING_SOURCE_MEASURED },
      );
    }
    if (s !== session || !s.registered) return;
    const seq = ++s.reportSeq;
    const ok = s.out.push({
      body: { $case: 'report', value: { timeNs: millisToNanos(opts.now()).toString(), readings, seq: String(seq) } },
    });
    // A full queue means the stream is stalled; the silence watchdog will replace it.
    if (ok) emit('agent:reported', { seq, readings: readings.length });
  }

  function probeOnce(s: Session, payloadBytes: number, echoBytes: number): Promise<number> {
    const probeId = `p${++probeSeq}`;
    const t0 = performance.now();
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        s.pendingProbes.delete(probeId);
        reject(new Error('link probe timed out'));
      }, 10_000);
      s.pendingProbes.set(probeId, {
        resolve: () => {
          clearTimeout(timer);
          resolve(performance.now() - t0);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      s.out.push({ body: { $case: 'probe', value: { probeId, payload: Buffer.alloc(payloadBytes), echoBytes } } });
    });
  }

  let measuring = false;
  async function measureLink(s: Session): Promise<void> {
    if (measuring) return;
    measuring = true;
    try {
      // Round trip first (best of three empty probes), so it can be taken off the timed
      // transfers: what remains is the time the payload spent on the wire.
      const rtts: number[] = [];
      for (let i = 0; i < 3; i++) rtts.push(await probeOnce(s, 0, 0));
      const rttMs = Math.min(...rtts);
      const n = opts.linkProbeBytes;
      const up = await probeOnce(s, n, 0);
      const down = await probeOnce(s, 0, n);
      const rate = (ms: number): number => n / (Math.max(ms - rttMs, 0.05) / 1000);
      link = { rttMs, upBytesPerSec: rate(up), downBytesPerSec: rate(down), atMs: opts.now() };
      log('debug', 'agent:link', { ...link });
      emit('agent:link', link);
    } catch (err) {
      if (s === session) log('warn', 'agent:link-failed', { error: String(err) });
    } finally {
      measuring = false;
    }
  }

  function onRegistered(s: Session, msg: Extract<ConnectResponse['body'], { $case: 'registered' }>['value']): void {
    const ns = Number(msg.reportIntervalNs);
    reportIntervalMs = ns > 0 ? ns / 1e6 : opts.reportIntervalMs;
    const firstId = nodeId;
    nodeId = msg.nodeId || nodeId;
    if (nodeId && nodeId !== firstId) {
      void saveIdentity(opts.dataDir, { nodeId, createdAtMs: opts.now() }).catch((err: unknown) =>
        log('error', 'agent:identity-save-failed', { error: String(err) }),
      );
    }
    if (stopping) return;
    s.registered = true;
    transition('RUNNING', msg.rejoined ? 'rejoined' : 'registered');
    log('info', 'agent:registered', { nodeId, rejoined: msg.rejoined, reportIntervalMs });
    // The coordinator clamps the interval to its bounds (100 ms..60 s by default): `--report-interval
    // 5m` reported every minute and said so only as a number in the line above.
    if (ns > 0 && reportIntervalMs !== opts.reportIntervalMs) {
      log('warn', 'agent:report-interval-changed', { askedMs: opts.reportIntervalMs, grantedMs: reportIntervalMs, reason: 'outside the coordinator\'s bounds' });
    }
    emit('agent:registered', { nodeId: nodeId ?? '', rejoined: msg.rejoined, reportIntervalMs });
    // Outcomes that finished while disconnected go out now (the coordinator ignores duplicates).
    if (outgoing.length > 0) scheduleFlush();
    let sampling = false;
    s.timers.push(
      setInterval(() => {
        if (sampling || s !== session) return;
        sampling = true;
        sendReport(s)
          .catch((err: unknown) => log('warn', 'agent:report-failed', { error: String(err) }))
          .finally(() => {
            sampling = false;
          });
      }, reportIntervalMs),
    );
    if (opts.linkProbeIntervalMs > 0) {
      // The first measurement soon after joining, then at a low duty cycle.
      s.timers.push(setTimeout(() => void measureLink(s), Math.min(500, opts.linkProbeIntervalMs)));
      s.timers.push(setInterval(() => void measureLink(s), opts.linkProbeIntervalMs));
    }
  }

  function handle(s: Session, msg: ConnectResponse): void {
    s.lastHeardMs = performance.now();
    const body = msg.body;
    switch (body?.$case) {
      case 'registered':
        onRegistered(s, body.value);
        break;
      case 'ping':
        s.out.push({ body: { $case: 'pong', value: { nonce: body.value.nonce, pingSentNs: body.value.sentNs } } });
        break;
      case 'probeRequest':
        void measureLink(s);
        break;
      case 'probeEcho': {
        const pending = s.pendingProbes.get(body.value.probeId);
        s.pendingProbes.delete(body.value.probeId);
        pending?.resolve();
        break;
      }
      case 'drain':
        if (!drainRequested) log('info', 'agent:drain', { reason: body.value.reason });
        drainRequested = true;
        emit('agent:drain', { reason: body.value.reason });
        break;
      case 'assign':
        for (const a of body.value.shards) runShard(a);
        break;
      case 'cancel':
        for (const id of body.value.shardIds) {
          const run = running.get(id);
          if (!run) continue;
          // A cancel is for the latest assignment of the id: one still waiting is simply dropped.
          if (run.next) run.next = undefined;
          else if (!run.cancelled) {
            run.cancelled = true;
            executor?.cancel(id, body.value.reason || 'cancelled by the coordinator');
          }
        }
        break;
      case 'throttle':
        try {
          executor?.setThrottle({ cpuFraction: body.value.cpuFraction, maxConcurrent: body.value.maxConcurrent });
        } catch (err) {
          log('warn', 'agent:bad-throttle', { error: String(err) });
        }
        break;
      default:
        // A newer coordinator may send messages this agent does not know; ignoring them keeps
        // old agents working.
        break;
    }
  }

  function runShard(a: ShardAssignment): void {
    if (!executor) return;
    const run = running.get(a.shardId);
    if (!run) {
      running.set(a.shardId, { attempt: a.attempt, cancelled: false, next: undefined });
      executor.executeThen(a, onOutcome);
      return;
    }
    // Placed again while it still runs here. A live run answers for the new attempt (same shard
    // id, same work: outputs are idempotent by shard id). A cancelled one (the coordinator timed
    // it out, then placed it here again) would answer CANCELLED: the new attempt runs after it.
    if (run.cancelled) run.next = a;
    else run.attempt = Math.max(run.attempt, a.attempt);
  }

  function onOutcome(outcome: ShardOutcome): void {
    const run = running.get(outcome.shardId);
    running.delete(outcome.shardId);
    // A shard cut short by our own shutdown is not an outcome: the coordinator reassigns it.
    if (executorStopped) return;
    if (run?.next) {
      // The coordinator gave up on the cancelled attempt and waits for this one only.
      runShard(run.next);
      return;
    }
    if (run && run.attempt !== outcome.attempt) outcome = { ...outcome, attempt: run.attempt };
    // An outcome past what the coordinator receives would close the stream and every outcome in it.
    const capped = capOutcome(outcome);
    if (capped !== outcome) log('warn', 'shard:outcome-too-large', { shardId: outcome.shardId, bytes: outcomeBytes(outcome) });
    outgoing.push(capped);
    scheduleFlush();
  }

  function scheduleFlush(): void {
    if (flushScheduled) return;
    flushScheduled = true;
    // Outcomes finishing in the same turn go out in one frame.
    setImmediate(flushOutcomes);
  }

  function flushOutcomes(): void {
    flushScheduled = false;
    const s = session;
    if (!s || !s.registered || outgoing.length === 0) return; // kept until the next registration
    const batch = outgoing;
    outgoing = [];
    // Frames stay under the coordinator's message limit, however many large outcomes end together.
    const frames = frameOutcomes(batch);
    for (let f = 0; f < frames.length; f++) {
      const outcomes = frames[f] as ShardOutcome[];
      if (!s.out.push({ body: { $case: 'outcomes', value: { outcomes } } })) {
        const left = frames.slice(f).flat();
        outgoing.push(...left);
        log('warn', 'agent:outcomes-deferred', { count: left.length });
        break;
      }
    }
  }

  async function runSession(client: NodeServiceClient): Promise<boolean> {
    const s: Session = {
      out: new AsyncQueue<ConnectRequest>(1024),
      abort: new AbortController(),
      registered: false,
      reportSeq: 0,
      pendingProbes: new Map(),
      timers: [],
      lastHeardMs: performance.now(),
    };
    session = s;
    s.out.push(registration(await codeVersions().catch(() => [])));
    s.timers.push(
      setInterval(() => {
        if (performance.now() - s.lastHeardMs > opts.silenceTimeoutMs) {
          log('warn', 'agent:silence', { silentMs: Math.round(performance.now() - s.lastHeardMs) });
          s.abort.abort(new Error('coordinator silent'));
        }
      }, Math.min(1000, opts.silenceTimeoutMs)),
    );
    try {
      for await (const msg of client.connect(s.out, { signal: s.abort.signal })) handle(s, msg);
    } catch (err) {
      // Our own abort (shutdown, silence) is not an error of the coordinator's.
      if (!s.abort.signal.aborted) throw err;
    } finally {
      for (const t of s.timers) clearInterval(t);
      for (const p of s.pendingProbes.values()) p.reject(new Error('connection closed'));
      s.pendingProbes.clear();
      s.out.close();
      if (session === s) session = undefined;
    }
    return s.registered;
  }

  function isFatal(err: unknown): boolean {
    return err instanceof ClientError && (err.code === Status.UNAUTHENTICATED || err.code === Status.PERMISSION_DENIED);
  }

  async function loop(): Promise<void> {
    const metadata = Metadata();
    if (opts.token) metadata.set('authorization', `Bearer ${opts.token}`);
    // Bundles may be up to 32 MiB; GetCode answers need more than gRPC's 4 MiB default.
    const credentials = opts.tlsCa ? ChannelCredentials.createSsl(opts.tlsCa) : ChannelCredentials.createInsecure();
    channel = createChannel(opts.coordinator, credentials, { 'grpc.max_receive_message_length': 64 * 1024 * 1024, [FLOW_CONTROL_WINDOW_OPTION]: FLOW_CONTROL_WINDOW_BYTES });
    const client: NodeServiceClient = createClient(NodeServiceConnectWireDefinition, channel, { '*': { metadata } });
    codeClient = createClient(CodeServiceDefinition, channel, { '*': { metadata } });
    let attempt = 0;
    try {
      while (!stopping) {
        transition('CONNECTING', attempt === 0 ? 'connecting' : `retry ${attempt}`);
        let wasRegistered = false;
        try {
          wasRegistered = await runSession(client);
          if (!stopping) log('warn', 'agent:disconnected', { reason: 'stream ended by coordinator' });
        } catch (err) {
          if (stopping) break;
          if (isFatal(err)) {
            fail(new RetraceError('UNAUTHENTICATED', `coordinator refused the agent: ${(err as ClientError).details}`, { cause: err }));
            return;
          }
          // A channel that never connected says why (TLS on one side only, an untrusted certificate).
          const connectFailure = err instanceof ClientError && err.code === Status.UNAVAILABLE ? describeConnectFailure(err.details, { address: opts.coordinator, tls: opts.tlsCa !== undefined }) : undefined;
          log('warn', 'agent:disconnected', { error: connectFailure ?? (err instanceof ClientError ? `${Status[err.code]}: ${err.details}` : String(err)) });
        }
        if (stopping) break;
        if (wasRegistered) attempt = 0;
        const delay = backoffDelayMs(attempt++, opts.backoff, opts.rng);
        log('info', 'agent:reconnect-wait', { delayMs: Math.round(delay), attempt });
        await sleep(delay, stopController.signal);
      }
    } finally {
      channel.close();
    }
  }

  const runtime: AgentRuntime = {
    get state() {
      return state;
    },
    get nodeId() {
      return nodeId;
    },
    get link() {
      return link;
    },
    done,
    async start() {
      if (started) throw new FailedPreconditionError('agent already started');
      started = true;
      try {
        nodeId = (await loadOrCreateIdentity(opts.dataDir, opts.now)).nodeId;
        capabilities = await probe.capabilities();
        executor = createShardExecutor({ ...options.executor, codeCache, nodeId, log });
      } catch (err) {
        fail(err);
        throw err;
      }
      if (stopping) return;
      loopDone = loop().catch((err: unknown) => fail(err));
    },
    registered(signal) {
      if (state === 'RUNNING' && nodeId) return Promise.resolve({ nodeId, rejoined: false });
      return new Promise((resolve, reject) => {
        const offOk = runtime.on('agent:registered', (e) => {
          cleanup();
          resolve({ nodeId: e.nodeId, rejoined: e.rejoined });
        });
        const offState = runtime.on('agent:state', (e) => {
          if (e.to === 'FAILED' || e.to === 'STOPPED') {
            cleanup();
            reject(new FailedPreconditionError(`agent ${e.to.toLowerCase()}: ${e.reason}`));
          }
        });
        const onAbort = (): void => {
          cleanup();
          reject(signal?.reason ?? new Error('aborted'));
        };
        const cleanup = (): void => {
          offOk();
          offState();
          signal?.removeEventListener('abort', onAbort);
        };
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    },
    async stop(reason = 'shutdown') {
      if (state === 'STOPPED' || state === 'FAILED') return;
      if (stopping) {
        await done.catch(() => {});
        return;
      }
      stopping = true;
      transition('DRAINING', reason);
      stopController.abort();
      const s = session;
      if (s) {
        if (s.registered) {
          // A clean leave: the coordinator marks the node LEFT on the half-close and ends the
          // stream; without an answer in time the stream is cut.
          s.out.push({ body: { $case: 'leave', value: { reason } } });
          s.out.close();
          const timer = setTimeout(() => s.abort.abort(new Error('leave timed out')), opts.leaveTimeoutMs);
          await loopDone;
          clearTimeout(timer);
        } else {
          s.abort.abort(new Error(reason));
        }
      }
      await loopDone;
      executorStopped = true;
      await executor?.stop();
      if (state === 'DRAINING') {
        transition('STOPPED', reason);
        resolveDone();
      }
    },
    on(event, listener) {
      let set = listeners.get(event);
      if (!set) listeners.set(event, (set = new Set()));
      set.add(listener as (p: never) => void);
      return () => set.delete(listener as (p: never) => void);
    },
  };
  return runtime;
}

