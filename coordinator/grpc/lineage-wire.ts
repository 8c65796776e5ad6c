import { BinaryReader } from '@bufbuild/protobuf/wire';
import { LineageServiceDefinition, SubmitEventsRequest, TraceResponse, TraceSessionResponse } from '../../common/gen/retrace/v1/lineage.js';
import { LineageEvent } from '../../common/gen/retrace/v1/provenance.js';
import { AsciiBinaryReader } from '../../common/ascii-binary-reader.js';
import { InvalidArgumentError } from '../../common/errors.js';
import type { CheckedEventBytes } from '../../common/event-validation.js';
import { varintLength, writeVarint } from '../../common/varint.js';
import { decodeLineageEventFast } from './lineage-event-decoder.js';
import type { DeferredEvents } from '../lineage/lineage-engine.js';

const EVENTS_TAG = (1 << 3) | 2; // field 1, length-delimited

/**
 * A received SubmitEventsRequest kept as its bytes: the engine decodes it (DeferredEvents) when
 * it prepares the commit group, so the request waits in the call's read buffer and the commit
 * queue as one buffer. `events` decodes for any other reader.
 */
export class LazySubmitEventsRequest implements SubmitEventsRequest, DeferredEvents {
  private decoded: LineageEvent[] | undefined;

  constructor(
    private readonly bytes: Uint8Array,
    readonly count: number,
  ) {}

  get events(): LineageEvent[] {
    return (this.decoded ??= this.decode().events);
  }

  /** The events, and their bytes with the events that need no check again marked (CheckedEventBytes). */
  decode(): { events: LineageEvent[]; wire: Uint8Array[] & CheckedEventBytes } {
    const bytes = this.bytes;
    const buffer = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const plain = new Uint8Array(this.count);
    const wire = Object.assign(new Array<Uint8Array>(), { plain });
    const events: LineageEvent[] = [];
    scanEvents(buffer, (start, end) => {
      const i = wire.length;
      // A plain view: Buffer's subarray costs about four times as much (species lookup, FastBuffer).
      const event = new Uint8Array(buffer.buffer, buffer.byteOffset + start, end - start);
      wire.push(event);
      events.push(decodeLineageEventFast(buffer, start, end, plain, i) ?? decodeLineageEvent(event, i));
    });
    return { events, wire };
  }
}

/** The generated decoder's LineageEvent, for the events decodeLineageEventFast leaves to it. */
function decodeLineageEvent(bytes: Uint8Array, i: number): LineageEvent {
  try {
    return LineageEvent.decode(new AsciiBinaryReader(bytes));
  } catch (err) {
    throw new InvalidArgumentError(`events[${i}]`, `does not decode as a LineageEvent: ${err instanceof Error ? err.message : String(err)}`, err);
  }
}

/** Counts the events of an encoded SubmitEventsRequest, handing each one's byte range to `onEvent`. */
function scanEvents(bytes: Uint8Array, onEvent?: (start: number, end: number) => void): number {
  const reader = new BinaryReader(bytes);
  let n = 0;
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag === EVENTS_TAG) {
      const len = reader.uint32();
      const start = reader.pos;
      if (start + len > reader.len) throw new RangeError('premature EOF');
      reader.pos += len;
      onEvent?.(start, reader.pos);
      n++;
      continue;
    }
    if ((tag & 7) === 4 || tag === 0) break;
    reader.skip(tag & 7, tag >>> 3);
  }
  return n;
}

/**
 * SubmitEventsRequest's decoder for the server: the events stay undecoded (LazySubmitEventsRequest)
 * and, once decoded, keep their bytes, so the ledger can store them without encoding each again.
 * A message whose framing is broken throws here, as the generated decoder would.
 */
export function decodeSubmitEventsRequest(input: BinaryReader | Uint8Array, length?: number): SubmitEventsRequest {
  if (!(input instanceof Uint8Array) || length !== undefined) return SubmitEventsRequest.decode(input, length);
  return new LazySubmitEventsRequest(input, scanEvents(input));
}

/** A uint64 field's decimal string that writeVarint can take: a safe integer, no leading zeros. */
const SAFE_DECIMAL = /^(0|[1-9][0-9]{0,14})$/;

/** Bytes of a packed repeated uint32 field (tag and length included; none when empty), or -1 when one value is not a uint32. */
function packedSize(values: readonly number[]): number {
  if (values.length === 0) return 0;
  let n = 0;
  for (const v of values) {
    if (v >>> 0 !== v) return -1;
    n += varintLength(v);
  }
  return 1 + varintLength(n) + n;
}

function writePacked(out: Uint8Array, p: number, tag: number, values: readonly number[]): number {
  if (values.length === 0) return p;
  let n = 0;
  for (const v of values) n += varintLength(v);
  out[p++] = tag;
  p = writeVarint(out, p, n);
  for (const v of values) p = writeVarint(out, p, v);
  return p;
}

function writeBytes(out: Uint8Array, p: number, tag: number, bytes: Uint8Array): number {
  if (bytes.length === 0) return p;
  out[p++] = tag;
  p = writeVarint(out, p, bytes.length);
  out.set(bytes, p);
  return p + bytes.length;
}

/**
 * Size of `r` as TraceResponse.encode writes it, for the answers of the id views (no nodes,
 * edges or keys); -1 for any other, or for a field the generated encoder would refuse.
 */
