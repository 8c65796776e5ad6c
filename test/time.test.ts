import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../common/errors.js';
import { formatSpanMs, isoToNanos, nanosToIso } from '../common/time.js';

describe('isoToNanos', () => {
  it('parses date-times with fractions and offsets to nanoseconds', () => {
    expect(isoToNanos('2026-01-01T00:00:00Z')).toBe(1_767_225_600_000_000_000n);
    expect(isoToNanos('2026-01-01T01:00:00.000000001+01:00')).toBe(1_767_225_600_000_000_001n);
    expect(nanosToIso(isoToNanos('2024-02-29T12:34:56.5Z'))).toBe('2024-02-29T12:34:56.5Z');
    // A leap second is a valid date-time (it lands on the next second).
    expect(isoToNanos('2016-12-31T23:59:60Z')).toBe(isoToNanos('2017-01-01T00:00:00Z'));
  });

  it('refuses calendar values that do not exist instead of rolling them over, naming the field', () => {
    for (const text of ['2026-13-45T00:00:00Z', '2025-02-29T00:00:00Z', '2026-04-31T00:00:00Z', '2026-01-01T24:00:00Z', '2026-01-01T00:60:00Z', '2026-01-01T00:00:61Z', '0050-01-01T00:00:00Z']) {
      expect(() => isoToNanos(text, 'as_of'), text).toThrow(InvalidArgumentError);
      expect(() => isoToNanos(text, 'as_of'), text).toThrow(/^as_of: invalid date-time/);
    }
  });
});

describe('formatSpanMs', () => {
  it('says a span in its two largest units, or in ms under a second', () => {
    expect(formatSpanMs(40)).toBe('40 ms');
    expect(formatSpanMs(999.6)).toBe('1000 ms');
    expect(formatSpanMs(12_000)).toBe('12s');
    expect(formatSpanMs(303_000)).toBe('5m 3s');
    expect(formatSpanMs(3_600_000)).toBe('1h');
    // A replay report's recorded span of about 328 days.
    expect(formatSpanMs(28_333_755_375)).toBe('327d 22h');
    expect(formatSpanMs(10_367_990_000)).toBe('119d 23h');
  });
});
