/**
 * `npm run bench -- dispatch [--shards 30000] [--batch 256] [--in-flight 1024]`: no-op shards per
 * second through the coordinator's dispatcher to 2 local agent processes and back (assignment on
 * the Connect stream, execution in the agent's worker thread, outcome back), against a raw grpc-js
 * bidirectional-stream echo moving the same ShardBatch / ShardOutcomes frames (same sizes, same
 * batching) in the same run. ratio = shards/s ÷ raw echo messages (shards)/s; goal ≥ 0.3.
 * Also prints CPU per shard on each side (this process, which hosts the coordinator and drives
 * it; the agent processes with their worker threads). Outcomes are matched by the dispatcher but
 * not written to provenance here: the lineage engine's write path is measured by `ingest`.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { ShardBatch, ShardOutcomes, ShardStatus, type ShardAssignment, type ShardOutcome } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { createChannel, createClient, Metadata } from 'nice-grpc';
import { codeExtension } from '../coordinator/code/code-extension.js';
import { meshExtension } from '../coordinator/mesh/mesh-extension.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startLocalAgents, stopLocalAgents } from '../scripts/cli/local-agents.js';
import { bundleTransform } from '../scripts/cli/publish-command.js';
import { finish, processCpuUs } from './report.js';

function flagNum(argv: string[], name: string, def: number): number {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? Number(argv[i + 1]) : def;
}

const NOOP = `import { defineTransform } from 'retrace/transform';
export default defineTransform({ name: 'noop', run() { return null; } });
`;

function noopShard(i: number, codeVersion: string): ShardAssignment {
  const payload = Buffer.from('{}');
  return {
    shardId: `bench-${i}`, stepName: 'noop', transform: 'noop', codeVersion,
    inputs: [{ name: 'in', objectId: `o${i}`, contentHash: contentHashOf(payload), payload, key: `k${i}`, eventTimeNs: '0', mediaType: '' }],
    timeoutMs: 0, memoryLimitMb: 0, jobId: '',
  };
}

/** Raw echo: one bidi stream; the client keeps `window` frames in flight, the server answers each frame with an outcomes frame. */
async function rawEcho(request: Buffer, response: Buffer, frames: number, window: number): Promise<number> {
  const id = (b: Buffer): Buffer => b;
  const service: grpc.ServiceDefinition = {
    echo: { path: '/bench.Echo/Echo', requestStream: true, responseStream: true, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id },
  };
  const server = new grpc.Server();
  server.addService(service, {
    echo: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.on('data', () => call.write(response));
      call.on('end', () => call.end());
    },
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  const Client = grpc.makeGenericClientConstructor(service, 'Echo');
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as { echo(): grpc.ClientDuplexStream<Buffer, Buffer>; close(): void };
  const call = client.echo();
  call.on('error', () => {}); // the CANCELLED of our own close
  let sent = 0;
  let got = 0;
  const t0 = performance.now();
  await new Promise<void>((resolve) => {
    call.on('data', () => {
      got++;
      if (got === frames) return resolve();
      if (sent < frames) {
        sent++;
        call.write(request);
      }
    });
    for (; sent < Math.min(window, frames); sent++) call.write(request);
  });
  const s = (performance.now() - t0) / 1000;
  call.end();
  client.close();
  server.forceShutdown();
  return frames / s;
}

export async function main(argv: string[]): Promise<void> {
  const total = flagNum(argv, 'shards', 30_000);
  const batch = flagNum(argv, 'batch', 256);
  const inFlight = flagNum(argv, 'in-flight', 1024);
  const dir = mkdtempSync(join(tmpdir(), 'retrace-bench-dispatch-'));
  const shared: CoordinatorServices = {};
  const coordinator = new Coordinator({ dataDir: dir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} }, [
    meshExtension({ onMesh: (m) => (shared.mesh = m) }),
    codeExtension(),
    schedulerExtension(shared, { shardTimeoutMs: 120_000, maxInFlightPerNode: inFlight, maxBatch: batch }),
  ]);
  const addr = await coordinator.start();
  const agents = [];
  try {
    mkdirSync(join(dir, 'src'));
    writeFileSync(join(dir, 'src', 'noop.ts'), NOOP);
    const bundle = await bundleTransform(join(dir, 'src', 'noop.ts'));
    const channel = createChannel(addr.grpc);
    const code = createClient(CodeServiceDefinition, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${coordinator.authToken}` }) } });
    const { code: published } = await code.publishCode({ bundle: Buffer.from(bundle.bytes), manifest: { transform: 'noop', sourceFile: 'noop.ts', bundler: bundle.bundler } });
    channel.close();
    const codeVersion = published?.codeVersion ?? '';
    agents.push(...(await startLocalAgents(addr.grpc, coordinator.authToken, dir, [{ name: 'a' }, { name: 'b' }])));
    const d = shared.dispatcher;
    if (!d) throw new Error('no dispatcher');
    // Warm-up: workers started, bundle cached.
    await Promise.all(Array.from({ length: 2000 }, (_, i) => d.run(noopShard(-1 - i, codeVersion))));
    const shards = Array.from({ length: total }, (_, i) => noopShard(i, codeVersion));
    const agentCpu0 = agents.map((a) => processCpuUs(a.process.pid ?? 0));
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const results = await Promise.all(shards.map((s) => d.run(s)));
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const agentCpuUs = agents.map((a, i) => (processCpuUs(a.process.pid ?? 0) ?? Number.NaN) - (agentCpu0[i] ?? Number.NaN));
    // CPU per shard on each side over the timed run (the coordinator figure includes this
    // bench's own driving of the dispatcher, which runs in the coordinator's process).
    const coordinatorCpuUsPerShard = Math.round(((cpu.user + cpu.system) / total) * 10) / 10;
    const agentCpuUsPerShard = Math.round((agentCpuUs.reduce((n, x) => n + x, 0) / total) * 10) / 10;
    const ok = results.filter((r) => r.outcome.status === ShardStatus.SHARD_STATUS_SUCCEEDED).length;
    const shardsPerSec = total / seconds;
    const perNode: Record<string, number> = {};
    for (const r of results) perNode[r.nodeId] = (perNode[r.nodeId] ?? 0) + 1;

    // The same frames on a raw grpc-js bidi stream.
    const sample = results[0]?.outcome as ShardOutcome;
    const reqFrame = Buffer.from(ShardBatch.encode({ shards: shards.slice(0, batch) }).finish());
    const resFrame = Buffer.from(ShardOutcomes.encode({ outcomes: Array.from({ length: batch }, () => sample) }).finish());
    const frames = Math.max(50, Math.ceil(total / batch));
    const framesPerSec = await rawEcho(reqFrame, resFrame, frames, Math.max(1, Math.ceil((2 * inFlight) / batch)));
    const echoMsgsPerSec = framesPerSec * batch;
    console.log(`dispatch: ${total} no-op shards in ${seconds.toFixed(2)} s = ${Math.round(shardsPerSec)} shards/s (${ok} succeeded; per node ${JSON.stringify(perNode)})`);
    console.log(`CPU per shard: coordinator ${coordinatorCpuUsPerShard} µs, agents ${agentCpuUsPerShard} µs (processes with their worker threads; 2 cores shared with whatever else runs)`);
    console.log(`raw grpc-js echo: ${Math.round(framesPerSec)} frames/s × ${batch} = ${Math.round(echoMsgsPerSec)} msgs/s (frames ${reqFrame.byteLength} B → ${resFrame.byteLength} B)`);
    finish({
      bench: 'dispatch',
      ratio: Math.round((shardsPerSec / echoMsgsPerSec) * 1000) / 1000,
      goal: '>= 0.3 and >= 20000 shards/s',
      shardsPerSec: Math.round(shardsPerSec),
      rawEchoMsgsPerSec: Math.round(echoMsgsPerSec),
      perShardOverheadUs: Math.round((1e6 / shardsPerSec - 1e6 / echoMsgsPerSec) * 10) / 10,
      perShardUs: Math.round((1e6 / shardsPerSec) * 10) / 10,
      coordinatorCpuUsPerShard,
      agentCpuUsPerShard,
      shards: total,
      succeeded: ok,
      batch,
      maxInFlightPerNode: inFlight,
      agents: 2,
    });
  } finally {
    await stopLocalAgents(agents, 3000);
    await coordinator.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
