import { InvalidArgumentError } from './errors.js';

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

// Reused between calls (encoding is synchronous): a closure of 10k nodes then allocates only
// its result, which keeps the Trace RPC's garbage low.
let sortScratch = new Int32Array(0);
let byteScratch = new Uint8Array(0);

/**
 * Encodes node numbers with their distances (same order, as a closure walk yields them). Each run
 * of equal distance becomes one group; the inputs are not modified.
 */
export function encodeCompactTrace(nodeIds: Int32Array, distances: Int32Array): CompactTrace {
  const n = nodeIds.length;
  if (distances.length !== n) throw new InvalidArgumentError('distances', `has ${distances.length} entries for ${n} node numbers`);
  if (sortScratch.length < n) sortScratch = new Int32Array(Math.max(1024, n * 2));
  if (byteScratch.length < n * MAX_VARINT_BYTES) byteScratch = new Uint8Array(Math.max(4096, n * 2 * MAX_VARINT_BYTES));
  const ids = sortScratch.subarray(0, n);
  ids.set(nodeIds);
  const out = byteScratch;
  const compactDistances: number[] = [];
  const compactCounts: number[] = [];
  let p = 0;
  for (let start = 0; start < n; ) {
    const d = distances[start] as number;
    let end = start + 1;
    while (end < n && distances[end] === d) end++;
    // Int32Array's sort without a comparator is numeric (and native).
    const group = ids.subarray(start, end).sort();
    if ((group[0] as number) < 0) throw new InvalidArgumentError('node_ids', `holds ${group[0]}, not a node number`);
    if (d < 0) throw new InvalidArgumentError('distances', `holds ${d}, not a distance`);
    compactDistances.push(d);
    compactCounts.push(end - start);
    let prev = 0;
    for (let i = 0; i < group.length; i++) {
      const v = group[i] as number;
      let delta = v - prev;
      prev = v;
      while (delta >= 0x80) {
        out[p++] = (delta & 0x7f) | 0x80;
        delta >>>= 7;
      }
      out[p++] = delta;
    }
    start = end;
  }
  return { compactDistances, compactCounts, compactNodeIds: Buffer.from(out.subarray(0, p)) };
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
      let v = 0;
      let shift = 0;
      let b: number;
      do {
        if (p >= len) throw new InvalidArgumentError('compact_node_ids', `ends inside the varint at byte ${at} (group ${g}, node ${i})`);
        if (p - at === MAX_VARINT_BYTES) throw new InvalidArgumentError('compact_node_ids', `varint at byte ${at} is longer than ${MAX_VARINT_BYTES} bytes`);
        b = bytes[p++] as number;
        // The fifth byte's bits would overflow int32 with <<: multiplied instead.
        v = shift < 28 ? v | ((b & 0x7f) << shift) : v + (b & 0x7f) * 0x1000_0000;
        shift += 7;
      } while (b >= 0x80);
      const value = prev + v;
      if (value > MAX_UINT32) throw new InvalidArgumentError('compact_node_ids', `varint at byte ${at} makes node number ${value}, beyond uint32`);
      nodeIds[k++] = value;
      prev = value;
    }
  }
  if (p !== len) throw new InvalidArgumentError('compact_node_ids', `has ${len - p} bytes after the ${total} nodes of compact_counts`);
  return { nodeIds, distances };
}
