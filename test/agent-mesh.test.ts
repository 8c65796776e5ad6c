import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClientError, Status } from 'nice-grpc';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeEventKind, NodeState, ReadingSource, type WatchNodesResponse } from '../common/gen/retrace/v1/node.js';
import { spawnAgent, startMeshServer, waitFor, type AgentProcess, type MeshServer } from './helpers/mesh-server.js';

// Real agent processes against the mesh behind the coordinator's gRPC server. Short intervals
// (200 ms reports: SUSPECT after 5 silent intervals = 1 s, LOST after 12 = 2.4 s) keep the suite
// quick while leaving a loaded CI machine some slack before a live agent looks suspect.
describe('agent ⇄ node mesh (real processes)', () => {
  let server: MeshServer;
  let dirs: string[] = [];
  let agents: AgentProcess[] = [];

  beforeEach(async () => {
    server = await startMeshServer({ mesh: { suspectAfterIntervals: 5, lostAfterIntervals: 12 } });
  });

  afterEach(async () => {
    for (const a of agents) if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGKILL');
    await Promise.all(agents.map((a) => a.exited));
    agents = [];
    await server.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    dirs = [];
  });

  function tempDir(): string {
    const d = mkdtempSync(join(tmpdir(), 'retrace-agent-'));
    dirs.push(d);
    return d;
  }

  function agent(dataDir: string, extra: string[] = []): AgentProcess {
    const a = spawnAgent([
      '--coordinator', server.address,
      '--data', dataDir,
      '--report-interval', '200ms',
      '--link-probe-interval', '1s',
      '--token', server.token,
      ...extra,
    ]);
    agents.push(a);
    return a;
  }

  it('hides a --token value from its command line (ps, /proc/PID/cmdline, a transform reading /proc/self/cmdline) once running', async () => {
    const a = agent(tempDir());
    await a.registered;
    const cmdline = readFileSync(`/proc/${a.child.pid}/cmdline`, 'utf8');
    expect(cmdline).not.toContain(server.token);
    // What an operator still sees.
    expect(cmdline).toContain(`--coordinator ${server.address}`);
    expect(cmdline).toContain('--token ***');
  });

  it('says so when the coordinator grants another report interval than --report-interval asked', async () => {
    const a = spawnAgent(['--coordinator', server.address, '--data', tempDir(), '--report-interval', '5m', '--link-probe-interval', '0', '--token', server.token]);
    agents.push(a);
    await a.registered;
    // Clamped to the mesh's 60 s maximum: the agent only logged the number in agent:registered.
    const warned = await waitFor(() => a.stderr.find((l) => l.includes('agent:report-interval-changed')), 5000, 'the warning');
    expect(JSON.parse(warned)).toMatchObject({ level: 'warn', askedMs: 300_000, grantedMs: 60_000 });
  });

  it('registers, reports into history, measures its link, and keeps declared apart from measured', async () => {
    const a = agent(tempDir(), ['--label', 'zone=eu-1', '--label', 'tier=gpu', '--advertise', 'gpu=2,memory=64GiB']);
    const { nodeId, rejoined } = await a.registered;
    expect(rejoined).toBe(false);
    await waitFor(async () => (await server.history.count(nodeId, 'cpu.load')) >= 3, 15_000, 'three cpu samples');
    const client = server.client();
    const { node } = await client.getNode({ nodeId });
    expect(node?.state).toBe(NodeState.NODE_STATE_READY);
    expect(node?.connected).toBe(true);
    expect(node?.labels).toEqual({ zone: 'eu-1', tier: 'gpu' });
    expect(node?.reportIntervalNs).toBe('200000000');
    const caps = node?.capabilities ?? [];
    const gpuDeclared = caps.find((c) => c.name === 'gpu.count' && c.source === ReadingSource.READING_SOURCE_DECLARED);
    const gpuMeasured = caps.find((c) => c.name === 'gpu.count' && c.source === ReadingSource.READING_SOURCE_MEASURED);
    expect(gpuDeclared?.value).toBe(2);
    expect(gpuMeasured).toBeDefined(); // whatever the host has; never the declared 2 as measured
    expect(caps.filter((c) => c.source === ReadingSource.READING_SOURCE_MEASURED).every((c) => !(c.name === 'memory.total' && c.value === 64 * 2 ** 30))).toBe(true);
    expect(caps.find((c) => c.name === 'memory.total' && c.source === ReadingSource.READING_SOURCE_DECLARED)?.value).toBe(64 * 2 ** 30);
    expect(caps.find((c) => c.name === 'cpu.threads' && c.source === ReadingSource.READING_SOURCE_MEASURED)?.value).toBeGreaterThan(0);
    expect(caps.find((c) => c.name === 'tfjs.backend')?.text).toMatch(/@tensorflow\/tfjs/);
    // Declared values never reach the history (it holds measurements only).
    expect(await server.history.listMetrics(nodeId)).not.toContain('gpu.count');

    // The agent's own link measurement arrives in its reports and in the history.
    await waitFor(async () => (await server.history.count(nodeId, 'net.rtt')) >= 1, 15_000, 'net.rtt sample');
    const hist = await client.getHistory({ nodeId, metric: 'rtt', fromNs: '0', toNs: '0', stepNs: '0' });
    expect(hist.metric).toBe('net.rtt');
    expect(hist.points.length).toBeGreaterThan(0);
    const up = await client.getHistory({ nodeId, metric: 'net.up', fromNs: '0', toNs: '0', stepNs: '0' });
    expect(up.points[0]?.value).toBeGreaterThan(0);
    // And the coordinator lists it with its label.
    const listed = await client.listNodes({ states: [NodeState.NODE_STATE_READY], labels: { zone: 'eu-1' } });
    expect(listed.nodes.map((n) => n.nodeId)).toEqual([nodeId]);
  });

  it('goes SUSPECT then LOST after SIGKILL, and rejoins READY with the same identity', async () => {
    const dataDir = tempDir();
    const first = agent(dataDir);
    const { nodeId } = await first.registered;
    await waitFor(async () => (await server.history.count(nodeId, 'cpu.load')) >= 1, 15_000, 'a report');

    const client = server.client();
    const abort = new AbortController();
    const events: WatchNodesResponse[] = [];
    const watching = (async () => {
      try {
        for await (const e of client.watchNodes({ nodeId, includeReports: false }, { signal: abort.signal })) events.push(e);
      } catch {
        // aborted below
      }
    })();
    await waitFor(() => events.some((e) => e.kind === NodeEventKind.NODE_EVENT_KIND_SYNCED), 5000, 'watch synced');

    first.child.kill('SIGKILL');
    await first.exited;
    // The stream's end is told at once, before the missed reports make the node SUSPECT; this
    // watch asked for no reports.
    await waitFor(() => events.find((e) => e.kind === NodeEventKind.NODE_EVENT_KIND_DISCONNECTED), 5000, 'DISCONNECTED event');
    const disconnected = events.find((e) => e.kind === NodeEventKind.NODE_EVENT_KIND_DISCONNECTED);
    expect(disconnected?.node).toMatchObject({ nodeId, connected: false, state: NodeState.NODE_STATE_READY });
    await waitFor(async () => (await client.getNode({ nodeId })).node?.state === NodeState.NODE_STATE_SUSPECT, 5000, 'SUSPECT');
    await waitFor(async () => (await client.getNode({ nodeId })).node?.state === NodeState.NODE_STATE_LOST, 10_000, 'LOST');
    const changes = events.filter((e) => e.kind === NodeEventKind.NODE_EVENT_KIND_STATE_CHANGED).map((e) => e.transition?.to);
    expect(changes.slice(-2)).toEqual([NodeState.NODE_STATE_SUSPECT, NodeState.NODE_STATE_LOST]);

    const second = agent(dataDir);
    const again = await second.registered;
    expect(again.nodeId).toBe(nodeId);
    expect(again.rejoined).toBe(true);
    await waitFor(async () => (await client.getNode({ nodeId })).node?.state === NodeState.NODE_STATE_READY, 5000, 'READY again');
    await waitFor(() => events.some((e) => e.kind === NodeEventKind.NODE_EVENT_KIND_REGISTERED), 5000, 'REGISTERED event');
    const { node } = await client.getNode({ nodeId });
    expect(node?.transitions.slice(0, 3).map((t) => t.to)).toEqual([NodeState.NODE_STATE_READY, NodeState.NODE_STATE_LOST, NodeState.NODE_STATE_SUSPECT]);

    // The watch ends cleanly when its caller cancels.
    abort.abort();
    await watching;
  });

  it('drains a node (the agent is told) and marks it LEFT on a clean SIGTERM shutdown', async () => {
    const a = agent(tempDir());
    const { nodeId } = await a.registered;
    const client = server.client();
    const drained = await client.drainNode({ nodeId, reason: 'maintenance' });
    expect(drained.node?.state).toBe(NodeState.NODE_STATE_DRAINING);
    expect(drained.node?.drainReason).toBe('maintenance');
    await waitFor(() => a.stderr.some((l) => l.includes('"agent:drain"')), 5000, 'agent told to drain');
    // Draining twice is a no-op.
    expect((await client.drainNode({ nodeId, reason: 'again' })).node?.drainReason).toBe('maintenance');
    // A draining node keeps reporting and stays DRAINING.
    const before = await server.history.count(nodeId, 'cpu.load');
    await waitFor(async () => (await server.history.count(nodeId, 'cpu.load')) > before + 1, 5000, 'reports while draining');
    expect((await client.getNode({ nodeId })).node?.state).toBe(NodeState.NODE_STATE_DRAINING);

    a.child.kill('SIGTERM');
    expect(await a.exited).toBe(0);
    const { node } = await client.getNode({ nodeId });
    expect(node?.state).toBe(NodeState.NODE_STATE_LEFT);
    expect(node?.connected).toBe(false);
    // LEFT nodes cannot be drained.
    await expect(client.drainNode({ nodeId, reason: '' })).rejects.toMatchObject({ code: Status.FAILED_PRECONDITION });
  });

  it('refuses an agent with a wrong token: it exits 1 without registering', async () => {
    const a = spawnAgent(['--coordinator', server.address, '--data', tempDir(), '--token', 'wrong', '--report-interval', '200ms']);
    agents.push(a);
    expect(await a.exited).toBe(1);
    expect(a.stderr.join('\n')).toMatch(/UNAUTHENTICATED|refused/);
    expect(server.mesh.nodes()).toEqual([]);
  });

  it('answers NOT_FOUND for unknown nodes and INVALID_ARGUMENT for bad requests', async () => {
    const client = server.client();
    await expect(client.getNode({ nodeId: 'no-such-node' })).rejects.toMatchObject({ code: Status.NOT_FOUND });
    await expect(client.getNode({ nodeId: '' })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT });
    await expect(client.drainNode({ nodeId: 'no-such-node', reason: '' })).rejects.toMatchObject({ code: Status.NOT_FOUND });
    const err = await client.getHistory({ nodeId: 'no-such-node', metric: 'cpu', fromNs: '0', toNs: '0', stepNs: '0' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClientError);
    expect((err as ClientError).code).toBe(Status.NOT_FOUND);
  });
});
