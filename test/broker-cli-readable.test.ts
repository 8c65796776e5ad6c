import { afterEach, describe, expect, it } from 'vitest';
import { ReadingSource, type ConnectRequest, type ResourceReading } from '../common/gen/retrace/v1/node.js';
import { runCli } from './helpers/in-process-cli.js';
import { rawConnect, registerRequest, startMeshServer, waitFor, type MeshServer } from './helpers/mesh-server.js';

const GIB = 1024 ** 3;
const measured = (name: string, value: number, unit: string): ResourceReading => ({ name, value, text: '', unit, source: ReadingSource.READING_SOURCE_MEASURED });

function registerWithMemory(nodeId: string): ConnectRequest {
  const r = registerRequest(nodeId, '1000000000');
  if (r.body?.$case === 'register') r.body.value.capabilities = [measured('memory.total', 16 * GIB, 'bytes')];
  return r;
}

describe('retrace nodes history / forecast / drain / --watch, as a person reads them', () => {
  let server: MeshServer | undefined;
  afterEach(async () => {
    await server?.stop();
    server = undefined;
  });

  it('history and forecast of memory print sizes with units, not raw bytes with decimals', async () => {
    server = await startMeshServer();
    const s = server;
    const { out } = rawConnect(s);
    out.push(registerWithMemory('mem-h'));
    const t0 = Date.now() - 10_000;
    for (let i = 0; i < 6; i++) {
      out.push({ body: { $case: 'report', value: { timeNs: `${t0 + i * 1000}000000`, readings: [measured('memory.used', 1.5 * GIB + i * 1024 * 1024, 'bytes'), measured('cpu.load', 12.345678, 'percent')], seq: String(i + 1) } } });
    }
    await waitFor(async () => (await s.history.count('mem-h', 'memory.used')) === 6, 5000, '6 samples');
    const conn = ['--coordinator', s.address, '--token', s.token];
    const hist = await runCli(['nodes', 'history', 'mem-h', '--metric', 'memory', '--since', '1m', ...conn]);
    expect(hist.code).toBe(0);
    // Was "…Z  1610612736": bytes, no unit.
    expect(hist.out.split('\n')[1]).toMatch(/Z {2}1\.5 GiB$/);
    const cpu = await runCli(['nodes', 'history', 'mem-h', '--metric', 'cpu', '--since', '1m', ...conn]);
    expect(cpu.out.split('\n')[1]).toMatch(/Z {2}12\.3%$/);
    const f = await runCli(['forecast', 'mem-h', '--metric', 'memory', '--horizon', '3s', '--step', '1s', ...conn]);
    expect(f.err).toBe('');
    expect(f.code).toBe(0);
    // Was "capacity 17179869184" and "1615855616.000  [1615855616.000, …] free 15563014144.000 …".
    expect(f.out).toContain('capacity 16.0 GiB');
    expect(f.out.split('\n')[1]).toMatch(/Z {2}1\.5 GiB {2}\[1\.\d GiB, 1\.\d GiB\] {2}free 14\.5 GiB \[14\.\d GiB, 14\.\d GiB\] reserved 0 B$/);
    out.close();
  });

  it('--watch shows a node whose stream ended as disconnected at once, as `retrace nodes` does', async () => {
    // Missed-report timers far off, so only the stream's end can change what is shown.
    server = await startMeshServer({ mesh: { suspectAfterIntervals: 50, lostAfterIntervals: 60 } });
    const s = server;
    const keep = rawConnect(s);
    keep.out.push(registerRequest('stays', '1000000000'));
    const gone = rawConnect(s);
    gone.out.push(registerRequest('killed', '1000000000'));
    await waitFor(() => s.mesh.nodes().length === 2, 5000, 'two nodes');
    const conn = ['--coordinator', s.address, '--token', s.token];
    const abort = new AbortController();
    const watching = runCli(['nodes', '--watch', ...conn], abort.signal);
    await new Promise((r) => setTimeout(r, 700));
    // The agent dies: its stream ends without a leave.
    gone.out.fail(new Error('killed'));
    await waitFor(() => s.mesh.nodes().find((n) => n.nodeId === 'killed')?.connected === false, 5000, 'disconnected');
    expect((await runCli(['nodes', ...conn])).out).toMatch(/killed\s+h\s+READY \(disconnected\)/);
    await new Promise((r) => setTimeout(r, 1200));
    abort.abort();
    const w = await watching;
    const frames = w.out.split('\n\n').filter((f) => f.includes('killed'));
    expect(frames.at(-1)).toMatch(/killed\s+h\s+READY \(disconnected\)/);
    keep.out.close();
  });

  it('draining a SUSPECT node says the drain is pending, not "SUSPECT (drained by operator)"', async () => {
    server = await startMeshServer({ mesh: { suspectAfterIntervals: 2, lostAfterIntervals: 100 } });
    const s = server;
    const { out } = rawConnect(s);
    out.push(registerRequest('quiet', '100000000'));
    await waitFor(() => s.mesh.nodes().find((n) => n.nodeId === 'quiet')?.state === 2 /* SUSPECT */, 5000, 'SUSPECT');
    const res = await runCli(['nodes', 'drain', 'quiet', ...['--coordinator', s.address, '--token', s.token]]);
    expect(res.code).toBe(0);
    expect(res.out).toBe('quiet: SUSPECT, drain pending (drained by operator): it becomes DRAINING when it reports again\n');
    out.close();
  });
});

