import { describe, expect, it, vi } from 'vitest';
import { NodeState, ReadingSource, type ConnectRequest, type ConnectResponse, type NodeInfo, type ResourceReading } from '../common/gen/retrace/v1/node.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { ByteLru, CACHED_PAYLOAD_MIN_BYTES } from '../common/payload-locality.js';
import { isEmpty, mergeRequirements } from '../common/requirements.js';
import { allocate, toNodeView, type NodeLoad, type NodeView } from '../coordinator/scheduler/allocator.js';
import { createDispatcher } from '../coordinator/scheduler/dispatcher.js';
import type { MeshEvents } from '../coordinator/mesh/mesh-events.js';
import { until } from './helpers/until.js';

const GIB = 1024 ** 3;
const M = ReadingSource.READING_SOURCE_MEASURED;
const D = ReadingSource.READING_SOURCE_DECLARED;
const r = (name: string, value: number, source = M, text = ''): ResourceReading => ({ name, value, text, unit: '', source });

function info(nodeId: string, o: { state?: NodeState; cores?: number; memGiB?: number; availGiB?: number; load?: number; gpu?: number; flags?: string; up?: number; labels?: Record<string, string>; extra?: ResourceReading[]; code?: string[] } = {}): NodeInfo {
  return {
    nodeId,
    host: 'h',
    labels: o.labels ?? {},
    state: o.state ?? NodeState.NODE_STATE_READY,
    capabilities: [
      r('cpu.threads', o.cores ?? 4),
      r('memory.total', (o.memGiB ?? 8) * GIB),
      r('gpu.count', o.gpu ?? 0),
      r('cpu.flags', 2, M, o.flags ?? 'sse4_2,avx2'),
      ...(o.extra ?? []),
    ],
    latest: [
      r('cpu.load', o.load ?? 0),
      r('memory.available', (o.availGiB ?? o.memGiB ?? 8) * GIB),
      ...(o.up !== undefined ? [r('net.up', o.up), r('net.down', o.up)] : []),
    ],
    lastReportNs: '0', registeredNs: '0', firstSeenNs: '0', reportIntervalNs: '0', connected: true, agentVersion: '', codeVersions: o.code ?? [], coordinatorRttMs: 0, transitions: [], drainReason: '', boundToken: '',
  };
}
const views = (...infos: NodeInfo[]): NodeView[] => infos.map(toNodeView);
const noLoad = new Map<string, NodeLoad>();
const pick = (res: ReturnType<typeof allocate>): string => ('nodeId' in res ? res.nodeId : `waiting: ${res.waiting}`);

describe('allocator: filters', () => {
  it('takes READY nodes only', () => {
    const nodes = views(info('a', { state: NodeState.NODE_STATE_DRAINING }), info('b', { state: NodeState.NODE_STATE_SUSPECT }), info('c', { state: NodeState.NODE_STATE_LOST }), info('d', { state: NodeState.NODE_STATE_LEFT }), info('e'));
    expect(pick(allocate(nodes, {}, noLoad))).toBe('e');
    expect(pick(allocate(nodes.slice(0, 4), {}, noLoad))).toMatch(/^waiting: no READY node \(4 known\)/);
  });
  it('cpu, memory, gpu, flags and bandwidth requirements, with reasons', () => {
    const nodes = views(info('small', { cores: 2, memGiB: 2, up: 1e6 }), info('big', { cores: 16, memGiB: 64, flags: 'avx512f,avx2', up: 1e8 }));
    expect(pick(allocate(nodes, { requirements: { cpu: 8 } }, noLoad))).toBe('big');
    expect(pick(allocate(nodes, { requirements: { memoryMb: 4096 } }, noLoad))).toBe('big');
    expect(pick(allocate(nodes, { requirements: { instructionSets: ['AVX512F'] } }, noLoad))).toBe('big');
    expect(pick(allocate(nodes, { requirements: { networkMbps: 100 } }, noLoad))).toBe('big');
    expect(pick(allocate(nodes, { requirements: { gpu: true } }, noLoad))).toBe('waiting: needs gpu ≥ 1: no READY node meets it (2 READY nodes: small, big)');
    expect(pick(allocate(nodes, { requirements: { cpu: 64 } }, noLoad))).toMatch(/needs cpu ≥ 64/);
    expect(pick(allocate(nodes, { requirements: { memoryMb: 1e6 } }, noLoad))).toMatch(/needs memory ≥ 1000000 MiB/);
    expect(pick(allocate(nodes, { requirements: { instructionSets: ['sve'] } }, noLoad))).toMatch(/needs cpu flag sve/);
    expect(pick(allocate(nodes, { requirements: { networkMbps: 10_000 } }, noLoad))).toMatch(/needs network ≥ 10000 Mbit\/s/);
  });
  it('declared capacity counts like measured', () => {
    const nodes = views(info('plain'), info('declared', { extra: [r('gpu.count', 2, D), r('memory.total', 256 * GIB, D), r('net.speed', 10e9, D)] }));
    expect(pick(allocate(nodes, { requirements: { gpu: 2 } }, noLoad))).toBe('declared');
    expect(pick(allocate(nodes, { requirements: { memoryMb: 100_000 } }, noLoad))).toBe('declared');
    expect(pick(allocate(nodes, { requirements: { networkMbps: 5000 } }, noLoad))).toBe('declared');
  });
  it('placement: nodeIds, labels, gpu only/none, maxCpuFraction, maxMemoryMb', () => {
    const nodes = views(info('a', { labels: { zone: 'eu' } }), info('b', { labels: { zone: 'us' }, gpu: 1 }), info('c', { cores: 16 }));
    expect(pick(allocate(nodes, { placement: { nodeIds: ['b'] } }, noLoad))).toBe('b');
    expect(pick(allocate(nodes, { placement: { labels: { zone: 'eu' } } }, noLoad))).toBe('a');
    expect(pick(allocate(nodes, { placement: { labels: { zone: 'ap' } } }, noLoad))).toMatch(/needs label zone=ap: no READY node/);
    expect(pick(allocate(nodes, { placement: { gpu: 'only' } }, noLoad))).toBe('b');
    expect(pick(allocate(views(info('b', { gpu: 1 })), { placement: { gpu: 'none' } }, noLoad))).toMatch(/gpu=none/);
    expect(pick(allocate(nodes, { requirements: { cpu: 4 }, placement: { maxCpuFraction: 0.5 } }, noLoad))).toBe('c');
    expect(pick(allocate(nodes, { requirements: { memoryMb: 512 }, placement: { maxMemoryMb: 256 } }, noLoad))).toMatch(/maxMemoryMb is 256/);
  });
  it('in-flight limit and reservations: busy, not impossible', () => {
    const nodes = views(info('a', { cores: 2 }), info('b', { cores: 2 }));
    const load = new Map<string, NodeLoad>([['a', { inFlight: 2, reservedCpu: 2, reservedMemMb: 0 }], ['b', { inFlight: 1, reservedCpu: 0, reservedMemMb: 0 }]]);
    expect(pick(allocate(nodes, { requirements: { cpu: 1 } }, load, { maxInFlight: 2 }))).toBe('b');
    const full = new Map<string, NodeLoad>([['a', { inFlight: 2, reservedCpu: 0, reservedMemMb: 0 }], ['b', { inFlight: 2, reservedCpu: 0, reservedMemMb: 0 }]]);
    const res = allocate(nodes, {}, full, { maxInFlight: 2 });
    expect(res).toMatchObject({ busy: true });
    expect(pick(res)).toMatch(/at capacity/);
  });
});

