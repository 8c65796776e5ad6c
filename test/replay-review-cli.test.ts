import { describe, expect, it } from 'vitest';
import { ReplayState, WatchReplayResponse } from '../common/gen/retrace/v1/replay.js';
import { watchReplayProgress } from '../scripts/cli/replay-commands.js';
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

describe('replay start: two selectors', () => {
  // `--record X --last 10m orders/raw` replayed X alone had it not refused orders/raw as "unexpected argument (give each record its own --record)".
  it('is a usage error naming both', async () => {
    for (const [argv, named] of [
      [['--record', 'record:orders/raw:o1', '--last', '10m', 'orders/raw'], '--record and --last'],
      [['--run', 'r1', '--window', 'orders/raw', '2026-01-01T00:00:00Z', '2026-01-02T00:00:00Z'], '--window and --run'],
    ] as const) {
      const r = await runCli(['replay', 'start', ...argv, '--coordinator', '127.0.0.1:1', '--token', 't']);
      expect(r.code, r.err).toBe(2);
      expect(r.err.split('\n')[0]).toBe(`error: give one selector, not ${named}`);
    }
  });
});

describe('replay start: a fault kind given twice', () => {
  // `--fault fail:0.5 --fault fail:0.1` started a replay with 0.1, the first dropped without a word.
  it('is a usage error naming both; outages of several nodes are still taken', async () => {
    const r = await runCli(['replay', 'start', '--record', 'record:orders/raw:o1', '--fault', 'fail:0.5', '--fault', 'fail:0.1', '--coordinator', '127.0.0.1:1', '--token', 't']);
    expect(r.code, r.err).toBe(2);
    expect(r.err.split('\n')[0]).toBe('error: --fault fail is given twice ("fail:0.5" and "fail:0.1"); give it once');
    // Past the parser (two outages and one of each kind): only the connection fails.
    const ok = await runCli(['replay', 'start', '--record', 'record:orders/raw:o1', '--fault', 'outage:a:after=0s:for=1s', '--fault', 'outage:b:after=0s:for=1s', '--fault', 'link:0.1', '--fault', 'fail:0.1', '--coordinator', '127.0.0.1:1', '--token', 't']);
    expect(ok.code, ok.err).toBe(1);
  });
});

describe('replay watch off a terminal', () => {
  // A replay whose shards wait for a node says so once, about a second in; the log then showed
  // nothing but the header for as long as it waited: the line came within the 10 s throttle and
  // was dropped, and no later message brought it back.
  it('writes a change that came within the throttle once its time is up', async () => {
    const msg = (stepsDone: number, message: string, state = ReplayState.REPLAY_STATE_RUNNING) => WatchReplayResponse.fromPartial({ state, stepsDone, stepsTotal: 2, recordsTotal: 1, message });
    let release!: () => void;
    const ended = new Promise<void>((r) => (release = r));
    const client = {
      watchReplay: async function* () {
        yield msg(0, 'running');
        await new Promise((r) => setTimeout(r, 20));
        yield msg(0, '1 shard waits for a node: no READY node (2 known)');
        await ended;
        yield msg(2, 'done: succeeded', ReplayState.REPLAY_STATE_SUCCEEDED);
      },
    };
    let err = '';
    const stderr = { write: (s: string) => ((err += s), true) } as unknown as NodeJS.WritableStream;
    const watching = watchReplayProgress(client as never, 'replay-x', { stderr, signal: new AbortController().signal }, { lineEveryMs: 150 });
    await new Promise((r) => setTimeout(r, 400));
    // Before the end: the wait is in the log.
    expect(err).toContain('1 shard waits for a node: no READY node');
    release();
    await watching;
    const lines = err.split('\n').filter(Boolean);
    expect(lines.filter((l) => l.includes('waits for a node'))).toHaveLength(1);
    expect(lines.at(-1)).toContain('2/2 steps');
  });
});
