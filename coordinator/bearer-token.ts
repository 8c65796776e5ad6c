import { timingSafeEqual } from 'node:crypto';

/**
 * The check both front ends (gRPC metadata, HTTP headers) make of an `authorization` value:
 * `Bearer <token>`, the scheme in any case (RFC 7235), the token compared in constant time.
 */
export function bearerTokenCheck(token: string): (authorization: string | undefined) => boolean {
  const expected = Buffer.from(token);
  return (authorization) => {
    if (authorization === undefined || authorization.length <= 7 || authorization.slice(0, 7).toLowerCase() !== 'bearer ') return false;
    const got = Buffer.from(authorization.slice(7));
    return got.length === expected.length && timingSafeEqual(got, expected);
  };
}