describe('ByteLru (agent payload cache and its mirror)', () => {
  it('evicts the least recently used first, counts a get as a use, and keeps nothing larger than itself', () => {
    const lru = new ByteLru<string>(10);
    lru.set('a', 'A', 4);
    lru.set('b', 'B', 4);
    expect(lru.get('a')).toBe('A');
    lru.set('c', 'C', 4);
    expect([lru.has('a'), lru.has('b'), lru.has('c'), lru.bytes]).toEqual([true, false, true, 8]);
    lru.set('huge', 'H', 11);
    expect([lru.has('huge'), lru.size]).toEqual([false, 2]);
    lru.resize(4);
    expect([lru.has('a'), lru.has('c'), lru.bytes]).toEqual([false, true, 4]);
  });
});

describe('requirements of a step and of its code', () => {
  it('combine into the larger amount of each and every instruction set; an empty side leaves the other as it is', () => {
    const code = { cpu: 0.5, memoryMb: 512, gpu: 0, instructionSets: ['avx2'], networkMbps: 0 };
    const step = { cpu: 2, gpu: true, instructionSets: ['avx2', 'sse4_2'] };
    expect(mergeRequirements(code, step)).toEqual({ cpu: 2, memoryMb: 512, gpu: 1, instructionSets: ['avx2', 'sse4_2'], networkMbps: 0 });
    const none = { cpu: 0, memoryMb: 0, gpu: 0, instructionSets: [], networkMbps: 0 };
    expect(mergeRequirements(none, step)).toBe(step);
    expect(mergeRequirements(code, undefined)).toBe(code);
    expect(mergeRequirements(undefined, undefined)).toBeUndefined();
    expect(isEmpty({ gpu: false })).toBe(true);
  });
});

describe('allocator: ranking', () => {
  it('prefers headroom (free cpu and memory now)', () => {
    expect(pick(allocate(views(info('busy', { load: 90 }), info('idle', { load: 5 })), {}, noLoad))).toBe('idle');
    expect(pick(allocate(views(info('a', { availGiB: 1 }), info('b', { availGiB: 7 })), {}, noLoad))).toBe('b');
  });
  it('takes a pluggable headroom (forecast)', () => {
    const nodes = views(info('a'), info('b'));
    expect(pick(allocate(nodes, {}, noLoad, { headroom: (id) => (id === 'a' ? { cpuCores: 0, memoryMb: 100 } : { cpuCores: 4, memoryMb: 8192 }) }))).toBe('b');
  });
  it('prefers data locality (transfer time), and cached inputs', () => {
    const nodes = views(info('slow', { up: 1e5 }), info('fast', { up: 1e8 }));
    expect(pick(allocate(nodes, { inputBytes: 50e6 }, noLoad))).toBe('fast');
    expect(pick(allocate(nodes, { inputBytes: 50e6, inputsCachedOn: new Set(['slow']) }, noLoad))).toBe('slow');
  });
  it('prefers shorter queues', () => {
    const nodes = views(info('a'), info('b'));
    expect(pick(allocate(nodes, {}, new Map([['a', { inFlight: 8, reservedCpu: 0, reservedMemMb: 0 }]])))).toBe('b');
  });
  it('weighs the cost label', () => {
    expect(pick(allocate(views(info('a', { labels: { cost: '3' } }), info('b', { labels: { cost: '1' } })), {}, noLoad))).toBe('b');
  });
  it('breaks ties by node id, with a small bonus for cached code', () => {
    expect(pick(allocate(views(info('b'), info('a')), {}, noLoad))).toBe('a');
    expect(pick(allocate(views(info('a'), info('b', { code: ['sha256:x'] })), { codeVersion: 'sha256:x' }, noLoad))).toBe('b');
  });
});

