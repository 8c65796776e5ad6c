import type { LineageEvent, ObjectRef, ObjectVersion, ResourceUsage, Run, Step, Trigger } from './gen/retrace/v1/provenance.js';
import { writeVarint } from './varint.js';
import { withRoom } from './buffer-room.js';
import type { Utf8Writer } from './buffer-natives.js';

/**
 * A LineageEvent encoder that writes, byte for byte, what `LineageEvent.encode(event).finish()`
 * writes (fields in number order, proto3 defaults left out, map and Struct entries in key order),
 * several times faster: the generated encoder wraps every Struct member in a Value object and
 * forks a writer for every nested message, which made encoding the largest part of the lineage
 * engine's per-event CPU. Anything it does not handle exactly as the generated encoder does
 * (an int64 that is not 1-19 decimal digits within the int64 range, a Struct value that is not
 * null, a boolean, a number, a string, an array or a plain object) makes it return undefined,
 * and the caller encodes with the generated encoder instead.
 * The bytes are a view of a scratch buffer that the next call overwrites (the ledger copies them
 * into its entry at once): a caller that keeps them must copy them first.
 */
export function encodeLineageEvent(event: LineageEvent): Uint8Array | undefined {
  const w = writer;
  w.pos = 0;
  w.depth = 0;
  w.forks.length = 0;
  try {
    writeEvent(w, event);
  } catch (err) {
    if (err === UNSUPPORTED) return undefined;
    throw err;
  }
  return w.buf.slice(0, w.pos);
}

/** Thrown inside the encoder for input it leaves to the generated encoder. */
const UNSUPPORTED = new Error('unsupported by the fast lineage event encoder');
/** Struct nesting the fast path follows; deeper values go to the generated encoder. */
const MAX_DEPTH = 64;
const TWO_32 = 2 ** 32;

interface Writer {
  buf: Buffer;
  pos: number;
  /** Start positions of the open length-delimited fields. */
  forks: number[];
  depth: number;
}

const writer: Writer = { buf: Buffer.allocUnsafe(4096), pos: 0, forks: [], depth: 0 };

function ensure(w: Writer, n: number): void {
  w.buf = withRoom(w.buf, w.pos, n);
}

function varint32(w: Writer, v: number): void {
  ensure(w, 5);
  w.pos = writeVarint(w.buf, w.pos, v);
}

/** A length-delimited field whose length is written once its content is (1 byte reserved). */
function fork(w: Writer, tag: number): void {
  varint32(w, tag);
  ensure(w, 1);
  w.forks.push(w.pos);
  w.buf[w.pos++] = 0;
}

function join(w: Writer): void {
  const start = w.forks.pop() as number;
  const len = w.pos - start - 1;
  if (len < 0x80) {
    w.buf[start] = len;
    return;
  }
  let prefix = 1;
  for (let v = len; v > 0x7f; v >>>= 7) prefix++;
  ensure(w, prefix - 1);
  w.buf.copyWithin(start + prefix, start + 1, w.pos);
  w.pos = start;
  varint32(w, len);
  w.pos += len;
}

function string(w: Writer, tag: number, s: string): void {
  if (typeof s !== 'string') throw UNSUPPORTED;
  varint32(w, tag);
  const n = s.length;
  // ASCII, the usual case, is one byte a character: the length is known before writing.
  if (n < 0x80) {
    ensure(w, 3 * n + 1);
    const b = w.buf;
    const start = w.pos;
    // Past a couple of dozen chars (hashes, object and step ids) one native call beats the loop
    // below, most on a concatenated string, as ids are: a fifth of the encoder's time. It wrote
    // one byte a char exactly when every char is ASCII; otherwise the loop finds where not.
    if (n >= 24 && (b as unknown as Utf8Writer).utf8Write(s, start + 1, 3 * n) === n) {
      b[start] = n;
      w.pos = start + 1 + n;
      return;
    }
    let pos = start + 1;
    let i = 0;
    for (; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c > 0x7f) break;
      b[pos++] = c;
    }
    if (i === n) {
      b[start] = n;
      w.pos = pos;
      return;
    }
  }
  const bytes = Buffer.byteLength(s, 'utf8');
  varint32(w, bytes);
  ensure(w, bytes);
  w.pos += w.buf.write(s, w.pos, bytes, 'utf8');
}

