import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { describe, expect, it } from 'vitest';
import { AsciiBinaryReader } from '../common/ascii-binary-reader.js';
import { LineageEvent, type ObjectRef, type ObjectVersion, type TriggerKind } from '../common/gen/retrace/v1/provenance.js';
import { createRng } from '../common/random.js';
import { normalizeEventChecked } from '../common/event-validation.js';
import { decodeLineageEventFast } from '../coordinator/grpc/lineage-event-decoder.js';
import { LazySubmitEventsRequest } from '../coordinator/grpc/lineage-wire.js';

type Rng = () => number;

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)] as T;

const HASH = 'sha256:' + '0123456789abcdef'.repeat(4);
/** Ids and hashes at and past what validation takes. */
const IDS = ['', 'orders:1', 'x'.repeat(1024), 'x'.repeat(1025), 'nul\u0000', 'naïve', '0', 'b', 'a', 'run-1'];
const HASHES = ['', HASH, HASH, HASH.toUpperCase(), HASH.slice(0, 70), HASH + 'a', 'sha257:' + HASH.slice(7), HASH.slice(0, 70) + 'g', HASH.slice(0, 70) + 'é'];
const STRINGS = ['', 'a', 'retrace-bench', 'sha256:' + 'ab'.repeat(32), 'naïve ☃ 𝄞', 'lone \ud800 surrogate', 'nul\u0000inside', 'x'.repeat(200), '__proto__', '0', '17', 'constructor'];
const INT64S = ['0', '1', '127', '128', '16383', '268435455', '268435456', '2147483648', '4294967295', '4294967296', '9007199254740991', '9007199254740993', '1700000000000000000', '9223372036854775807', '-1', '-9223372036854775808'];

function str(rng: Rng): string {
  if (rng() < 0.5) return pick(rng, STRINGS);
  const n = Math.floor(rng() * 40);
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(rng() < 0.9 ? 32 + Math.floor(rng() * 95) : Math.floor(rng() * 0x3000));
  return s;
}

const int64 = (rng: Rng): string => pick(rng, INT64S);

/** With `valid`, mostly strings that pass validation; else any. */
let valid = false;
const id = (rng: Rng): string => (valid && rng() < 0.9 ? pick(rng, IDS.slice(1, 3)) : valid ? pick(rng, IDS) : str(rng));
const hash = (rng: Rng): string => (valid && rng() < 0.9 ? HASH : valid ? pick(rng, HASHES) : str(rng));
const time = (rng: Rng): string => (valid && rng() < 0.9 ? pick(rng, ['1000', '1700000000000000000', '1700000000000000001']) : int64(rng));

function objectVersion(rng: Rng): ObjectVersion {
  const attributes: Record<string, string> = {};
  for (let i = Math.floor(rng() * 4); i > 0; i--) attributes[valid && rng() < 0.5 ? pick(rng, ['a', 'b', 'c', '__proto__', '0', '', '9', '10']) : str(rng)] = str(rng);
  return { objectId: id(rng), contentHash: hash(rng), size: time(rng), mediaType: str(rng), createdAtNs: time(rng), attributes, facets: rng() < 0.1 ? { k: str(rng), n: 1 } : undefined };
}

function refs(rng: Rng): ObjectRef[] {
  return Array.from({ length: Math.floor(rng() * 4) }, () => {
    const unversioned = rng() < 0.2;
    return { objectId: id(rng), contentHash: unversioned && valid && rng() < 0.8 ? '' : hash(rng), unversioned };
  });
}

function randomEvent(rng: Rng): LineageEvent {
  const r = rng();
  let body: LineageEvent['body'];
  if (r < 0.3) body = { $case: 'objectVersion', value: objectVersion(rng) };
  else if (r < 0.8) {
    body = {
      $case: 'step',
      value: {
        stepId: id(rng),
        runId: rng() < 0.3 ? '' : id(rng),
        transform: id(rng),
        codeVersion: rng() < 0.5 ? '' : hash(rng),
        parameters: rng() < 0.1 ? { factor: 2 } : undefined,
        nodeId: str(rng),
        host: str(rng),
        startedAtNs: time(rng),
        endedAtNs: time(rng),
        why: rng() < 0.4 ? { kind: pick(rng, [0, 1, 5, 99, 300, -1]) as TriggerKind, id: str(rng), principal: str(rng) } : undefined,
        resources:
          rng() < 0.4
            ? { cpuTimeNs: time(rng), peakMemoryBytes: time(rng), netBytesIn: time(rng), netBytesOut: time(rng), diskBytesRead: time(rng), diskBytesWritten: time(rng), gpuTimeNs: time(rng), gpuUtilization: pick(rng, [0, 0.5, 1, -0, Number.NaN, Infinity, 1e-300, 1.0000001, -1e-300]), wallTimeNs: time(rng) }
            : undefined,
        used: refs(rng),
        generated: refs(rng),
        facets: rng() < 0.05 ? { deep: { list: [1, 'two', null, true] } } : undefined,
        generatedVersions: rng() < (valid ? 0.05 : 0.3) ? { versions: Array.from({ length: Math.floor(rng() * 3) }, () => objectVersion(rng)) } : undefined,
        usedVersions: rng() < (valid ? 0.05 : 0.2) ? { versions: [objectVersion(rng)] } : undefined,
      },
    };
  } else if (r < 0.95) {
    const runId = id(rng);
    body = { $case: 'run', value: { runId, name: str(rng), parentRunId: rng() < 0.4 ? '' : rng() < 0.1 ? runId : id(rng), state: str(rng), startedAtNs: time(rng), endedAtNs: time(rng), facets: rng() < 0.1 ? { a: 'b' } : undefined } };
  }
  return { eventId: id(rng), eventTimeNs: rng() < 0.05 ? '0' : time(rng), producer: str(rng), body };
}

