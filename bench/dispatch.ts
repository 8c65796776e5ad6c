/**
 * `npm run bench -- dispatch [--shards 30000] [--warm N] [--batch 256] [--in-flight 1024] [--agents 2]`: no-op
 * shards per second through the coordinator's dispatcher to local agent processes and back
 * (assignment on the Connect stream, execution in the agent's worker thread, outcome back, and the
 * outcome recorded in provenance: one step event per shard submitted to the coordinator's
 * LineageEngine as it arrives, as the pipeline runner and the replay engine record theirs; the
 * engine's group commit batches them into synced writes), against a raw grpc-js bidirectional
 * stream echo in the same run moving ShardBatch / ShardOutcomes frames with the same shards per
 * frame in each direction as the dispatcher's stream carried (counted during the timed run) and the
 * same shards in flight. ratio = shards/s ÷ raw echo shards/s; goal ≥ 0.3 and ≥ 20000 shards/s.
 * `--batch` is the dispatcher's maxBatch (shards per assignment frame; default 256, the
 * dispatcher's own default); the frames actually sent are smaller (the dispatcher refills as
 * outcomes come back), and agents answer in frames of what finished together (at most 256).
 * Smaller frames slow the raw echo more than the dispatch, so the ratio rises and shards/s falls.
 *
 * Both sides are measured warm, as a long-running deployment runs: `--warm N` shards go through
 * first, untimed (default: as many as the timed run), and the raw echo runs once untimed before
 * its timed run. Each agent's shard workers are fresh isolates whose JIT takes tens of thousands
 * of shards to settle: after a 2,000-shard warm-up the agents spent 50 µs of CPU per shard,
 * after 30,000 about 22 (`--warm 2000` shows the colder figure).
 *
 * Also prints CPU per shard on each side: this process (the coordinator with its lineage engine,
 * and the bench driving the dispatcher), and the agent processes split into main threads and the
 * rest (shard worker threads and V8's GC / compiler helper threads, which /proc does not tell apart).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { TriggerKind, type LineageEvent, type ObjectVersion, type Step } from '../common/gen/retrace/v1/provenance.js';
import { ShardBatch, ShardOutcomes, ShardStatus, type ShardAssignment, type ShardOutcome } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { FLOW_CONTROL_WINDOW_BYTES, FLOW_CONTROL_WINDOW_OPTION } from '../common/grpc-flow-control.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { installServerFlowControlWindow } from '../coordinator/grpc/server-flow-control.js';
import type { LineageEngine } from '../coordinator/lineage/lineage-engine.js';
import type { DispatchResult } from '../coordinator/scheduler/dispatcher.js';
import { createChannel, createClient, Metadata } from 'nice-grpc';
import { codeExtension } from '../coordinator/code/code-extension.js';
import { meshExtension } from '../coordinator/mesh/mesh-extension.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startLocalAgents, stopLocalAgents } from '../scripts/cli/local-agents.js';
import { bundleTransform } from '../scripts/cli/publish-command.js';
import { finish, threadCpuUs } from './report.js';

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
    inputs: [{ name: 'in', objectId: `o${i}`, contentHash: contentHashOf(payload), payload, key: `k${i}`, eventTimeNs: '0', mediaType: '', cached: false }],
    timeoutMs: 0, memoryLimitMb: 0, jobId: '', attempt: 0,
  };
}

/** CPU used between two threadCpuUs readings: the main thread (tid = pid) and all the others. */
function cpuDelta(pid: number, before: Map<number, number>, after: Map<number, number>): { main: number; others: number } {
  let main = 0;
  let others = 0;
  for (const [tid, us] of after) {
    const d = us - (before.get(tid) ?? 0);
    if (tid === pid) main += d;
    else others += d;
  }
  return { main, others };
}

/**
 * Raw echo: one bidi stream. The client sends request frames of `perRequest` shards, keeping
 * `inFlight` shards outstanding; the server answers with response frames of `perResponse`
 * outcomes as soon as it has received that many shards (the remainder when the client half-
 * closes). Returns shards (= outcomes received) per second. Server and channel open the HTTP/2
 * windows Retrace's do (common/grpc-flow-control.ts).
 */
