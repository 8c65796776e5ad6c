import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryLevel } from 'memory-level';
import { Status } from 'nice-grpc';
import { afterEach, describe, expect, it } from 'vitest';
import { createAgentRuntime, type AgentRuntime } from '../agent/agent-runtime.js';
import { backoffDelayMs } from '../agent/backoff.js';
import { createResourceProbe, placementFlags, type ResourceProbe, type SystemInfo } from '../agent/resource-probe.js';
import { InsufficientStorageError } from '../common/errors.js';
import {
  NodeState,
  ReadingSource,
  type ConnectRequest,
  type ResourceReading,
} from '../common/gen/retrace/v1/node.js';
import { effectiveReading, parseAdvertise, resolveMetric } from '../common/node-resources.js';
import { MeshEmitter } from '../coordinator/mesh/mesh-events.js';
import { compileMeshOptions } from '../coordinator/mesh/node-mesh.js';
import { createNodeRecordStore } from '../coordinator/mesh/node-record-store.js';
import { NodeRegistry, type Registration } from '../coordinator/mesh/node-registry.js';
import type { Database } from '../coordinator/store/database.js';
import { rawConnect, registerRequest, startMeshServer, waitFor, type MeshServer } from './helpers/mesh-server.js';
import { runCli } from './helpers/in-process-cli.js';

const measured = (name: string, value: number, unit = 'count'): ResourceReading => ({ name, value, text: '', unit, source: ReadingSource.READING_SOURCE_MEASURED });

function registration(nodeId: string, overrides: Partial<Registration> = {}): Registration {
  return { nodeId, host: 'h1', labels: {}, capabilities: [], codeVersions: [], agentVersion: 't', reportIntervalMs: 100, draining: false, processId: 'p1', payloadCacheBytes: 0, ...overrides };
}