describe('retrace nodes --watch --json with filters', () => {
  let server: MeshServer | undefined;
  afterEach(async () => {
    await server?.stop();
    server = undefined;
  });

  it('prints only the events of nodes matching --label (it printed every node)', async () => {
    server = await startMeshServer();
    const s = server;
    const a = rawConnect(s);
    const ra = registerRequest('in-a', '1000000000');
    if (ra.body?.$case === 'register') ra.body.value.labels = { zone: 'a' };
    a.out.push(ra);
    const b = rawConnect(s);
    const rb = registerRequest('in-b', '1000000000');
    if (rb.body?.$case === 'register') rb.body.value.labels = { zone: 'b' };
    b.out.push(rb);
    await waitFor(() => s.mesh.nodes().length === 2, 5000, 'two nodes');
    const abort = new AbortController();
    const watching = runCli(['nodes', '--watch', '--json', '--label', 'zone=a', '--coordinator', s.address, '--token', s.token], abort.signal);
    await new Promise((r) => setTimeout(r, 500));
    const drained = await runCli(['nodes', 'drain', 'in-b', '--coordinator', s.address, '--token', s.token]);
    expect(drained.code).toBe(0);
    await new Promise((r) => setTimeout(r, 300));
    abort.abort();
    const w = await watching;
    const events = w.out.trim().split('\n').map((l) => JSON.parse(l) as { kind: string; node?: { nodeId: string } });
    expect(events.map((e) => e.kind)).toContain('NODE_EVENT_KIND_SYNCED');
    expect(events.filter((e) => e.node).map((e) => e.node?.nodeId)).toEqual(['in-a']);
    a.out.close();
    b.out.close();
  });
});

describe('retrace nodes history / forecast errors', () => {
  let server: MeshServer | undefined;
  afterEach(async () => {
    await server?.stop();
    server = undefined;
  });

  it('an unknown metric is "not found (it has: …)", and an unwritable --plot names the flag', async () => {
    server = await startMeshServer();
    const s = server;
    const { out } = rawConnect(s);
    out.push(registerRequest('err-h', '1000000000'));
    const t0 = Date.now() - 10_000;
    for (let i = 0; i < 5; i++) out.push({ body: { $case: 'report', value: { timeNs: `${t0 + i * 1000}000000`, readings: [measured('cpu.load', 10 + i, 'percent')], seq: String(i + 1) } } });
    await waitFor(async () => (await s.history.count('err-h', 'cpu.load')) === 5, 5000, '5 samples');
    const conn = ['--coordinator', s.address, '--token', s.token];
    const bad = await runCli(['nodes', 'history', 'err-h', '--metric', 'bogus', ...conn]);
    expect(bad.code).toBe(1);
    // Was 'metric "bogus" of node err-h (it has: cpu.load) not found'.
    expect(bad.err).toBe('error: metric: metric "bogus" of node err-h not found (it has: cpu.load)\n');
    const plot = await runCli(['forecast', 'err-h', '--metric', 'cpu', '--horizon', '3s', '--step', '1s', '--plot', '/nonexistent-dir/x.svg', ...conn]);
    expect(plot.code).toBe(1);
    expect(plot.err).toBe('error: --plot: /nonexistent-dir/x.svg: no such directory\n');
    out.close();
  });
});

describe('retrace nodes --watch when the coordinator stops', () => {
  it('exits 1 saying the coordinator ended the watch (it exited 0 in silence)', async () => {
    const s = await startMeshServer();
    // Once, so the watch below connects at once (the first command loads the CLI's modules).
    expect((await runCli(['nodes', '--coordinator', s.address, '--token', s.token])).code).toBe(0);
    const abort = new AbortController();
    const watching = runCli(['nodes', '--watch', '--coordinator', s.address, '--token', s.token], abort.signal);
    await new Promise((r) => setTimeout(r, 800));
    await s.stop();
    const w = await watching;
    expect(w.code).toBe(1);
    expect(w.err).toBe('error: the coordinator ended the watch (it stopped or restarted); the table above is its last state\n');
  });
});
