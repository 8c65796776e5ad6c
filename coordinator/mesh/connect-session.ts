import { performance } from 'node:perf_hooks';
import { isAbortError } from 'abort-controller-x';
import { AsyncQueue } from '../../common/async-queue.js';
import { FailedPreconditionError, InvalidArgumentError, RetraceError } from '../../common/errors.js';
import { ReadingSource, type ConnectRequest, type ConnectResponse, type ResourceReading } from '../../common/gen/retrace/v1/node.js';
import type { LogFn } from '../../common/log.js';
import { millisToNanos } from '../../common/time.js';
import type { MeshEmitter } from './mesh-events.js';
import { validateRegistration, validateReport } from './mesh-validation.js';
import { toProtoState, type NodeRegistry } from './node-registry.js';

/** Largest echo a link probe may ask for. */
export const MAX_PROBE_ECHO_BYTES = 1024 * 1024;

/** One sample for the history store. */
export interface MeshSample {
  metric: string;
  /** ms since the epoch. */
  t: number;
  value: number;
}

/** What a session needs from the mesh. */
export interface SessionHost {
  readonly registry: NodeRegistry;
  readonly emitter: MeshEmitter;
  readonly log: LogFn;
  readonly now: () => number;
  readonly bounds: { defaultReportIntervalMs: number; minReportIntervalMs: number; maxReportIntervalMs: number };
  /** Agent clocks further off than this are not trusted for sample times. */
  readonly maxClockSkewMs: number;
  /** The open session of each registered node. */
  readonly sessions: Map<string, ConnectSession>;
  /** Whether a named token called `name` exists now (a node bound to a revoked name may be claimed). */
  hasTokenNamed(name: string): boolean;
  /** Appends samples to the history store. */
  append(nodeId: string, samples: MeshSample[]): Promise<void>;
  /** Messages this mesh does not handle (cases added to the proto later). */
  unhandled(nodeId: string, message: ConnectRequest): void;
}

let nextSessionId = 1;

/**
 * The coordinator's half of one agent's Connect stream: reads agent messages in order (a
 * report's samples are stored before the next message is read, which is the stream's
 * backpressure) and feeds the outgoing queue that the RPC generator drains.
 */
export class ConnectSession {
  readonly id = nextSessionId++;
  /** Outgoing messages; closing it ends the response stream. */
  readonly out = new AsyncQueue<ConnectResponse>(4096);
  nodeId: string | undefined;
  private left = false;
  private endedByServer = false;
  private pingNonce = 0;
  private readonly pings = new Map<string, number>();
  private lastPingMs = 0;
  private clockWarned = false;
  /** Whether `registered` has been sent: nothing else goes to the agent before it. */
  private answered = false;

  /**
   * @param boundTo the name of the client or agent token the stream was opened with (the auth
   *   interceptor's x-retrace-bound-principal); undefined for the owner and admin tokens.
   */
  constructor(
    private readonly host: SessionHost,
    readonly boundTo?: string,
  ) {}

  /** Queues a message to the agent; false once the stream is closing or its buffer is full. */
  send(message: ConnectResponse): boolean {
    return this.out.push(message);
  }

  /** Ends the stream from the coordinator's side (superseded, shutdown). */
  end(reason: string): void {
    if (this.out.isClosed) return;
    this.endedByServer = true;
    this.host.log('debug', 'session:end', { nodeId: this.nodeId, session: this.id, reason });
    this.out.close();
  }

  /** Sends a ping when one is due (the mesh's sweep calls this; one timer for all sessions). */
  maybePing(nowMs: number, intervalMs: number): void {
    if (!this.answered || nowMs - this.lastPingMs < intervalMs) return;
    this.lastPingMs = nowMs;
    const nonce = String(++this.pingNonce);
    // Only the latest few pings are awaited; a lost pong must not grow the map.
    if (this.pings.size > 8) this.pings.clear();
    this.pings.set(nonce, performance.now());
    this.send({ body: { $case: 'ping', value: { nonce, sentNs: millisToNanos(nowMs).toString() } } });
  }

  /**
   * Reads the agent's messages until it leaves, half-closes, disconnects or sends something
   * invalid. Never rejects: a bad message fails the outgoing queue, so the RPC ends with that
   * error's status.
   */
  async read(requests: AsyncIterable<ConnectRequest>, signal: AbortSignal): Promise<void> {
    let reason = 'stream closed';
    try {
      for await (const message of requests) {
        await this.handle(message);
        if (this.left || this.endedByServer) break;
      }
      this.out.close();
    } catch (err) {
      if (isAbortError(err) || signal.aborted) {
        reason = 'connection lost';
        this.out.close();
      } else {
        reason = `rejected: ${err instanceof Error ? err.message : String(err)}`;
        this.host.log('warn', 'session:rejected', { nodeId: this.nodeId, session: this.id, error: reason });
        this.out.fail(err);
      }
    } finally {
      if (this.nodeId) {
        if (!this.left) this.host.registry.disconnected(this.nodeId, this.id, this.endedByServer ? 'closed by coordinator' : reason);
        if (this.host.sessions.get(this.nodeId) === this) this.host.sessions.delete(this.nodeId);
      }
    }
  }