describe('node registry (fake clock)', () => {
  const dbs: Database[] = [];
  afterEach(async () => {
    for (const db of dbs.splice(0)) await db.close();
  });

  async function makeRegistry(db?: Database) {
    const d = db ?? new MemoryLevel<string, Uint8Array>({ valueEncoding: 'view' });
    if (!db) dbs.push(d);
    await d.open();
    let t = 1_000_000;
    const clock = { now: () => t, advance: (ms: number) => (t += ms) };
    const logs: string[] = [];
    const emitter = new MeshEmitter(() => {});
    const transitions: string[] = [];
    emitter.on('node:transition', (e) => transitions.push(`${e.from ?? 'NEW'}>${e.to}`));
    const registry = new NodeRegistry(createNodeRecordStore(d), { suspectAfterIntervals: 3, lostAfterIntervals: 10, maxTransitions: 20 }, emitter, clock.now, (_l, e) => logs.push(e));
    await registry.load();
    return { registry, clock, transitions, logs, db: d, emitter };
  }

  it('moves READY → SUSPECT → LOST on missed reports and back to READY on a report', async () => {
    const { registry, clock, transitions } = await makeRegistry();
    await registry.register(registration('n1'), 1);
    clock.advance(299);
    registry.sweep();
    expect(registry.get('n1')?.record.state).toBe('READY');
    clock.advance(1);
    registry.sweep();
    expect(registry.get('n1')?.record.state).toBe('SUSPECT');
    registry.report('n1', 1, [measured('cpu.load', 5, 'percent')]);
    expect(registry.get('n1')?.record.state).toBe('READY');
    clock.advance(1000);
    registry.sweep();
    expect(registry.get('n1')?.record.state).toBe('LOST');
    expect(transitions).toEqual(['NEW>READY', 'READY>SUSPECT', 'SUSPECT>READY', 'READY>SUSPECT', 'SUSPECT>LOST']);
  });

  it('flags a known node registering from another process (or one that sends no process id) as restarted, not a reconnect of the same one', async () => {
    const { registry, emitter } = await makeRegistry();
    const seen: { rejoined: boolean; restarted: boolean }[] = [];
    emitter.on('node:registered', (e) => seen.push({ rejoined: e.rejoined, restarted: e.restarted }));
    const reg = async (processId: string, session: number) => {
      await registry.register(registration('n1', { processId }), session);
      return registry.get('n1')?.processId;
    };
    expect(await reg('p1', 1)).toBe('p1');
    expect(await reg('p1', 2)).toBe('p1');
    expect(await reg('p2', 3)).toBe('p2');
    expect(await reg('', 4)).toBe('');
    expect(seen).toEqual([
      { rejoined: false, restarted: false },
      { rejoined: true, restarted: false },
      { rejoined: true, restarted: true },
      { rejoined: true, restarted: true },
    ]);
  });

  it('persists records, reloads them, and rejects illegal transitions', async () => {
    const first = await makeRegistry();
    await first.registry.register(registration('n1', { labels: { a: 'b' } }), 1);
    await first.registry.drain('n1', 'maint');
    first.registry.leave('n1', 1, 'bye');
    await first.registry.flush();
    // A LEFT node cannot be drained.
    await expect(first.registry.drain('n1', 'x')).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    // A superseded session cannot report.
    expect(() => first.registry.report('n1', 99, [])).toThrow(/newer connection/);

    const second = await makeRegistry(first.db);
    const n = second.registry.require('n1');
    expect(n.record.state).toBe('LEFT');
    expect(n.record.labels).toEqual({ a: 'b' });
    expect(n.record.transitions.map((t) => t.to)).toEqual(['LEFT', 'DRAINING', 'READY']);
    // A new process rejoins READY (its drain ended with the old process).
    const { rejoined } = await second.registry.register(registration('n1'), 2);
    expect(rejoined).toBe(true);
    expect(second.registry.get('n1')?.record.state).toBe('READY');
    expect(() => second.registry.require('zzz')).toThrow(/not found/);
  });

  it('keeps a drain across a reconnect of the same process', async () => {
    const { registry, clock } = await makeRegistry();
    await registry.register(registration('n1'), 1);
    await registry.drain('n1', 'maint');
    clock.advance(400);
    registry.sweep();
    expect(registry.get('n1')?.record.state).toBe('SUSPECT');
    registry.disconnected('n1', 1, 'blip');
    await registry.register(registration('n1', { draining: true }), 2);
    expect(registry.get('n1')?.record.state).toBe('DRAINING');
    expect(registry.get('n1')?.record.drainReason).toBe('maint');
  });

  it('validates mesh options once', () => {
    expect(() => compileMeshOptions({ suspectAfterIntervals: 5, lostAfterIntervals: 5 })).toThrow(/lostAfterIntervals/);
    expect(() => compileMeshOptions({ sweepIntervalMs: -1 })).toThrow(/sweepIntervalMs/);
    expect(Object.isFrozen(compileMeshOptions())).toBe(true);
  });
});

