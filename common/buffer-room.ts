/**
 * `buf` itself when `used + need` bytes fit, else a copy of its first `used` bytes in a new buffer
 * of twice its size (or more, until they fit): doubling keeps appends amortised constant.
 */
export function withRoom(buf: Buffer, used: number, need: number): Buffer {
  if (used + need <= buf.length) return buf;
  let size = Math.max(1, buf.length * 2);
  while (size < used + need) size *= 2;
  const next = Buffer.allocUnsafe(size);
  buf.copy(next, 0, 0, used);
  return next;
}