/** A value written out with its keys in order, undefined members, -0 and NaN told apart. */
function exact(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(exact).join(',')}]`;
  if (v === null) return 'null';
  if (typeof v === 'object') return `${Object.getPrototypeOf(v) === Object.prototype ? '' : 'proto!'}{${Object.keys(v).map((k) => `${JSON.stringify(k)}:${exact((v as Record<string, unknown>)[k])}`).join(',')}}`;
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : String(v);
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

function generated(bytes: Uint8Array): { event?: LineageEvent; error?: string } {
  try {
    return { event: LineageEvent.decode(new AsciiBinaryReader(bytes)) };
  } catch (err) {
    return { error: String(err) };
  }
}

/** Compares the fast decoder with the generated one on `bytes`; whether the fast one decoded them. */
function same(bytes: Uint8Array): boolean {
  const buf = Buffer.alloc(bytes.length + 6, 0x8a);
  buf.set(bytes, 3);
  const plain = Uint8Array.of(7);
  const fast = decodeLineageEventFast(buf, 3, 3 + bytes.length, plain, 0);
  if (fast === undefined) return false;
  const g = generated(bytes);
  expect(g.error).toBeUndefined();
  expect(exact(fast)).toBe(exact(g.event));
  expect(fast).toStrictEqual(g.event);
  // Not plain is always safe (the full check runs); plain must be right.
  if (plain[0] === 1) {
    expect(isPlain(g.event as LineageEvent)).toBe(true);
    plainCount++;
  }
  return true;
}

let plainCount = 0;

/** Whether normalizeEventChecked takes `event` as it is: no error, nothing changed. */
function isPlain(event: LineageEvent): boolean {
  try {
    const n = normalizeEventChecked(event, 'e', '5');
    expect(n.changed || n.event === event).toBe(true);
    return !n.changed;
  } catch {
    return false;
  }
}

function mutate(rng: Rng, bytes: Uint8Array): Uint8Array {
  const b = Buffer.from(bytes);
  switch (Math.floor(rng() * 6)) {
    case 0:
      if (b.length > 0) b[Math.floor(rng() * b.length)] = Math.floor(rng() * 256);
      return b;
    case 1:
      return b.subarray(0, Math.floor(rng() * b.length));
    case 2: {
      // An unknown or misplaced field at a random point.
      const at = Math.floor(rng() * (b.length + 1));
      const extra = pick(rng, [Uint8Array.of((9 << 3) | 0, 42), Uint8Array.of(0), Uint8Array.of((1 << 3) | 0, 1), Uint8Array.of((5 << 3) | 3, (5 << 3) | 4), Uint8Array.of((2 << 3) | 5, 1, 2, 3, 4)]);
      return Buffer.concat([b.subarray(0, at), extra, b.subarray(at)]);
    }
    case 3:
      return Buffer.concat([b, b]);
    case 4: {
      // A length or tag byte made a non-minimal varint.
      const at = Math.floor(rng() * b.length);
      if ((b[at] as number) >= 0x80) return b;
      return Buffer.concat([b.subarray(0, at), Uint8Array.of((b[at] as number) | 0x80, 0), b.subarray(at + 1)]);
    }
    default:
      if (b.length > 0) {
        const at = Math.floor(rng() * b.length);
        b[at] = (b[at] as number) ^ (1 << Math.floor(rng() * 8));
      }
      return b;
  }
}

describe('decodeLineageEventFast', () => {
  it('decodes random events exactly as LineageEvent.decode does, or leaves them to it', () => {
    const rng = createRng(11);
    let fast = 0;
    const n = 3000;
    for (let i = 0; i < n; i++) {
      const event = randomEvent(rng);
      if (same(LineageEvent.encode(event).finish())) fast++;
    }
    // Only Struct fields (facets, parameters) and negative trigger kinds are left to the generated decoder.
    expect(fast).toBeGreaterThan(n * 0.6);
  });

  it('marks an event plain exactly when normalizeEventChecked takes it unchanged', () => {
    const rng = createRng(14);
    valid = true;
    plainCount = 0;
    try {
      const n = 20000;
      for (let i = 0; i < n; i++) {
        let bytes: Uint8Array = LineageEvent.encode(randomEvent(rng)).finish();
        if (rng() < 0.2) bytes = mutate(rng, bytes);
        same(bytes);
      }
      expect(plainCount).toBeGreaterThan(n * 0.05);
    } finally {
      valid = false;
    }
  });

  it('never decodes mutated bytes differently from LineageEvent.decode', () => {
    const rng = createRng(12);
    let fast = 0;
    const n = 20000;
    for (let i = 0; i < n; i++) {
      let bytes: Uint8Array = LineageEvent.encode(randomEvent(rng)).finish();
      for (let k = 1 + Math.floor(rng() * 3); k > 0; k--) bytes = mutate(rng, bytes);
      if (same(bytes)) fast++;
    }
    expect(fast).toBeGreaterThan(n * 0.1);
  });

  it('takes empty events and repeated fields as the generated decoder does', () => {
    const ref = (id: string) => new BinaryWriter().uint32(10).string(id).finish();
    const w = new BinaryWriter();
    w.uint32(10).string('first').uint32(10).string('second');
    w.uint32(82).bytes(new BinaryWriter().uint32(10).string('o').finish());
    w.uint32(90).bytes(new BinaryWriter().uint32(98).bytes(ref('u1')).uint32(98).bytes(ref('u2')).uint32(106).bytes(new Uint8Array(0)).finish());
    for (const bytes of [new Uint8Array(0), w.finish(), LineageEvent.encode({ eventId: '', eventTimeNs: '0', producer: '', body: { $case: 'run', value: { runId: '', name: '', parentRunId: '', state: '', startedAtNs: '0', endedAtNs: '0', facets: undefined } } }).finish()]) {
      expect(same(bytes)).toBe(true);
    }
  });

  it('leaves attributes whose object order differs from their order on the wire to the full check', () => {
    const entry = (key: string) => new BinaryWriter().uint32(10).string(key).uint32(18).string('v').finish();
    for (const keys of [['10', '9'], ['a', 'b'], ['b', 'a'], ['__proto__', 'a']]) {
      const ov = new BinaryWriter().uint32(10).string('orders:1').uint32(18).string(HASH);
      for (const k of keys) ov.uint32(50).bytes(entry(k));
      const bytes = new BinaryWriter().uint32(10).string('e1').uint32(16).int64('1000').uint32(82).bytes(ov.finish()).finish();
      expect(same(bytes)).toBe(true);
    }
  });
});

describe('LazySubmitEventsRequest.decode', () => {
  /** The decoding it replaced: each event's bytes through the generated decoder. */
  function reference(bytes: Buffer): { events?: LineageEvent[]; error?: string } {
    const events: LineageEvent[] = [];
    let i = 0;
    for (const wire of eventBytes(bytes)) {
      try {
        events.push(LineageEvent.decode(new AsciiBinaryReader(wire)));
      } catch (err) {
        return { error: `events[${i}]: does not decode as a LineageEvent: ${err instanceof Error ? err.message : String(err)}` };
      }
      i++;
    }
    return { events };
  }

  function eventBytes(bytes: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let p = 0;
    while (p < bytes.length) {
      p++; // tag 10
      let len = 0;
      for (let shift = 0; ; shift += 7) {
        const b = bytes[p++] as number;
        len |= (b & 0x7f) << shift;
        if (b < 0x80) break;
      }
      out.push(bytes.subarray(p, p + len));
      p += len;
    }
    return out;
  }

  it('gives the events, bytes and errors the generated decoder gave, batch by batch', () => {
    const rng = createRng(13);
    for (let b = 0; b < 300; b++) {
      const parts: Uint8Array[] = [];
      for (let i = Math.floor(rng() * 12); i > 0; i--) {
        let bytes: Uint8Array = LineageEvent.encode(randomEvent(rng)).finish();
        if (rng() < 0.05) bytes = mutate(rng, bytes);
        parts.push(new BinaryWriter().uint32(10).bytes(bytes).finish());
      }
      const bytes = Buffer.concat(parts);
      const expected = reference(bytes);
      const lazy = new LazySubmitEventsRequest(rng() < 0.5 ? bytes : new Uint8Array(bytes), parts.length);
      let got: { events?: LineageEvent[]; error?: string };
      try {
        const d = lazy.decode();
        expect(d.wire.map((w) => Buffer.from(w))).toEqual(eventBytes(bytes));
        got = { events: d.events };
      } catch (err) {
        got = { error: String((err as Error).message) };
      }
      expect(exact(got)).toBe(exact(expected));
    }
  });
});
