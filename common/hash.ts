import { createHash } from 'node:crypto';

/** Content hashes are written "sha256:" + 64 lowercase hex digits. */
export const CONTENT_HASH_PATTERN = /^sha256:[0-9a-f]{64}$/;

export function isContentHash(value: string): boolean {
  return CONTENT_HASH_PATTERN.test(value);
}

/** SHA-256 of the bytes (or UTF-8 text) as a content hash ("sha256:<hex>"). */
export function contentHashOf(data: Uint8Array | string): string {
  return `sha256:${sha256Hex(data)}`;
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export function sha256(data: Uint8Array | string): Buffer {
  return createHash('sha256').update(data).digest();
}
