import { describe, expect, it } from 'vitest';
import { NodeState, ReadingSource, type ConnectResponse, type ForecastRequest, type NodeInfo, type ResourceReading } from '../common/gen/retrace/v1/node.js';
import type { ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { createHeadroomCache, toNodeHeadroom, type NodeHeadroom } from '../coordinator/forecast/free-capacity.js';
import type { MeshEvents } from '../coordinator/mesh/mesh-events.js';
import type { NodeMesh } from '../coordinator/mesh/node-mesh.js';
import { allocate, toNodeView } from '../coordinator/scheduler/allocator.js';
import { schedulerExtension, type SchedulerShared } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorContext } from '../coordinator/coordinator.js';

const GIB = 1024 ** 3;
const r = (name: string, value: number): ResourceReading => ({ name, value, text: '', unit: '', source: ReadingSource.READING_SOURCE_MEASURED });

/** Two otherwise equal 4-core 8 GiB nodes; `load` is the latest cpu.load reading. */
function info(nodeId: string, load: number): NodeInfo {
  return {
    nodeId,
    host: 'h',
    labels: {},
    state: NodeState.NODE_STATE_READY,
    capabilities: [r('cpu.threads', 4), r('memory.total', 8 * GIB)],
    latest: [r('cpu.load', load), r('memory.available', 6 * GIB)],
    lastReportNs: '0', registeredNs: '0', firstSeenNs: '0', reportIntervalNs: '0', connected: true, agentVersion: '', codeVersions: [], coordinatorRttMs: 0, transitions: [], drainReason: '', boundToken: '',
  };
}

const forecastOf = (capacity: number, means: number[]) => ({ capacity, points: means.map((mean) => ({ mean })) });
const settle = () => new Promise((resolve) => setTimeout(resolve, 10));

