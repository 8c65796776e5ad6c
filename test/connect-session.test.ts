import { describe, expect, it } from 'vitest';
import { AsyncQueue } from '../common/async-queue.js';
import { AgentRegistration, NodeState, type ConnectRequest, type ConnectResponse } from '../common/gen/retrace/v1/node.js';
import { ConnectSession, type SessionHost } from '../coordinator/mesh/connect-session.js';
import type { NodeRegistry } from '../coordinator/mesh/node-registry.js';

describe('ConnectSession', () => {
  it('answers a registration before anything else, even when a ping falls due while the registry is writing it', async () => {
    let finishWrite!: () => void;
    const written = new Promise<void>((resolve) => (finishWrite = resolve));
    const registry = {
      get: () => undefined,
      async register() {
        await written;
        return { node: { record: { reportIntervalMs: 2000, state: NodeState.NODE_STATE_READY, drainReason: '' } }, rejoined: false };
      },
    } as unknown as NodeRegistry;
    const host = {
      registry,
      emitter: { emit: () => true },
      log: () => {},
      now: () => Date.now(),
      bounds: { defaultReportIntervalMs: 2000, minReportIntervalMs: 50, maxReportIntervalMs: 60_000 },
      maxClockSkewMs: 5000,
      sessions: new Map(),
      hasTokenNamed: () => true,
      append: async () => {},
      unhandled: () => {},
    } as unknown as SessionHost;
    const session = new ConnectSession(host);
    const requests = new AsyncQueue<ConnectRequest>(16);
    requests.push({ body: { $case: 'register', value: AgentRegistration.fromPartial({ nodeId: 'n1', host: 'h' }) } });
    const controller = new AbortController();
    const reading = session.read(requests, controller.signal);
    // The mesh's sweep comes by while the registration is being stored.
    await new Promise((r) => setTimeout(r, 20));
    expect(session.nodeId).toBe('n1');
    session.maybePing(Date.now(), 0);
    finishWrite();
    await new Promise((r) => setTimeout(r, 20));
    session.maybePing(Date.now() + 1, 0);
    const sent: ConnectResponse[] = [];
    session.end('test over');
    for await (const m of session.out) sent.push(m);
    expect(sent.map((m) => m.body?.$case)).toEqual(['registered', 'ping']);
    requests.close();
    controller.abort();
    await reading.catch(() => {});
  });
});