  private async handle(message: ConnectRequest): Promise<void> {
    const body = message.body;
    if (body?.$case === 'register') {
      if (this.nodeId) throw new FailedPreconditionError('register was already sent on this stream', 'register');
      const reg = validateRegistration(body.value, this.host.bounds);
      // A node belongs to the agent token that first registered it, online or offline: another
      // agent token must not take its id, and with it its identity, history and the shards sent
      // to it. Only once that token's name has left the token table (revoked) may another claim
      // it, which is how an operator moves a host to a new token. The owner and admin tokens may
      // connect as any node. Checked, and the binding taken (registry.register), without an
      // await in between, so two Connects for one node id cannot both pass.
      const boundTo = this.host.registry.get(reg.nodeId)?.record.boundToken;
      if (this.boundTo !== undefined && boundTo !== undefined && boundTo !== this.boundTo && this.host.hasTokenNamed(boundTo)) {
        throw new RetraceError('PERMISSION_DENIED', `node ${JSON.stringify(reg.nodeId)} is bound to token ${JSON.stringify(boundTo)}; token ${JSON.stringify(this.boundTo)} may not register it: choose another node id (an agent keeps its id in its --data dir: a new dir makes a new one), or revoke token ${JSON.stringify(boundTo)} first (retrace token revoke ${boundTo})`, { field: 'register.node_id' });
      }
      const previous = this.host.sessions.get(reg.nodeId);
      // The newest connection wins: an agent that restarted before its old TCP connection timed
      // out must not be locked out by it. But only with the token the node is connected with (or
      // an admin one): another agent token must not take over a live node and the shards, inputs
      // and pinned replays sent to it. A session opened with a token since revoked is no live
      // owner: the revoke ends it, but only once its stream's teardown has run, and an agent
      // started with the new token at once after `retrace token revoke` was refused meanwhile.
      if (previous && this.boundTo !== undefined && previous.boundTo !== this.boundTo && (previous.boundTo === undefined || this.host.hasTokenNamed(previous.boundTo))) {
        throw new RetraceError('PERMISSION_DENIED', `node ${JSON.stringify(reg.nodeId)} is connected with another token; token ${JSON.stringify(this.boundTo)} may not take it over: choose another node id (an agent keeps its id in its --data dir: a new dir makes a new one), or stop that agent first`, { field: 'register.node_id' });
      }
      if (previous) previous.end('superseded by a new connection');
      this.host.sessions.set(reg.nodeId, this);
      this.nodeId = reg.nodeId;
      const { node, rejoined } = await this.host.registry.register(reg, this.id, this.boundTo);
      this.send({
        body: {
          $case: 'registered',
          value: {
            nodeId: reg.nodeId,
            reportIntervalNs: millisToNanos(node.record.reportIntervalMs).toString(),
            rejoined,
            state: toProtoState(node.record.state),
          },
        },
      });
      // nodeId is set before the registry's write, during which the mesh's sweep may come by:
      // a ping then reached the agent before the answer to its registration.
      this.answered = true;
      if (node.record.drainReason) this.send({ body: { $case: 'drain', value: { reason: node.record.drainReason } } });
      return;
    }
    const nodeId = this.nodeId;
    if (!nodeId) throw new FailedPreconditionError('the first message on a Connect stream must be register', body?.$case ?? 'body');
    switch (body?.$case) {
      case 'report': {
        const receivedAtMs = this.host.now();
        const { timeMs, readings } = validateReport(body.value);
        this.host.registry.report(nodeId, this.id, readings);
        const t = this.sampleTime(timeMs, receivedAtMs);
        await this.host.append(nodeId, toSamples(readings, t));
        this.host.emitter.emit('node:reported', {
          nodeId,
          reportTimeMs: timeMs,
          receivedAtMs,
          storedAtMs: this.host.now(),
          readings: readings.length,
        });
        return;
      }
      case 'pong': {
        const sent = this.pings.get(body.value.nonce);
        if (sent !== undefined) {
          this.pings.delete(body.value.nonce);
          this.host.registry.pong(nodeId, this.id, performance.now() - sent);
        }
        return;
      }
      case 'probe': {
        const { probeId, payload, echoBytes } = body.value;
        if (echoBytes > MAX_PROBE_ECHO_BYTES) throw new InvalidArgumentError('probe.echo_bytes', `at most ${MAX_PROBE_ECHO_BYTES}`);
        this.send({
          body: { $case: 'probeEcho', value: { probeId, payload: Buffer.alloc(echoBytes), receivedBytes: String(payload.length) } },
        });
        return;
      }
      case 'leave':
        this.host.registry.leave(nodeId, this.id, body.value.reason);
        this.left = true;
        return;
      default:
        // An empty body, or a case from a newer proto that another component handles.
        this.host.unhandled(nodeId, message);
    }
  }

  /**
   * Samples are stamped with the agent's time (when the readings were taken) unless its clock
   * is off by more than the allowed skew; then the arrival time is the better guess.
   */
  private sampleTime(agentMs: number, receivedAtMs: number): number {
    if (Math.abs(agentMs - receivedAtMs) <= this.host.maxClockSkewMs) return agentMs;
    if (!this.clockWarned) {
      this.clockWarned = true;
      this.host.log('warn', 'node:clock-skew', { nodeId: this.nodeId, skewMs: agentMs - receivedAtMs });
    }
    return receivedAtMs;
  }
}

/** Numeric MEASURED readings become samples; declared and unknown values are not history. */
export function toSamples(readings: readonly ResourceReading[], t: number): MeshSample[] {
  const out: MeshSample[] = [];
  for (const r of readings) {
    if (r.source !== ReadingSource.READING_SOURCE_MEASURED) continue;
    if (r.unit === '' && r.text !== '') continue;
    out.push({ metric: r.name, t, value: r.value });
  }
  return out;
}
