import { sha256 } from '../../common/hash.js';

/** Which injected fault a draw decides (also what keeps two draws for one step apart). */
export type FaultKind = 'fail' | 'corrupt' | 'corrupt-at' | 'link-outage';

/**
 * The uniform number in [0, 1) that decides one seeded fault: the first 48 bits of
 * sha256(seed, record, step, kind, index) (`seed` in decimal: a number and its decimal string draw
 * alike), so it depends on what it is drawn for, never on when.
 * Records run concurrently and finish in any order; a shared random stream drawn in completion
 * order gave the same seed different faults on every run. `record` is the source record's
 * object id, `step` the original step id, `index` tells apart draws of one kind in one step
 * (an input's position). The dispatcher's later attempts of a shard resend the same assignment,
 * so an attempt number is not part of it.
 */
export function faultDraw(seed: number | string, record: string, step: string, kind: FaultKind, index = 0): number {
  return sha256(`${seed}\u0000${record}\u0000${step}\u0000${kind}\u0000${index}`).readUIntBE(0, 6) / 2 ** 48;
}