// ---- dispatcher over a fake mesh ----

function fakeMesh(nodeInfos: NodeInfo[]) {
  const listeners: { [K in keyof MeshEvents]?: ((p: MeshEvents[K]) => void)[] } = {};
  const msgListeners: ((nodeId: string, m: ConnectRequest) => void)[] = [];
  const sent: { nodeId: string; msg: ConnectResponse }[] = [];
  let infos = nodeInfos;
  return {
    sent,
    set(next: NodeInfo[]) {
      infos = next;
    },
    emit<E extends keyof MeshEvents>(e: E, p: MeshEvents[E]) {
      for (const l of (listeners[e] ?? []) as ((p: MeshEvents[E]) => void)[]) l(p);
    },
    emitMessage(nodeId: string, m: ConnectRequest) {
      for (const l of msgListeners) l(nodeId, m);
    },
    reply(nodeId: string, shardIds: string[], status = ShardStatus.SHARD_STATUS_SUCCEEDED, attempt = 0) {
      const outcomes = shardIds.map((shardId) => ({ shardId, status, outputs: [], error: '', startedAtNs: '0', endedAtNs: '0', nodeId, attempt }));
      for (const l of msgListeners) l(nodeId, { body: { $case: 'outcomes', value: { outcomes } } });
    },
    /** `shardId#attempt` of every assignment sent, in order. */
    attempts(nodeId?: string) {
      return sent.filter((s) => nodeId === undefined || s.nodeId === nodeId).flatMap((s) => (s.msg.body?.$case === 'assign' ? s.msg.body.value.shards.map((a) => `${a.shardId}#${a.attempt}`) : []));
    },
    assigned(nodeId?: string) {
      return sent.filter((s) => (nodeId === undefined || s.nodeId === nodeId) && s.msg.body?.$case === 'assign').flatMap((s) => (s.msg.body?.$case === 'assign' ? s.msg.body.value.shards.map((a) => a.shardId) : []));
    },
    mesh: {
      nodes: () => infos,
      send: (nodeId: string, msg: ConnectResponse) => {
        sent.push({ nodeId, msg });
        return infos.some((n) => n.nodeId === nodeId && n.state !== NodeState.NODE_STATE_LOST);
      },
      onMessage: (l: (nodeId: string, m: ConnectRequest) => void) => {
        msgListeners.push(l);
        return () => {};
      },
      on: <E extends keyof MeshEvents>(e: E, l: (p: MeshEvents[E]) => void) => {
        ((listeners[e] ??= []) as ((p: MeshEvents[E]) => void)[]).push(l);
        return () => {};
      },
    },
  };
}
const shard = (id: string): ShardAssignment => ({ shardId: id, stepName: 'step', transform: 't', codeVersion: 'sha256:x', inputs: [], timeoutMs: 0, memoryLimitMb: 0, jobId: '', attempt: 0 });
const tick = () => new Promise((r) => setTimeout(r, 5));
const quiet = () => {};

/**
 * The dispatcher's clock for tests whose budgets are tens of milliseconds: time moves only when
 * the test moves it, so a timer that fires late on a loaded machine is not taken for a node's
 * silence. The deadline sweep still runs on real timers.
 */
function manualClock() {
  const clock = { t: 1_000_000, now: () => clock.t };
  return clock;
}

/** Waits for `p`, moving `clock` on by `stepMs` every 20 ms of real time meanwhile. */
async function advancing<T>(clock: { t: number }, stepMs: number, p: Promise<T>): Promise<T> {
  const timer = setInterval(() => {
    clock.t += stepMs;
  }, 20);
  try {
    return await p;
  } finally {
    clearInterval(timer);
  }
}