describe('forecast headroom', () => {
  it('is the least free capacity over the horizon, in cores and MiB, without reservations', () => {
    // 4 cores; load forecast 20% → 60% → 40%: the worst step (60%) leaves 1.6 cores.
    const h = toNodeHeadroom(forecastOf(100, [20, 60, 40]), forecastOf(8 * GIB, [2 * GIB, 3 * GIB]), 4);
    expect(h?.cpuCores).toBeCloseTo(1.6, 6);
    expect(h?.memoryMb).toBeCloseTo(5 * 1024, 6);
    // Overcommitted forecasts clamp at 0; a metric without a forecast is left to the readings.
    expect(toNodeHeadroom(forecastOf(100, [130]), undefined, 4)).toEqual({ cpuCores: 0 });
    expect(toNodeHeadroom(undefined, forecastOf(Number.NaN, [1]), 4)).toBeUndefined();
    expect(toNodeHeadroom(forecastOf(100, []), undefined, 4)).toBeUndefined();
  });

  it('ranks a node with low forecast headroom below an equal one with more', () => {
    const nodes = [info('a', 10), info('b', 10)].map(toNodeView);
    const headroom = new Map<string, NodeHeadroom>([
      ['a', { cpuCores: 0.2, memoryMb: 6 * 1024 }],
      ['b', { cpuCores: 3.5, memoryMb: 6 * 1024 }],
    ]);
    const pick = (h: Map<string, NodeHeadroom>): string => {
      const res = allocate(nodes, {}, new Map(), { headroom: (id) => h.get(id) });
      return 'nodeId' in res ? res.nodeId : res.waiting;
    };
    expect(pick(headroom)).toBe('b');
    // Swapped forecasts, swapped choice: the forecast decides, not the node id tie-break.
    expect(pick(new Map([['a', headroom.get('b') as NodeHeadroom], ['b', headroom.get('a') as NodeHeadroom]]))).toBe('a');
  });

  it('the cache refreshes on reports at most every minRefreshMs, one at a time, and keeps the last good value', async () => {
    let clock = 0;
    const calls: string[] = [];
    let answer: (() => Promise<NodeHeadroom | undefined>) | undefined;
    const errors: string[] = [];
    const cache = createHeadroomCache({
      minRefreshMs: 1000,
      now: () => clock,
      compute: (nodeId) => {
        calls.push(nodeId);
        return answer ? answer() : Promise.resolve({ cpuCores: calls.length, memoryMb: 1 });
      },
      onError: (nodeId, err) => errors.push(`${nodeId}: ${String(err)}`),
    });
    expect(cache.get('a')).toBeUndefined();
    cache.refresh('a');
    cache.refresh('a'); // in flight, and too soon
    await settle();
    expect(calls).toEqual(['a']);
    expect(cache.get('a')).toEqual({ cpuCores: 1, memoryMb: 1 });
    clock = 500;
    cache.refresh('a');
    expect(calls).toHaveLength(1);
    clock = 1500;
    answer = () => Promise.reject(new Error('not enough history'));
    cache.refresh('a');
    cache.refresh('a');
    await settle();
    expect(calls).toHaveLength(2);
    expect(cache.get('a')).toEqual({ cpuCores: 1, memoryMb: 1 });
    clock = 3000;
    cache.refresh('a');
    await settle();
    expect(errors).toEqual(['a: Error: not enough history']); // reported once per failing streak
    cache.forget('a');
    expect(cache.get('a')).toBeUndefined();
    cache.stop();
    clock = 10_000;
    cache.refresh('a');
    expect(calls).toHaveLength(3);
    expect(() => createHeadroomCache({ compute: async () => undefined, minRefreshMs: -1 })).toThrow(/minRefreshMs/);
  });

  it('the scheduler extension places by the mesh forecast, not the latest readings', async () => {
    // Latest readings favour a (10% load vs 70%); the forecast says a is about to be busy (95%)
    // and b about to be idle (5%).
    const nodes = [info('a', 10), info('b', 70)];
    const cpuForecast: Record<string, number> = { a: 95, b: 5 };
    const requests: ForecastRequest[] = [];
    for (const forecastHeadroom of [true, false]) {
      const listeners: { [K in keyof MeshEvents]?: ((p: MeshEvents[K]) => void)[] } = {};
      const sent: { nodeId: string; msg: ConnectResponse }[] = [];
      const mesh = {
        nodes: () => nodes,
        send: (nodeId: string, msg: ConnectResponse) => {
          sent.push({ nodeId, msg });
          return true;
        },
        onMessage: () => () => {},
        on: <E extends keyof MeshEvents>(e: E, l: (p: MeshEvents[E]) => void) => {
          ((listeners[e] ??= []) as ((p: MeshEvents[E]) => void)[]).push(l);
          return () => {};
        },
        setReservationSource: () => {},
        implementation: {
          async forecast(req: ForecastRequest) {
            requests.push(req);
            if (req.metric === 'cpu.load') return { nodeId: req.nodeId, metric: req.metric, capacity: 100, points: [{ mean: cpuForecast[req.nodeId] ?? 0 }] };
            throw new Error('memory.used: not enough history');
          },
        },
      } as unknown as NodeMesh;
      const shared: SchedulerShared = { mesh };
      const ext = await schedulerExtension(shared, { forecastHeadroom, headroomRefreshMs: 0 })({ log: () => {} } as unknown as CoordinatorContext);
      for (const nodeId of ['a', 'b']) for (const l of listeners['node:reported'] ?? []) l({ nodeId, reportTimeMs: 0, receivedAtMs: 0, storedAtMs: 0, readings: 2 });
      await settle();
      if (forecastHeadroom) {
        expect(shared.headroom?.('a')?.cpuCores).toBeCloseTo(0.2, 6);
        // Memory had no forecast: the latest reading stands in.
        expect(shared.headroom?.('b')).toEqual({ cpuCores: expect.closeTo(3.8, 6) as number, memoryMb: 6 * 1024 });
      } else expect(shared.headroom).toBeUndefined();
      const assignment: ShardAssignment = { shardId: `s-${forecastHeadroom}`, stepName: 'step', transform: 't', codeVersion: 'sha256:x', inputs: [], timeoutMs: 0, memoryLimitMb: 0, jobId: '', attempt: 0 };
      void shared.dispatcher?.run(assignment);
      await settle();
      const placedOn = sent.find((s) => s.msg.body?.$case === 'assign')?.nodeId;
      expect(placedOn).toBe(forecastHeadroom ? 'b' : 'a');
      await ext.stop?.();
    }
    expect(requests.map((q) => q.metric).sort()).toEqual(['cpu.load', 'cpu.load', 'memory.used', 'memory.used']);
    expect(requests[0]?.horizonNs).toBe('60000000000');
  });
});
