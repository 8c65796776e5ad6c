import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * The check both front ends (gRPC metadata, HTTP headers) make of an `authorization` value:
 * `Bearer <token>`, the scheme in any case (RFC 7235), the token compared in constant time.
 * Both sides are compared as SHA-256 digests, so the time taken does not depend on the length
 * of the token sent either (a length check first would tell a caller the token's length).
 */
export function bearerTokenCheck(token: string): (authorization: string | undefined) => boolean {
  const expected = digest(token);
  return (authorization) => {
    if (authorization === undefined || authorization.length <= 7 || authorization.slice(0, 7).toLowerCase() !== 'bearer ') return false;
    return timingSafeEqual(digest(authorization.slice(7)), expected);
  };
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}
