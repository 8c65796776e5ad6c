/**
 * `npm run bench -- capture-overhead [--records N] [--reps R] [--warm W] [--harsh-records M] [--work-ms W] [--breakdown]`
 *
 * Cost of automatic provenance capture: the same 3-step pipeline (parse → enrich → summarise) over
 * the same records, run with capture and without recording, repetitions interleaved (the order
 * alternates so drift does not favour one side), medians compared. ratio = median time with
 * capture / median time without, on the real pipeline run:
 *
 * - Real agents (the headline ratio). The coordinator runs every extension `retrace start` runs,
 *   two local `retrace agent` processes execute the three published transforms, and records go
 *   in through PipelineService.Ingest over gRPC in batches of 500, as the product runs a
 *   pipeline. With capture: payloads stored, one step event per shard, describing its outputs'
 *   versions and (the first step to read it) the source record's, submitted to the LineageEngine
 *   (3 events per record here; fsynced group commit; an Ingest call
 *   answers only once its records' provenance is durable), current-record index updated. Without:
 *   the service's runner swapped for `runner.withoutCapture()` (same dispatcher, stores and
 *   concurrency; no payload, lineage or index I/O) for that side's Ingest calls. Same process
 *   setup on both sides; the agents' CPU is reported apart from the coordinator's. This is the
 *   issue's "pipeline run with provenance capture against the same transforms executed without
 *   recording": what capture adds to a run as users see it, agents' work and round trips
 *   included. The runner's concurrency is the product's default (256 records); on a small machine
 *   the agents share the cores with the coordinator, so capture's CPU slows them too.
 * - Harshest case (second figure). The same runner in-process over a fake ShardRunner doing the
 *   transforms' work inline (`--work-ms` adds latency per shard, default 0): no agent round trip,
 *   so capture's cost is compared with almost nothing. Not what a pipeline run costs; the upper
 *   bound of the ratio. `--breakdown` also runs it with parts of capture's I/O stubbed out (no
 *   I/O; + current-record index; + payloads; everything), so the differences say what each part
 *   costs per record.
 *
 * Both sides are measured warm, as a long-running deployment runs: `--warm W` records go through
 * each side first, untimed (default: as many as a timed run). Each agent runs 6 shard workers
 * (3 code versions, 2 slots), fresh isolates that V8 goes on compiling for thousands of records:
 * after the former warm-up of 400 records a side, the agents' helper threads were still
 * compiling through the 2nd and 3rd timed runs (perf: 361 and 373 of 827 and 867 samples), which
 * the alternating order gives to the "with capture" side, so its agent CPU per record read
 * 355–385 µs against 215–220 without; from the 5th run on the two sides matched.
 *
 * Records carry fresh keys in every run (a key already ingested with the same content would be a
 * duplicate and run no steps); their contents are the same on both sides.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { createChannel, createClient, Metadata } from 'nice-grpc';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { Pipeline, PipelineServiceDefinition, type IngestRequest } from '../common/gen/retrace/v1/pipeline.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { pipelineExtension, type PipelineHandles, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import { PipelineRunner, type IngestRecordInput, type PipelineRunnerOptions, type ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { coordinatorExtensions, type CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startLocalAgents, stopLocalAgents, type LocalAgent } from '../scripts/cli/local-agents.js';
import { bundleTransform } from '../scripts/cli/publish-command.js';
import { finish, percentile, processCpuUs } from './report.js';

function num(argv: string[], name: string, dflt: number): number {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(argv[i + 1]);
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} needs a non-negative number`);
  return v;
}

const COUNTRIES = ['DE', 'FR', 'US', 'GB', 'JP'];
const RATES = { DE: 1, FR: 1, US: 0.92, GB: 1.17, JP: 0.0061 };
const BATCH = 500;

/** The transforms as the agents run them (published bundles). */
const AGENT_TRANSFORMS: Record<string, string> = {
  parse: `run(input) { const [id, amount, country] = input.text().split(','); return { json: { id, amount: Number(amount), country } }; }`,
  enrich: `run(input, params) { const o = input.json(); const rate = params.rates[o.country] ?? 1; return { json: { ...o, eur: Math.round(o.amount * rate * 100) / 100, vat: o.amount * 0.2 } }; }`,
  summarise: `run(input) { const o = input.json(); return { json: { bucket: o.eur > 500 ? 'large' : 'small', eur: o.eur } }; }`,
};

