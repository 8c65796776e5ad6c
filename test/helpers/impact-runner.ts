import { ShardStatus } from '../../common/gen/retrace/v1/shard.js';
import type { ShardRunner } from '../../coordinator/pipeline/pipeline-runner.js';

/**
 * Runs every shard in-process on "cpu-node": its output is `step(input)`, so each record's
 * outputs differ by step and input, the shape the impact tests trace downstream.
 */
export const impactRunner: ShardRunner = {
  async run(assignment) {
    const started = BigInt(Date.now()) * 1_000_000n;
    const resources = { cpuTimeNs: '1000', peakMemoryBytes: '4096', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1000' };
    const payload = Buffer.from(`${assignment.stepName}(${new TextDecoder().decode(assignment.inputs[0]?.payload)})`);
    const outcome = { shardId: assignment.shardId, startedAtNs: started.toString(), endedAtNs: (started + 1000n).toString(), nodeId: 'cpu-node', attempt: 1, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload, mediaType: 'text/plain' }], resources, error: '' };
    return { outcome, nodeId: 'cpu-node', attempts: 1, queuedMs: 0, host: 'host-a' };
  },
};
