import { describe, expect, it } from 'vitest';
import { runCli } from './helpers/in-process-cli.js';

/** `retrace recompute` flags a user types out, refused before anything is sent. */
describe('recompute CLI flags (review)', () => {
  // Nothing listens there: a refused flag never reaches a coordinator.
  const cli = (...argv: string[]) => runCli([...argv, '--coordinator', '127.0.0.1:1', '--token', 't']);

  it('--concurrency 0 and --max-attempts 0 are usage errors naming the flag, not the defaults taken silently', async () => {
    for (const [flagName, message] of [
      ['--concurrency', 'error: --concurrency: at least 1 step at once (default 16), got 0'],
      ['--max-attempts', 'error: --max-attempts: at least 1 attempt per step (default 3), got 0'],
    ] as const) {
      const r = await cli('recompute', 'chg-0123456789abcdef', flagName, '0');
      expect(r.code, flagName).toBe(2);
      expect(r.err.split('\n')[0]).toBe(message);
      expect(r.out).toBe('');
    }
  });
});