/** An int64 field given as a decimal string (forceLong=string), left out when "0". */
function int64(w: Writer, tag: number, s: string): void {
  if (s === '0') return;
  const n = s.length;
  if (typeof s !== 'string' || n === 0 || n > 19) throw UNSUPPORTED;
  // Up to 15 digits is below 2^53: a safe integer, parsed while the digits are checked.
  const head = n < 15 ? n : 15;
  let v = 0;
  for (let i = 0; i < head; i++) {
    const d = s.charCodeAt(i) - 48;
    if (d < 0 || d > 9) throw UNSUPPORTED;
    v = v * 10 + d;
  }
  if (n === head) {
    varint32(w, tag);
    ensure(w, 10);
    w.pos = writeVarint(w.buf, w.pos, v);
    return;
  }
  // The last 1-4 digits (nanosecond timestamps have 19) are multiplied in on two 32-bit halves,
  // every product below 2^53 and so exact: a BigInt per field was most of the encoder's int64 cost.
  let m = 1;
  let tail = 0;
  for (let i = head; i < n; i++) {
    const d = s.charCodeAt(i) - 48;
    if (d < 0 || d > 9) throw UNSUPPORTED;
    tail = tail * 10 + d;
    m *= 10;
  }
  const vHi = Math.floor(v / TWO_32);
  const low = (v - vHi * TWO_32) * m + tail;
  const carry = Math.floor(low / TWO_32);
  let lo = low - carry * TWO_32;
  let hi = vHi * m + carry;
  if (hi > 0x7fffffff) throw UNSUPPORTED;
  varint32(w, tag);
  ensure(w, 10);
  const b = w.buf;
  // 7 bits at a time across the two 32-bit halves.
  while (hi > 0 || lo > 0x7f) {
    b[w.pos++] = (lo & 0x7f) | 0x80;
    lo = (lo >>> 7) | ((hi & 0x7f) << 25);
    lo >>>= 0;
    hi >>>= 7;
  }
  b[w.pos++] = lo;
}

function double(w: Writer, tag: number, v: number): void {
  varint32(w, tag);
  ensure(w, 8);
  w.buf.writeDoubleLE(v, w.pos);
  w.pos += 8;
}

function writeEvent(w: Writer, e: LineageEvent): void {
  if (e.eventId !== '') string(w, 10, e.eventId);
  int64(w, 16, e.eventTimeNs);
  if (e.producer !== '') string(w, 26, e.producer);
  const body = e.body;
  switch (body?.$case) {
    case 'objectVersion':
      fork(w, 82);
      writeObjectVersion(w, body.value);
      join(w);
      break;
    case 'step':
      fork(w, 90);
      writeStep(w, body.value);
      join(w);
      break;
    case 'run':
      fork(w, 98);
      writeRun(w, body.value);
      join(w);
      break;
    default:
      if (body !== undefined) throw UNSUPPORTED;
  }
}

function writeObjectVersion(w: Writer, v: ObjectVersion): void {
  if (v.objectId !== '') string(w, 10, v.objectId);
  if (v.contentHash !== '') string(w, 18, v.contentHash);
  int64(w, 24, v.size);
  if (v.mediaType !== '') string(w, 34, v.mediaType);
  int64(w, 40, v.createdAtNs);
  const attributes = v.attributes;
  for (const key in attributes) {
    if (!Object.hasOwn(attributes, key)) continue;
    const value = attributes[key] as string;
    if (typeof value !== 'string') throw UNSUPPORTED;
    fork(w, 50);
    if (key !== '') string(w, 10, key);
    if (value !== '') string(w, 18, value);
    join(w);
  }
  if (v.facets !== undefined) structField(w, 58, v.facets);
}

function writeRef(w: Writer, tag: number, r: ObjectRef): void {
  fork(w, tag);
  if (r.objectId !== '') string(w, 10, r.objectId);
  if (r.contentHash !== '') string(w, 18, r.contentHash);
  if (r.unversioned !== false) {
    varint32(w, 24);
    varint32(w, r.unversioned ? 1 : 0);
  }
  join(w);
}

function writeTrigger(w: Writer, t: Trigger): void {
  fork(w, 82);
  if (t.kind !== 0) {
    if (!Number.isInteger(t.kind) || t.kind < 0 || t.kind > 0x7fffffff) throw UNSUPPORTED;
    varint32(w, 8);
    varint32(w, t.kind);
  }
  if (t.id !== '') string(w, 18, t.id);
  if (t.principal !== '') string(w, 26, t.principal);
  join(w);
}

