import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ReplayServiceDefinition, ReplayState, type ReplayReport } from '../common/gen/retrace/v1/replay.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import type { ReplayShardRunner } from '../coordinator/replay/replay-engine.js';
import { replayExtension, type ReplayShared } from '../coordinator/replay/replay-extension.js';
import { replayReportSvg } from '../scripts/cli/replay-commands.js';
import { waitFor } from './helpers/mesh-server.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { upperOutcome } from './helpers/upper-outcome.js';

// A report read while a replay runs listed its running steps with an empty node: where a step runs
// was known only once it had finished. The dispatcher now tells the replay of each placement.

const CODE = contentHashOf('upper');

describe('a replay report read mid-replay', () => {
  let tc: TestCoordinator;
  const held: (() => void)[] = [];

  beforeAll(async () => {
    const live: ShardRunner = { run: async (a) => ({ outcome: upperOutcome(a, 'node-a'), nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' }) };
    const replaying: ReplayShardRunner = {
      async run(a, options) {
        // Placed on node-b, as the dispatcher would tell it, and held there.
        options?.onPlaced?.('node-b');
        await new Promise<void>((release) => held.push(release));
        return { outcome: upperOutcome(a, 'node-b'), nodeId: 'node-b', attempts: 1, queuedMs: 0 };
      },
    };
    const shared: PipelineShared & ReplayShared = { dispatcher: replaying as never, mesh: { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-b', state: NodeState.NODE_STATE_READY })] } };
    tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner: live }), replayExtension(shared)] });
    const pipelines = tc.client(PipelineServiceDefinition);
    await pipelines.applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'orders', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'shout', transform: 'upper', codeVersion: CODE, inputs: ['raw'] }] }) });
    await pipelines.ingest(
      (async function* () {
        yield { pipeline: 'orders', source: 'raw', records: [{ key: 'a', eventTimeNs: '0', payload: Buffer.from('order a'), mediaType: '' }] };
      })(),
    );
  });
  afterAll(async () => {
    for (const release of held.splice(0)) release();
    await tc.stop();
  });

  it('names the node of each running step, and its --svg chart draws the record as running, not failed', async () => {
    const replays = tc.client(ReplayServiceDefinition);
    const { replayId } = await replays.startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:orders/raw:a'] } } }, policy: undefined });
    await waitFor(() => held.length === 1, 10_000, 'the shard placed');
    const running = await replays.getReplayReport({ replayId });
    expect(running.report?.state).toBe(ReplayState.REPLAY_STATE_RUNNING);
    expect(running.report?.steps.map((s) => [s.step, s.status, s.replayNode])).toEqual([['shout', 'RUNNING', 'node-b']]);
    const svg = replayReportSvg(running.report as ReplayReport);
    expect(svg).toContain('running (1)');
    expect(svg).toContain('failed (0)');
    for (const release of held.splice(0)) release();
    await waitFor(async () => (await replays.getReplayReport({ replayId })).report?.state === ReplayState.REPLAY_STATE_SUCCEEDED, 10_000, 'the replay done');
  }, 20_000);
});
