import { describe, expect, it } from 'vitest';
import { TraceResponse, TraceSessionResponse } from '../common/gen/retrace/v1/lineage.js';
import { encodeCompactTrace } from '../common/trace-compact.js';
import { encodeTraceResponse, encodeTraceSessionResponse } from '../coordinator/grpc/lineage-wire.js';

/** What nice-grpc sent before: the generated encoder over fromPartial's copy, or its error. */
function generic<T>(type: { encode(m: T): { finish(): Uint8Array }; fromPartial(m: never): T }, m: T): number[] | string {
  try {
    return [...type.encode(type.fromPartial(m as never)).finish()];
  } catch (err) {
    return String(err);
  }
}

function ours<T>(encode: (m: T) => Uint8Array, m: T): number[] | string {
  try {
    return [...encode(m)];
  } catch (err) {
    return String(err);
  }
}

const empty = (): TraceResponse => TraceResponse.fromPartial({});
const ids = Int32Array.from({ length: 5000 }, (_, i) => (i * 7919) % 100_000);
const distances = Int32Array.from({ length: 5000 }, (_, i) => Math.floor(i / 100));

const answers: [string, TraceResponse][] = [
  ['empty', empty()],
  ['compact', { ...empty(), totalNodes: '5000', ...encodeCompactTrace(ids, distances) }],
  ['ids with a page token', { ...empty(), totalNodes: '123456789012', nextPageToken: 'tök€n-💥', nodeIds: [1, 300, 70_000, 4_294_967_295], distances: [0, 1, 2, 3] }],
  ['packed', { ...empty(), totalNodes: '4', packedNodeIds: Buffer.from([1, 2, 3, 4]), packedDistances: Buffer.alloc(200, 7) }],
  ['keys, a total beyond 2^53', { ...empty(), totalNodes: '18446744073709551615', keys: ['a'] }],
  ['nodes', { ...empty(), totalNodes: '1', nodes: [{ ref: undefined, key: 'k', distance: 1, firstSeenNs: '5', label: 'l' } as never] }],
  ['a negative distance', { ...empty(), compactDistances: [-1] }],
  ['fields missing', { nodes: [], totalNodes: '3' } as unknown as TraceResponse],
];

describe('Trace and TraceSession answers encoded by hand (lineage-wire.ts)', () => {
  it.each(answers)('%s: the same bytes (or error) as the generated encoder', (_, answer) => {
    expect(ours(encodeTraceResponse, answer)).toEqual(generic(TraceResponse, answer));
    for (const requestId of [0, 1, 200, 4_294_967_295]) {
      const m: TraceSessionResponse = { requestId, result: { $case: 'trace', value: answer } };
      expect(ours(encodeTraceSessionResponse, m)).toEqual(generic(TraceSessionResponse, m));
    }
  });

  it('encodes an error answer as the generated encoder does', () => {
    const m: TraceSessionResponse = { requestId: 3, result: { $case: 'error', value: { code: 3, message: 'start: is required', field: 'start' } } };
    expect(ours(encodeTraceSessionResponse, m)).toEqual(generic(TraceSessionResponse, m));
  });
});
