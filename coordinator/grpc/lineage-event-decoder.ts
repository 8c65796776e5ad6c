import { stringAt } from '../../common/ascii-binary-reader.js';
import type { Latin1Slicer } from '../../common/buffer-natives.js';
import { EVENT_LIMITS } from '../../common/event-validation.js';
import type { LineageEvent, ObjectRef, ObjectVersion, ObjectVersions, ResourceUsage, Run, Step, Trigger } from '../../common/gen/retrace/v1/provenance.js';

/** Thrown for input outside what decodeLineageEventFast takes; caught there, never seen outside. */
const UNSUPPORTED = new Error('outside the fast decoder');

// int64 values are made strings as the generated decoder makes them (a BigInt from the two
// halves, then its decimal), through one view instead of one per call.
const int64View = new DataView(new ArrayBuffer(8));

const HASH_PREFIX = 'sha256:';
const HASH_LENGTH = HASH_PREFIX.length + 64;

/**
 * Reads protobuf wire data of one event at `pos`, every read bounded by the end of the message
 * that holds it. A read that would pass that end, a varint longer than the fast path takes, an
 * unknown field or a field with another wire type throws UNSUPPORTED.
 *
 * `plain` stays true while the event passes what normalizeEventChecked checks and would change
 * nothing: ids and hashes are checked on their bytes as they are read, the rest on the message
 * read. Any doubt makes it false, which only costs the full check.
 */
class EventCursor {
  pos: number;
  plain = true;

  constructor(
    private readonly buf: Buffer,
    start: number,
  ) {
    this.pos = start;
  }

  /** A varint of up to 4 bytes (tags, lengths, enum values and bools below 2^28). */
  varint(end: number): number {
    const buf = this.buf;
    let p = this.pos;
    let result = 0;
    for (let shift = 0; shift < 28; shift += 7) {
      if (p >= end) throw UNSUPPORTED;
      const b = buf[p++] as number;
      result |= (b & 0x7f) << shift;
      if (b < 0x80) {
        this.pos = p;
        return result;
      }
    }
    throw UNSUPPORTED;
  }

  /** The end of the length-delimited field at pos (its length read), within `end`. */
  sub(end: number): number {
    const len = this.varint(end);
    const stop = this.pos + len;
    if (stop > end) throw UNSUPPORTED;
    return stop;
  }

  string(end: number): string {
    const stop = this.sub(end);
    const start = this.pos;
    this.pos = stop;
    return this.text(start, stop);
  }

  /** buf[start, stop) as AsciiBinaryReader.string() decodes it. */
  private text(start: number, stop: number): string {
    return stringAt(this.buf, start, stop);
  }

  /**
   * A string that must be an id, or empty (idProblem): ASCII, no NUL, at most maxIdLength
   * characters; other strings read as string() reads them and make the event not plain.
   */
  id(end: number): string {
    const stop = this.sub(end);
    const start = this.pos;
    this.pos = stop;
    const buf = this.buf;
    if (stop - start > EVENT_LIMITS.maxIdLength) this.plain = false;
    for (let i = start; i < stop; i++) {
      // One comparison for NUL and for any byte past ASCII.
      if (((buf[i] as number) - 1) >>> 0 >= 0x7f) {
        this.plain = false;
        return this.text(start, stop);
      }
    }
    return (buf as unknown as Latin1Slicer).latin1Slice(start, stop);
  }

  /** A string that must be a content hash or empty (isContentHash); another makes the event not plain. */
  hash(end: number): string {
    const stop = this.sub(end);
    const start = this.pos;
    this.pos = stop;
    if (stop - start === HASH_LENGTH && isHashBytes(this.buf, start)) return (this.buf as unknown as Latin1Slicer).latin1Slice(start, stop);
    if (stop !== start) this.plain = false;
    return this.text(start, stop);
  }

