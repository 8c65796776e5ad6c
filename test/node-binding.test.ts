import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createChannel, createClient, Metadata, Status, type Channel } from 'nice-grpc';
import { afterEach, describe, expect, it } from 'vitest';
import { AsyncQueue } from '../common/async-queue.js';
import { AgentRegistration, NodeEventKind, NodeServiceDefinition, type ConnectRequest, type ConnectResponse, type NodeInfo } from '../common/gen/retrace/v1/node.js';
import { meshExtension } from '../coordinator/mesh/mesh-extension.js';
import { createNodeRecordStore, type NodeRecord } from '../coordinator/mesh/node-record-store.js';
import { openDatabase } from '../coordinator/store/database.js';
import { InsufficientStorageError } from '../common/errors.js';
import type { ExtensionFactory } from '../coordinator/coordinator.js';
import { addToken, revokeToken } from '../coordinator/token-file.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * A node id is bound to the agent token that first registered it, whether the node is online or
 * offline: another agent token is refused (PERMISSION_DENIED naming register.node_id) until the
 * bound name is revoked. The owner and admin tokens connect as any node and move no binding.
 * Operators see the binding's name in NodeInfo.bound_token (and so in `retrace nodes show`).
 * Real coordinators on 127.0.0.1:0 over LevelDB in temp dirs, real Connect streams.
 */

const dirs: string[] = [];
const running: TestCoordinator[] = [];
const channels: Channel[] = [];

afterEach(async () => {
  for (const c of channels.splice(0)) c.close();
  for (const tc of running.splice(0)) await tc.stop({ keepData: true });
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'retrace-binding-'));
  dirs.push(dir);
  return dir;
}

async function start(dataDir: string, logs: string[] = []): Promise<TestCoordinator> {
  const tc = await startTestCoordinator({ dataDir, extensions: [meshExtension()], coordinatorOptions: { log: (l) => logs.push(l) } });
  running.push(tc);
  return tc;
}

async function stop(tc: TestCoordinator): Promise<void> {
  running.splice(running.indexOf(tc), 1);
  await tc.stop({ keepData: true });
}

/**
 * Registers `nodeId` on a Connect stream opened with `token`, then (when registered) half-closes
 * it and waits for the coordinator to end it, so the node is offline again. Resolves with the
 * first message, or the error the stream failed with.
 */