function writeResources(w: Writer, r: ResourceUsage): void {
  fork(w, 90);
  int64(w, 8, r.cpuTimeNs);
  int64(w, 16, r.peakMemoryBytes);
  int64(w, 24, r.netBytesIn);
  int64(w, 32, r.netBytesOut);
  int64(w, 40, r.diskBytesRead);
  int64(w, 48, r.diskBytesWritten);
  int64(w, 56, r.gpuTimeNs);
  if (r.gpuUtilization !== 0) double(w, 65, r.gpuUtilization);
  int64(w, 72, r.wallTimeNs);
  join(w);
}

function writeStep(w: Writer, s: Step): void {
  if (s.stepId !== '') string(w, 10, s.stepId);
  if (s.runId !== '') string(w, 18, s.runId);
  if (s.transform !== '') string(w, 26, s.transform);
  if (s.codeVersion !== '') string(w, 34, s.codeVersion);
  if (s.parameters !== undefined) structField(w, 42, s.parameters);
  if (s.nodeId !== '') string(w, 50, s.nodeId);
  if (s.host !== '') string(w, 58, s.host);
  int64(w, 64, s.startedAtNs);
  int64(w, 72, s.endedAtNs);
  if (s.why !== undefined) writeTrigger(w, s.why);
  if (s.resources !== undefined) writeResources(w, s.resources);
  for (const r of s.used) writeRef(w, 98, r);
  for (const r of s.generated) writeRef(w, 106, r);
  if (s.facets !== undefined) structField(w, 114, s.facets);
  if (s.generatedVersions !== undefined) writeVersions(w, 122, s.generatedVersions.versions);
  if (s.usedVersions !== undefined) writeVersions(w, 130, s.usedVersions.versions);
}

function writeVersions(w: Writer, tag: number, versions: readonly ObjectVersion[]): void {
  fork(w, tag);
  for (const v of versions) {
    fork(w, 10);
    writeObjectVersion(w, v);
    join(w);
  }
  join(w);
}

function writeRun(w: Writer, r: Run): void {
  if (r.runId !== '') string(w, 10, r.runId);
  if (r.name !== '') string(w, 18, r.name);
  if (r.parentRunId !== '') string(w, 26, r.parentRunId);
  if (r.state !== '') string(w, 34, r.state);
  int64(w, 40, r.startedAtNs);
  int64(w, 48, r.endedAtNs);
  if (r.facets !== undefined) structField(w, 58, r.facets);
}

/** google.protobuf.Struct of a plain object, as Struct.encode(Struct.wrap(o)) writes it. */
function structField(w: Writer, tag: number, o: Record<string, unknown>): void {
  if (!isPlainObject(o)) throw UNSUPPORTED;
  if (++w.depth > MAX_DEPTH) throw UNSUPPORTED;
  fork(w, tag);
  for (const key in o) {
    if (!Object.hasOwn(o, key)) continue;
    const value = o[key];
    if (value === undefined) continue;
    fork(w, 10);
    if (key !== '') string(w, 10, key);
    fork(w, 18);
    writeValue(w, value);
    join(w);
    join(w);
  }
  join(w);
  w.depth--;
}

/** The kind of one google.protobuf.Value, as Value.encode(Value.wrap(v)) writes it. */
function writeValue(w: Writer, v: unknown): void {
  if (v === null) {
    varint32(w, 8);
    varint32(w, 0);
  } else if (typeof v === 'boolean') {
    varint32(w, 32);
    varint32(w, v ? 1 : 0);
  } else if (typeof v === 'number') {
    double(w, 17, v);
  } else if (typeof v === 'string') {
    string(w, 26, v);
  } else if (Array.isArray(v)) {
    if (++w.depth > MAX_DEPTH) throw UNSUPPORTED;
    fork(w, 50);
    for (const item of v) {
      fork(w, 10);
      // An undefined member is a Value with no kind: an empty message.
      if (item !== undefined) writeValue(w, item);
      join(w);
    }
    join(w);
    w.depth--;
  } else if (typeof v === 'object' && isPlainObject(v)) {
    structField(w, 42, v as Record<string, unknown>);
  } else {
    throw UNSUPPORTED;
  }
}

function isPlainObject(v: object): boolean {
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}
