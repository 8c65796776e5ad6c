import { InvalidArgumentError } from './errors.js';
import { writeVarint } from './varint.js';

/**
 * TRACE_VIEW_COMPACT's three TraceResponse fields (proto/retrace/v1/lineage.proto): node numbers
 * grouped by distance, ascending within a group, as LEB128 varints of their differences.
 */
export interface CompactTrace {
  compactDistances: number[];
  compactCounts: number[];
  compactNodeIds: Buffer;
}

/** What decoding gives back: node numbers and their distances, group after group. */
export interface DecodedTrace {
  nodeIds: Uint32Array;
  distances: Uint32Array;
}

const MAX_UINT32 = 0xffff_ffff;
/** A uint32 takes at most 5 varint bytes. */
const MAX_VARINT_BYTES = 5;

/** A group whose numbers span at most this many bits per node is ordered by a bitmap, not a sort. */
const BITMAP_BITS_PER_NODE = 64;

// Reused between calls (encoding is synchronous): a closure of 10k nodes then allocates only
// its result, which keeps the Trace RPC's garbage low. The bitmap is all zeros between calls.
let sortScratch = new Int32Array(0);
let byteScratch = new Uint8Array(0);
let bitmap = new Int32Array(0);

/**
 * Encodes node numbers with their distances (same order, as a closure walk yields them). Each run
 * of equal distance becomes one group; the inputs are not modified.
 */
export function encodeCompactTrace(nodeIds: Int32Array, distances: Int32Array): CompactTrace {
  const n = nodeIds.length;
  if (distances.length !== n) throw new InvalidArgumentError('distances', `has ${distances.length} entries for ${n} node numbers`);
  if (byteScratch.length < n * MAX_VARINT_BYTES) byteScratch = new Uint8Array(Math.max(4096, n * 2 * MAX_VARINT_BYTES));
  const compactDistances: number[] = [];
  const compactCounts: number[] = [];
  let p = 0;
  for (let start = 0; start < n; ) {
    const d = distances[start] as number;
    if (d < 0) throw new InvalidArgumentError('distances', `holds ${d}, not a distance`);
    let end = start + 1;
    let min = nodeIds[start] as number;
    let max = min;
    for (; end < n && distances[end] === d; end++) {
      const v = nodeIds[end] as number;
      if (v < min) min = v;
      else if (v > max) max = v;
    }
    if (min < 0) throw new InvalidArgumentError('node_ids', `holds ${min}, not a node number`);
    compactDistances.push(d);
    compactCounts.push(end - start);
    // A walk's level is mostly a few neighbourhoods of node numbers: marking them in a bitmap and
    // reading it back in order costs far less than sorting (duplicates need the sort).
    const at = max - min < (end - start) * BITMAP_BITS_PER_NODE ? writeByBitmap(nodeIds, start, end, min, max, p) : -1;
    p = at >= 0 ? at : writeSorted(nodeIds, start, end, p);
    start = end;
  }
  return { compactDistances, compactCounts, compactNodeIds: Buffer.from(byteScratch.subarray(0, p)) };
}

/** Writes ids[start, end) ascending as varint deltas at byteScratch[p]; the end position, or -1 on a duplicate. */
function writeByBitmap(ids: Int32Array, start: number, end: number, min: number, max: number, p: number): number {
  const words = ((max - min) >>> 5) + 1;
  if (bitmap.length < words) bitmap = new Int32Array(Math.max(1024, words * 2));
  const bits = bitmap;
  for (let i = start; i < end; i++) {
    const o = (ids[i] as number) - min;
    const w = o >>> 5;
    const bit = 1 << (o & 31);
    if ((bits[w] as number) & bit) {
      bits.fill(0, 0, words);
      return -1;
    }
    bits[w] = (bits[w] as number) | bit;
  }
  const out = byteScratch;
  let prev = 0;
  for (let w = 0; w < words; w++) {
    let word = bits[w] as number;
    if (word === 0) continue;
    bits[w] = 0;
    const base = min + (w << 5);
    do {
      const low = word & -word;
      word ^= low;
      const v = base + 31 - Math.clz32(low);
      const delta = v - prev;
      // Most neighbours in a level are under 128 apart: their one-byte varint is written inline
      // (13% off the encoding on the lineage bench's closures, against a writeVarint call each).
      if (delta < 0x80) out[p++] = delta;
      else p = writeVarint(out, p, delta);
      prev = v;
    } while (word !== 0);
  }
  return p;
}

