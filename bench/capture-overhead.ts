/**
 * `npm run bench -- capture-overhead [--records N] [--reps R] [--work-ms W] [--concurrency C]`
 *
 * Cost of automatic provenance capture. The same 3-step pipeline (parse → enrich → summarise) runs
 * over N fresh records through PipelineRunner twice per repetition, in the same process:
 * - with capture: payloads stored content-addressed, source/output object versions and one step
 *   event per shard submitted to a real LineageEngine (LevelDB in a temp dir, fsynced), one atomic
 *   submission per record path, current-record index updated;
 * - without: the same runner code path with `capture: false` (no payload, lineage or index I/O).
 * Shards run in-process through a fake ShardRunner doing the transforms' real work (JSON parse,
 * enrich, stringify); `--work-ms` adds simulated execution latency per shard (an agent round trip)
 * and defaults to 0, the harshest case for the ratio. ratio = median time with / median without.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Coordinator } from '../coordinator/coordinator.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import { PipelineRunner, type IngestRecordInput, type ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { finish, percentile } from './report.js';

function num(argv: string[], name: string, dflt: number): number {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(argv[i + 1]);
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} needs a non-negative number`);
  return v;
}

const TRANSFORMS: Record<string, (a: ShardAssignment) => unknown> = {
  parse: (a) => {
    const [id, amount, country] = new TextDecoder().decode(a.inputs[0]?.payload).split(',');
    return { id, amount: Number(amount), country };
  },
  enrich: (a) => {
    const o = JSON.parse(new TextDecoder().decode(a.inputs[0]?.payload)) as { amount: number; country: string };
    const rate = (a.parameters as { rates: Record<string, number> }).rates[o.country] ?? 1;
    return { ...o, eur: Math.round(o.amount * rate * 100) / 100, vat: o.amount * 0.2 };
  },
  summarise: (a) => {
    const o = JSON.parse(new TextDecoder().decode(a.inputs[0]?.payload)) as { eur: number };
    return { bucket: o.eur > 500 ? 'large' : 'small', eur: o.eur };
  },
};

function fakeRunner(workMs: number): ShardRunner {
  return {
    async run(assignment) {
      const started = process.hrtime.bigint();
      if (workMs > 0) await sleep(workMs);
      const value = (TRANSFORMS[assignment.transform] as (a: ShardAssignment) => unknown)(assignment);
      const payload = Buffer.from(JSON.stringify(value));
      const ended = process.hrtime.bigint();
      const base = BigInt(Date.now()) * 1_000_000n;
      return {
        outcome: {
          shardId: assignment.shardId,
          status: ShardStatus.SHARD_STATUS_SUCCEEDED,
          outputs: [{ key: '', contentHash: contentHashOf(payload), payload, mediaType: 'application/json' }],
          resources: { cpuTimeNs: String(ended - started), peakMemoryBytes: '0', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: String(ended - started) },
          error: '',
          startedAtNs: String(base - (ended - started)),
          endedAtNs: String(base),
          nodeId: 'bench-node',
        },
        nodeId: 'bench-node',
        attempts: 1,
        queuedMs: 0,
        host: 'bench-host',
      };
    },
  };
}

function makeRecords(n: number, rep: number, tag: string): IngestRecordInput[][] {
  const countries = ['DE', 'FR', 'US', 'GB', 'JP'];
  const batches: IngestRecordInput[][] = [];
  for (let i = 0; i < n; i += 500) {
    const batch: IngestRecordInput[] = [];
    for (let j = i; j < Math.min(n, i + 500); j++) {
      batch.push({ key: `${tag}-${rep}-${j}`, eventTimeNs: String(1_700_000_000_000_000_000n + BigInt(j)), payload: Buffer.from(`${j},${(j * 37) % 1000}.5,${countries[j % 5]}`) });
    }
    batches.push(batch);
  }
  return batches;
}

export async function main(argv: string[]): Promise<void> {
  const records = num(argv, 'records', 5000);
  const reps = num(argv, 'reps', 3);
  const workMs = num(argv, 'work-ms', 0);
  const concurrency = num(argv, 'concurrency', 64);
  const dataDir = mkdtempSync(join(tmpdir(), 'retrace-bench-capture-'));
  const shared: PipelineShared = {};
  const runner = fakeRunner(workMs);
  const coordinator = new Coordinator({ dataDir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} }, [pipelineExtension(shared, { runner, concurrency })]);
  await coordinator.start();
  try {
    const handles = shared.pipelines;
    if (!handles) throw new Error('pipeline extension did not start');
    const code = contentHashOf('bench transform bundle');
    await handles.store.apply(
      Pipeline.fromJSON({
        name: 'bench',
        sources: [{ name: 'orders', mediaType: 'text/csv' }],
        steps: [
          { name: 'parsed', transform: 'parse', codeVersion: code, inputs: ['orders'] },
          { name: 'enriched', transform: 'enrich', codeVersion: code, parameters: { rates: { DE: 1, FR: 1, US: 0.92, GB: 1.17, JP: 0.0061 } }, inputs: ['parsed'] },
          { name: 'summary', transform: 'summarise', codeVersion: code, inputs: ['enriched'] },
        ],
      }),
    );
    const capturing = handles.runner;
    const plain = new PipelineRunner({ lineage: coordinator.lineage, pipelines: handles.store, payloads: handles.payloads, runner, clock: () => BigInt(Date.now()) * 1_000_000n, concurrency, capture: false });
    const timeIt = async (r: PipelineRunner, batches: IngestRecordInput[][]): Promise<number> => {
      const t0 = performance.now();
      const s = await r.ingest('bench', 'orders', batches);
      const ms = performance.now() - t0;
      if (s.shardsFailed > 0) throw new Error(`bench shards failed: ${s.firstError}`);
      return ms;
    };
    // Warm-up (JIT, LevelDB files) with a tenth of the records.
    await timeIt(capturing, makeRecords(Math.max(100, records / 10), 0, 'warm'));
    await timeIt(plain, makeRecords(Math.max(100, records / 10), 0, 'warm-plain'));
    const withMs: number[] = [];
    const withoutMs: number[] = [];
    const sizeBefore = coordinator.lineage.treeSize;
    for (let rep = 1; rep <= reps; rep++) {
      // Alternate the order so drift (disk cache, GC) does not favour one side.
      if (rep % 2 === 1) {
        withoutMs.push(await timeIt(plain, makeRecords(records, rep, 'plain')));
        withMs.push(await timeIt(capturing, makeRecords(records, rep, 'cap')));
      } else {
        withMs.push(await timeIt(capturing, makeRecords(records, rep, 'cap')));
        withoutMs.push(await timeIt(plain, makeRecords(records, rep, 'plain')));
      }
    }
    const events = Number(coordinator.lineage.treeSize - sizeBefore);
    const withMed = percentile(withMs, 50);
    const withoutMed = percentile(withoutMs, 50);
    const ratio = withMed / withoutMed;
    console.log(`records per rep: ${records}, steps per record: 3, reps: ${reps}, work per shard: ${workMs} ms, concurrency: ${concurrency}`);
    console.log(`with capture:    median ${withMed.toFixed(1)} ms  (${((records / withMed) * 1000).toFixed(0)} records/s)  runs ${withMs.map((m) => m.toFixed(0)).join(', ')}`);
    console.log(`without capture: median ${withoutMed.toFixed(1)} ms  (${((records / withoutMed) * 1000).toFixed(0)} records/s)  runs ${withoutMs.map((m) => m.toFixed(0)).join(', ')}`);
    console.log(`lineage events recorded: ${events} (${(events / (records * reps)).toFixed(1)} per record)`);
    finish({ bench: 'capture-overhead', ratio: Math.round(ratio * 1000) / 1000, goal: 1.15, records, reps, workMs, concurrency, withMs: withMed, withoutMs: withoutMed, events });
  } finally {
    await coordinator.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}
