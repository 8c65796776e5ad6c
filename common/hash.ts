// Not named `crypto`: the shard worker's bundle (CommonJS, evaluated as a script) would then
// assign to the global `crypto`, which has only a getter, and the worker would not start.
import * as nodeCrypto from 'node:crypto';

/** Content hashes are written "sha256:" + 64 lowercase hex digits. */
export function isContentHash(value: string): boolean {
  // A loop, not a regex: ingest checks two or three hashes per event, and the regex cost a
  // microsecond a call.
  if (value.length !== 71 || !value.startsWith('sha256:')) return false;
  for (let i = 7; i < 71; i++) {
    const c = value.charCodeAt(i);
    if (c < 48 || (c > 57 && c < 97) || c > 102) return false;
  }
  return true;
}

/** SHA-256 of the bytes (or UTF-8 text) as a content hash ("sha256:<hex>"). */
export function contentHashOf(data: Uint8Array | string): string {
  return `sha256:${sha256Hex(data)}`;
}

// One-shot crypto.hash (Node ≥ 20.12) makes no Hash object per call: for the small payloads
// hashed once per shard it costs about two thirds of createHash().update().digest().
const oneShot = typeof nodeCrypto.hash === 'function';

export function sha256Hex(data: Uint8Array | string): string {
  return oneShot ? nodeCrypto.hash('sha256', data, 'hex') : nodeCrypto.createHash('sha256').update(data).digest('hex');
}

export function sha256(data: Uint8Array | string): Buffer {
  return oneShot ? nodeCrypto.hash('sha256', data, 'buffer') : nodeCrypto.createHash('sha256').update(data).digest();
}
