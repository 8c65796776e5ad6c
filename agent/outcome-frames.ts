import { ShardStatus, type ShardOutcome } from '../common/gen/retrace/v1/shard.js';

/**
 * The most bytes of outcomes the agent puts in one `Connect` frame. The coordinator takes
 * messages up to 64 MiB (`grpc.max_receive_message_length`); a larger frame is refused with
 * RESOURCE_EXHAUSTED and closes the whole stream, dropping every outcome in flight with it. The
 * 4 MiB left over covers what `outcomeBytes` does not count exactly (field tags, resources).
 */
export const MAX_OUTCOME_FRAME_BYTES = 60 * 1024 * 1024;
/** Outcomes in one frame at most. */
export const MAX_OUTCOMES_PER_FRAME = 256;

/** About how many bytes `outcome` takes on the wire: its payloads and strings, plus a fixed allowance. */
export function outcomeBytes(outcome: ShardOutcome): number {
  let n = 512 + outcome.shardId.length + outcome.error.length + outcome.nodeId.length;
  for (const o of outcome.outputs) n += 64 + o.payload.byteLength + o.key.length + o.contentHash.length + o.mediaType.length;
  return n;
}

/**
 * `outcome`, or, when it alone would pass `maxBytes`, a FAILED outcome that says why and carries
 * no outputs: the coordinator could not receive it, and sending it would break the stream.
 */
export function capOutcome(outcome: ShardOutcome, maxBytes = MAX_OUTCOME_FRAME_BYTES): ShardOutcome {
  const bytes = outcomeBytes(outcome);
  if (bytes <= maxBytes) return outcome;
  let payloads = 0;
  for (const o of outcome.outputs) payloads += o.payload.byteLength;
  const mib = (b: number): string => `${(b / (1024 * 1024)).toFixed(1)} MiB`;
  return {
    ...outcome,
    status: ShardStatus.SHARD_STATUS_FAILED,
    outputs: [],
    error: `outputs too large: ${outcome.outputs.length} output(s) of ${mib(payloads)} in all, past the ${mib(maxBytes)} one shard's outcome may carry to the coordinator`,
  };
}

/** Splits `outcomes` into frames of at most `maxCount` outcomes and `maxBytes` bytes (an outcome alone may pass `maxBytes`: cap it first). */
export function frameOutcomes(outcomes: readonly ShardOutcome[], maxBytes = MAX_OUTCOME_FRAME_BYTES, maxCount = MAX_OUTCOMES_PER_FRAME): ShardOutcome[][] {
  const frames: ShardOutcome[][] = [];
  let frame: ShardOutcome[] = [];
  let bytes = 0;
  for (const o of outcomes) {
    const b = outcomeBytes(o);
    if (frame.length > 0 && (frame.length >= maxCount || bytes + b > maxBytes)) {
      frames.push(frame);
      frame = [];
      bytes = 0;
    }
    frame.push(o);
    bytes += b;
  }
  if (frame.length > 0) frames.push(frame);
  return frames;
}
