import { describe, expect, it } from 'vitest';
import { LineageEvent, TriggerKind, type ObjectVersion, type Step } from '../common/gen/retrace/v1/provenance.js';
import { encodeLineageEvent } from '../common/lineage-event-encoding.js';
import { createRng } from '../common/random.js';
import { h, objectEvent, ref, runEvent, stepEvent } from './helpers/lineage-events.js';

/** The generated encoder's bytes: what the fast encoder must write exactly. */
const generated = (e: LineageEvent): Buffer => Buffer.from(LineageEvent.encode(e).finish());

function expectSame(e: LineageEvent): void {
  const fast = encodeLineageEvent(e);
  expect(fast, JSON.stringify(e).slice(0, 200)).toBeDefined();
  expect(Buffer.from(fast as Uint8Array).toString('hex')).toBe(generated(e).toString('hex'));
}

const STRINGS = ['', 'a', 'record:bench/parsed:cap-1-17', 'ünïcödé ✓', '😀 emoji', 'x'.repeat(127), 'y'.repeat(128), 'z'.repeat(300), `${'é'.repeat(70)}`, '\u0001\u007f', '\ud800 lone'];
const INT64S = ['0', '1', '127', '128', '16383', '16384', '4294967295', '4294967296', '9007199254740991', '9007199254740993', '1700000000000100000', '9223372036854775807', '000', '0042'];

function randomValue(r: () => number, depth: number): unknown {
  const k = Math.floor(r() * (depth > 3 ? 5 : 8));
  switch (k) {
    case 0:
      return null;
    case 1:
      return r() < 0.5;
    case 2:
      return [0, -0, 1.5, -3, 1e300, Number.MAX_SAFE_INTEGER, 0.0061, Number.POSITIVE_INFINITY][Math.floor(r() * 8)];
    case 3:
    case 4:
      return STRINGS[Math.floor(r() * STRINGS.length)];
    case 5:
      return Array.from({ length: Math.floor(r() * 4) }, () => (r() < 0.1 ? undefined : randomValue(r, depth + 1)));
    default:
      return randomStruct(r, depth + 1);
  }
}

function randomStruct(r: () => number, depth: number): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const n = Math.floor(r() * 5);
  for (let i = 0; i < n; i++) o[r() < 0.1 ? '' : r() < 0.2 ? String(Math.floor(r() * 20)) : `k${Math.floor(r() * 50)}${STRINGS[Math.floor(r() * 4)]}`] = r() < 0.05 ? undefined : randomValue(r, depth);
  return o;
}

const pick = <T,>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;

function randomVersion(r: () => number): ObjectVersion {
  const attributes: Record<string, string> = {};
  for (let i = Math.floor(r() * 4); i > 0; i--) attributes[pick(r, STRINGS)] = pick(r, STRINGS);
  return { objectId: pick(r, STRINGS), contentHash: r() < 0.8 ? h(String(r())) : '', size: pick(r, INT64S), mediaType: pick(r, STRINGS), createdAtNs: pick(r, INT64S), attributes, facets: r() < 0.4 ? randomStruct(r, 0) : undefined };
}

function randomEvent(r: () => number): LineageEvent {
  const base = { eventId: pick(r, STRINGS), eventTimeNs: pick(r, INT64S), producer: pick(r, STRINGS) };
  const kind = Math.floor(r() * 4);
  if (kind === 0) return { ...base, body: { $case: 'objectVersion', value: randomVersion(r) } };
  if (kind === 1) return { ...base, body: { $case: 'run', value: { runId: pick(r, STRINGS), name: pick(r, STRINGS), parentRunId: pick(r, STRINGS), state: pick(r, STRINGS), startedAtNs: pick(r, INT64S), endedAtNs: pick(r, INT64S), facets: r() < 0.5 ? randomStruct(r, 0) : undefined } } };
  if (kind === 2) return { ...base, body: undefined };
  const refs = (): Step['used'] => Array.from({ length: Math.floor(r() * 4) }, () => ({ objectId: pick(r, STRINGS), contentHash: r() < 0.8 ? h(String(r())) : '', unversioned: r() < 0.2 }));
  const step: Step = {
    stepId: pick(r, STRINGS),
    runId: pick(r, STRINGS),
    transform: pick(r, STRINGS),
    codeVersion: pick(r, STRINGS),
    parameters: r() < 0.5 ? randomStruct(r, 0) : undefined,
    nodeId: pick(r, STRINGS),
    host: pick(r, STRINGS),
    startedAtNs: pick(r, INT64S),
    endedAtNs: pick(r, INT64S),
    why: r() < 0.5 ? { kind: pick(r, [0, TriggerKind.TRIGGER_KIND_EVENT, 3]), id: pick(r, STRINGS), principal: pick(r, STRINGS) } : undefined,
    resources:
      r() < 0.5
        ? { cpuTimeNs: pick(r, INT64S), peakMemoryBytes: pick(r, INT64S), netBytesIn: pick(r, INT64S), netBytesOut: pick(r, INT64S), diskBytesRead: pick(r, INT64S), diskBytesWritten: pick(r, INT64S), gpuTimeNs: pick(r, INT64S), gpuUtilization: pick(r, [0, 0.5, 1, -0]), wallTimeNs: pick(r, INT64S) }
        : undefined,
    used: refs(),
    generated: refs(),
    facets: r() < 0.6 ? randomStruct(r, 0) : undefined,
    generatedVersions: r() < 0.5 ? { versions: Array.from({ length: Math.floor(r() * 3) }, () => randomVersion(r)) } : undefined,
    usedVersions: r() < 0.5 ? { versions: Array.from({ length: Math.floor(r() * 3) }, () => randomVersion(r)) } : undefined,
  };
  return { ...base, body: { $case: 'step', value: step } };
}

