import { InvalidArgumentError } from './errors.js';

/**
 * Times are int64 nanoseconds since the Unix epoch, carried as decimal strings (proto int64 with
 * forceLong=string) and compared as bigint, so nanosecond precision survives end to end.
 */
export type Nanos = bigint;

const ISO_PATTERN = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9})\d*)?)?(Z|[+-]\d{2}(?::?\d{2})?)?$/i;

/** Parses an ISO-8601 date-time (any fraction up to nanoseconds, any offset) to nanoseconds. */
export function isoToNanos(text: string, field = 'time'): Nanos {
  const m = ISO_PATTERN.exec(text.trim());
  if (!m) throw new InvalidArgumentError(field, `not an ISO-8601 date-time: ${JSON.stringify(text)}`);
  const [, y, mo, d, h, mi, s, frac, zone] = m;
  const [year, month, day, hour, minute, second] = [y, mo, d, h, mi, s ?? '0'].map(Number) as [number, number, number, number, number, number];
  // Date.UTC rolls 2026-13-45 over into 2027-02-14 (and reads years below 100 as 19xx): the
  // calendar date must come back as written. Second 60 is a leap second.
  const date = new Date(Date.UTC(year, month - 1, day));
  if (date.getUTCFullYear() !== year || date.getUTCMonth() !== month - 1 || date.getUTCDate() !== day || hour > 23 || minute > 59 || second > 60) {
    throw new InvalidArgumentError(field, `invalid date-time: ${JSON.stringify(text)}`);
  }
  const ms = Date.UTC(year, month - 1, day, hour, minute, second);
  let offsetMinutes = 0;
  if (zone && zone.toUpperCase() !== 'Z') {
    const sign = zone.startsWith('-') ? -1 : 1;
    const digits = zone.slice(1).replace(':', '');
    offsetMinutes = sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2, 4) || '0'));
  }
  const nanosFrac = BigInt((frac ?? '').padEnd(9, '0') || '0');
  return (BigInt(ms) - BigInt(offsetMinutes) * 60_000n) * 1_000_000n + nanosFrac;
}

/** Nanoseconds to ISO-8601 with nanosecond fraction (trailing zeros kept to 9 digits only when non-zero). */
export function nanosToIso(ns: Nanos | string): string {
  const v = typeof ns === 'string' ? BigInt(ns) : ns;
  const ms = v / 1_000_000n;
  const sub = Number(((v % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n);
  const base = new Date(Number(ms)).toISOString().slice(0, 19);
  const frac = sub === 0 ? '' : `.${String(sub).padStart(9, '0').replace(/0+$/, '')}`;
  return `${base}${frac}Z`;
}

/** Parses a proto int64 string; rejects anything that is not a non-negative integer. */
export function parseNanos(value: string, field: string): Nanos {
  if (!/^\d{1,19}$/.test(value)) throw new InvalidArgumentError(field, `expected non-negative integer nanoseconds, got ${JSON.stringify(value)}`);
  return BigInt(value);
}

/** Milliseconds since the epoch to nanoseconds. */
export function millisToNanos(ms: number): Nanos {
  return BigInt(Math.trunc(ms)) * 1_000_000n + BigInt(Math.round((ms - Math.trunc(ms)) * 1e6));
}

const DURATION_UNITS: readonly (readonly [string, number])[] = [
  ['w', 604_800_000],
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1000],
];

/** A duration as parseDurationMs reads it: the largest unit it is a whole number of ("30d", "90s"), else ms. */
export function formatDurationMs(ms: number): string {
  for (const [unit, size] of DURATION_UNITS) if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

/**
 * A span as a person reads it: under a second in ms (`412 ms`), else its two largest units
 * (`119d 23h`, `5m 3s`, `12s`), rounded to the second.
 */
export function formatSpanMs(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const units: [string, number][] = [['d', 86_400], ['h', 3_600], ['m', 60], ['s', 1]];
  let left = Math.round(ms / 1000);
  const parts: string[] = [];
  for (const [unit, size] of units) {
    if (left >= size && parts.length < 2) {
      parts.push(`${Math.floor(left / size)}${unit}`);
      left %= size;
    } else if (parts.length > 0) break;
  }
  return parts.join(' ');
}

/** Parses a duration such as "90s", "5m", "2h", "1d", "500ms" to milliseconds. */
export function parseDurationMs(text: string, field = 'duration'): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$/.exec(text.trim());
  if (!m) throw new InvalidArgumentError(field, `expected a duration like 30s, 5m, 2h or 1d, got ${JSON.stringify(text)}`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[m[2] as 'ms'];
  return Number(m[1]) * unit;
}
