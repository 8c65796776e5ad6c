import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { describe, expect, it } from 'vitest';
import { AsciiBinaryReader } from '../common/ascii-binary-reader.js';
import { LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { createRng } from '../common/random.js';

/** Field 1 as length-delimited raw bytes, one after another. */
function framed(values: Uint8Array[]): Uint8Array {
  const w = new BinaryWriter();
  for (const v of values) w.uint32(10).bytes(v);
  return w.finish();
}

function readAll(reader: BinaryReader): string[] {
  const out: string[] = [];
  while (reader.pos < reader.len) {
    reader.uint32();
    out.push(reader.string());
  }
  return out;
}

describe('AsciiBinaryReader', () => {
  it('reads every string as BinaryReader does: ASCII, wide chars, and malformed UTF-8', () => {
    const rng = createRng(7);
    const enc = new TextEncoder();
    const values: Uint8Array[] = [
      enc.encode(''),
      enc.encode('sha256:' + 'ab'.repeat(32)),
      enc.encode('naïve ☃ 𝄞'),
      enc.encode('x'.repeat(200)),
      Uint8Array.of(0x61, 0xc3),  // truncated two-byte sequence
      Uint8Array.of(0xff, 0xfe, 0x41),  // bytes that are never UTF-8
      Uint8Array.of(0xed, 0xa0, 0x80),  // an encoded lone surrogate
      Uint8Array.of(0x7f, 0x80),  // the last ASCII byte, then a continuation byte alone
    ];
    for (let i = 0; i < 300; i++) {
      const n = Math.floor(rng() * 80);
      const bytes = new Uint8Array(n);
      // Mostly ASCII, sometimes any byte.
      for (let j = 0; j < n; j++) bytes[j] = rng() < 0.9 ? Math.floor(rng() * 0x80) : Math.floor(rng() * 0x100);
      values.push(bytes);
    }
    const wire = framed(values);
    const expected = readAll(new BinaryReader(wire));
    expect(readAll(new AsciiBinaryReader(wire))).toEqual(expected);
    expect(readAll(new AsciiBinaryReader(Buffer.from(wire)))).toEqual(expected);
    expect(expected[2]).toBe('naïve ☃ 𝄞');
    expect(expected[4]).toBe('a\ufffd');
  });

  it('reads a view into a larger buffer from the view, and decodes events the same', () => {
    const event = LineageEvent.encode({
      eventId: 'ev-1',
      eventTimeNs: '1700000000000000000',
      producer: 'prod-ü',
      body: { $case: 'objectVersion', value: { objectId: 'orders/1', contentHash: 'sha256:' + 'cd'.repeat(32), size: '12', mediaType: 'text/csv', attributes: { k: 'v' }, createdAtNs: '0' } },
    }).finish();
    const padded = new Uint8Array(event.length + 10);
    padded.set(event, 5);
    const view = padded.subarray(5, 5 + event.length);
    expect(LineageEvent.decode(new AsciiBinaryReader(view))).toEqual(LineageEvent.decode(event));
    expect(LineageEvent.decode(new AsciiBinaryReader(Buffer.from(padded.buffer, 5, event.length)))).toEqual(LineageEvent.decode(event));
  });

  it('throws premature EOF on a string longer than what is left', () => {
    const whole = framed([new TextEncoder().encode('abcdef')]);
    const cut = whole.subarray(0, whole.length - 2);
    expect(() => readAll(new BinaryReader(cut))).toThrow('premature EOF');
    expect(() => readAll(new AsciiBinaryReader(cut))).toThrow('premature EOF');
  });
});
