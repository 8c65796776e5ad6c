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

// An outage from a replay's start (start_after_ms 0) used to be cut by a 0 ms timer, which fired
// only after the replay's first I/O: its first shards went to the node first, and on a loaded
// machine (the e2e test's flake) their outcomes came back from it before the cut. Here every
// long timer fires 10 s late, as on a machine too busy to run it: the cut must not wait for one.
vi.mock('../common/abortable-sleep.js', async (importOriginal) => {
  const mod = await importOriginal<typeof import('../common/abortable-sleep.js')>();
  return { ...mod, setLongTimeout: (fn: () => void, ms: number) => mod.setLongTimeout(fn, ms + 10_000) };
});

const CODE = contentHashOf('upper');
const OUTAGE_MS = 60_000;

describe('a replay with a link outage from its start', () => {
  let tc: TestCoordinator;
  /** Link outages cut (node id → until, ms), as the dispatcher keeps them. */
  const cut = new Map<string, number>();
  const cuts: { nodeId: string; untilMs: number; atMs: number }[] = [];
  /** The node each replayed shard ran on. */
  const ranOn: string[] = [];

  beforeAll(async () => {
    const live: ShardRunner = { run: async (a) => ({ outcome: upperOutcome(a, 'node-a'), nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' }) };
    // Places as the dispatcher would, node-b first: any node whose link is up, none whose link is cut.
    const replaying = {
      async run(a: ShardAssignment) {
        const nodeId = (cut.get('node-b') ?? 0) > Date.now() ? 'node-a' : 'node-b';
        ranOn.push(nodeId);
        return { outcome: upperOutcome(a, nodeId), nodeId, attempts: 1, queuedMs: 0, host: nodeId };
      },
      setLinkOutage(nodeId: string, untilMs: number) {
        cut.set(nodeId, untilMs);
        cuts.push({ nodeId, untilMs, atMs: Date.now() });
      },
    } satisfies ReplayShardRunner;
    const nodes = ['node-a', 'node-b'].map((nodeId) => NodeInfo.fromPartial({ nodeId, state: NodeState.NODE_STATE_READY }));
    const shared: PipelineShared & ReplayShared = { dispatcher: replaying, mesh: { nodes: () => nodes } };
    tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner: live }), replayExtension(shared)] });
    const pipelines = tc.client(PipelineServiceDefinition);
    await pipelines.applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'orders', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'shout', transform: 'upper', codeVersion: CODE, inputs: ['raw'] }] }) });
    await pipelines.ingest(
      (async function* () {
        yield { pipeline: 'orders', source: 'raw', records: ['a', 'b', 'c'].map((key) => ({ key, eventTimeNs: '0', payload: Buffer.from(`order ${key}`), mediaType: '' })) };
      })(),
    );
  });
  afterAll(async () => {
    await tc.stop();
  });

  it('cuts the link before the first shard is placed, however late timers fire: nothing runs on that node', async () => {
    const replays = tc.client(ReplayServiceDefinition);
    const startedMs = Date.now();
    const policy = { faults: { seed: '1', outages: [{ nodeId: 'node-b', startAfterMs: 0, durationMs: OUTAGE_MS }], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 } };
    const { replayId } = await replays.startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['a', 'b', 'c'].map((k) => `record:orders/raw:${k}`) } } }, policy: policy as Partial<ReplayPolicy> as ReplayPolicy });
    const states: ReplayState[] = [];
    for await (const p of replays.watchReplay({ replayId })) states.push(p.state);
    const { report } = await replays.getReplayReport({ replayId });
    expect(states.at(-1)).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
    expect(report?.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
    expect(ranOn).toEqual(['node-a', 'node-a', 'node-a']);
    expect(report?.summary?.placements).toEqual({ 'node-a': 3 });
    // Cut once, for its duration counted from the replay's start.
    expect(cuts.map((c) => c.nodeId)).toEqual(['node-b']);
    expect(cuts[0]?.untilMs).toBeGreaterThanOrEqual(startedMs + OUTAGE_MS);
    expect(cuts[0]?.untilMs).toBeLessThanOrEqual((cuts[0]?.atMs ?? 0) + OUTAGE_MS);
    // Each step says it was sent during the outage, and it went elsewhere.
    for (const s of report?.steps ?? []) {
      expect(s.replayNode).toBe('node-a');
      expect(s.faults).toContain('sent during the outage of node-b (after 0 ms for 1m)');
    }
  }, 20_000);
});
