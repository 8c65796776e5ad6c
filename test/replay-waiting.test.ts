import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ReplayServiceDefinition, ReplayState } from '../common/gen/retrace/v1/replay.js';
import type { ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import type { ReplayShardRunner } from '../coordinator/replay/replay-engine.js';
import { replayExtension, type ReplayShared } from '../coordinator/replay/replay-extension.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { upperOutcome } from './helpers/upper-outcome.js';

// A replay whose shards no node can take (its target died after it started) used to show only the
// last record's message for as long as it waited. The dispatcher's waiting list, filtered to the
// replay's shards, is now what its progress says. Shards run in-process, as the dispatcher would.

const CODE = contentHashOf('upper');

describe('a replay whose shards wait for a node', () => {
  let tc: TestCoordinator;
  /** Shards held back (as the dispatcher holds those no node can take), with their release. */
  const held: { a: ShardAssignment; release: () => void }[] = [];

  beforeAll(async () => {
    const live: ShardRunner = { run: async (a) => ({ outcome: upperOutcome(a, 'node-a'), nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' }) };
    const replaying: ReplayShardRunner = {
      async run(a) {
        await new Promise<void>((release) => held.push({ a, release }));
        return { outcome: upperOutcome(a, 'node-a'), nodeId: 'node-a', attempts: 1, queuedMs: 0 };
      },
      waiting: () => held.map((h) => ({ jobId: h.a.jobId, reason: 'no READY node (1 known)' })),
    };
    const shared: PipelineShared & ReplayShared = { dispatcher: replaying as never, mesh: { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-a', state: NodeState.NODE_STATE_READY })] } };
    tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner: live }), replayExtension(shared)] });
    const pipelines = tc.client(PipelineServiceDefinition);
    await pipelines.applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'orders', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'shout', transform: 'upper', codeVersion: CODE, inputs: ['raw'] }] }) });
    await pipelines.ingest(
      (async function* () {
        yield { pipeline: 'orders', source: 'raw', records: ['a', 'b'].map((key) => ({ key, eventTimeNs: '0', payload: Buffer.from(`order ${key}`), mediaType: '' })) };
      })(),
    );
  });
  afterAll(async () => {
    for (const h of held.splice(0)) h.release();
    await tc.stop();
  });

  it('says how many of its shards wait and why, then goes on once they are placed', async () => {
    const replays = tc.client(ReplayServiceDefinition);
    const { replayId } = await replays.startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:orders/raw:a', 'record:orders/raw:b'] } } }, policy: undefined });
    const messages: string[] = [];
    for await (const p of replays.watchReplay({ replayId })) {
      messages.push(p.message);
      if (p.message.startsWith('2 shards wait for a node')) for (const h of held.splice(0)) h.release();
      if (p.state === ReplayState.REPLAY_STATE_SUCCEEDED) break;
    }
    expect(messages).toContain('2 shards wait for a node: no READY node (1 known)');
    expect(messages.at(-1)).toBe('done');
  }, 20_000);
});