  /** An int64 varint's decimal string, as BinaryReader.int64() reads the varint (varint64read). */
  int64(end: number): string {
    const buf = this.buf;
    let p = this.pos;
    let lo = 0;
    let hi = 0;
    let done = false;
    for (let shift = 0; shift < 28; shift += 7) {
      if (p >= end) throw UNSUPPORTED;
      const b = buf[p++] as number;
      lo |= (b & 0x7f) << shift;
      if (b < 0x80) {
        done = true;
        break;
      }
    }
    if (!done) {
      if (p >= end) throw UNSUPPORTED;
      const middle = buf[p++] as number;
      lo |= (middle & 0x0f) << 28;
      hi = (middle & 0x70) >> 4;
      if (middle >= 0x80) {
        for (let shift = 3; ; shift += 7) {
          if (shift > 31 || p >= end) throw UNSUPPORTED;
          const b = buf[p++] as number;
          hi |= (b & 0x7f) << shift;
          if (b < 0x80) break;
        }
      }
    }
    this.pos = p;
    // Every int64 field of an event must not be negative.
    if (hi < 0) this.plain = false;
    if (hi === 0 && lo >= 0) return String(lo);
    int64View.setInt32(0, lo, true);
    int64View.setInt32(4, hi, true);
    return int64View.getBigInt64(0, true).toString();
  }

  double(end: number): number {
    const p = this.pos;
    if (p + 8 > end) throw UNSUPPORTED;
    this.pos = p + 8;
    return this.buf.readDoubleLE(p);
  }
}

/** 1 for the bytes of lowercase hex digits: one load a digit instead of three comparisons. */
const HEX_DIGIT = new Uint8Array(256);
for (const c of '0123456789abcdef') HEX_DIGIT[c.charCodeAt(0)] = 1;

const HASH_PREFIX_BYTES = Buffer.from(HASH_PREFIX, 'latin1');

/** Whether buf[at, at + HASH_LENGTH) is "sha256:" and 64 lowercase hex digits, as isContentHash asks of a string. */
function isHashBytes(buf: Buffer, at: number): boolean {
  for (let i = 0; i < HASH_PREFIX_BYTES.length; i++) {
    if (buf[at + i] !== HASH_PREFIX_BYTES[i]) return false;
  }
  for (let i = at + HASH_PREFIX.length; i < at + HASH_LENGTH; i++) {
    if (HEX_DIGIT[buf[i] as number] !== 1) return false;
  }
  return true;
}

/**
 * The LineageEvent in buf[start, end), equal to what LineageEvent.decode makes of those bytes, or
 * undefined when they hold anything but well-formed known fields (unknown fields, Struct fields
 * such as facets and parameters, lengths or varints out of line): the caller then uses the
 * generated decoder, which decides what such bytes mean or fails with its own error. It makes
 * no reader, view or recursion bookkeeping per message, as the generated decoder does.
 *
 * plain[i] is set to 1 when the event passes every check of normalizeEventChecked and is left
 * unchanged by it (see PlainEvents), else to 0.
 */
export function decodeLineageEventFast(buf: Buffer, start: number, end: number, plain?: Uint8Array, i = 0): LineageEvent | undefined {
  try {
    const c = new EventCursor(buf, start);
    const event = lineageEvent(c, end);
    if (plain) plain[i] = c.plain ? 1 : 0;
    return event;
  } catch (err) {
    if (err === UNSUPPORTED) return undefined;
    throw err;
  }
}

// Each reader below builds its message with the generated decoder's defaults, in its order, and
// assigns fields as it does: a repeated scalar or message field's last occurrence wins. Then it
// applies normalizeEventChecked's checks that the cursor's id(), hash() and int64() leave.