function traceResponseSize(r: TraceResponse): number {
  try {
    return idViewSize(r);
  } catch {
    // A message missing a field (the types require all): the generated path fills it in.
    return -1;
  }
}

function idViewSize(r: TraceResponse): number {
  if (r.nodes.length !== 0 || r.edges.length !== 0 || r.keys.length !== 0 || !SAFE_DECIMAL.test(r.totalNodes)) return -1;
  const nodeIds = packedSize(r.nodeIds);
  const distances = packedSize(r.distances);
  const compactDistances = packedSize(r.compactDistances);
  const compactCounts = packedSize(r.compactCounts);
  if (nodeIds < 0 || distances < 0 || compactDistances < 0 || compactCounts < 0) return -1;
  const total = Number(r.totalNodes);
  const token = Buffer.byteLength(r.nextPageToken);
  return (
    (total === 0 ? 0 : 1 + varintLength(total)) +
    (token === 0 ? 0 : 1 + varintLength(token) + token) +
    nodeIds +
    distances +
    bytesSize(r.packedNodeIds) +
    bytesSize(r.packedDistances) +
    compactDistances +
    compactCounts +
    bytesSize(r.compactNodeIds)
  );
}

/** Bytes of a bytes field (tag and length included; none when empty). */
function bytesSize(b: Uint8Array): number {
  return b.length === 0 ? 0 : 1 + varintLength(b.length) + b.length;
}

/** Writes `r` (traceResponseSize(r) >= 0) at out[p], fields in TraceResponse.encode's order; the end position. */
function writeTraceResponse(out: Buffer, p: number, r: TraceResponse): number {
  const total = Number(r.totalNodes);
  if (total !== 0) {
    out[p++] = (3 << 3) | 0;
    p = writeVarint(out, p, total);
  }
  if (r.nextPageToken !== '') {
    out[p++] = (4 << 3) | 2;
    p = writeVarint(out, p, Buffer.byteLength(r.nextPageToken));
    p += out.write(r.nextPageToken, p);
  }
  p = writePacked(out, p, (6 << 3) | 2, r.nodeIds);
  p = writePacked(out, p, (7 << 3) | 2, r.distances);
  p = writeBytes(out, p, (8 << 3) | 2, r.packedNodeIds);
  p = writeBytes(out, p, (9 << 3) | 2, r.packedDistances);
  p = writePacked(out, p, (10 << 3) | 2, r.compactDistances);
  p = writePacked(out, p, (11 << 3) | 2, r.compactCounts);
  return writeBytes(out, p, (12 << 3) | 2, r.compactNodeIds);
}

/**
 * TraceResponse's bytes, as the generated encoder writes them, into one buffer of their exact
 * size: the generated path copies every array (nice-grpc's fromPartial), grows its buffer by
 * doubling and copies the result out. Answers with nodes, edges or keys take the generated path.
 */
export function encodeTraceResponse(r: TraceResponse): Uint8Array {
  const size = traceResponseSize(r);
  if (size < 0) return TraceResponse.encode(TraceResponse.fromPartial(r)).finish();
  const out = Buffer.allocUnsafe(size);
  writeTraceResponse(out, 0, r);
  return out;
}

/** TraceSessionResponse's bytes, as the generated encoder writes them; a trace answer as encodeTraceResponse does. */
export function encodeTraceSessionResponse(m: TraceSessionResponse): Uint8Array {
  const size = m.result?.$case === 'trace' && m.requestId >>> 0 === m.requestId ? traceResponseSize(m.result.value) : -1;
  if (size < 0) return TraceSessionResponse.encode(TraceSessionResponse.fromPartial(m)).finish();
  const id = m.requestId === 0 ? 0 : 1 + varintLength(m.requestId);
  const out = Buffer.allocUnsafe(id + 1 + varintLength(size) + size);
  let p = 0;
  if (id !== 0) {
    out[p++] = (1 << 3) | 0;
    p = writeVarint(out, p, m.requestId);
  }
  out[p++] = (2 << 3) | 2;
  p = writeVarint(out, p, size);
  writeTraceResponse(out, p, (m.result as { value: TraceResponse }).value);
  return out;
}

/** A response type whose bytes `encode` gives whole: nice-grpc calls `encode(m).finish()`, and fromPartial no more. */
function encodedBy<T>(type: object, encode: (m: T) => Uint8Array) {
  return { ...type, encode: (m: T) => ({ finish: () => encode(m) }), fromPartial: undefined };
}

/**
 * LineageServiceDefinition with SubmitEvents' request decoded by decodeSubmitEventsRequest, and
 * Trace's and TraceSession's answers encoded by encodeTraceResponse. The messages on the wire
 * are the same; only the server's in-memory forms and the work to get them differ.
 */
export const LineageServiceWireDefinition = {
  ...LineageServiceDefinition,
  methods: {
    ...LineageServiceDefinition.methods,
    submitEvents: {
      ...LineageServiceDefinition.methods.submitEvents,
      requestType: { ...SubmitEventsRequest, decode: decodeSubmitEventsRequest },
    },
    trace: { ...LineageServiceDefinition.methods.trace, responseType: encodedBy(TraceResponse, encodeTraceResponse) },
    traceSession: { ...LineageServiceDefinition.methods.traceSession, responseType: encodedBy(TraceSessionResponse, encodeTraceSessionResponse) },
  },
} as const;
