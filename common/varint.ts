/**
 * Unsigned LEB128 varints (protobuf's encoding of uint32/uint64 fields and lengths), written
 * straight into a byte array: for the encoders that write protobuf bytes by hand.
 */

/** Writes `v` (a non-negative safe integer) at out[pos]; returns the end position. */
export function writeVarint(out: Uint8Array, pos: number, v: number): number {
  // Bitwise operators work on 32 bits: above 2^31 the low bits are taken by division.
  while (v > 0x7fffffff) {
    out[pos++] = (v % 128) | 0x80;
    v = Math.floor(v / 128);
  }
  while (v >= 0x80) {
    out[pos++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  out[pos++] = v;
  return pos;
}

/** Bytes `writeVarint` takes for `v` (a non-negative safe integer). */
export function varintLength(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}