describe('fast lineage event encoding', () => {
  it('writes the generated encoder\'s bytes for the events the engine records', () => {
    expectSame(objectEvent('o1', 'raw:1', 'r1'));
    expectSame(runEvent('r', 'run-1'));
    expectSame(stepEvent('e1', 's1', [ref('raw:1', 'r1'), { objectId: 'lookup', contentHash: '', unversioned: true }], [ref('mid:1', 'm1')], { facets: { retrace: { attempts: 1, inputs: { in: 'raw:1' }, output: 'mid', pipeline: 'p', pipelineVersion: 3, queuedMs: 0.25, shardId: 'abc', step: 'mid' } } }));
    // A step with a large facet: length prefixes of two and three bytes.
    expectSame(stepEvent('e2', 's2', [], [], { parameters: { rows: Array.from({ length: 3000 }, (_, i) => ({ i, s: `row ${i}` })) } }));
    expectSame(stepEvent('e3', 's3', [ref('a', 'a')], [ref('b', 'b')], { generatedVersions: { versions: [{ objectId: 'b', contentHash: h('b'), size: '1', mediaType: 'application/json', createdAtNs: '1700000000000100000', attributes: { dataset: 'b', event_time_ns: '1700000000000000001', key: 'k', pipeline: 'p' }, facets: undefined }] } }));
  });

  it('writes the generated encoder\'s bytes for 3000 random events (strings, int64s, Struct values, maps)', () => {
    // Seeded, so a failure can be replayed.
    const r = createRng(20261123);
    for (let i = 0; i < 3000; i++) expectSame(randomEvent(r));
  });

  it('writes int64 fields as a BigInt varint of their value would, at every length and boundary', () => {
    // The varint the encoder wrote with BigInt arithmetic before it split values into 32-bit halves.
    const bigintVarint = (s: string): string => {
      const out: number[] = [];
      let v = BigInt(s);
      while (v > 0x7fn) {
        out.push(Number(v & 0x7fn) | 0x80);
        v >>= 7n;
      }
      out.push(Number(v));
      return Buffer.from(out).toString('hex');
    };
    const values = new Set<string>(['0', '1', '9', '10', '00', '0000000000000000001', '0000000000000000000']);
    for (let bits = 0; bits <= 63; bits++) {
      const p = 1n << BigInt(bits);
      for (const v of [p - 1n, p, p + 1n]) if (v > 0n && v < 1n << 63n) values.add(v.toString());
    }
    for (let digits = 1; digits <= 19; digits++) {
      const p = 10n ** BigInt(digits - 1);
      for (const v of [p, p + 1n, 10n * p - 1n]) if (v < 1n << 63n) values.add(v.toString());
      values.add(`${'0'.repeat(19 - digits)}${p}`.slice(-19));
    }
    for (const v of ['4294967295999', '4294967296000', '9007199254740993', '1700000000000100000', '1732476121123456789', '9223372036854775807', '9223372036854775806', '9223372032559808512']) values.add(v);
    const r = createRng(20261124);
    for (let i = 0; i < 2000; i++) {
      const digits = 1 + Math.floor(r() * 19);
      let s = '';
      for (let d = 0; d < digits; d++) s += String(Math.floor(r() * 10));
      if (BigInt(s) < 1n << 63n) values.add(s);
    }
    for (const v of values) {
      const e: LineageEvent = { eventId: '', eventTimeNs: v, producer: '', body: undefined };
      const fast = encodeLineageEvent(e);
      expect(fast, v).toBeDefined();
      const hex = Buffer.from(fast as Uint8Array).toString('hex');
      expect(hex, v).toBe(v === '0' ? '' : `10${bigintVarint(v)}`);
      expect(hex, v).toBe(generated(e).toString('hex'));
    }
    // Past the int64 range, negative, or not digits: left to the generated encoder, as before.
    for (const v of ['9223372036854775808', '9999999999999999999', '18446744073709551615', '12345678901234567890', '-1', '-9223372036854775808', '-0', '+1', '1e3', ' 1', '1 ', '123456789012345a', '1234567890123456-', '12345678901234567/', '1234567890123456789:']) {
      expect(encodeLineageEvent({ eventId: '', eventTimeNs: v, producer: '', body: undefined }), v).toBeUndefined();
    }
  });

  it('leaves input it does not handle exactly to the generated encoder', () => {
    const version = (patch: Partial<ObjectVersion>): LineageEvent => {
      const e = objectEvent('o', 'o', 'o');
      return { ...e, body: { $case: 'objectVersion', value: { ...(e.body?.value as ObjectVersion), ...patch } } };
    };
    expect(encodeLineageEvent(version({ size: '9223372036854775808' }))).toBeUndefined();
    expect(encodeLineageEvent(version({ size: '-1' }))).toBeUndefined();
    expect(encodeLineageEvent(version({ size: '' }))).toBeUndefined();
    expect(encodeLineageEvent(version({ size: 5 as unknown as string }))).toBeUndefined();
    expect(encodeLineageEvent(version({ mediaType: undefined as unknown as string }))).toBeUndefined();
    expect(encodeLineageEvent(version({ facets: { at: new Date(0) } }))).toBeUndefined();
    expect(encodeLineageEvent(version({ facets: { n: 1n } }))).toBeUndefined();
    let deep: Record<string, unknown> = {};
    for (let i = 0; i < 100; i++) deep = { d: deep };
    expect(encodeLineageEvent(version({ facets: deep }))).toBeUndefined();
    // After a refusal, the next event is encoded from a clean state.
    expectSame(version({ size: '12' }));
  });
});