describe('node resources and probe', () => {
  it('parses --advertise as DECLARED readings', () => {
    const r = parseAdvertise(['gpu=1,memory=64GiB,cpu=8', 'net=10Gbps,gpu.0.model=A100']);
    const by = (n: string) => r.find((x) => x.name === n);
    expect(by('gpu.count')).toMatchObject({ value: 1, source: ReadingSource.READING_SOURCE_DECLARED });
    expect(by('memory.total')?.value).toBe(64 * 2 ** 30);
    expect(by('cpu.threads')?.value).toBe(8);
    expect(by('net.speed')?.value).toBe(1e10);
    expect(by('gpu.0.model')?.text).toBe('A100');
    expect(() => parseAdvertise(['gpu=lots'])).toThrow(/expected a number/);
    expect(() => parseAdvertise(['memory'])).toThrow(/key=value/);
    // One form for every key's error: "--advertise KEY: problem" (it was "--advertise: cpu: ..."
    // for counts and rates but "--advertise.memory: ..." for sizes).
    expect(() => parseAdvertise(['cpu=lots'], '--advertise')).toThrow(/^--advertise cpu: expected a number, got "lots"$/);
    expect(() => parseAdvertise(['memory=lots'], '--advertise')).toThrow(/^--advertise memory: expected a size such as 64GiB or 512MB, got "lots"$/);
    expect(() => parseAdvertise(['net=lots'], '--advertise')).toThrow(/^--advertise net: expected a bit rate such as 10Gbps, got "lots"$/);
    expect(() => parseAdvertise(['Bad Key=1'], '--advertise')).toThrow(/^--advertise bad key: unknown key$/);
    expect(() => parseAdvertise(['memory=lots'])).toThrow(/^advertise\.memory: /);
    expect(resolveMetric('cpu')).toBe('cpu.load');
    expect(() => resolveMetric('CPU LOAD')).toThrow(/metric/);
  });

  it('retrace agent: a bad --advertise value is a usage error in the same form for every key', async () => {
    for (const [value, text] of [
      ['cpu=lots', '--advertise cpu: expected a number'],
      ['memory=lots', '--advertise memory: expected a size'],
      ['net=lots', '--advertise net: expected a bit rate'],
    ] as const) {
      const r = await runCli(['agent', '--coordinator', '127.0.0.1:1', '--data', tmpdir(), '--advertise', value]);
      expect(r.code).toBe(2);
      expect(r.err.split('\n')[0]).toBe(`error: ${text}${text.endsWith('number') ? '' : text.endsWith('size') ? ' such as 64GiB or 512MB' : ' such as 10Gbps'}, got "lots"`);
    }
  });

  it('prefers declared over measured for placement, and keeps both', async () => {
    const si = fakeSystem();
    const probe = createResourceProbe({
      dataDir: '/data/agent',
      system: si,
      probeTfjs: false,
      advertised: parseAdvertise(['gpu=4']),
      runCommand: async () => undefined,
      listDir: async (d) => (d === '/dev' ? ['accel0', 'null'] : d === '/dev/vfio' ? ['vfio', '0'] : []),
    });
    const caps = await probe.capabilities();
    expect(caps.filter((c) => c.name === 'gpu.count').map((c) => [c.value, c.source])).toEqual([
      [1, ReadingSource.READING_SOURCE_MEASURED],
      [4, ReadingSource.READING_SOURCE_DECLARED],
    ]);
    expect(effectiveReading(caps, 'gpu.count')?.value).toBe(4);
    expect(caps.find((c) => c.name === 'cpu.speed')?.source).toBe(ReadingSource.READING_SOURCE_UNKNOWN);
    expect(caps.find((c) => c.name === 'net.speed')?.value).toBe(1e9);
    expect(caps.find((c) => c.name === 'cpu.flags')?.text).toBe('avx,avx2,avx512f,fma,sse4_2');
    expect(caps.find((c) => c.name === 'accel.count')?.value).toBe(2);
    expect(caps.find((c) => c.name === 'disk.free')?.value).toBe(500);
    const sample = await probe.sample();
    expect(sample.find((r) => r.name === 'cpu.load')?.value).toBe(42);
    expect(sample.find((r) => r.name === 'cpu.core.1.load')?.value).toBe(50);
    expect(sample.find((r) => r.name === 'gpu.0.util')?.source).toBe(ReadingSource.READING_SOURCE_UNKNOWN);
    // No rate yet on the first call: absent rather than a made-up 0.
    expect(sample.find((r) => r.name === 'disk.read')).toBeUndefined();
    expect(sample.every((r) => r.source !== ReadingSource.READING_SOURCE_DECLARED)).toBe(true);
    expect(placementFlags('fpu asimd sve')).toEqual(['asimd', 'neon', 'sve']);
  });

  it('jitters backoff deterministically with an injected RNG', () => {
    const policy = { initialMs: 100, maxMs: 1000, multiplier: 2 };
    expect([0, 1, 2, 3, 4, 10].map((a) => backoffDelayMs(a, policy, () => 0))).toEqual([50, 100, 200, 400, 500, 500]);
    expect(backoffDelayMs(2, policy, () => 0.5)).toBe(300);
  });
});