async function rawEcho(request: Buffer, perRequest: number, response: Buffer, perResponse: number, shards: number, inFlight: number): Promise<number> {
  const id = (b: Buffer): Buffer => b;
  const service: grpc.ServiceDefinition = {
    echo: { path: '/bench.Echo/Echo', requestStream: true, responseStream: true, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id },
  };
  installServerFlowControlWindow();
  const windows = { [FLOW_CONTROL_WINDOW_OPTION]: FLOW_CONTROL_WINDOW_BYTES };
  const server = new grpc.Server(windows);
  server.addService(service, {
    echo: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      let owed = 0;
      call.on('data', () => {
        owed += perRequest;
        for (; owed >= perResponse; owed -= perResponse) call.write(response);
      });
      call.on('end', () => call.end());
    },
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  const Client = grpc.makeGenericClientConstructor(service, 'Echo');
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), windows) as unknown as { echo(): grpc.ClientDuplexStream<Buffer, Buffer>; close(): void };
  const call = client.echo();
  call.on('error', () => {}); // the CANCELLED of our own close
  // Whole frames only: the run ends when every shard sent has come back.
  const frames = Math.ceil(shards / perRequest);
  const total = Math.floor((frames * perRequest) / perResponse) * perResponse;
  let sent = 0;
  let done = 0;
  const t0 = performance.now();
  await new Promise<void>((resolve) => {
    const top = (): void => {
      for (; sent < frames && sent * perRequest - done + perRequest <= Math.max(inFlight, perRequest); sent++) call.write(request);
    };
    call.on('data', () => {
      done += perResponse;
      if (done >= total) return resolve();
      top();
    });
    top();
  });
  const s = (performance.now() - t0) / 1000;
  call.end();
  client.close();
  server.forceShutdown();
  return done / s;
}

/** A step event for a finished shard, as the pipeline runner records one (no outputs: a no-op). */
function stepEvent(a: ShardAssignment, r: DispatchResult, runId: string): LineageEvent {
  const o = r.outcome;
  const stepId = `bench/noop/${a.shardId}`;
  const value: Step = {
    stepId,
    runId,
    transform: a.transform,
    codeVersion: a.codeVersion,
    parameters: {},
    nodeId: r.nodeId,
    host: '',
    startedAtNs: o.startedAtNs,
    endedAtNs: o.endedAtNs,
    why: { kind: TriggerKind.TRIGGER_KIND_EVENT, id: runId, principal: 'bench' },
    resources: o.resources,
    used: a.inputs.map((i) => ({ objectId: i.objectId, contentHash: i.contentHash, unversioned: false })),
    generated: [],
    // Keys in canonical (sorted) order, as the pipeline runner builds them.
    facets: { retrace: { attempts: r.attempts, inputs: { in: a.inputs[0]?.objectId ?? '' }, output: 'noop', pipeline: 'bench', queuedMs: r.queuedMs, shardId: a.shardId, step: 'noop' } },
  };
  return { eventId: `step:${stepId}`, eventTimeNs: o.endedAtNs, producer: 'retrace-bench', body: { $case: 'step', value } };
}

/** The inputs' object versions (the source records), recorded before the clock starts. */
async function recordInputs(lineage: Pick<LineageEngine, 'submit'>, shards: readonly ShardAssignment[]): Promise<void> {
  const events: LineageEvent[] = [];
  for (const s of shards) {
    for (const i of s.inputs) {
      const value: ObjectVersion = { objectId: i.objectId, contentHash: i.contentHash, size: String(i.payload.byteLength), mediaType: 'application/json', createdAtNs: '1', attributes: {}, facets: undefined };
      events.push({ eventId: `version:${i.objectId}@${i.contentHash}`, eventTimeNs: '1', producer: 'retrace-bench', body: { $case: 'objectVersion', value } });
    }
  }
  for (let i = 0; i < events.length; i += 10_000) await lineage.submit(events.slice(i, i + 10_000));
}

