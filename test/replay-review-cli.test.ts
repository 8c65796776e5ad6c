import { describe, expect, it } from 'vitest';
import { runCli } from './helpers/in-process-cli.js';

describe('replay start: malformed durations are usage errors', () => {
  // `--last -5m orders/raw` and `--fault latency:abc` exited 1 (as if the coordinator refused them),
  // with no usage, while `--fault link:1.5` and every other malformed flag exits 2.
  it('exit 2, naming the flag, nothing sent', async () => {
    for (const [argv, text] of [
      [['--last', '-5m', 'orders/raw'], '--last'],
      [['--record', 'record:orders/raw:o1', '--fault', 'latency:abc'], '--fault latency'],
      [['--record', 'record:orders/raw:o1', '--fault', 'outage:n1:after=-1s:for=5s'], '--fault after'],
      [['--record', 'record:orders/raw:o1', '--fault', 'outage:n1:after=1s:for=soon'], '--fault for'],
    ] as const) {
      // No coordinator listens there: a usage error is answered before anything is sent.
      const r = await runCli(['replay', 'start', ...argv, '--coordinator', '127.0.0.1:1', '--token', 't']);
      expect(r.code, `${argv.join(' ')}: ${r.err}`).toBe(2);
      expect(r.err.split('\n')[0]).toMatch(new RegExp(`^error: ${text}: expected a duration`));
      expect(r.err).toContain('usage: retrace replay start');
    }
  });
});
