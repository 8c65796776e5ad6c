import { describe, expect, it } from 'vitest';
import { runCli } from './helpers/in-process-cli.js';

/**
 * Integer flags are range-checked where the CLI parses flags, against the protobuf field each one
 * feeds: a value the encoder would refuse is a usage error naming the flag and the range (exit 2),
 * before any connection is made (the coordinator address below has nothing listening).
 */
const NOWHERE = ['--coordinator', '127.0.0.1:1', '--token', 'unused'];

describe('integer flags', () => {
  it.each([
    [['lineage', 'trace', 'object:x', '--depth', '4294967296'], '--depth: expected an integer from 0 to 4294967295 (uint32), got "4294967296"'],
    [['lineage', 'trace', 'object:x', '--limit=-1'], '--limit: expected an integer from 0 to 4294967295 (uint32), got "-1"'],
    [['lineage', 'export', 'object:x', '--depth', '1.5'], '--depth: expected an integer from 0 to 4294967295 (uint32), got "1.5"'],
    [['replay', 'start', '--record', 'r1', '--seed', '-1'], '--seed: expected an integer from 0 to 18446744073709551615 (uint64), got "-1"'],
    [['replay', 'start', '--record', 'r1', '--seed', '18446744073709551616'], '--seed: expected an integer from 0 to 18446744073709551615 (uint64), got "18446744073709551616"'],
    [['replay', 'start', '--record', 'r1', '--max-memory', '1e3'], '--max-memory: expected an integer from 0 to 4294967295 (uint32), got "1e3"'],
    [['changes', '--limit', '-1'], '--limit: expected an integer from 0 to 4294967295 (uint32), got "-1"'],
    [['jobs', '--limit', '1e10'], '--limit: expected an integer from 0 to 4294967295 (uint32), got "1e10"'],
    [['pipeline', 'show', 'p', '--version', '4294967296'], '--version: expected an integer from 0 to 4294967295 (uint32), got "4294967296"'],
    [['recompute', 'chg-1', '--concurrency', '99999999999'], '--concurrency: expected an integer from 0 to 4294967295 (uint32), got "99999999999"'],
  ])('%j is a usage error naming the flag and its range', async (argv, message) => {
    const r = await runCli([...argv, ...NOWHERE]);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toMatch(new RegExp(`^error: ${message.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\n\nusage: retrace `));
  });

  it('a value at the top of the range gets past the check (and fails only for want of a coordinator)', async () => {
    const r = await runCli(['lineage', 'trace', 'object:x', '--depth', '4294967295', ...NOWHERE]);
    expect(r.code).toBe(1);
    expect(r.err).not.toContain('--depth');
    expect(r.err).not.toContain('serialization');
  });
});
