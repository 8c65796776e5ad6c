import { Status, type Client, type CompatServiceDefinition } from 'nice-grpc';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AsyncQueue } from '../common/async-queue.js';
import { Direction, LineageServiceDefinition, NodeKind, type TraceSessionRequest } from '../common/gen/retrace/v1/lineage.js';
import { AgentRegistration, NodeServiceDefinition, type ConnectRequest } from '../common/gen/retrace/v1/node.js';
import { meshExtension } from '../coordinator/mesh/mesh-extension.js';
import { addToken, revokeToken } from '../coordinator/token-file.js';
import { processHarness } from './helpers/process-harness.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * Revoking a named token ends the calls it opened before (streams), not only the calls made
 * after: an agent's Connect session, a TraceSession, a WatchNodes. The owner token's streams
 * are not touched.
 */

let tc: TestCoordinator;
/** Client channels, closed after all. */
const clients = processHarness();

function as<S extends CompatServiceDefinition>(token: string, definition: S): Client<S> {
  return clients.client(tc.grpcAddress, token, definition);
}

/** How an open stream ended: 'open' while it has not within `ms`. */
async function endOf(stream: AsyncIterable<unknown>, ms: number): Promise<unknown> {
  const ended = (async () => {
    try {
      for await (const _ of stream) {
        // Messages are not what this waits for.
      }
      return 'done';
    } catch (err) {
      return err;
    }
  })();
  return Promise.race([ended, new Promise((resolve) => setTimeout(() => resolve('open'), ms))]);
}

const traceRequest = (requestId: number): TraceSessionRequest => ({
  requestId,
  trace: { start: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'x', contentHash: `sha256:${'0'.repeat(64)}` }, direction: Direction.DIRECTION_DOWNSTREAM } as TraceSessionRequest['trace'],
});

beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true, extensions: [meshExtension()] });
});

afterAll(async () => {
  await clients.cleanup();
  await tc.stop();
});