/** The same transforms inline, for the harshest case. */
const INLINE_TRANSFORMS: Record<string, (a: ShardAssignment) => unknown> = {
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

function pipelineDefinition(codeVersions: Record<string, string>): Pipeline {
  return Pipeline.fromJSON({
    name: 'bench',
    sources: [{ name: 'orders', mediaType: 'text/csv' }],
    steps: [
      { name: 'parsed', transform: 'parse', codeVersion: codeVersions.parse, inputs: ['orders'] },
      { name: 'enriched', transform: 'enrich', codeVersion: codeVersions.enrich, parameters: { rates: RATES }, inputs: ['parsed'] },
      { name: 'summary', transform: 'summarise', codeVersion: codeVersions.summarise, inputs: ['enriched'] },
    ],
  });
}

function fakeRunner(workMs: number): ShardRunner {
  return {
    async run(assignment) {
      const started = process.hrtime.bigint();
      if (workMs > 0) await sleep(workMs);
      const value = (INLINE_TRANSFORMS[assignment.transform] as (a: ShardAssignment) => unknown)(assignment);
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
          attempt: assignment.attempt,
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

/** `n` records in batches of BATCH; keys tagged per run, contents the same for every tag. */
function makeRecords(n: number, tag: string): IngestRecordInput[][] {
  const batches: IngestRecordInput[][] = [];
  for (let i = 0; i < n; i += BATCH) {
    const batch: IngestRecordInput[] = [];
    for (let j = i; j < Math.min(n, i + BATCH); j++) {
      batch.push({ key: `${tag}-${j}`, eventTimeNs: String(1_700_000_000_000_000_000n + BigInt(j)), payload: Buffer.from(`${j},${(j * 37) % 1000}.5,${COUNTRIES[j % 5]}`) });
    }
    batches.push(batch);
  }
  return batches;
}

interface Side {
  ms: number[];
  coordCpuUs: number[];
  agentCpuUs: number[];
}

interface Comparison {
  with: Side;
  without: Side;
  ratio: number;
  events: number;
}

/**
 * Interleaved repetitions of `run(capture, tag)`; CPU per record of this process and of the
 * agents (none in-process) around each timed run.
 */
async function compare(records: number, reps: number, agents: readonly LocalAgent[], treeSize: () => bigint, run: (capture: boolean, tag: string) => Promise<void>): Promise<Comparison> {
  const sides: Record<'with' | 'without', Side> = { with: { ms: [], coordCpuUs: [], agentCpuUs: [] }, without: { ms: [], coordCpuUs: [], agentCpuUs: [] } };
  const agentCpu = (): number => agents.reduce((n, a) => n + (processCpuUs(a.process.pid ?? 0) ?? Number.NaN), 0);
  const timed = async (capture: boolean, rep: number): Promise<void> => {
    const side = sides[capture ? 'with' : 'without'];
    const a0 = agentCpu();
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await run(capture, `${capture ? 'cap' : 'plain'}-${rep}`);
    side.ms.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    side.coordCpuUs.push((c.user + c.system) / records);
    side.agentCpuUs.push((agentCpu() - a0) / records);
  };
  const sizeBefore = treeSize();
  for (let rep = 1; rep <= reps; rep++) {
    const order = rep % 2 === 1 ? [false, true] : [true, false];
    for (const capture of order) await timed(capture, rep);
  }
  const events = Number(treeSize() - sizeBefore);
  return { with: sides.with, without: sides.without, ratio: percentile(sides.with.ms, 50) / percentile(sides.without.ms, 50), events };
}

function report(label: string, records: number, reps: number, c: Comparison, agents: boolean): void {
  console.log(`${label}: ${records} records per run, 3 steps per record, ${reps} runs per side`);
  for (const [name, s] of [['with capture   ', c.with], ['without capture', c.without]] as const) {
    const med = percentile(s.ms, 50);
    const cpu = `CPU per record: coordinator ${percentile(s.coordCpuUs, 50).toFixed(0)} µs${agents ? `, agents ${percentile(s.agentCpuUs, 50).toFixed(0)} µs` : ''}`;
    console.log(`  ${name}: median ${med.toFixed(0)} ms (${((records / med) * 1000).toFixed(0)} records/s; runs ${s.ms.map((m) => m.toFixed(0)).join(', ')} ms); ${cpu}`);
  }
  console.log(`  ratio ${c.ratio.toFixed(3)}; lineage events recorded ${c.events} (${(c.events / (records * reps)).toFixed(1)} per record, run events included)`);
}

/** Publishes the transforms, applies the pipeline and ingests through the gRPC API, on two local agents. */
async function realAgents(records: number, reps: number, warm: number): Promise<Comparison> {
  const dir = mkdtempSync(join(tmpdir(), 'retrace-bench-capture-agents-'));
  const shared: CoordinatorServices = {};
  const coordinator = new Coordinator({ dataDir: dir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} }, coordinatorExtensions(shared));
  const addr = await coordinator.start();
  const channel = createChannel(addr.grpc);
  const options = { '*': { metadata: Metadata({ authorization: `Bearer ${coordinator.authToken}` }) } };
  const code = createClient(CodeServiceDefinition, channel, options);
  const pipelines = createClient(PipelineServiceDefinition, channel, options);
  let agents: LocalAgent[] = [];
  try {
    agents = await startLocalAgents(addr.grpc, coordinator.authToken, dir, [
      { name: 'local-1', labels: ['pool=local'] },
      { name: 'local-2', labels: ['pool=local'] },
    ]);
    mkdirSync(join(dir, 'src'));
    const codeVersions: Record<string, string> = {};
    for (const [name, body] of Object.entries(AGENT_TRANSFORMS)) {
      const file = join(dir, 'src', `${name}.ts`);
      writeFileSync(file, `import { defineTransform } from 'retrace/transform';\nexport default defineTransform({ name: '${name}', ${body} });\n`);
      const bundle = await bundleTransform(file);
      const r = await code.publishCode({ bundle: Buffer.from(bundle.bytes), manifest: { transform: name, sourceFile: `${name}.ts`, bundler: bundle.bundler } });
      codeVersions[name] = r.code?.codeVersion ?? '';
    }
    await pipelines.applyPipeline({ pipeline: pipelineDefinition(codeVersions) });
    const handles = shared.pipelines as PipelineHandles;
    const capturing = handles.runner;
    const plain = capturing.withoutCapture();
    const ingest = async (capture: boolean, tag: string, n: number): Promise<void> => {
      // The service reads handles.runner on every call.
      handles.runner = capture ? capturing : plain;
      try {
        const r = await pipelines.ingest(
          (async function* (): AsyncGenerator<IngestRequest> {
            for (const batch of makeRecords(n, tag)) yield { pipeline: 'bench', source: 'orders', records: batch.map((x) => ({ key: x.key, eventTimeNs: x.eventTimeNs ?? '', payload: Buffer.from(x.payload), mediaType: '' })) };
          })(),
        );
        if (r.shardsFailed !== '0' || r.shardsRun !== String(3 * n)) throw new Error(`bench ingest: ${r.shardsRun} shards run, ${r.shardsFailed} failed: ${r.firstError}`);
      } finally {
        handles.runner = capturing;
      }
    };
    // Warm-up: agents' workers started, bundles cached, JIT and LevelDB files on both sides.
    await ingest(true, 'warm-cap', warm);
    await ingest(false, 'warm-plain', warm);
    return await compare(records, reps, agents, () => coordinator.lineage.treeSize, (capture, tag) => ingest(capture, tag, records));
  } finally {
    channel.close();
    await stopLocalAgents(agents, 3000);
    await coordinator.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The runner in-process over the fake ShardRunner; with `breakdown`, also with parts of capture stubbed out. */
async function harshest(records: number, reps: number, workMs: number, concurrency: number, breakdown: boolean): Promise<Comparison> {
  const dataDir = mkdtempSync(join(tmpdir(), 'retrace-bench-capture-'));
  const shared: PipelineShared = {};
  const runner = fakeRunner(workMs);
  const coordinator = new Coordinator({ dataDir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} }, [pipelineExtension(shared, { runner, concurrency })]);
  await coordinator.start();
  try {
    const handles = shared.pipelines as PipelineHandles;
    const code = contentHashOf('bench transform bundle');
    await handles.store.apply(pipelineDefinition({ parse: code, enrich: code, summarise: code }));
    const capturing = handles.runner;
    const plain = capturing.withoutCapture();
    const ingest = async (r: PipelineRunner, tag: string, n: number): Promise<void> => {
      const s = await r.ingest('bench', 'orders', makeRecords(n, tag));
      if (s.shardsFailed > 0) throw new Error(`bench shards failed: ${s.firstError}`);
    };
    const warm = Math.max(100, Math.round(records / 10));
    await ingest(capturing, 'warm-cap', warm);
    await ingest(plain, 'warm-plain', warm);
    const result = await compare(records, reps, [], () => coordinator.lineage.treeSize, (capture, tag) => ingest(capture ? capturing : plain, tag, records));
    if (breakdown) {
      const lineage = coordinator.lineage;
      const noLineage: PipelineRunnerOptions['lineage'] = { submit: async () => ({ accepted: 0, duplicates: 0, seqs: [], treeSize: 0n }), readStep: async () => undefined, readVersion: async () => undefined, index: { has: () => false } };
      const noPayloads = { ...handles.payloads, putMany: async (_: readonly Uint8Array[], hashes?: readonly string[]) => [...(hashes ?? [])] };
      const noCurrent = { ...handles.store, getCurrent: async () => undefined, setCurrent: async () => {} };
      const base = { runner, clock: () => BigInt(Date.now()) * 1_000_000n, concurrency };
      const variants: [string, PipelineRunner][] = [
        ['without capture', plain],
        ['events built, no I/O', new PipelineRunner({ ...base, lineage: noLineage, payloads: noPayloads, pipelines: noCurrent })],
        ['+ current-record index', new PipelineRunner({ ...base, lineage: noLineage, payloads: noPayloads, pipelines: handles.store })],
        ['+ payload store', new PipelineRunner({ ...base, lineage: noLineage, payloads: handles.payloads, pipelines: handles.store })],
        ['+ lineage engine (all)', new PipelineRunner({ ...base, lineage, payloads: handles.payloads, pipelines: handles.store })],
      ];
      const runs = new Map<string, { ms: number[]; cpuUs: number[] }>(variants.map(([name]) => [name, { ms: [], cpuUs: [] }]));
      for (let rep = 1; rep <= reps; rep++) {
        for (const [name, r] of rep % 2 === 1 ? variants : [...variants].reverse()) {
          const c0 = process.cpuUsage();
          const t0 = performance.now();
          await ingest(r, `bd-${variants.findIndex(([n]) => n === name)}-${rep}`, records);
          const m = runs.get(name) as { ms: number[]; cpuUs: number[] };
          m.ms.push(performance.now() - t0);
          const c = process.cpuUsage(c0);
          m.cpuUs.push((c.user + c.system) / records);
        }
      }
      console.log(`breakdown (harshest case, medians of ${reps} interleaved runs; each line adds one part of capture):`);
      for (const [name, m] of runs) console.log(`  ${name.padEnd(24)} ${((percentile(m.ms, 50) * 1000) / records).toFixed(0).padStart(5)} µs/record wall, ${percentile(m.cpuUs, 50).toFixed(0).padStart(5)} µs/record CPU (all threads)`);
    }
    return result;
  } finally {
    await coordinator.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

export async function main(argv: string[]): Promise<void> {
  const records = num(argv, 'records', 2000);
  const reps = num(argv, 'reps', 3);
  const warm = Math.max(1, num(argv, 'warm', records));
  const harshRecords = num(argv, 'harsh-records', 5000);
  const workMs = num(argv, 'work-ms', 0);
  const breakdown = argv.includes('--breakdown');
  const harshConcurrency = 64;
  const load0 = loadavg();
  const real = await realAgents(records, reps, warm);
  report(`real agents (2 local agent processes, Ingest over gRPC, every coordinator extension; ${warm} records a side untimed first)`, records, reps, real, true);
  const harsh = await harshest(harshRecords, reps, workMs, harshConcurrency, breakdown);
  report(`harshest case (in-process fake shard runner, ${workMs} ms work per shard, concurrency ${harshConcurrency})`, harshRecords, reps, harsh, false);
  const load1 = loadavg();
  console.log(`load average (1 min) before ${load0[0]?.toFixed(2)}, after ${load1[0]?.toFixed(2)}`);
  const rps = (ms: number[], n: number): number => Math.round((n / percentile(ms, 50)) * 1000);
  finish({
    bench: 'capture-overhead',
    ratio: Math.round(real.ratio * 1000) / 1000,
    goal: 1.15,
    records,
    reps,
    warmRecords: warm,
    withRecordsPerSec: rps(real.with.ms, records),
    withoutRecordsPerSec: rps(real.without.ms, records),
    harshestRatio: Math.round(harsh.ratio * 1000) / 1000,
    harshestRecords: harshRecords,
    harshestWithRecordsPerSec: rps(harsh.with.ms, harshRecords),
    harshestWithoutRecordsPerSec: rps(harsh.without.ms, harshRecords),
    workMs,
    loadAvg: [Math.round((load0[0] ?? 0) * 100) / 100, Math.round((load1[0] ?? 0) * 100) / 100],
  });
}