async function connectOnce(tc: TestCoordinator, token: string, nodeId: string, host = 'h'): Promise<ConnectResponse | { code: Status; details: string }> {
  const channel = createChannel(tc.grpcAddress);
  channels.push(channel);
  const client = createClient(NodeServiceDefinition, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${token}` }) } });
  const requests = new AsyncQueue<ConnectRequest>(16);
  requests.push({ body: { $case: 'register', value: AgentRegistration.fromPartial({ nodeId, host }) } });
  const stream = client.connect(requests)[Symbol.asyncIterator]();
  try {
    const first = await stream.next();
    requests.close();
    for (let next = await stream.next(); !next.done; next = await stream.next()) {
      // Pings and the like until the coordinator ends the stream.
    }
    return first.value as ConnectResponse;
  } catch (err) {
    requests.close();
    return err as { code: Status; details: string };
  }
}

const registered = (rejoined: boolean) => ({ body: { $case: 'registered', value: { rejoined } } });
const refused = (nodeId: string, boundTo: string, caller: string) => ({
  code: Status.PERMISSION_DENIED,
  details: expect.stringContaining(`register.node_id: node "${nodeId}" is bound to token "${boundTo}"; token "${caller}" may not register it`),
});

async function nodeOf(tc: TestCoordinator, nodeId: string) {
  return (await tc.client(NodeServiceDefinition).getNode({ nodeId })).node;
}

describe('node ids bound to agent tokens', () => {
  it('refuses another agent token an offline node bound to a token that exists, changing nothing; the bound token reconnects', async () => {
    const dir = tempDir();
    const logs: string[] = [];
    const tc = await start(dir, logs);
    const a = addToken(dir, 'host-a', 'agent').token;
    const b = addToken(dir, 'host-b', 'agent').token;
    expect(await connectOnce(tc, a, 'n1', 'real-host')).toMatchObject(registered(false));
    // What an operator sees of the binding: the log line and NodeInfo.bound_token.
    expect(logs.filter((l) => l.includes('node:registered'))).toEqual([expect.stringMatching(/"nodeId":"n1".*"token":"host-a"/)]);
    const before = await nodeOf(tc, 'n1');
    expect(before).toMatchObject({ connected: false, boundToken: 'host-a' });
    expect(await connectOnce(tc, b, 'n1', 'impostor')).toMatchObject(refused('n1', 'host-a', 'host-b'));
    expect(await nodeOf(tc, 'n1')).toEqual(before);
    expect(await connectOnce(tc, a, 'n1', 'real-host')).toMatchObject(registered(true));
  }, 15_000);

  it('keeps the binding across a coordinator restart on the same data dir', async () => {
    const dir = tempDir();
    let tc = await start(dir);
    const a = addToken(dir, 'host-a', 'agent').token;
    const b = addToken(dir, 'host-b', 'agent').token;
    expect(await connectOnce(tc, a, 'n2')).toMatchObject(registered(false));
    await stop(tc);
    tc = await start(dir);
    expect(await connectOnce(tc, b, 'n2')).toMatchObject(refused('n2', 'host-a', 'host-b'));
    expect(await connectOnce(tc, a, 'n2')).toMatchObject(registered(true));
  }, 15_000);

  it('lets another agent token claim a node once its token is revoked, logs the move, and binds the node to the new token', async () => {
    const dir = tempDir();
    const logs: string[] = [];
    const tc = await start(dir, logs);
    const a = addToken(dir, 'host-a', 'agent').token;
    const b = addToken(dir, 'host-b', 'agent').token;
    expect(await connectOnce(tc, a, 'n3')).toMatchObject(registered(false));
    // At once after the revoke, not after the token file's next poll.
    revokeToken(dir, 'host-a');
    expect(await connectOnce(tc, b, 'n3')).toMatchObject(registered(true));
    expect(logs.filter((l) => l.includes('node:token-rebound'))).toEqual([expect.stringMatching(/"nodeId":"n3","from":"host-a","to":"host-b"/)]);
    expect((await nodeOf(tc, 'n3'))?.boundToken).toBe('host-b');
    // A new token under the old name is not the old binding back: the node is host-b's now.
    const a2 = addToken(dir, 'host-a', 'agent').token;
    expect(await connectOnce(tc, a2, 'n3')).toMatchObject(refused('n3', 'host-b', 'host-a'));
  }, 15_000);

  it("lets another agent token claim a node at once after the revoke while the revoked token's session is still open", async () => {
    const dir = tempDir();
    const tc = await start(dir);
    const a = addToken(dir, 'host-a', 'agent').token;
    const b = addToken(dir, 'host-b', 'agent').token;
    // host-a's agent stays connected: its stream is open when the operator revokes the token.
    const channel = createChannel(tc.grpcAddress);
    channels.push(channel);
    const client = createClient(NodeServiceDefinition, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${a}` }) } });
    const requests = new AsyncQueue<ConnectRequest>(16);
    requests.push({ body: { $case: 'register', value: AgentRegistration.fromPartial({ nodeId: 'n9', host: 'h' }) } });
    const live = client.connect(requests)[Symbol.asyncIterator]();
    expect((await live.next()).value).toMatchObject(registered(false));
    const liveEnd = (async () => {
      try {
        while (!(await live.next()).done) {
          // Pings until the coordinator ends the stream.
        }
        return undefined;
      } catch (err) {
        return err as { code: Status };
      }
    })();
    // At once after the revoke (before the token file's next poll): the new token's agent is
    // the legitimate one; the revoked session must not be taken for a live owner of the node.
    revokeToken(dir, 'host-a');
    expect(await connectOnce(tc, b, 'n9')).toMatchObject(registered(true));
    expect(await liveEnd).toMatchObject({ code: Status.UNAUTHENTICATED });
    requests.close();
    expect((await nodeOf(tc, 'n9'))?.boundToken).toBe('host-b');
  }, 15_000);

  it('lets the owner and admin tokens connect as a bound node without moving the binding', async () => {
    const dir = tempDir();
    const tc = await start(dir);
    const a = addToken(dir, 'host-a', 'agent').token;
    const b = addToken(dir, 'host-b', 'agent').token;
    const ops = addToken(dir, 'ops', 'admin').token;
    expect(await connectOnce(tc, a, 'n4')).toMatchObject(registered(false));
    expect(await connectOnce(tc, tc.token, 'n4')).toMatchObject(registered(true));
    expect(await connectOnce(tc, ops, 'n4')).toMatchObject(registered(true));
    expect(await connectOnce(tc, b, 'n4')).toMatchObject(refused('n4', 'host-a', 'host-b'));
    // A node first registered by the owner token stays unbound: the first agent token binds it.
    expect(await connectOnce(tc, tc.token, 'n5')).toMatchObject(registered(false));
    expect(await connectOnce(tc, tc.token, 'n5')).toMatchObject(registered(true));
    expect(await connectOnce(tc, b, 'n5')).toMatchObject(registered(true));
    expect(await connectOnce(tc, a, 'n5')).toMatchObject(refused('n5', 'host-b', 'host-a'));
  }, 15_000);

  it('shows the bound token name in GetNode, ListNodes, WatchNodes, DrainNode and `retrace nodes show`; an unbound node shows empty', async () => {
    const dir = tempDir();
    const tc = await start(dir);
    const a = addToken(dir, 'host-a', 'agent').token;
    expect(await connectOnce(tc, a, 'n7')).toMatchObject(registered(false));
    // Registered only by the owner token: unbound.
    expect(await connectOnce(tc, tc.token, 'n8')).toMatchObject(registered(false));
    const client = tc.client(NodeServiceDefinition);
    expect((await nodeOf(tc, 'n7'))?.boundToken).toBe('host-a');
    expect((await nodeOf(tc, 'n8'))?.boundToken).toBe('');
    const listed = (await client.listNodes({})).nodes.map((n) => [n.nodeId, n.boundToken]);
    expect(listed).toEqual([['n7', 'host-a'], ['n8', '']]);
    const abort = new AbortController();
    const watched: NodeInfo[] = [];
    try {
      for await (const e of client.watchNodes({ nodeId: '', includeReports: false }, { signal: abort.signal })) {
        if (e.kind === NodeEventKind.NODE_EVENT_KIND_SYNCED) break;
        if (e.node) watched.push(e.node);
      }
    } finally {
      abort.abort();
    }
    expect(watched.map((n) => [n.nodeId, n.boundToken])).toEqual([['n7', 'host-a'], ['n8', '']]);
    expect((await client.drainNode({ nodeId: 'n7', reason: 'test' })).node?.boundToken).toBe('host-a');
    // The CLI prints NodeInfo as protobuf JSON with every field, so an unbound node says "".
    const conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    const shown = await runCli(['nodes', 'show', 'n7', ...conn]);
    expect(shown).toMatchObject({ code: 0, err: '' });
    expect(JSON.parse(shown.out)).toMatchObject({ nodeId: 'n7', boundToken: 'host-a' });
    expect(shown.out).not.toContain(a);
    expect(JSON.parse((await runCli(['nodes', 'show', 'n8', ...conn])).out)).toMatchObject({ nodeId: 'n8', boundToken: '' });
  }, 15_000);

  it('binds a node stored without a binding (an older coordinator) on its first named connect, durably', async () => {
    const dir = tempDir();
    const old: NodeRecord = {
      nodeId: 'old-1',
      host: 'old-host',
      labels: {},
      capabilities: [],
      codeVersions: [],
      agentVersion: '0.0.9',
      state: 'READY',
      drainReason: '',
      reportIntervalMs: 2000,
      firstSeenMs: 1_700_000_000_000,
      registeredMs: 1_700_000_000_000,
      lastReportMs: 0,
      transitions: [{ from: null, to: 'READY', reason: 'registered', atMs: 1_700_000_000_000 }],
    };
    let db = await openDatabase(join(dir, 'db'));
    await createNodeRecordStore(db).put(old);
    await db.close();
    const tc = await start(dir);
    const a = addToken(dir, 'host-a', 'agent').token;
    const b = addToken(dir, 'host-b', 'agent').token;
    expect((await nodeOf(tc, 'old-1'))?.boundToken).toBe('');
    expect(await connectOnce(tc, a, 'old-1', 'old-host')).toMatchObject(registered(true));
    expect((await nodeOf(tc, 'old-1'))?.boundToken).toBe('host-a');
    expect(await connectOnce(tc, b, 'old-1')).toMatchObject(refused('old-1', 'host-a', 'host-b'));
    await stop(tc);
    db = await openDatabase(join(dir, 'db'));
    const stored = await createNodeRecordStore(db).all();
    await db.close();
    expect(stored.find((r) => r.nodeId === 'old-1')?.boundToken).toBe('host-a');
  }, 15_000);

  it('lets only one of two agent tokens registering a new node id at once win it, for good', async () => {
    const dir = tempDir();
    const tc = await start(dir);
    const tokens = { 'host-a': addToken(dir, 'host-a', 'agent').token, 'host-b': addToken(dir, 'host-b', 'agent').token };
    const answers = await Promise.all(Object.values(tokens).map((t) => connectOnce(tc, t, 'n6')));
    const winners = answers.map((r, i) => ('body' in r && r.body?.$case === 'registered' ? i : -1)).filter((i) => i >= 0);
    expect(winners).toHaveLength(1);
    const [winner, loser] = winners[0] === 0 ? (['host-a', 'host-b'] as const) : (['host-b', 'host-a'] as const);
    expect(answers[winners[0] === 0 ? 1 : 0]).toMatchObject({ code: Status.PERMISSION_DENIED, details: expect.stringContaining('register.node_id') });
    // Offline now: the loser is still refused, the winner still welcome.
    expect(await connectOnce(tc, tokens[loser], 'n6')).toMatchObject(refused('n6', winner, loser));
    expect(await connectOnce(tc, tokens[winner], 'n6')).toMatchObject(registered(true));
  }, 15_000);
  it('keeps no binding whose write was refused (a full data dir): the connect fails naming the node, and another agent token may take the id', async () => {
    const dir = tempDir();
    // Refuses node-record writes while armed, as the storage guard refuses writes to a full disk.
    let refuse = false;
    const failingNodeWrites: ExtensionFactory = (ctx) => {
      const db = ctx.db as unknown as { put: (key: unknown, ...rest: unknown[]) => Promise<void> };
      const put = db.put.bind(db);
      db.put = async (key, ...rest) => {
        if (refuse && String(key).includes('mesh-nodes')) throw new InsufficientStorageError(join(dir, 'db'));
        return put(key, ...rest);
      };
      return { name: 'failing-node-writes' };
    };
    const tc = await startTestCoordinator({ dataDir: dir, extensions: [failingNodeWrites, meshExtension()] });
    running.push(tc);
    const a = addToken(dir, 'host-a', 'agent').token;
    const b = addToken(dir, 'host-b', 'agent').token;
    const c = addToken(dir, 'host-c', 'agent').token;
    // A new node id, then one stored unbound (registered with the owner token).
    expect(await connectOnce(tc, tc.token, 'old')).toMatchObject(registered(false));
    refuse = true;
    for (const nodeId of ['fresh', 'old']) {
      expect(await connectOnce(tc, a, nodeId)).toMatchObject({
        code: Status.RESOURCE_EXHAUSTED,
        details: expect.stringMatching(new RegExp(`node "${nodeId}".*not stored.*out of space`)),
      });
      expect((await nodeOf(tc, nodeId))?.boundToken ?? '').toBe('');
    }
    refuse = false;
    // The refused token bound nothing: another agent token takes both ids, durably.
    expect(await connectOnce(tc, b, 'fresh')).toMatchObject(registered(true));
    expect(await connectOnce(tc, b, 'old')).toMatchObject(registered(true));
    expect((await nodeOf(tc, 'fresh'))?.boundToken).toBe('host-b');
    expect(await connectOnce(tc, c, 'old')).toMatchObject(refused('old', 'host-b', 'host-c'));
  }, 15_000);
});
