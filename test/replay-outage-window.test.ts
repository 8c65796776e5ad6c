import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ReplayServiceDefinition, ReplayState, type ReplayPolicy } from '../common/gen/retrace/v1/replay.js';
import type { ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import type { ReplayShardRunner } from '../coordinator/replay/replay-engine.js';
import { replayExtension, type ReplayShared } from '../coordinator/replay/replay-extension.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { upperOutcome } from './helpers/upper-outcome.js';

// An outage that starts after the replay's start (start_after_ms > 0) used to be cut by a timer:
// on a loaded machine it fired late, and until then the node was given shards and its outcomes
// were taken, while the report noted those steps as sent during the outage; the outage then also
// ended that late. Here every long timer fires 10 s late, as on a machine too busy to run it: the
// runner must get the whole nominal window at the start, and each step's note must agree with
// where it ran.
vi.mock('../common/abortable-sleep.js', async (importOriginal) => {
  const mod = await importOriginal<typeof import('../common/abortable-sleep.js')>();
  return { ...mod, setLongTimeout: (fn: () => void, ms: number) => mod.setLongTimeout(fn, ms + 10_000) };
});

const CODE = contentHashOf('upper');
const AFTER_MS = 250;
const FOR_MS = 400;
/**
 * How long each step runs in the fake runner: s1 before the window, s2 inside it, s3 after its
 * end. s2 is handed over before the window's start (at 200 ms) and placed after it, as a shard
 * waiting in the dispatcher's queue would be.
 */
const RUNS_MS: Record<string, number> = { s1: 200, s2: 400, s3: 0 };
const QUEUED_MS: Record<string, number> = { s2: 100 };

describe('a replay with a link outage after its start', () => {
  let tc: TestCoordinator;
  /** Link outage windows given to the runner, as the dispatcher keeps them (Date.now() clock). */
  const windows: { nodeId: string; fromMs: number; untilMs: number }[] = [];
  const ranOn = new Map<string, string>();

  beforeAll(async () => {
    const live: ShardRunner = { run: async (a) => ({ outcome: upperOutcome(a, 'node-a'), nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' }) };
    // Places as the dispatcher would, node-b first: any node whose link is up now, none whose link is down.
    const replaying = {
      async run(a: ShardAssignment) {
        const handedMs = Date.now();
        await new Promise((r) => setTimeout(r, QUEUED_MS[a.stepName] ?? 0));
        const t = Date.now();
        const nodeId = windows.some((w) => w.nodeId === 'node-b' && t >= w.fromMs && t < w.untilMs) ? 'node-a' : 'node-b';
        ranOn.set(a.stepName, nodeId);
        await new Promise((r) => setTimeout(r, RUNS_MS[a.stepName] ?? 0));
        return { outcome: upperOutcome(a, nodeId), nodeId, attempts: 1, queuedMs: t - handedMs, host: nodeId };
      },
      setLinkOutage(nodeId: string, untilMs: number, fromMs = Date.now()) {
        windows.push({ nodeId, fromMs, untilMs });
      },
    } satisfies ReplayShardRunner;
    const nodes = ['node-a', 'node-b'].map((nodeId) => NodeInfo.fromPartial({ nodeId, state: NodeState.NODE_STATE_READY }));
    const shared: PipelineShared & ReplayShared = { dispatcher: replaying, mesh: { nodes: () => nodes } };
    tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner: live }), replayExtension(shared)] });
    const pipelines = tc.client(PipelineServiceDefinition);
    const steps = [
      { name: 's1', transform: 'upper', codeVersion: CODE, inputs: ['raw'] },
      { name: 's2', transform: 'upper', codeVersion: CODE, inputs: ['s1'] },
      { name: 's3', transform: 'upper', codeVersion: CODE, inputs: ['s2'] },
    ];
    await pipelines.applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'orders', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps }) });
    await pipelines.ingest(
      (async function* () {
        yield { pipeline: 'orders', source: 'raw', records: [{ key: 'a', eventTimeNs: '0', payload: Buffer.from('order a'), mediaType: '' }] };
      })(),
    );
  });
  afterAll(async () => {
    await tc.stop();
  });

  it('gives the runner the nominal window at the start, however late timers fire; the notes agree with where steps ran', async () => {
    const replays = tc.client(ReplayServiceDefinition);
    const startedMs = Date.now();
    const policy = { faults: { seed: '1', outages: [{ nodeId: 'node-b', startAfterMs: AFTER_MS, durationMs: FOR_MS }], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 } };
    const { replayId } = await replays.startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:orders/raw:a'] } } }, policy: policy as Partial<ReplayPolicy> as ReplayPolicy });
    for await (const _ of replays.watchReplay({ replayId }));
    const { report } = await replays.getReplayReport({ replayId });
    expect(report?.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
    // A step is noted as sent during the outage exactly when it went elsewhere.
    const note = `sent during the outage of node-b (after ${AFTER_MS} ms for ${FOR_MS} ms)`;
    expect(report?.steps.map((s) => s.step).sort()).toEqual(['s1', 's2', 's3']);
    for (const s of report?.steps ?? []) {
      expect({ step: s.step, node: s.replayNode, noted: s.faults.includes(note) }).toEqual({ step: s.step, node: ranOn.get(s.step), noted: s.replayNode === 'node-a' });
    }
    // One window, set before the replay's first step, exactly as long as asked, from its nominal start.
    expect(windows).toHaveLength(1);
    const w = windows[0] as { nodeId: string; fromMs: number; untilMs: number };
    expect(w.nodeId).toBe('node-b');
    expect(w.untilMs - w.fromMs).toBe(FOR_MS);
    expect(w.fromMs).toBeGreaterThanOrEqual(startedMs + AFTER_MS);
    // s3 is sent after s1 and s2 have run (700 ms), past the window's end: back on node-b.
    expect(report?.steps.find((s) => s.step === 's3')?.replayNode).toBe('node-b');
  }, 20_000);
});