function lineageEvent(c: EventCursor, end: number): LineageEvent {
  const m: LineageEvent = { eventId: '', eventTimeNs: '0', producer: '', body: undefined };
  while (c.pos < end) {
    switch (c.varint(end)) {
      case 10:
        m.eventId = c.id(end);
        break;
      case 16:
        m.eventTimeNs = c.int64(end);
        break;
      case 26:
        m.producer = c.string(end);
        break;
      case 82:
        m.body = { $case: 'objectVersion', value: objectVersion(c, c.sub(end)) };
        break;
      case 90:
        m.body = { $case: 'step', value: step(c, c.sub(end)) };
        break;
      case 98:
        m.body = { $case: 'run', value: run(c, c.sub(end)) };
        break;
      default:
        throw UNSUPPORTED;
    }
  }
  // A missing event time is filled in, a change.
  if (m.eventId === '' || m.eventTimeNs === '0' || m.body === undefined) c.plain = false;
  return m;
}

function objectVersion(c: EventCursor, end: number): ObjectVersion {
  const m: ObjectVersion = { objectId: '', contentHash: '', size: '0', mediaType: '', createdAtNs: '0', attributes: {}, facets: undefined };
  let previousKey: string | undefined;
  while (c.pos < end) {
    switch (c.varint(end)) {
      case 10:
        m.objectId = c.id(end);
        break;
      case 18:
        m.contentHash = c.hash(end);
        break;
      case 24:
        m.size = c.int64(end);
        break;
      case 34:
        m.mediaType = c.string(end);
        break;
      case 40:
        m.createdAtNs = c.int64(end);
        break;
      case 50: {
        const stop = c.sub(end);
        let key = '';
        let value = '';
        while (c.pos < stop) {
          const tag = c.varint(stop);
          if (tag === 10) key = c.string(stop);
          else if (tag === 18) value = c.string(stop);
          else throw UNSUPPORTED;
        }
        m.attributes[key] = value;
        // Canonical (isCanonical) when the keys come in increasing order and none is an array
        // index, which an object would list first. Skipped keys ('__proto__') keep the order.
        if ((previousKey !== undefined && !(previousKey < key)) || isDigit(key.charCodeAt(0))) c.plain = false;
        previousKey = key;
        break;
      }
      default:
        throw UNSUPPORTED;
    }
  }
  if (m.objectId === '' || m.contentHash === '') c.plain = false;
  return m;
}

function isDigit(code: number): boolean {
  return code >= 48 && code <= 57;
}

/** `used`: a step's input, which may be unversioned (no content hash), unlike an output. */
function objectRef(c: EventCursor, end: number, used: boolean): ObjectRef {
  const m: ObjectRef = { objectId: '', contentHash: '', unversioned: false };
  while (c.pos < end) {
    switch (c.varint(end)) {
      case 10:
        m.objectId = c.id(end);
        break;
      case 18:
        m.contentHash = c.hash(end);
        break;
      case 24:
        m.unversioned = c.varint(end) !== 0;
        break;
      default:
        throw UNSUPPORTED;
    }
  }
  if (m.objectId === '' || (m.unversioned ? !used || m.contentHash !== '' : m.contentHash === '')) c.plain = false;
  return m;
}

function objectVersions(c: EventCursor, end: number): ObjectVersions {
  const m: ObjectVersions = { versions: [] };
  while (c.pos < end) {
    if (c.varint(end) !== 10) throw UNSUPPORTED;
    m.versions.push(objectVersion(c, c.sub(end)));
  }
  return m;
}

function trigger(c: EventCursor, end: number): Trigger {
  const m: Trigger = { kind: 0, id: '', principal: '' };
  while (c.pos < end) {
    switch (c.varint(end)) {
      case 8:
        // int32 of a varint below 2^28: the value itself, as `uint32() | 0` gives.
        m.kind = c.varint(end);
        break;
      case 18:
        m.id = c.string(end);
        break;
      case 26:
        m.principal = c.string(end);
        break;
      default:
        throw UNSUPPORTED;
    }
  }
  return m;
}

