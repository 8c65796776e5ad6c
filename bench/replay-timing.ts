/**
 * replay-timing: how exactly a replay keeps the recorded inter-arrival times of its source
 * records at 0.5x, 1x and 2x. A real coordinator with two local agents runs the quick start's
 * `orders` pipeline on N records spaced G ms apart (event time), then replays the window at each
 * speed; the error of record i is |(dispatch_i − dispatch_{i−1}) − (t_i − t_{i−1}) / speed|.
 * Dispatch times are taken as each record's first shard goes to the dispatcher.
 * Baseline, same run: a naive pacer that sleeps each recorded gap in turn (setTimeout chain); its
 * p99 is also the noise floor of the machine at the time (a loaded machine delays any timer).
 * The 1-minute load average at the start and end is reported with the figures.
 * Last line: {"bench":"replay-timing","ratio": worst p99 error (ms) / 10, "goal": "<= 1", ...}.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../coordinator/coordinator.js';
import { ReplayServiceDefinition } from '../common/gen/retrace/v1/replay.js';
import { PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { coordinatorExtensions } from '../scripts/cli/coordinator-extensions.js';
import { parseArgs } from '../scripts/cli/command.js';
import { openClient } from '../scripts/cli/client.js';
import { startLocalAgents, stopLocalAgents } from '../scripts/cli/local-agents.js';
import { runExamplePipeline } from '../scripts/cli/example-pipeline.js';
import { finish, percentile } from './report.js';

function num(argv: string[], name: string, dflt: number): number {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? Number(argv[i + 1]) : dflt;
}

export async function main(argv: string[]): Promise<void> {
  const records = num(argv, 'records', 100);
  const gapMs = num(argv, 'gap-ms', 20);
  const loadStart = loadavg()[0] ?? 0;
  const dir = mkdtempSync(join(tmpdir(), 'retrace-bench-replay-'));
  const c = new Coordinator({ dataDir: dir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} }, coordinatorExtensions());
  const addresses = await c.start();
  const agents = await startLocalAgents(addresses.grpc, c.authToken, dir, [{ name: 'a' }, { name: 'b' }]);
  try {
    // The example pipeline ingests 20 records 100 ms apart; add ours, `gapMs` apart, on another source window.
    await runExamplePipeline(addresses.grpc, c.authToken, { records: 1 });
    const args = parseArgs(['--coordinator', addresses.grpc, '--token', c.authToken]);
    const pipelines = openClient(PipelineServiceDefinition, args);
    const replay = openClient(ReplayServiceDefinition, args);
    const base = 1_800_000_000_000_000_000n;
    await pipelines.client.ingest(
      (async function* () {
        yield {
          pipeline: 'orders',
          source: 'raw',
          records: Array.from({ length: records }, (_, i) => ({ key: `t${i}`, eventTimeNs: (base + BigInt(i * gapMs) * 1_000_000n).toString(), payload: Buffer.from(JSON.stringify({ id: i, amount: i, currency: 'USD' })), mediaType: '' })),
        };
      })(),
    );
    console.log(`replay-timing: ${records} records ${gapMs} ms apart (recorded span ${(records - 1) * gapMs} ms), 2 local agents, pipeline raw -> scale -> classify`);
    const results: Record<string, { p50: number; p99: number; max: number; wallMs: number }> = {};
    for (const speed of [0.5, 1, 2]) {
      const started = await replay.client.startReplay({ selector: { selector: { $case: 'window', value: { pipeline: 'orders', source: 'raw', fromNs: base.toString(), toNs: (base + BigInt(records * gapMs) * 1_000_000n).toString() } } }, policy: { speed } as never });
      for await (const p of replay.client.watchReplay({ replayId: started.replayId })) void p;
      const { report } = await replay.client.getReplayReport({ replayId: started.replayId });
      const firsts = (report?.steps ?? []).filter((s) => s.step === 'scale').sort((a, b) => a.targetAtMs - b.targetAtMs);
      const errors: number[] = [];
      for (let i = 1; i < firsts.length; i++) {
        const a = firsts[i - 1];
        const b = firsts[i];
        if (a && b) errors.push(Math.abs(b.dispatchedAtMs - a.dispatchedAtMs - (b.targetAtMs - a.targetAtMs)));
      }
      results[`${speed}x`] = { p50: percentile(errors, 50), p99: percentile(errors, 99), max: Math.max(...errors), wallMs: report?.summary?.replayWallMs ?? 0 };
      console.log(`  ${speed}x: inter-arrival error p50 ${percentile(errors, 50).toFixed(2)} ms, p99 ${percentile(errors, 99).toFixed(2)} ms, max ${Math.max(...errors).toFixed(2)} ms; replay wall ${(report?.summary?.replayWallMs ?? 0).toFixed(0)} ms for ${((records - 1) * gapMs) / speed} ms expected`);
    }
    // Baseline: sleep each recorded gap in turn; drift accumulates in the dispatch times.
    const naive: number[] = [];
    const t0 = performance.now();
    let last = t0;
    for (let i = 1; i < records; i++) {
      await new Promise((r) => setTimeout(r, gapMs));
      const now = performance.now();
      naive.push(Math.abs(now - last - gapMs));
      last = now;
    }
    const naiveDrift = performance.now() - t0 - (records - 1) * gapMs;
    console.log(`  naive setTimeout chain (1x): inter-arrival error p50 ${percentile(naive, 50).toFixed(2)} ms, p99 ${percentile(naive, 99).toFixed(2)} ms; total drift ${naiveDrift.toFixed(1)} ms (Retrace paces against the start time, so it does not drift)`);
    const worst = Math.max(...Object.values(results).map((r) => r.p99));
    pipelines.close();
    replay.close();
    finish({ bench: 'replay-timing', ratio: Math.round((worst / 10) * 1000) / 1000, goal: '<= 1 (worst p99 inter-arrival error / 10 ms)', records, gapMs, ...Object.fromEntries(Object.entries(results).map(([k, v]) => [k, { p50Ms: +v.p50.toFixed(2), p99Ms: +v.p99.toFixed(2), maxMs: +v.max.toFixed(2), wallMs: Math.round(v.wallMs) }])), naiveP99Ms: +percentile(naive, 99).toFixed(2), naiveDriftMs: +naiveDrift.toFixed(1), loadAvg1m: [+loadStart.toFixed(2), +(loadavg()[0] ?? 0).toFixed(2)] });
  } finally {
    await stopLocalAgents(agents);
    await c.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
