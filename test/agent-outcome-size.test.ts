import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { capOutcome, frameOutcomes, MAX_OUTCOME_FRAME_BYTES } from '../agent/outcome-frames.js';
import { ShardStatus, type ShardAssignment, type ShardOutcome } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startAgentCoordinator, type AgentCoordinator } from './helpers/test-coordinator.js';

// Returns `params.mib` MiB of bytes: 70 MiB is past the 64 MiB the coordinator receives in one message.
const SOURCE = `
import { defineTransform } from 'retrace/transform';
export default defineTransform({
  name: 'big-output',
  run(input, params) {
    return { payload: new Uint8Array(Number(params.mib) * 1024 * 1024).fill(7) };
  },
});
`;

function outcome(id: string, bytes: number): ShardOutcome {
  return {
    shardId: id,
    status: ShardStatus.SHARD_STATUS_SUCCEEDED,
    outputs: [{ key: 'k', contentHash: '', payload: Buffer.alloc(bytes), mediaType: '' }],
    error: '',
    startedAtNs: '0',
    endedAtNs: '0',
    nodeId: 'n',
    attempt: 1,
  };
}

describe('agent: outcomes too large for the coordinator', () => {
  it('frames outcomes under the message limit and fails one that alone passes it', () => {
    const mib = 1024 * 1024;
    const frames = frameOutcomes([outcome('a', 25 * mib), outcome('b', 25 * mib), outcome('c', 25 * mib), outcome('d', 1)]);
    expect(frames.map((f) => f.map((o) => o.shardId))).toEqual([['a', 'b'], ['c', 'd']]);
    const capped = capOutcome(outcome('e', MAX_OUTCOME_FRAME_BYTES + 1));
    expect(capped.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
    expect(capped.outputs).toEqual([]);
    expect(capped.error).toMatch(/^outputs too large: 1 output\(s\) of 60\.0 MiB in all, past the 60\.0 MiB/);
    const small = outcome('f', 10);
    expect(capOutcome(small)).toBe(small);
  });

  describe('with a real coordinator and agent', () => {
    let tc: AgentCoordinator;
    const shared: CoordinatorServices = {};
    let codeVersion = '';

    beforeAll(async () => {
      tc = await startAgentCoordinator({
        tmpPrefix: 'retrace-outcome-size-',
        shared,
        mesh: { minReportIntervalMs: 50 },
        extensions: () => [schedulerExtension(shared, { shardTimeoutMs: 20_000 })],
        transforms: [{ name: 'big-output', source: SOURCE, file: 'big.ts' }],
        agents: [{ name: 'a' }],
      });
      codeVersion = tc.codeVersions['big-output'] ?? '';
    }, 60_000);

    afterAll(async () => {
      await tc?.stop();
    }, 30_000);

    function shard(id: string, mib: number): ShardAssignment {
      const payload = Buffer.from('{}');
      return {
        shardId: id,
        stepName: 'big',
        transform: 'big-output',
        codeVersion,
        parameters: { mib },
        inputs: [{ name: 'in', objectId: `obj-${id}`, contentHash: contentHashOf(payload), payload, key: id, eventTimeNs: '0', mediaType: 'application/json', cached: false }],
        timeoutMs: 0,
        memoryLimitMb: 0,
        jobId: '',
        attempt: 0,
      };
    }

    it('a 70 MiB output fails its shard at once, naming the size; the stream and a small shard beside it are unharmed', async () => {
      const dispatcher = shared.dispatcher;
      if (!dispatcher) throw new Error('no dispatcher');
      const started = Date.now();
      const [big, small] = await Promise.all([dispatcher.run(shard('big', 70)), dispatcher.run(shard('small', 1))]);
      expect(big.outcome.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
      expect(big.outcome.error).toMatch(/^outputs too large: 1 output\(s\) of 70\.0 MiB in all, past the 60\.0 MiB/);
      expect(big.attempts).toBe(1);
      expect(small.outcome.status, small.outcome.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      expect(small.outcome.outputs[0]?.payload.byteLength).toBe(1024 * 1024);
      expect(Date.now() - started).toBeLessThan(10_000);
    }, 20_000);
  });
});