describe('NodeService over gRPC (in-process)', () => {
  let server: MeshServer | undefined;
  const runtimes: AgentRuntime[] = [];
  const dirs: string[] = [];
  afterEach(async () => {
    for (const r of runtimes.splice(0)) await r.stop().catch(() => {});
    await server?.stop();
    server = undefined;
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  const register = (nodeId: string): ConnectRequest => registerRequest(nodeId);
  const report = (readings: ResourceReading[], timeNs = `${Date.now()}000000`): ConnectRequest => ({
    body: { $case: 'report', value: { timeNs, readings, seq: '1' } },
  });

  it('rejects a malformed report with INVALID_ARGUMENT and a report before register with FAILED_PRECONDITION', async () => {
    server = await startMeshServer();
    const a = rawConnect(server);
    a.out.push(register('raw-1'));
    await waitFor(() => a.received.length > 0, 5000, 'ack');
    expect(a.received[0]?.body?.$case).toBe('registered');
    a.out.push(report([{ name: 'cpu.load', value: Number.NaN, text: '', unit: 'percent', source: ReadingSource.READING_SOURCE_MEASURED }]));
    await expect(a.done).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/report\.readings\[0\]\.value/) });

    const b = rawConnect(server);
    b.out.push(report([measured('cpu.load', 1)]));
    await expect(b.done).rejects.toMatchObject({ code: Status.FAILED_PRECONDITION });

    const c = rawConnect(server);
    c.out.push(register('bad id!'));
    await expect(c.done).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/node_id/) });

    const d = rawConnect(server);
    d.out.push(register('raw-2'));
    d.out.push(report([measured('Bad Name', 1)]));
    await expect(d.done).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT });
  });

  it('keeps an agent connected while its readings cannot be stored for a full data dir, and stores them again after', async () => {
    server = await startMeshServer();
    const s = server;
    const append = s.history.append;
    let refused = 0;
    s.history.append = async () => {
      refused++;
      throw new InsufficientStorageError('/data/db');
    };
    const a = rawConnect(s);
    a.out.push(register('full-1'));
    const t0 = Date.now() - 10_000;
    for (let i = 0; i < 3; i++) a.out.push(report([measured('cpu.load', i, 'percent')], `${t0 + i * 1000}000000`));
    await waitFor(() => refused === 3, 5000, 'three refused appends');
    s.history.append = append;
    a.out.push(report([measured('cpu.load', 7, 'percent')], `${t0 + 5000}000000`));
    await waitFor(async () => (await s.history.count('full-1', 'cpu.load')) === 1, 5000, 'the report after stored');
    expect(s.mesh.nodes().find((n) => n.nodeId === 'full-1')?.connected).toBe(true);
    // Said once, not once per report.
    expect(s.logs.filter((l) => l.event === 'history:dropped')).toHaveLength(1);
    a.out.close();
    await a.done;
  });

  it('stores reports, serves history with steps, forecasts, and validates horizons', async () => {
    server = await startMeshServer();
    const a = rawConnect(server);
    const withCores = register('raw-h');
    if (withCores.body?.$case === 'register') withCores.body.value.capabilities = [measured('cpu.cores', 4, 'count')];
    a.out.push(withCores);
    const t0 = Date.now() - 60_000;
    for (let i = 0; i < 60; i++) a.out.push(report([measured('cpu.load', i, 'percent')], `${t0 + i * 1000}000000`));
    const s = server;
    await waitFor(async () => (await s.history.count('raw-h', 'cpu.load')) === 60, 5000, '60 samples');
    const client = server.client();
    const all = await client.getHistory({ nodeId: 'raw-h', metric: 'cpu', fromNs: '0', toNs: '0', stepNs: '0' });
    expect(all.points).toHaveLength(60);
    const stepped = await client.getHistory({ nodeId: 'raw-h', metric: 'cpu.load', fromNs: `${t0}000000`, toNs: `${t0 + 59_999}000000`, stepNs: '10000000000' });
    expect(stepped.points.length).toBeGreaterThanOrEqual(6);
    expect(stepped.points.length).toBeLessThanOrEqual(7);
    await expect(client.getHistory({ nodeId: 'raw-h', metric: 'gpu.7.util', fromNs: '0', toNs: '0', stepNs: '0' })).rejects.toMatchObject({ code: Status.NOT_FOUND });
    await expect(client.getHistory({ nodeId: 'raw-h', metric: 'cpu', fromNs: '-5', toNs: '0', stepNs: '0' })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT });

    const f = await client.forecast({ nodeId: 'raw-h', metric: 'cpu', horizonNs: '10000000000', stepNs: '1000000000', lookbackNs: '0' });
    expect(f.method).toBe('last-value');
    expect(f.points).toHaveLength(10);
    expect(f.points[0]?.mean).toBe(59);
    expect(f.fittedPoints).toBeGreaterThan(3);
    // Free capacity = capacity − usage − reservations of assigned shards (1 of 4 cores = 25%).
    expect(f.capacity).toBe(100);
    expect(f.points[0]).toMatchObject({ reserved: 0, free: 41 });
    server.mesh.setReservationSource(() => ({ cpuCores: 1, memoryMb: 0 }));
    const reserved = await client.forecast({ nodeId: 'raw-h', metric: 'cpu', horizonNs: '10000000000', stepNs: '1000000000', lookbackNs: '0' });
    expect(reserved.points[0]).toMatchObject({ reserved: 25, free: 16 });
    expect(reserved.points[0]?.freeLower).toBe(100 - (reserved.points[0]?.upper ?? 0) - 25);
    await expect(client.forecast({ nodeId: 'raw-h', metric: 'cpu', horizonNs: '-7200000000000', stepNs: '0', lookbackNs: '0' })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/horizon_ns/) });
    await expect(client.forecast({ nodeId: 'raw-h', metric: 'cpu', horizonNs: '0', stepNs: '0', lookbackNs: '0' })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT });
    await expect(client.forecast({ nodeId: 'nope', metric: 'cpu', horizonNs: '1000', stepNs: '0', lookbackNs: '0' })).rejects.toMatchObject({ code: Status.NOT_FOUND });
    a.out.close();
  });

  it('caps forecast usage at the capacity: CPU load never above 100 %, free capacity never below 0', async () => {
    server = await startMeshServer();
    const a = rawConnect(server);
    a.out.push(register('busy-h'));
    const t0 = Date.now() - 30_000;
    for (let i = 0; i < 30; i++) a.out.push(report([measured('cpu.load', 95, 'percent')], `${t0 + i * 1000}000000`));
    const s = server;
    await waitFor(async () => (await s.history.count('busy-h', 'cpu.load')) === 30, 5000, '30 samples');
    // The test forecaster's interval is ±10 % of the last value: 85.5 to 104.5 here.
    const f = await server.client().forecast({ nodeId: 'busy-h', metric: 'cpu', horizonNs: '5000000000', stepNs: '1000000000', lookbackNs: '0' });
    expect(f.points).toHaveLength(5);
    for (const p of f.points) {
      expect(p).toMatchObject({ mean: 95, upper: 100, freeLower: 0, free: 5 });
      expect(p.lower).toBeCloseTo(85.5);
      expect(p.freeUpper).toBeCloseTo(14.5);
    }
    a.out.close();
  });

  it('lets a newer connection of the same node supersede the old one', async () => {
    server = await startMeshServer();
    const a = rawConnect(server);
    a.out.push(register('dup'));
    await waitFor(() => a.received.length > 0, 5000, 'first ack');
    const b = rawConnect(server);
    b.out.push(register('dup'));
    await a.done; // ended cleanly by the coordinator
    await waitFor(() => b.received.length > 0, 5000, 'second ack');
    expect(b.received[0]?.body).toMatchObject({ $case: 'registered', value: { rejoined: true } });
    b.out.push({ body: { $case: 'leave', value: { reason: 'test' } } });
    await b.done;
    expect(server.mesh.nodes()[0]?.state).toBe(NodeState.NODE_STATE_LEFT);
  });

  it('reconnects an agent runtime after the coordinator restarts, keeping its node id and state', async () => {
    const db = new MemoryLevel<string, Uint8Array>({ valueEncoding: 'view' });
    server = await startMeshServer({ db });
    const dataDir = mkdtempSync(join(tmpdir(), 'retrace-agent-'));
    dirs.push(dataDir);
    const probe: ResourceProbe = { capabilities: async () => [measured('cpu.threads', 4)], sample: async () => [measured('cpu.load', 10, 'percent')] };
    const states: string[] = [];
    const runtime = createAgentRuntime({
      coordinator: server.address,
      dataDir,
      token: server.token,
      reportIntervalMs: 100,
      linkProbeIntervalMs: 0,
      probe,
      rng: () => 0,
      backoff: { initialMs: 50, maxMs: 200 },
      log: () => {},
    });
    runtimes.push(runtime);
    runtime.on('agent:state', (e) => states.push(e.to));
    await runtime.start();
    const { nodeId } = await runtime.registered();
    const port = server.address.split(':')[1];
    await server.stop();
    server = undefined;
    await waitFor(() => runtime.state === 'CONNECTING', 5000, 'agent notices');
    // The coordinator comes back on the same port with the same database.
    server = await startMeshServer({ db, port: Number(port) });
    const again = await runtime.registered();
    expect(again.nodeId).toBe(nodeId);
    const s = server;
    await waitFor(async () => s.mesh.nodes()[0]?.state === NodeState.NODE_STATE_READY && (await s.history.count(nodeId, 'cpu.load')) > 0, 5000, 'READY with reports');
    await runtime.stop();
    expect(runtime.state).toBe('STOPPED');
    expect(server.mesh.nodes()[0]?.state).toBe(NodeState.NODE_STATE_LEFT);
    expect(states).toEqual(['CONNECTING', 'RUNNING', 'CONNECTING', 'RUNNING', 'DRAINING', 'STOPPED']);
    await db.close();
  });
});

