import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * The check both front ends (gRPC metadata, HTTP headers) make of an `authorization` value:
 * `Bearer <token>`, the scheme in any case (RFC 7235), the token compared in constant time.
 * Both sides are compared as SHA-256 digests, so the time taken does not depend on the length
 * of the token sent either (a length check first would tell a caller the token's length).
 */
export function bearerTokenCheck(token: string): (authorization: string | undefined) => boolean {
  const match = bearerTokenMatcher(token);
  return (authorization) => match(authorization)?.matches === true;
}

/**
 * bearerTokenCheck that also gives the presented token's SHA-256 (undefined: no bearer token at
 * all), so that a caller looking the token up among others when it is not `token` hashes it once.
 */
export function bearerTokenMatcher(token: string): (authorization: string | undefined) => { matches: boolean; sha256: Buffer } | undefined {
  const expected = tokenSha256(token);
  return (authorization) => {
    const sent = bearerTokenOf(authorization);
    if (sent === undefined) return undefined;
    const sha256 = tokenSha256(sent);
    return { matches: timingSafeEqual(sha256, expected), sha256 };
  };
}

/** The token of `Bearer <token>`, the scheme in any case (RFC 7235); undefined for anything else. */
export function bearerTokenOf(authorization: string | undefined): string | undefined {
  if (authorization === undefined || authorization.length <= 7 || authorization.slice(0, 7).toLowerCase() !== 'bearer ') return undefined;
  return authorization.slice(7);
}

/** SHA-256 of a token's UTF-8 bytes: what is compared, and (as hex) what tokens.json keeps. */
export function tokenSha256(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}
