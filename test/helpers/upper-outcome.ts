import { ShardStatus, type ShardAssignment, type ShardOutcome } from '../../common/gen/retrace/v1/shard.js';

/** A shard run in-process on `nodeId` that succeeded, its one output its input's text upper-cased (the "upper" transform of the replay tests). */
export function upperOutcome(a: ShardAssignment, nodeId: string): ShardOutcome {
  const now = String(BigInt(Date.now()) * 1_000_000n);
  const text = new TextDecoder().decode(a.inputs[0]?.payload);
  return { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from(text.toUpperCase()), mediaType: 'text/plain' }], resources: undefined, error: '', attempt: a.attempt, startedAtNs: now, endedAtNs: now, nodeId };
}