function fakeSystem(): SystemInfo {
  return {
    cpu: async () => ({ manufacturer: 'Acme', brand: 'Z1', vendor: 'Acme', speed: 0, speedMax: 0, cores: 8, physicalCores: 4, flags: '' }) as never,
    cpuFlags: async () => 'fpu sse4_2 avx avx2 fma avx512f ht',
    currentLoad: async () => ({ currentLoad: 42, cpus: [{ load: 34 }, { load: 50 }] }) as never,
    mem: async () => ({ total: 16 * 2 ** 30, available: 8 * 2 ** 30, swaptotal: 0, swapused: 0 }) as never,
    graphics: async () => ({ controllers: [{ vendor: 'NVIDIA', model: 'T4', vram: 16384 }, { vendor: 'Cirrus Logic', model: 'GD 5446', vram: 4 }] }) as never,
    fsSize: async () => [{ mount: '/', size: 1000, available: 100 }, { mount: '/data', size: 2000, available: 500 }] as never,
    fsStats: async () => ({ rx_sec: null, wx_sec: null }) as never,
    networkStats: async () => [{ rx_sec: null, tx_sec: null }] as never,
    networkInterfaces: (async () => [{ iface: 'eth0', speed: 1000 }]) as never,
    networkInterfaceDefault: async () => 'eth0',
  };
}