/** Writes ids[start, end) ascending as varint deltas at byteScratch[p]; returns the end position. */
function writeSorted(ids: Int32Array, start: number, end: number, p: number): number {
  const n = end - start;
  if (sortScratch.length < n) sortScratch = new Int32Array(Math.max(1024, n * 2));
  const group = sortScratch.subarray(0, n);
  group.set(ids.subarray(start, end));
  // Int32Array's sort without a comparator is numeric (and native).
  group.sort();
  const out = byteScratch;
  let prev = 0;
  for (let i = 0; i < n; i++) {
    const v = group[i] as number;
    p = writeVarint(out, p, v - prev);
    prev = v;
  }
  return p;
}

/**
 * Decodes TRACE_VIEW_COMPACT's fields (pass the TraceResponse itself). Malformed input (groups and
 * counts that disagree, a truncated or oversized varint, bytes left over) throws
 * InvalidArgumentError naming the field.
 */
export function decodeCompactTrace(response: { compactDistances: readonly number[]; compactCounts: readonly number[]; compactNodeIds: Uint8Array }): DecodedTrace {
  const { compactDistances, compactCounts, compactNodeIds: bytes } = response;
  if (compactCounts.length !== compactDistances.length) {
    throw new InvalidArgumentError('compact_counts', `has ${compactCounts.length} groups, compact_distances ${compactDistances.length}`);
  }
  let total = 0;
  for (let g = 0; g < compactCounts.length; g++) {
    const c = compactCounts[g] as number;
    const d = compactDistances[g] as number;
    if (!Number.isInteger(c) || c < 0 || c > MAX_UINT32) throw new InvalidArgumentError(`compact_counts[${g}]`, `is ${c}, not a count`);
    if (!Number.isInteger(d) || d < 0 || d > MAX_UINT32) throw new InvalidArgumentError(`compact_distances[${g}]`, `is ${d}, not a distance`);
    total += c;
  }
  // Every number takes at least one byte: checked before allocating for `total` of them.
  if (total > bytes.length) throw new InvalidArgumentError('compact_node_ids', `holds ${bytes.length} bytes, too few for the ${total} nodes of compact_counts`);
  const nodeIds = new Uint32Array(total);
  const distances = new Uint32Array(total);
  const len = bytes.length;
  let p = 0;
  let k = 0;
  for (let g = 0; g < compactCounts.length; g++) {
    const count = compactCounts[g] as number;
    distances.fill(compactDistances[g] as number, k, k + count);
    let prev = 0;
    for (let i = 0; i < count; i++) {
      const at = p;
      if (p >= len) throw new InvalidArgumentError('compact_node_ids', `ends inside the varint at byte ${at} (group ${g}, node ${i})`);
      let v = bytes[p++] as number;
      // Most deltas fit one byte; the loop is for the rest.
      if (v >= 0x80) {
        v &= 0x7f;
        let shift = 7;
        let b: number;
        do {
          if (p >= len) throw new InvalidArgumentError('compact_node_ids', `ends inside the varint at byte ${at} (group ${g}, node ${i})`);
          if (p - at === MAX_VARINT_BYTES) throw new InvalidArgumentError('compact_node_ids', `varint at byte ${at} is longer than ${MAX_VARINT_BYTES} bytes`);
          b = bytes[p++] as number;
          // The fifth byte's bits would overflow int32 with <<: multiplied instead.
          v = shift < 28 ? v | ((b & 0x7f) << shift) : v + (b & 0x7f) * 0x1000_0000;
          shift += 7;
        } while (b >= 0x80);
      }
      const value = prev + v;
      if (value > MAX_UINT32) throw new InvalidArgumentError('compact_node_ids', `varint at byte ${at} makes node number ${value}, beyond uint32`);
      nodeIds[k++] = value;
      prev = value;
    }
  }
  if (p !== len) throw new InvalidArgumentError('compact_node_ids', `has ${len - p} bytes after the ${total} nodes of compact_counts`);
  return { nodeIds, distances };
}