function resourceUsage(c: EventCursor, end: number): ResourceUsage {
  const m: ResourceUsage = {
    cpuTimeNs: '0',
    peakMemoryBytes: '0',
    netBytesIn: '0',
    netBytesOut: '0',
    diskBytesRead: '0',
    diskBytesWritten: '0',
    gpuTimeNs: '0',
    gpuUtilization: 0,
    wallTimeNs: '0',
  };
  while (c.pos < end) {
    switch (c.varint(end)) {
      case 8:
        m.cpuTimeNs = c.int64(end);
        break;
      case 16:
        m.peakMemoryBytes = c.int64(end);
        break;
      case 24:
        m.netBytesIn = c.int64(end);
        break;
      case 32:
        m.netBytesOut = c.int64(end);
        break;
      case 40:
        m.diskBytesRead = c.int64(end);
        break;
      case 48:
        m.diskBytesWritten = c.int64(end);
        break;
      case 56:
        m.gpuTimeNs = c.int64(end);
        break;
      case 65:
        m.gpuUtilization = c.double(end);
        break;
      case 72:
        m.wallTimeNs = c.int64(end);
        break;
      default:
        throw UNSUPPORTED;
    }
  }
  if (!(m.gpuUtilization >= 0 && m.gpuUtilization <= 1)) c.plain = false;
  return m;
}

function step(c: EventCursor, end: number): Step {
  const m: Step = {
    stepId: '',
    runId: '',
    transform: '',
    codeVersion: '',
    parameters: undefined,
    nodeId: '',
    host: '',
    startedAtNs: '0',
    endedAtNs: '0',
    why: undefined,
    resources: undefined,
    used: [],
    generated: [],
    facets: undefined,
    generatedVersions: undefined,
    usedVersions: undefined,
  };
  while (c.pos < end) {
    switch (c.varint(end)) {
      case 10:
        m.stepId = c.id(end);
        break;
      case 18:
        m.runId = c.id(end);
        break;
      case 26:
        m.transform = c.id(end);
        break;
      case 34:
        m.codeVersion = c.hash(end);
        break;
      case 50:
        m.nodeId = c.string(end);
        break;
      case 58:
        m.host = c.string(end);
        break;
      case 64:
        m.startedAtNs = c.int64(end);
        break;
      case 72:
        m.endedAtNs = c.int64(end);
        break;
      case 82:
        m.why = trigger(c, c.sub(end));
        break;
      case 90:
        m.resources = resourceUsage(c, c.sub(end));
        break;
      case 98:
        m.used.push(objectRef(c, c.sub(end), true));
        break;
      case 106:
        m.generated.push(objectRef(c, c.sub(end), false));
        break;
      case 122:
        m.generatedVersions = objectVersions(c, c.sub(end));
        break;
      case 130:
        m.usedVersions = objectVersions(c, c.sub(end));
        break;
      default:
        throw UNSUPPORTED;
    }
  }
  if (
    m.stepId === '' ||
    m.transform === '' ||
    (m.startedAtNs !== '0' && m.endedAtNs !== '0' && decimalLess(m.endedAtNs, m.startedAtNs)) ||
    m.used.length + m.generated.length > EVENT_LIMITS.maxRefsPerStep ||
    // Inline versions are matched against the references by the full check.
    m.generatedVersions !== undefined ||
    m.usedVersions !== undefined
  ) {
    c.plain = false;
  }
  return m;
}

/** a < b for the decimals of two int64 values that are not negative (no leading zeros). */
function decimalLess(a: string, b: string): boolean {
  return a.length !== b.length ? a.length < b.length : a < b;
}

function run(c: EventCursor, end: number): Run {
  const m: Run = { runId: '', name: '', parentRunId: '', state: '', startedAtNs: '0', endedAtNs: '0', facets: undefined };
  while (c.pos < end) {
    switch (c.varint(end)) {
      case 10:
        m.runId = c.id(end);
        break;
      case 18:
        m.name = c.string(end);
        break;
      case 26:
        m.parentRunId = c.id(end);
        break;
      case 34:
        m.state = c.string(end);
        break;
      case 40:
        m.startedAtNs = c.int64(end);
        break;
      case 48:
        m.endedAtNs = c.int64(end);
        break;
      default:
        throw UNSUPPORTED;
    }
  }
  if (m.runId === '' || m.parentRunId === m.runId) c.plain = false;
  return m;
}