export async function main(argv: string[]): Promise<void> {
  const total = flagNum(argv, 'shards', 30_000);
  const warmCount = flagNum(argv, 'warm', total);
  const batch = flagNum(argv, 'batch', 256);
  const inFlight = flagNum(argv, 'in-flight', 1024);
  const agentCount = flagNum(argv, 'agents', 2);
  // `--provenance 0` leaves the step events out, to see what recording them costs (not the goal's figure).
  const provenance = flagNum(argv, 'provenance', 1) !== 0;
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
    agents.push(...(await startLocalAgents(addr.grpc, coordinator.authToken, dir, Array.from({ length: agentCount }, (_, i) => ({ name: `a${i}` })))));
    const d = shared.dispatcher;
    const mesh = shared.mesh;
    if (!d || !mesh) throw new Error('no dispatcher');
    const lineage = coordinator.lineage;
    const runId = 'bench-dispatch';
    await lineage.submit([{ eventId: `run:${runId}`, eventTimeNs: '1', producer: 'retrace-bench', body: { $case: 'run', value: { runId, name: 'bench/dispatch', parentRunId: '', state: 'RUNNING', startedAtNs: '1', endedAtNs: '0', facets: undefined } } }]);
    const warm = Array.from({ length: warmCount }, (_, i) => noopShard(-1 - i, codeVersion));
    const shards = Array.from({ length: total }, (_, i) => noopShard(i, codeVersion));
    await recordInputs(lineage, warm);
    await recordInputs(lineage, shards);
    // Frames on the Connect streams, counted by wrapping the mesh the dispatcher talks through
    // (bench instrumentation: what the dispatcher and the agents actually batched).
    const frames = { assign: 0, assigned: 0, outcomes: 0, outcomesIn: 0 };
    const send = mesh.send.bind(mesh);
    mesh.send = (nodeId, message) => {
      if (message.body?.$case === 'assign') {
        frames.assign++;
        frames.assigned += message.body.value.shards.length;
      }
      return send(nodeId, message);
    };
    mesh.onMessage((_nodeId, message) => {
      if (message.body?.$case !== 'outcomes') return;
      frames.outcomes++;
      frames.outcomesIn += message.body.value.outcomes.length;
    });
    const record = (a: ShardAssignment) => async (r: DispatchResult): Promise<DispatchResult> => {
      if (provenance) await lineage.submit([stepEvent(a, r, runId)]);
      return r;
    };
    // Warm-up: workers started, bundle cached, code paths compiled and optimized on both sides.
    await Promise.all(warm.map((s) => d.run(s).then(record(s))));
    frames.assign = frames.assigned = frames.outcomes = frames.outcomesIn = 0;
    const pids = agents.map((a) => a.process.pid ?? 0);
    const agentCpu0 = pids.map((pid) => threadCpuUs(pid));
    const ledger0 = lineage.treeSize;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const results = await Promise.all(shards.map((s) => d.run(s).then(record(s))));
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const agentCpu = pids.map((pid, i) => cpuDelta(pid, agentCpu0[i] ?? new Map(), threadCpuUs(pid)));
    const recorded = Number(lineage.treeSize - ledger0);
    const perShard = (us: number): number => Math.round((us / total) * 10) / 10;
    // CPU per shard on each side over the timed run (the coordinator figure includes this
    // bench's own driving of the dispatcher, which runs in the coordinator's process).
    const coordinatorCpuUsPerShard = perShard(cpu.user + cpu.system);
    const agentMainUsPerShard = perShard(agentCpu.reduce((n, c) => n + c.main, 0));
    const agentOtherUsPerShard = perShard(agentCpu.reduce((n, c) => n + c.others, 0));
    const ok = results.filter((r) => r.outcome.status === ShardStatus.SHARD_STATUS_SUCCEEDED).length;
    if (ok !== total) throw new Error(`${total - ok} shards did not succeed, e.g. ${JSON.stringify(results.find((r) => r.outcome.status !== ShardStatus.SHARD_STATUS_SUCCEEDED)?.outcome.error)}`);
    const shardsPerSec = total / seconds;
    const perNode: Record<string, number> = {};
    for (const r of results) perNode[r.nodeId] = (perNode[r.nodeId] ?? 0) + 1;
    const load = loadavg().map((x) => Math.round(x * 100) / 100);

    // The same frames on a raw grpc-js bidi stream: as many shards per frame as the dispatcher's
    // stream carried on average, each way.
    const perRequest = Math.max(1, Math.round(frames.assigned / Math.max(1, frames.assign)));
    const perResponse = Math.max(1, Math.round(frames.outcomesIn / Math.max(1, frames.outcomes)));
    const sample = results[0]?.outcome as ShardOutcome;
    const reqFrame = Buffer.from(ShardBatch.encode({ shards: shards.slice(0, perRequest) }).finish());
    const resFrame = Buffer.from(ShardOutcomes.encode({ outcomes: Array.from({ length: perResponse }, () => sample) }).finish());
    const echoShards = Math.max(total, 50 * perRequest);
    await rawEcho(reqFrame, perRequest, resFrame, perResponse, Math.max(warmCount, 50 * perRequest), inFlight * agentCount);
    const echoPerSec = await rawEcho(reqFrame, perRequest, resFrame, perResponse, echoShards, inFlight * agentCount);
    console.log(`dispatch: ${total} no-op shards (after ${warmCount} untimed) in ${seconds.toFixed(2)} s = ${Math.round(shardsPerSec)} shards/s (${ok} succeeded, ${recorded} step events recorded; per node ${JSON.stringify(perNode)}; load average ${load.join(' ')})`);
    console.log(`frames: ${frames.assign} assignment frames (${(frames.assigned / Math.max(1, frames.assign)).toFixed(1)} shards each), ${frames.outcomes} outcome frames (${(frames.outcomesIn / Math.max(1, frames.outcomes)).toFixed(1)} outcomes each)`);
    console.log(`CPU per shard: coordinator ${coordinatorCpuUsPerShard} µs (with its lineage engine and this bench), agents ${Math.round((agentMainUsPerShard + agentOtherUsPerShard) * 10) / 10} µs (main threads ${agentMainUsPerShard}, shard workers and V8 helper threads ${agentOtherUsPerShard}); 2 cores shared with whatever else runs`);
    console.log(`raw grpc-js echo: ${Math.round(echoPerSec)} shards/s (frames of ${perRequest} shards, ${reqFrame.byteLength} B → ${perResponse} outcomes, ${resFrame.byteLength} B; ${inFlight * agentCount} in flight)`);
    finish({
      bench: 'dispatch',
      ratio: Math.round((shardsPerSec / echoPerSec) * 1000) / 1000,
      goal: '>= 0.3 and >= 20000 shards/s',
      shardsPerSec: Math.round(shardsPerSec),
      rawEchoMsgsPerSec: Math.round(echoPerSec),
      perShardOverheadUs: Math.round((1e6 / shardsPerSec - 1e6 / echoPerSec) * 10) / 10,
      perShardUs: Math.round((1e6 / shardsPerSec) * 10) / 10,
      coordinatorCpuUsPerShard,
      agentCpuUsPerShard: Math.round((agentMainUsPerShard + agentOtherUsPerShard) * 10) / 10,
      agentMainCpuUsPerShard: agentMainUsPerShard,
      agentOtherCpuUsPerShard: agentOtherUsPerShard,
      shards: total,
      warmShards: warmCount,
      succeeded: ok,
      recorded,
      provenance,
      batch,
      shardsPerAssignFrame: Math.round((frames.assigned / Math.max(1, frames.assign)) * 10) / 10,
      outcomesPerFrame: Math.round((frames.outcomesIn / Math.max(1, frames.outcomes)) * 10) / 10,
      maxInFlightPerNode: inFlight,
      agents: agentCount,
      loadAverage: load,
    });
  } finally {
    await stopLocalAgents(agents, 3000);
    await coordinator.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
