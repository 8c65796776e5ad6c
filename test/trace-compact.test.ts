import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../common/errors.js';
import { decodeCompactTrace, encodeCompactTrace } from '../common/trace-compact.js';
import { createRng } from '../common/random.js';

/** Reference grouping: each run of equal distance, its ids sorted; written independently of the codec. */
function expected(ids: number[], distances: number[]): { ids: number[]; distances: number[] } {
  const outIds: number[] = [];
  const outD: number[] = [];
  let i = 0;
  while (i < ids.length) {
    let j = i;
    while (j < ids.length && distances[j] === distances[i]) j++;
    outIds.push(...ids.slice(i, j).sort((a, b) => a - b));
    for (let k = i; k < j; k++) outD.push(distances[i] as number);
    i = j;
  }
  return { ids: outIds, distances: outD };
}

function roundTrip(ids: number[], distances: number[]): { ids: number[]; distances: number[] } {
  const d = decodeCompactTrace(encodeCompactTrace(Int32Array.from(ids), Int32Array.from(distances)));
  return { ids: Array.from(d.nodeIds), distances: Array.from(d.distances) };
}

const decodeBytes = (counts: number[], bytes: number[], distances = counts.map((_, i) => i + 1)) =>
  decodeCompactTrace({ compactDistances: distances, compactCounts: counts, compactNodeIds: Uint8Array.from(bytes) });

describe('compact trace view codec', () => {
  // First: it needs the encoder's bitmap as a correct encoder leaves it, which earlier tests could not vouch for.
  it('orders dense groups (bitmap) and sparse or repeating ones (sort) alike', () => {
    // The group after a refused bitmap (9 marked, then 9 again) must not see that mark as 1 + 2.
    expect(roundTrip([9, 9, 7, 2, 1], [2, 2, 2, 3, 3])).toEqual({ ids: [7, 9, 9, 1, 2], distances: [2, 2, 2, 3, 3] });
    // Dense: 40 numbers within 64 bits each; a repeat in a dense group; sparse: far apart.
    const dense = Array.from({ length: 40 }, (_, i) => 1000 + ((i * 37) % 40) * 3);
    const repeat = [7, 9, 8, 9, 7];
    const sparse = [3_000_000, 5, 900_000, 17];
    const ids = [...dense, ...repeat, ...sparse];
    const distances = [...dense.map(() => 1), ...repeat.map(() => 2), ...sparse.map(() => 3)];
    expect(roundTrip(ids, distances)).toEqual(expected(ids, distances));
  });

  it('writes each group ascending as varint deltas, first number as it is', () => {
    const c = encodeCompactTrace(Int32Array.of(300, 5, 7, 9, 2), Int32Array.of(1, 1, 1, 2, 2));
    expect(c.compactDistances).toEqual([1, 2]);
    expect(c.compactCounts).toEqual([3, 2]);
    // 5, +2, +293 (0xa5 0x02); then 2, +7.
    expect([...c.compactNodeIds]).toEqual([5, 2, 0xa5, 0x02, 2, 7]);
  });

  it('round-trips walk-ordered closures, including repeated distances (both directions) and duplicates', () => {
    const rnd = createRng(7);
    for (let trial = 0; trial < 50; trial++) {
      const ids: number[] = [];
      const distances: number[] = [];
      const runs = 1 + Math.floor(rnd() * 12);
      for (let r = 0; r < runs; r++) {
        const d = Math.floor(rnd() * 6);
        const size = 1 + Math.floor(rnd() * 200);
        for (let k = 0; k < size; k++) {
          ids.push(Math.floor(rnd() * (trial % 2 === 0 ? 5000 : 2 ** 31)));
          distances.push(d);
        }
      }
      expect(roundTrip(ids, distances)).toEqual(expected(ids, distances));
    }
  });

  it('leaves its inputs as they were', () => {
    const ids = Int32Array.of(9, 3, 5);
    const d = Int32Array.of(2, 2, 2);
    encodeCompactTrace(ids, d);
    expect([...ids]).toEqual([9, 3, 5]);
  });

  it('handles an empty page and a single node', () => {
    const empty = encodeCompactTrace(new Int32Array(0), new Int32Array(0));
    expect(empty).toEqual({ compactDistances: [], compactCounts: [], compactNodeIds: Buffer.alloc(0) });
    expect(decodeCompactTrace(empty)).toEqual({ nodeIds: new Uint32Array(0), distances: new Uint32Array(0) });
    expect(roundTrip([42], [0])).toEqual({ ids: [42], distances: [0] });
  });

  it('carries the largest node numbers: int32 from the engine, uint32 on the wire', () => {
    const max = 2 ** 31 - 1;
    expect(roundTrip([max, 0, max - 1], [3, 3, 3])).toEqual({ ids: [0, max - 1, max], distances: [3, 3, 3] });
    expect(Array.from(decodeBytes([2], [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]).nodeIds)).toEqual([0xffff_ffff, 0xffff_ffff]);
  });

  it('refuses malformed input, naming the field', () => {
    const fails = (f: () => unknown, message: RegExp) => {
      let err: unknown;
      try {
        f();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toMatch(message);
    };
    fails(() => decodeBytes([1], [1], [1, 2]), /^compact_counts: has 1 groups, compact_distances 2/);
    fails(() => decodeBytes([2], [1, 0x81]), /^compact_node_ids: ends inside the varint at byte 1/);
    fails(() => decodeBytes([3], [1, 2]), /^compact_node_ids: holds 2 bytes, too few for the 3 nodes/);
    fails(() => decodeBytes([1], [1, 2]), /^compact_node_ids: has 1 bytes after the 1 nodes/);
    fails(() => decodeBytes([1], [0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), /^compact_node_ids: varint at byte 0 is longer than 5 bytes/);
    fails(() => decodeBytes([1], [0x80, 0x80, 0x80, 0x80, 0x10]), /^compact_node_ids: varint at byte 0 makes node number 4294967296, beyond uint32/);
    fails(() => decodeBytes([2], [0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]), /^compact_node_ids: varint at byte 5 makes node number 4294967296/);
    fails(() => decodeBytes([-1], []), /^compact_counts\[0\]: is -1/);
    fails(() => decodeBytes([1], [1], [1.5]), /^compact_distances\[0\]: is 1.5/);
    fails(() => encodeCompactTrace(Int32Array.of(1, 2), Int32Array.of(1)), /^distances: has 1 entries for 2 node numbers/);
    fails(() => encodeCompactTrace(Int32Array.of(4, -3), Int32Array.of(1, 1)), /^node_ids: holds -3/);
  });
});
