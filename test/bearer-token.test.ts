import * as crypto from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { bearerTokenCheck } from '../coordinator/bearer-token.js';

vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  return { ...actual, timingSafeEqual: vi.fn(actual.timingSafeEqual) };
});

describe('bearerTokenCheck', () => {
  const token = 'a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6';
  const check = bearerTokenCheck(token);

  it('takes the token in any scheme case and refuses anything else', () => {
    expect(check(`Bearer ${token}`)).toBe(true);
    expect(check(`bearer ${token}`)).toBe(true);
    for (const bad of [undefined, '', 'Bearer ', `Basic ${token}`, token, `Bearer ${token}x`, `Bearer ${token.slice(1)}`, `Bearer ${token.slice(0, -1)}0`]) expect(check(bad), String(bad)).toBe(false);
  });

  it('compares in constant time whatever the length sent, so the answer tells nothing of the token length', () => {
    const spy = vi.mocked(crypto.timingSafeEqual);
    for (const sent of ['x', token.slice(0, 8), `${token}${token}`]) {
      spy.mockClear();
      expect(check(`Bearer ${sent}`)).toBe(false);
      expect(spy, `a ${sent.length}-character token`).toHaveBeenCalledTimes(1);
    }
  });
});
