import { BinaryReader, getTextEncoding } from '@bufbuild/protobuf/wire';
import type { Latin1Slicer } from './buffer-natives.js';

/**
 * A BinaryReader whose string fields, when their bytes are all ASCII (ids, content hashes and
 * names are, in practice), become strings in one native copy. BinaryReader makes a view and
 * calls TextDecoder for strings over 32 bytes (a content hash is 71), or fills an array of char
 * codes for shorter ones: per event, that was most of what decoding allocated. Other strings
 * decode exactly as BinaryReader decodes them, so any input gives the same strings.
 */
export class AsciiBinaryReader extends BinaryReader {
  private readonly source: Buffer;

  constructor(bytes: Uint8Array) {
    const buffer = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    super(buffer, getTextEncoding().decodeUtf8);
    this.source = buffer;
  }

  override string(strict?: boolean): string {
    const len = this.uint32();
    const start = this.pos;
    const end = start + len;
    if (end > this.len) throw new RangeError('premature EOF');
    this.pos = end;
    return stringAt(this.source, start, end, strict);
  }
}

/**
 * bytes[start, end) as a protobuf string field: in one native copy when every byte is ASCII,
 * else as BinaryReader decodes it (TextDecoder, `strict` for invalid UTF-8).
 */
export function stringAt(bytes: Buffer, start: number, end: number, strict?: boolean): string {
  for (let i = start; i < end; i++) {
    if ((bytes[i] as number) > 0x7f) return getTextEncoding().decodeUtf8(bytes.subarray(start, end), strict);
  }
  return (bytes as unknown as Latin1Slicer).latin1Slice(start, end);
}
