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
    const sent = bearerTokenOf(authorization);
    return sent !== undefined && timingSafeEqual(digest(sent), expected);
  };
}

/** The token of `Bearer <token>`, the scheme in any case (RFC 7235); undefined for anything else. */
export function bearerTokenOf(authorization: string | undefined): string | undefined {
  if (authorization === undefined || authorization.length <= 7 || authorization.slice(0, 7).toLowerCase() !== 'bearer ') return undefined;
  return authorization.slice(7);
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}