describe('token revocation', () => {
  it('ends a TraceSession and a WatchNodes opened with a client token, with UNAUTHENTICATED naming it; the owner\'s watch stays open', async () => {
    const { token } = addToken(tc.dataDir, 'analyst', 'client');
    const requests = new AsyncQueue<TraceSessionRequest>(16);
    const session = as(token, LineageServiceDefinition).traceSession(requests)[Symbol.asyncIterator]();
    requests.push(traceRequest(1));
    expect((await session.next()).done).toBe(false);
    const watch = as(token, NodeServiceDefinition).watchNodes({});
    const ownerWatch = as(tc.token, NodeServiceDefinition).watchNodes({});
    const watchEnd = endOf(watch, 5000);
    const ownerEnd = endOf(ownerWatch, 1500);
    // Let both watches reach the server before the revoke.
    await new Promise((resolve) => setTimeout(resolve, 200));
    revokeToken(tc.dataDir, 'analyst');
    const revoked = { code: Status.UNAUTHENTICATED, details: expect.stringMatching(/token "analyst" \(role client\) was revoked while this call was open/) };
    expect(await watchEnd).toMatchObject(revoked);
    requests.push(traceRequest(2));
    await expect(session.next()).rejects.toMatchObject(revoked);
    expect(await ownerEnd).toBe('open');
    requests.close();
  }, 15_000);

  it("an agent token may not take over a node connected with another token (PERMISSION_DENIED naming register.node_id); its own token and the owner's may", async () => {
    const a = addToken(tc.dataDir, 'host-a', 'agent').token;
    const b = addToken(tc.dataDir, 'host-b', 'agent').token;
    const connect = async (token: string, nodeId = 'gpu-node-1') => {
      const requests = new AsyncQueue<ConnectRequest>(16);
      requests.push({ body: { $case: 'register', value: AgentRegistration.fromPartial({ nodeId, host: token.slice(0, 6) }) } });
      const stream = as(token, NodeServiceDefinition).connect(requests)[Symbol.asyncIterator]();
      const first = await stream.next().catch((err: unknown) => err);
      return { first, end: () => endOf({ [Symbol.asyncIterator]: () => stream }, 1000), requests };
    };
    const real = await connect(a);
    expect(real.first).toMatchObject({ value: { body: { $case: 'registered' } } });
    const impostor = await connect(b);
    // The node is bound to host-a as well (test/node-binding.test.ts), which the answer says first.
    expect(impostor.first).toMatchObject({ code: Status.PERMISSION_DENIED, details: expect.stringMatching(/^register\.node_id: node "gpu-node-1" is bound to token "host-a"; token "host-b" may not register it/) });
    const nodes = await as(tc.token, NodeServiceDefinition).listNodes({});
    expect(nodes.nodes.find((n) => n.nodeId === 'gpu-node-1')?.host).toBe(a.slice(0, 6));
    // The same token (an agent restarted before its old connection timed out) still supersedes.
    const realEnd = real.end();
    const restarted = await connect(a);
    expect(restarted.first).toMatchObject({ value: { body: { $case: 'registered' } } });
    expect(await realEnd).toBe('done');
    const byOwner = await connect(tc.token);
    expect(byOwner.first).toMatchObject({ value: { body: { $case: 'registered' } } });
    // A node connected with the owner token is bound to no agent token, but is live: not taken over either.
    const ownerNode = await connect(tc.token, 'gpu-node-2');
    expect(ownerNode.first).toMatchObject({ value: { body: { $case: 'registered' } } });
    const takeover = await connect(b, 'gpu-node-2');
    expect(takeover.first).toMatchObject({ code: Status.PERMISSION_DENIED, details: expect.stringMatching(/^register\.node_id: node "gpu-node-2" is connected with another token; token "host-b" may not take it over/) });
    for (const c of [real, impostor, restarted, byOwner, ownerNode, takeover]) c.requests.close();
  }, 15_000);

  it('many calls open at once with one token are not taken for a listener leak', async () => {
    const { token } = addToken(tc.dataDir, 'busy', 'client');
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      const watches = Array.from({ length: 12 }, () => as(token, NodeServiceDefinition).watchNodes({}));
      const ends = watches.map((w) => endOf(w, 5000));
      await new Promise((resolve) => setTimeout(resolve, 300));
      revokeToken(tc.dataDir, 'busy');
      for (const end of ends) expect(await end).toMatchObject({ code: Status.UNAUTHENTICATED });
      expect(warnings.map((w) => w.message)).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  }, 15_000);

  it('refuses a revoked token from its very next call, and takes a new one at once, without waiting for the poll', async () => {
    const { token } = addToken(tc.dataDir, 'auditor', 'client');
    const lineage = as(token, LineageServiceDefinition);
    const traceOf = () => lineage.trace(traceRequest(0).trace as never);
    // A known token reaches the handler: an unknown start node is NOT_FOUND, not UNAUTHENTICATED.
    await expect(traceOf()).rejects.toMatchObject({ code: Status.NOT_FOUND });
    // The registry polls the file every 500 ms: these calls come well before its next look.
    revokeToken(tc.dataDir, 'auditor');
    await expect(traceOf()).rejects.toMatchObject({ code: Status.UNAUTHENTICATED });
    const again = addToken(tc.dataDir, 'auditor', 'client');
    await expect(as(again.token, LineageServiceDefinition).trace(traceRequest(0).trace as never)).rejects.toMatchObject({ code: Status.NOT_FOUND });
  }, 15_000);

  it("ends an agent's Connect session when its agent token is revoked", async () => {
    const { token } = addToken(tc.dataDir, 'host-9', 'agent');
    const requests = new AsyncQueue<ConnectRequest>(16);
    requests.push({ body: { $case: 'register', value: AgentRegistration.fromPartial({ nodeId: 'revoked-node', host: 'h' }) } });
    const stream = as(token, NodeServiceDefinition).connect(requests)[Symbol.asyncIterator]();
    expect((await stream.next()).value).toMatchObject({ body: { $case: 'registered' } });
    const end = endOf({ [Symbol.asyncIterator]: () => stream }, 5000);
    revokeToken(tc.dataDir, 'host-9');
    expect(await end).toMatchObject({ code: Status.UNAUTHENTICATED, details: expect.stringMatching(/token "host-9" \(role agent\) was revoked/) });
    requests.close();
  }, 15_000);
});