describe('dispatcher (fake mesh)', () => {
  it('batches per node, first outcome wins, bounded in flight', async () => {
    const f = fakeMesh([info('a'), info('b')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, maxInFlightPerNode: 2, shardTimeoutMs: 10_000 });
    const runs = ['s1', 's2', 's3', 's4', 's5'].map((id) => d.run(shard(id)));
    await tick();
    expect(f.sent.filter((s) => s.msg.body?.$case === 'assign')).toHaveLength(2); // one frame per node
    expect(f.assigned()).toHaveLength(4);
    expect(d.waiting().map((w) => w.shardId)).toEqual(['s5']);
    const first = f.assigned('a')[0] as string;
    f.reply('a', [first]);
    f.reply('a', [first], ShardStatus.SHARD_STATUS_FAILED); // duplicate: ignored
    await tick();
    expect(f.assigned()).toHaveLength(5);
    f.reply('a', f.assigned('a'));
    f.reply('b', f.assigned('b'));
    const results = await Promise.all(runs);
    expect(results.every((x) => x.outcome.status === ShardStatus.SHARD_STATUS_SUCCEEDED && x.attempts === 1)).toBe(true);
    d.stop();
  });
  it('sends the shards that became ready in separate callbacks of one loop turn in one frame', async () => {
    const f = fakeMesh([info('a')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 10_000 });
    // Ten callbacks of one loop turn, each submitting a shard, as a pipeline's records do when
    // their store reads return; microtasks run between them, so a flush per microtask checkpoint
    // sent ten frames. Immediates queued together run in one check phase however loaded the
    // machine is (ten 1 ms timers could straddle a millisecond and fire in two turns).
    const runs: Promise<unknown>[] = [];
    await new Promise<void>((resolve) => {
      for (let i = 0; i < 10; i++) {
        setImmediate(() => {
          runs.push(d.run(shard(`cb-${i}`)));
          if (runs.length === 10) resolve();
        });
      }
    });
    await tick();
    expect(f.assigned()).toHaveLength(10);
    expect(f.sent.filter((s) => s.msg.body?.$case === 'assign')).toHaveLength(1);
    f.reply('a', f.assigned('a'));
    await Promise.all(runs);
    d.stop();
  });

  it('sends a large input a node already holds by reference, places shards where their inputs are, and sends the bytes again after a miss', async () => {
    const f = fakeMesh([info('a'), info('b')]);
    // One attempt each: a cache miss ran nothing and must not use it up.
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 10_000, maxAttempts: 1 });
    for (const nodeId of ['a', 'b']) f.emit('node:registered', { nodeId, rejoined: false, restarted: false, atMs: 0, payloadCacheBytes: 4 * 2 ** 20 });
    const big = Buffer.alloc(CACHED_PAYLOAD_MIN_BYTES, 7);
    const small = Buffer.from('small');
    const input = (payload: Buffer) => ({ name: 'in', objectId: 'o', contentHash: contentHashOf(payload), payload, key: 'k', eventTimeNs: '0', mediaType: '', cached: false });
    const withInputs = (id: string, ...payloads: Buffer[]): ShardAssignment => ({ ...shard(id), inputs: payloads.map(input) });
    /** The inputs of the last assignment of `id`, as `bytes` or `ref` each. */
    const sentAs = (id: string): string[] => {
      const all = f.sent.flatMap((m) => (m.msg.body?.$case === 'assign' ? m.msg.body.value.shards : [])).filter((a) => a.shardId === id);
      return (all.at(-1)?.inputs ?? []).map((i) => (i.cached ? (i.payload.byteLength === 0 ? 'ref' : 'ref+bytes?') : `bytes ${i.payload.byteLength}`));
    };
    const nodeOf = (id: string): string => f.sent.filter((m) => m.msg.body?.$case === 'assign' && m.msg.body.value.shards.some((a) => a.shardId === id)).at(-1)?.nodeId ?? '';

    const first = d.run(withInputs('s1', big, small), { placement: { nodeIds: ['b'] } });
    await tick();
    expect([nodeOf('s1'), ...sentAs('s1')]).toEqual(['b', `bytes ${big.length}`, 'bytes 5']);
    const out = Buffer.alloc(CACHED_PAYLOAD_MIN_BYTES + 1, 9);
    const reply = (nodeId: string, shardId: string, status: ShardStatus, outputs: Buffer[] = []) =>
      f.emitMessage(nodeId, { body: { $case: 'outcomes', value: { outcomes: [{ shardId, status, outputs: outputs.map((p) => ({ key: '', contentHash: contentHashOf(p), payload: p, mediaType: '' })), error: '', startedAtNs: '0', endedAtNs: '0', nodeId, attempt: 0 }] } } });
    reply('b', 's1', ShardStatus.SHARD_STATUS_SUCCEEDED, [out]);
    await first;
    // Both the input it was sent and the output it made are on b now: nothing pins these shards, yet they go there.
    // (One at a time: the transfer time saved, 5 ms for 64 KiB at the default 100 Mbit/s, is
    // what the allocator weighs against b's queue.)
    const second = d.run(withInputs('s2', big, small));
    await tick();
    expect([nodeOf('s2'), ...sentAs('s2')]).toEqual(['b', 'ref', 'bytes 5']);
    reply('b', 's2', ShardStatus.SHARD_STATUS_SUCCEEDED);
    expect((await second).outcome.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    const third = d.run(withInputs('s3', out));
    await tick();
    expect([nodeOf('s3'), ...sentAs('s3')]).toEqual(['b', 'ref']);
    // b lost it after all: the shard goes out again, with the bytes.
    reply('b', 's3', ShardStatus.SHARD_STATUS_INPUT_NOT_CACHED);
    await tick();
    expect(sentAs('s3')).toEqual([`bytes ${out.length}`]);
    reply(nodeOf('s3'), 's3', ShardStatus.SHARD_STATUS_SUCCEEDED);
    expect(await third).toMatchObject({ attempts: 2, outcome: { status: ShardStatus.SHARD_STATUS_SUCCEEDED } });
    // Inputs a replay altered on purpose travel as they are.
    const fourth = d.run(withInputs('s4', big), { inputsAsSent: true, placement: { nodeIds: ['b'] } });
    await tick();
    expect(sentAs('s4')).toEqual([`bytes ${big.length}`]);
    reply('b', 's4', ShardStatus.SHARD_STATUS_SUCCEEDED);
    await fourth;
    // A restarted agent process starts with an empty cache.
    f.emit('node:registered', { nodeId: 'b', rejoined: true, restarted: true, atMs: Date.now(), payloadCacheBytes: 4 * 2 ** 20 });
    const fifth = d.run(withInputs('s5', big), { placement: { nodeIds: ['b'] } });
    await tick();
    expect(sentAs('s5')).toEqual([`bytes ${big.length}`]);
    reply('b', 's5', ShardStatus.SHARD_STATUS_SUCCEEDED);
    await fifth;
    d.stop();
  });

  it('an attempt that got no answer leaves its node\'s mirror without the inputs it carried: the retry sends the bytes again', async () => {
    const f = fakeMesh([info('a'), info('b')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 200, maxAttempts: 3 });
    f.emit('node:registered', { nodeId: 'b', rejoined: false, restarted: false, atMs: 0, payloadCacheBytes: 4 * 2 ** 20 });
    const big = Buffer.alloc(CACHED_PAYLOAD_MIN_BYTES, 3);
    const assignment: ShardAssignment = { ...shard('lost'), inputs: [{ name: 'in', objectId: 'o', contentHash: contentHashOf(big), payload: big, key: 'k', eventTimeNs: '0', mediaType: '', cached: false }] };
    const sends = () => f.sent.flatMap((m) => (m.msg.body?.$case === 'assign' ? m.msg.body.value.shards : [])).filter((a) => a.shardId === 'lost');
    const run = d.run(assignment, { placement: { nodeIds: ['b'] } });
    await tick();
    expect(sends().map((a) => a.inputs[0]?.cached)).toEqual([false]);
    // The frame is lost: b never answers, and the deadline sends the shard to b again.
    await until('the retry', () => (sends().length === 2 ? true : undefined), 5_000, 20);
    expect(sends().map((a) => [a.attempt, a.inputs[0]?.cached, a.inputs[0]?.payload.byteLength])).toEqual([
      [1, false, big.length],
      [2, false, big.length],
    ]);
    f.emitMessage('b', { body: { $case: 'outcomes', value: { outcomes: [{ shardId: 'lost', status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [], error: '', startedAtNs: '0', endedAtNs: '0', nodeId: 'b', attempt: 2 }] } } });
    expect(await run).toMatchObject({ attempts: 2, outcome: { status: ShardStatus.SHARD_STATUS_SUCCEEDED } });
    d.stop();
  });

  it('a node that cannot fetch or verify a code version gets no shards of it for a while; with no other node the outcome stands', async () => {
    const f = fakeMesh([info('a'), info('b')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 10_000 });
    const nodeOf = (id: string): string => f.sent.filter((m) => m.msg.body?.$case === 'assign' && m.msg.body.value.shards.some((a) => a.shardId === id)).at(-1)?.nodeId ?? '';
    const first = d.run(shard('c1'));
    await tick();
    const bad = nodeOf('c1');
    const good = bad === 'a' ? 'b' : 'a';
    f.reply(bad, ['c1'], ShardStatus.SHARD_STATUS_CODE_UNAVAILABLE);
    await tick();
    expect(nodeOf('c1')).toBe(good);
    f.reply(good, ['c1']);
    expect(await first).toMatchObject({ nodeId: good, attempts: 2, outcome: { status: ShardStatus.SHARD_STATUS_SUCCEEDED } });
    // More shards of that code avoid the node, even when it is the idler one; other code does not.
    const more = ['c2', 'c3', 'c4'].map((id) => d.run(shard(id)));
    const other = d.run({ ...shard('o1'), codeVersion: 'sha256:other' });
    await tick();
    expect(['c2', 'c3', 'c4'].map(nodeOf)).toEqual([good, good, good]);
    expect(nodeOf('o1')).toBe(bad);
    f.reply(good, ['c2', 'c3', 'c4']);
    f.reply(bad, ['o1']);
    await Promise.all([...more, other]);
    // The other node cannot either: nowhere left to try, so the shard ends with that outcome.
    const last = d.run(shard('c5'));
    await tick();
    f.reply(good, ['c5'], ShardStatus.SHARD_STATUS_CODE_UNAVAILABLE);
    expect(await last).toMatchObject({ attempts: 1, outcome: { status: ShardStatus.SHARD_STATUS_CODE_UNAVAILABLE } });
    d.stop();
  });

  it('waits with a reason and places when a node appears', async () => {
    const f = fakeMesh([info('a')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 10_000 });
    const p = d.run(shard('g'), { requirements: { gpu: 1 } });
    await tick();
    expect(d.waiting()).toEqual([{ shardId: 'g', stepName: 'step', reason: expect.stringMatching(/needs gpu ≥ 1/) as unknown as string, busy: false }]);
    // What ApplyPipeline warns of: the same reason, asked without a shard.
    expect(d.unmet({ gpu: 1 })).toMatch(/^needs gpu ≥ 1: no READY node meets it \(1 READY node: a\)$/);
    expect(d.unmet(undefined)).toBeUndefined();
    f.set([info('a'), info('gpu', { gpu: 1 })]);
    f.emit('node:registered', { nodeId: 'gpu', rejoined: false, restarted: false, atMs: 0, payloadCacheBytes: 0 });
    await tick();
    expect(d.unmet({ gpu: 1 })).toBeUndefined();
    expect(f.assigned('gpu')).toEqual(['g']);
    f.reply('gpu', ['g']);
    expect((await p).nodeId).toBe('gpu');
    d.stop();
  });
  it('tells onPlaced of each placement as it is made, the first before any outcome and again when the shard moves', async () => {
    const f = fakeMesh([info('a'), info('b')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 10_000 });
    const placed: string[] = [];
    const p = d.run(shard('x'), { onPlaced: (nodeId) => placed.push(nodeId) });
    await tick();
    const first = f.sent.find((s) => s.msg.body?.$case === 'assign')?.nodeId as string;
    expect(placed).toEqual([first]);
    const other = first === 'a' ? 'b' : 'a';
    f.set([info(first, { state: NodeState.NODE_STATE_LOST }), info(other)]);
    f.emit('node:transition', { nodeId: first, from: 'READY', to: 'LOST', reason: 't', atMs: 0 });
    await tick();
    expect(placed).toEqual([first, other]);
    f.reply(other, ['x']);
    expect(await p).toMatchObject({ nodeId: other });
    d.stop();
  });
  it('reassigns on LOST, on timeout, on link outage; fails after maxAttempts', async () => {
    const f = fakeMesh([info('a'), info('b')]);
    const clock = manualClock();
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 60, maxAttempts: 3, maxInFlightPerNode: 1, now: clock.now });
    const p1 = d.run(shard('x'));
    await tick();
    const firstNode = f.assigned()[0] === 'x' ? (f.sent.find((s) => s.msg.body?.$case === 'assign')?.nodeId as string) : '';
    const other = firstNode === 'a' ? 'b' : 'a';
    f.set([info(firstNode, { state: NodeState.NODE_STATE_LOST }), info(other)]);
    f.emit('node:transition', { nodeId: firstNode, from: 'READY', to: 'LOST', reason: 't', atMs: 0 });
    await tick();
    expect(f.assigned(other)).toEqual(['x']);
    f.reply(other, ['x']);
    expect(await p1).toMatchObject({ nodeId: other, attempts: 2 });

    f.set([info('a'), info('b')]);
    f.emit('node:registered', { nodeId: firstNode, rejoined: true, restarted: true, atMs: clock.t, payloadCacheBytes: 0 });
    const p2 = d.run(shard('y'));
    await tick();
    const yNode = f.sent.filter((s) => s.msg.body?.$case === 'assign').at(-1)?.nodeId as string;
    d.setLinkOutage(yNode, clock.t + 10_000);
    await tick();
    const yOther = yNode === 'a' ? 'b' : 'a';
    expect(f.assigned(yOther)).toContain('y');
    f.reply(yNode, ['y']); // dropped: the link is down
    await tick();
    f.reply(yOther, ['y']);
    expect(await p2).toMatchObject({ nodeId: yOther, attempts: 2 });

    // Nobody answers: each attempt times out once the clock passes its budget.
    const r3 = await advancing(clock, 61, d.run(shard('z')));
    expect(r3.outcome.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
    expect(r3.attempts).toBe(3);
    d.stop();
  });
  it('a link outage set ahead takes back the shards in flight at its start, not a sweep later', async () => {
    // Date and the dispatcher's own timers are faked; setImmediate (its placement rounds) is not.
    vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
    // The file's tick waits on a (faked) timer; a placement round needs only an I/O turn.
    const turn = () => new Promise((r) => setImmediate(r));
    try {
      const f = fakeMesh([info('a'), info('b')]);
      // Sweeps every 500 ms; nothing else places shards after the first round.
      const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 600_000 });
      const p = d.run(shard('x'));
      await turn();
      const xNode = f.sent.find((s) => s.msg.body?.$case === 'assign')?.nodeId as string;
      const other = xNode === 'a' ? 'b' : 'a';
      // Between two sweeps, so that only a timer of its own can begin it on time.
      await vi.advanceTimersByTimeAsync(120);
      d.setLinkOutage(xNode, Date.now() + 10_000, Date.now() + 50);
      await vi.advanceTimersByTimeAsync(40);
      await turn();
      expect(f.assigned(other)).toEqual([]);
      await vi.advanceTimersByTimeAsync(10);
      await turn();
      expect(f.assigned(other)).toEqual(['x']);
      f.reply(other, ['x']);
      expect(await p).toMatchObject({ nodeId: other, attempts: 2 });
      // A window ahead of the next sweep is left to the sweeps until it nears: still on time.
      const q = d.run(shard('y'), { placement: { nodeIds: [other] } });
      await turn();
      d.setLinkOutage(other, Date.now() + 10_000, Date.now() + 1_234);
      await vi.advanceTimersByTimeAsync(1_233);
      await turn();
      expect(d.inFlight()).toEqual(new Map([[other, 1]]));
      await vi.advanceTimersByTimeAsync(1);
      await turn();
      // Taken back; bound to the node, it waits for the link.
      expect(d.inFlight()).toEqual(new Map());
      d.stop();
      expect(await q).toMatchObject({ outcome: { status: ShardStatus.SHARD_STATUS_CANCELLED } });
    } finally {
      vi.useRealTimers();
    }
  });
  it('a link outage set ahead takes effect at its start and ends at its end, with no timer of the caller', async () => {
    const f = fakeMesh([info('a'), info('b')]);
    const clock = manualClock();
    // A long timeout: the deadline sweep (a real timer) is not what moves the shards here.
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 600_000, now: clock.now });
    const p1 = d.run(shard('x'));
    await tick();
    const xNode = f.sent.find((s) => s.msg.body?.$case === 'assign')?.nodeId as string;
    const other = xNode === 'a' ? 'b' : 'a';
    const fromMs = clock.t + 1000;
    const untilMs = fromMs + 1000;
    d.setLinkOutage(xNode, untilMs, fromMs);
    // Ahead of its start: nothing moves, and what the node answers would count.
    await tick();
    expect(f.assigned()).toEqual(['x']);
    expect(d.inFlight()).toEqual(new Map([[xNode, 1]]));

    // At its start, however late any timer: the node's outcome is dropped, and the next placement
    // round takes the shard back and places it and new work elsewhere.
    clock.t = fromMs;
    f.reply(xNode, ['x']);
    await tick();
    const p2 = d.run(shard('y'));
    await tick();
    expect(f.assigned(xNode)).toEqual(['x']);
    expect(f.assigned(other).sort()).toEqual(['x', 'y']);
    f.reply(other, ['x', 'y']);
    expect(await p1).toMatchObject({ nodeId: other, attempts: 2 });
    expect(await p2).toMatchObject({ nodeId: other, attempts: 1 });

    // Just before its end a shard bound to the node waits; at its end it goes there and counts.
    clock.t = untilMs - 1;
    const p3 = d.run(shard('z1'), { placement: { nodeIds: [xNode] } });
    await tick();
    expect(f.assigned(xNode)).toEqual(['x']);
    clock.t = untilMs;
    const p4 = d.run(shard('z2'), { placement: { nodeIds: [xNode] } });
    await tick();
    expect(f.assigned(xNode).sort()).toEqual(['x', 'z1', 'z2']);
    f.reply(xNode, ['z1', 'z2']);
    expect(await p3).toMatchObject({ nodeId: xNode, attempts: 1 });
    expect(await p4).toMatchObject({ nodeId: xNode, attempts: 1 });

    // A window withdrawn before it begins never strikes.
    const withdraw = d.setLinkOutage(xNode, clock.t + 2000, clock.t + 1000);
    withdraw();
    clock.t += 1500;
    const p5 = d.run(shard('w'), { placement: { nodeIds: [xNode] } });
    await tick();
    f.reply(xNode, ['w']);
    expect(await p5).toMatchObject({ nodeId: xNode, attempts: 1 });
    d.stop();
  });
  it('throttles for maxCpuFraction and cancels on abort', async () => {
    const f = fakeMesh([info('a')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 10_000 });
    const ac = new AbortController();
    const p = d.run(shard('c'), { placement: { maxCpuFraction: 0.5 }, signal: ac.signal });
    await tick();
    expect(f.sent.map((s) => s.msg.body?.$case)).toEqual(['throttle', 'assign']);
    ac.abort();
    expect((await p).outcome.status).toBe(ShardStatus.SHARD_STATUS_CANCELLED);
    expect(f.sent.map((s) => s.msg.body?.$case)).toEqual(['throttle', 'assign', 'cancel', 'throttle']);
    expect(f.sent.find((s) => s.msg.body?.$case === 'cancel')?.msg.body).toMatchObject({ value: { shardIds: ['c'] } });
    expect(f.sent.at(-1)?.msg.body).toMatchObject({ $case: 'throttle', value: { cpuFraction: 0 } }); // lifted
    d.stop();
  });
  it('lifts a job\'s CPU cap once its last capped shard is done; the tightest cap on a node wins', async () => {
    const f = fakeMesh([info('a')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 10_000 });
    const throttles = () => f.sent.flatMap((s) => (s.msg.body?.$case === 'throttle' ? [s.msg.body.value.cpuFraction] : []));
    const half = ['h1', 'h2'].map((id) => d.run(shard(id), { placement: { maxCpuFraction: 0.5 } }));
    await tick();
    expect(throttles()).toEqual([0.5]);
    const quarter = d.run(shard('q'), { placement: { maxCpuFraction: 0.25 } });
    await tick();
    expect(throttles()).toEqual([0.5, 0.25]);
    // The tighter cap reaches the agent before the shard it covers.
    const cases = f.sent.map((s) => (s.msg.body?.$case === 'assign' ? s.msg.body.value.shards.map((x) => x.shardId).join(',') : s.msg.body?.$case));
    expect(cases).toEqual(['throttle', 'h1,h2', 'throttle', 'q']);
    f.reply('a', ['q']);
    await quarter;
    expect(throttles()).toEqual([0.5, 0.25, 0.5]); // back to the cap of the shards still running
    f.reply('a', ['h1']);
    await tick();
    expect(throttles()).toEqual([0.5, 0.25, 0.5]); // h2 still runs under it
    f.reply('a', ['h2']);
    await Promise.all(half);
    expect(throttles()).toEqual([0.5, 0.25, 0.5, 0]); // lifted
    // Later uncapped work sends no throttle and runs uncapped.
    const free = d.run(shard('free'));
    await tick();
    expect(f.assigned('a')).toContain('free');
    f.reply('a', ['free']);
    await free;
    expect(throttles()).toEqual([0.5, 0.25, 0.5, 0]);
    d.stop();
  });
  it('an attempt\'s deadline is the shard\'s own timeout plus the margin when it has one, shardTimeoutMs when not', async () => {
    const f = fakeMesh([info('a')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 40, deadlineMarginMs: 100 });
    const own = d.run({ ...shard('own'), timeoutMs: 5000 });
    const plain = d.run(shard('plain'));
    // 'plain' is taken back after 40 ms each time, and given up after its third attempt, while
    // 'own' (5100 ms) keeps its first: however late the timers fire on a loaded machine.
    const r = await plain;
    expect(r.outcome.error).toMatch(/gave up after 3 attempts: attempt timed out after 40 ms/);
    expect(f.attempts('a').filter((s) => s.startsWith('plain'))).toEqual(['plain#1', 'plain#2', 'plain#3']);
    expect(f.attempts('a').filter((s) => s.startsWith('own'))).toEqual(['own#1']);
    f.reply('a', ['own'], ShardStatus.SHARD_STATUS_SUCCEEDED, 1);
    expect(await own).toMatchObject({ nodeId: 'a', attempts: 1 });
    d.stop();
  });
  it('a shard queued behind others on a busy node is not timed out while that node keeps answering', async () => {
    const f = fakeMesh([info('a')]);
    const clock = manualClock();
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 400, now: clock.now });
    const ids = Array.from({ length: 10 }, (_, i) => `q${i + 1}`);
    const runs = ids.map((id) => d.run(shard(id)));
    await tick();
    // The node runs one at a time, 60 ms each: q10 answers 600 ms after it was placed, past its
    // 400 ms budget, while no gap between answers comes near it. Each answer comes after a real
    // wait longer than the deadline sweep's period (100 ms here), so every deadline is checked.
    for (const id of ids) {
      clock.t += 60;
      await new Promise((r) => setTimeout(r, 110));
      f.reply('a', [id], ShardStatus.SHARD_STATUS_SUCCEEDED, 1);
    }
    for (const r of await Promise.all(runs)) expect(r).toMatchObject({ nodeId: 'a', attempts: 1 });
    expect(f.attempts('a')).toEqual(ids.map((id) => `${id}#1`));
    d.stop();
  });
  it('a node that keeps answering other shards pardons a silent one for ten budgets at most', async () => {
    const f = fakeMesh([info('a')]);
    const clock = manualClock();
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 50, now: clock.now });
    const started = clock.t;
    const silent = d.run(shard('silent'));
    await tick();
    // Other shards keep finishing on the node, 5 ms apart (well within each budget), for longer
    // than ten budgets.
    for (let i = 0; f.attempts('a').filter((x) => x.startsWith('silent')).length < 2; i++) {
      if (i > 1_000) throw new Error('the silent shard was never taken back');
      clock.t += 5;
      const id = `busy${i}`;
      const run = d.run(shard(id));
      await tick();
      f.reply('a', [id], ShardStatus.SHARD_STATUS_SUCCEEDED, 1);
      await run;
    }
    // Not at one budget (the node kept answering), but at ten.
    expect(clock.t - started).toBeGreaterThanOrEqual(500);
    f.reply('a', ['silent'], ShardStatus.SHARD_STATUS_SUCCEEDED, 2);
    expect(await silent).toMatchObject({ attempts: 2 });
    d.stop();
  });
  it('the cancel echo of a timed-out attempt does not count against the next attempt on the same node', async () => {
    const f = fakeMesh([info('a')]);
    const clock = manualClock();
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 300, maxAttempts: 3, now: clock.now });
    const p = d.run(shard('e'));
    await tick();
    // Timed out, cancelled, and placed on the same node again as attempt 2.
    clock.t += 300;
    await until('attempt 2 placed', () => (f.attempts('a').length >= 2 ? true : undefined), 10_000, 5);
    expect(f.attempts('a').slice(0, 2)).toEqual(['e#1', 'e#2']);
    f.reply('a', ['e'], ShardStatus.SHARD_STATUS_CANCELLED, 1); // the first attempt's answer to the cancel
    f.reply('a', ['e'], ShardStatus.SHARD_STATUS_FAILED, 1); // and anything else it says late
    await tick();
    f.reply('a', ['e'], ShardStatus.SHARD_STATUS_SUCCEEDED, 2);
    const r = await p;
    expect(r.outcome.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    expect(r.attempts).toBe(2);
    d.stop();
  });
  it('a node that registers again as a new process gives its shards back at once; a reconnect of the same process keeps them', async () => {
    const f = fakeMesh([info('a'), info('b', { load: 90 })]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 60_000 });
    const p = d.run(shard('r'));
    await tick();
    expect(f.attempts()).toEqual(['r#1']);
    const first = f.sent.find((s) => s.msg.body?.$case === 'assign')?.nodeId as string;
    f.emit('node:registered', { nodeId: first, rejoined: true, restarted: false, atMs: 0, payloadCacheBytes: 0 });
    await tick();
    expect(f.attempts()).toEqual(['r#1']);
    const registeredAt = Date.now();
    f.emit('node:registered', { nodeId: first, rejoined: true, restarted: true, atMs: registeredAt, payloadCacheBytes: 0 });
    await tick();
    expect(f.attempts()).toEqual(['r#1', 'r#2']);
    const second = f.sent.filter((s) => s.msg.body?.$case === 'assign').at(-1)?.nodeId as string;
    // The registry announces a registration after making the node READY: a shard placed on the
    // new process meanwhile (after the registration began) stays where it is.
    f.emit('node:registered', { nodeId: second, rejoined: true, restarted: true, atMs: registeredAt - 1, payloadCacheBytes: 0 });
    await tick();
    expect(f.attempts()).toEqual(['r#1', 'r#2']);
    f.reply(second, ['r'], ShardStatus.SHARD_STATUS_SUCCEEDED, 2);
    expect(await p).toMatchObject({ attempts: 2 });
    d.stop();
  });
  it('a rejoining node is told its current cap (none), so a stale one does not linger', async () => {
    const f = fakeMesh([info('a')]);
    const d = createDispatcher({ mesh: f.mesh, log: quiet, shardTimeoutMs: 10_000 });
    f.emit('node:registered', { nodeId: 'a', rejoined: true, restarted: false, atMs: 0, payloadCacheBytes: 0 });
    expect(f.sent.map((s) => s.msg.body)).toEqual([{ $case: 'throttle', value: { cpuFraction: 0, maxConcurrent: 0 } }]);
    d.stop();
  });
});
