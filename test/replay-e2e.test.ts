import { readFileSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Status } from 'nice-grpc';
import { LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { NodeState } from '../common/gen/retrace/v1/node.js';
import { PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { GpuMode, ReplayServiceDefinition, ReplayState, type ReplayPolicy, type ReplayReport } from '../common/gen/retrace/v1/replay.js';
import { TriggerKind } from '../common/gen/retrace/v1/provenance.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import { replayExtension } from '../coordinator/replay/replay-extension.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { stopLocalAgents, type LocalAgent } from '../scripts/cli/local-agents.js';
import { main } from '../scripts/cli/main.js';
import { renderJobLine } from '../scripts/cli/job-progress.js';
import { replayToJobProto } from '../coordinator/jobs/job-convert.js';
import { startAgentCoordinator, type AgentCoordinator } from './helpers/test-coordinator.js';

const SCALE = `
import { defineTransform } from 'retrace/transform';
export default defineTransform({
  name: 'scale',
  run(input, params) {
    const o = input.json();
    return { json: { id: o.id, amount: o.amount * Number(params.factor ?? 1) } };
  },
});`;
const LABEL = `
import { defineTransform } from 'retrace/transform';
export default defineTransform({
  name: 'label',
  run(input) {
    const o = input.json();
    return { json: { ...o, size: o.amount >= 50 ? 'large' : 'small' } };
  },
});`;

// Slow but idle: a shard stays in flight for params.ms, so an outage lands on shards being run.
const WAIT = `
import { defineTransform } from 'retrace/transform';
export default defineTransform({
  name: 'wait',
  async run(input, params, ctx) {
    const o = input.json();
    await new Promise((resolve) => {
      const t = setTimeout(resolve, Number(params.ms ?? 100));
      ctx.signal.addEventListener('abort', () => { clearTimeout(t); resolve(undefined); });
    });
    return { json: o };
  },
});`;

const RECORDS = 6;
/** Records of the pipeline whose steps have requirements. */
const ACCEL_RECORDS = 4;
/** Records of the pipeline whose step takes WAIT_MS. */
const SLOW_RECORDS = 6;
const WAIT_MS = 1500;
/** Requirements as the pipeline API has them (every field set, 0 = none). */
const needs = (r: { cpu?: number; memoryMb?: number; gpu?: number; instructionSets?: string[] }) => ({ cpu: 0, memoryMb: 0, gpu: 0, instructionSets: [], networkMbps: 0, ...r });
const GAP_MS = 200;

describe('replay end to end (real coordinator, real agent processes)', () => {
  let tc: AgentCoordinator;
  const shared: CoordinatorServices = {};
  const t0 = 1_767_225_600_000_000_000n;

  const replay = () => tc.client(ReplayServiceDefinition);
  async function run(policy: Partial<ReplayPolicy>, selector: Parameters<ReturnType<typeof replay>['startReplay']>[0]['selector']): Promise<ReplayReport> {
    const client = replay();
    const started = await client.startReplay({ selector, policy: { faults: { seed: '7', outages: [], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 }, ...policy } as ReplayPolicy });
    const states: ReplayState[] = [];
    for await (const p of client.watchReplay({ replayId: started.replayId })) states.push(p.state);
    expect(states.at(-1)).not.toBe(ReplayState.REPLAY_STATE_RUNNING);
    const { report } = await client.getReplayReport({ replayId: started.replayId });
    if (!report) throw new Error('no report');
    return report;
  }
  const window = { selector: { $case: 'window' as const, value: { pipeline: 'orders', source: 'raw', fromNs: t0.toString(), toNs: (t0 + 10_000_000_000n).toString() } } };
  const windowOf = (pipeline: string) => ({ selector: { $case: 'window' as const, value: { pipeline, source: 'raw', fromNs: t0.toString(), toNs: (t0 + 10_000_000_000n).toString() } } });
  const one = { selector: { $case: 'recordIds' as const, value: { objectIds: ['record:orders/raw:k2'] } } };

  beforeAll(async () => {
    tc = await startAgentCoordinator({
      tmpPrefix: 'retrace-replay-',
      shared,
      extensions: () => [schedulerExtension(shared, { shardTimeoutMs: 15_000 }), pipelineExtension(shared), replayExtension(shared)],
      transforms: [{ name: 'scale', source: SCALE }, { name: 'label', source: LABEL }, { name: 'wait', source: WAIT }],
      agents: [{ name: 'plain', labels: ['pool=prod'] }, { name: 'gpu', labels: ['pool=testing'], advertise: 'gpu=1' }],
    });
    const versions = tc.codeVersions;
    const pipelines = tc.client(PipelineServiceDefinition);
    await pipelines.applyPipeline({
      pipeline: {
        name: 'orders',
        sources: [{ name: 'raw', mediaType: 'application/json' }],
        steps: [
          { name: 'scale', transform: 'scale', codeVersion: versions.scale ?? '', parameters: { factor: 2 }, requirements: undefined, inputs: ['raw'], output: '', timeoutMs: 30_000 },
          { name: 'label', transform: 'label', codeVersion: versions.label ?? '', parameters: {}, requirements: undefined, inputs: ['scale'], output: '', timeoutMs: 0 },
        ],
      },
    } as never);
    // Its first step needs a GPU, its second 512 MiB: the pipeline run put them where they fit.
    await pipelines.applyPipeline({
      pipeline: {
        name: 'accel',
        sources: [{ name: 'raw', mediaType: 'application/json' }],
        steps: [
          { name: 'boost', transform: 'scale', codeVersion: versions.scale ?? '', parameters: { factor: 3 }, requirements: needs({ gpu: 1 }), inputs: ['raw'], output: '', timeoutMs: 0 },
          { name: 'tag', transform: 'label', codeVersion: versions.label ?? '', parameters: {}, requirements: needs({ memoryMb: 512 }), inputs: ['boost'], output: '', timeoutMs: 0 },
        ],
      },
    } as never);
    await pipelines.applyPipeline({
      pipeline: { name: 'slow', sources: [{ name: 'raw', mediaType: 'application/json' }], steps: [{ name: 'wait', transform: 'wait', codeVersion: versions.wait ?? '', parameters: { ms: WAIT_MS }, requirements: undefined, inputs: ['raw'], output: '', timeoutMs: 0 }] },
    } as never);
    for (const [pipeline, n] of [['orders', RECORDS], ['accel', ACCEL_RECORDS], ['slow', SLOW_RECORDS]] as const) {
      const records = Array.from({ length: n }, (_, i) => ({ key: `k${i}`, eventTimeNs: (t0 + BigInt(i * GAP_MS) * 1_000_000n).toString(), payload: Buffer.from(JSON.stringify({ id: i, amount: 10 * i })), mediaType: '' }));
      const r = await pipelines.ingest((async function* () {
        yield { pipeline, source: 'raw', records };
      })());
      expect(Number(r.accepted)).toBe(n);
    }
  }, 120_000);

  afterAll(async () => {
    await tc?.stop();
  });

  it('replays one record and reproduces the original hashes, recorded with why = the replay', async () => {
    const report = await run({}, one);
    expect(report.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
    expect(report.summary).toMatchObject({ records: 1, steps: 2, matched: 2, differed: 0, failed: 0, nondeterministic: 0 });
    // No principal named (the owner token, no header): the report says who its steps record.
    expect(report.policy?.principal).toBe('replay');
    for (const s of report.steps) {
      expect(s.replayOutputHashes).toEqual(s.originalOutputHashes);
      expect(s.replayResources?.wallTimeNs).not.toBe('0');
    }
    const step = await tc.client(LineageServiceDefinition).getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: report.steps[1]?.replayStepId ?? '', contentHash: '' } });
    const value = step.body?.$case === 'step' ? step.body.value : undefined;
    expect(value?.why).toMatchObject({ kind: TriggerKind.TRIGGER_KIND_REPLAY, id: report.replayId });
    expect(value?.generated[0]?.objectId).toBe(`replay:${report.replayId}/record:orders/label:k2`);
    // A replay that has ended SUCCEEDED cannot be cancelled: FAILED_PRECONDITION naming it and its state.
    await expect(replay().cancelReplay({ replayId: report.replayId })).rejects.toMatchObject({
      code: Status.FAILED_PRECONDITION,
      details: `replay_id: replay ${report.replayId} has already ended SUCCEEDED: there is nothing to cancel`,
    });
  });

  it('a replayed shard keeps its pipeline step\'s timeout, as the pipeline run had it', async () => {
    const dispatcher = shared.dispatcher;
    if (!dispatcher) throw new Error('no dispatcher');
    const seen: string[] = [];
    const run0 = dispatcher.run.bind(dispatcher);
    dispatcher.run = (a, o) => {
      seen.push(`${a.stepName} ${a.timeoutMs}`);
      return run0(a, o);
    };
    try {
      const report = await run({}, one);
      expect(report.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
    } finally {
      dispatcher.run = run0;
    }
    expect(seen).toEqual(['scale 30000', 'label 0']);
  });

  it('replays a window at 2x in about half the recorded span, keeping the inter-arrival times', async () => {
    const report = await run({ speed: 2 }, window);
    expect(report.summary?.records).toBe(RECORDS);
    expect(report.summary?.matched).toBe(RECORDS * 2);
    const span = (RECORDS - 1) * GAP_MS;
    expect(report.summary?.originalSpanMs).toBeCloseTo(span, 0);
    const firsts = report.steps.filter((s) => s.step === 'scale');
    const last = Math.max(...firsts.map((s) => s.dispatchedAtMs));
    expect(last).toBeGreaterThanOrEqual(span / 2 - 5);
    expect(last).toBeLessThan(span / 2 + 150);
    for (const s of firsts) expect(Math.abs(s.dispatchedAtMs - s.targetAtMs)).toBeLessThan(100);

    // The CLI's report gives the pacing error and charts it: one point per record, at (due, dispatched).
    const file = join(tc.dir, 'replay.svg');
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (d: Buffer) => chunks.push(d));
    const code = await main(['replay', 'report', report.replayId, '--svg', file, '--coordinator', tc.grpcAddress, '--token', tc.token], { stdout: out, stderr: out });
    const text = Buffer.concat(chunks).toString();
    expect(code, text).toBe(0);
    expect(text).toMatch(new RegExp(`pacing, dispatched - due over ${RECORDS} records: p50 -?\\d+\\.\\d ms, p99 -?\\d+\\.\\d ms, max -?\\d+\\.\\d ms`));
    expect(text).toContain(`wrote ${file}`);
    const svg = readFileSync(file, 'utf8');
    expect(svg).toContain('dispatch against due time at 2x');
    expect(svg).toContain('matched (6)');
    expect(svg).toContain('failed (0)');
    // Pacing chart: 6 record points plus the legend's 4 dots; CPU chart: 12 step points plus 2 legend dots.
    expect(svg.match(/<circle class="point"/g)).toHaveLength(RECORDS + 2 * RECORDS);
    expect(svg.match(/class="diagonal"/g)).toHaveLength(2);
  });

  it('cancelling a paced replay ends it at once, records held for their release time included', async () => {
    const client = replay();
    // 0.05x stretches the 1 s window to 20 s: records wait prepared at the pacer's gate.
    const { replayId } = await client.startReplay({ selector: window, policy: { speed: 0.05, faults: { seed: '7', outages: [], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 } } as never });
    await new Promise((r) => setTimeout(r, 500));
    // While it runs, steps held at the gate are PENDING, not SKIPPED: nothing was skipped yet.
    const running = (await client.getReplayReport({ replayId })).report;
    const held = running?.steps.filter((s) => s.record !== 'record:orders/raw:k0') ?? [];
    expect(held.length).toBeGreaterThan(0);
    expect(held.map((s) => s.status)).toEqual(held.map(() => 'PENDING'));
    const t = Date.now();
    const { state } = await client.cancelReplay({ replayId });
    expect(state).toBe(ReplayState.REPLAY_STATE_CANCELLED);
    expect(Date.now() - t).toBeLessThan(10_000);
    const { report } = await client.getReplayReport({ replayId });
    if (!report?.summary) throw new Error('no report');
    // The first record was due at once; the ones held at the gate end cancelled, none ran.
    expect(report.steps.filter((s) => s.status === 'SUCCEEDED').every((s) => s.record === 'record:orders/raw:k0')).toBe(true);
    // Shards aborted say so themselves (CANCELLED); the steps after them in their record were never sent.
    expect(report.steps.filter((s) => s.status !== 'SUCCEEDED').every((s) => s.status === 'CANCELLED' || (s.status === 'SKIPPED' && s.error === 'cancelled'))).toBe(true);
    expect(report.error).toBe('cancelled');
    // Cancelled steps are counted as cancelled, never as failed, and every view says the same.
    const ok = report.steps.filter((s) => s.status === 'SUCCEEDED').length;
    expect(report.summary).toMatchObject({ steps: 2 * RECORDS, failed: 0, upstreamFailed: 0, cancelled: 2 * RECORDS - ok });
    const counts = { total: 2 * RECORDS, pending: 0, running: 0, succeeded: ok, failed: 0, upstreamFailed: 0, cancelled: 2 * RECORDS - ok };
    const listed = replayToJobProto({ ...report, steps: [] }, undefined, [], false);
    const shown = replayToJobProto(report, undefined);
    expect(listed.counts).toEqual(counts);
    expect(shown.counts).toEqual(counts);
    // Cancelled steps never ran: the bar counts the ones that did, not all of them.
    expect(renderJobLine(shown)).toContain(`CANCELLED ${ok}/${2 * RECORDS} tasks, ${2 * RECORDS - ok} cancelled`);
    expect(renderJobLine(shown)).not.toContain('failed');
    const run = await tc.coordinator.lineage.readRun(replayId);
    expect(run).toMatchObject({ state: 'ABORT', facets: { retrace: { replayState: 'CANCELLED', error: 'cancelled' } } });
    expect(run?.endedAtNs).not.toBe('0');
  });

  it('a replay stopped by the coordinator shutting down ends saying so, its run closed', async () => {
    const client = replay();
    const { replayId } = await client.startReplay({ selector: window, policy: { speed: 0.05, faults: { seed: '7', outages: [], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 } } as never });
    await new Promise((r) => setTimeout(r, 300));
    // What the coordinator's stop() does to the replay engine.
    await shared.replay?.stop();
    const { report } = await client.getReplayReport({ replayId });
    expect(report?.state).toBe(ReplayState.REPLAY_STATE_CANCELLED);
    expect(report?.error).toMatch(/^cancelled: the coordinator shut down during the replay/);
    expect(report?.steps.filter((s) => s.status === 'SKIPPED').every((s) => s.error.startsWith('cancelled: the coordinator shut down'))).toBe(true);
    expect(report?.summary).toMatchObject({ failed: 0, upstreamFailed: 0 });
    const run = await tc.coordinator.lineage.readRun(replayId);
    expect(run).toMatchObject({ state: 'ABORT', facets: { retrace: { error: expect.stringMatching(/coordinator shut down/) } } });
  });

  it('a GPU-only policy lands only on the node that advertises a GPU', async () => {
    const gpuNode = tc.agents[1]?.nodeId as string;
    const report = await run({ gpu: GpuMode.GPU_MODE_ONLY }, window);
    expect(Object.keys(report.summary?.placements ?? {})).toEqual([gpuNode]);
    const labelled = await run({ targetLabels: { pool: 'prod' } }, one);
    expect(Object.keys(labelled.summary?.placements ?? {})).toEqual([tc.agents[0]?.nodeId]);
  });

  it("a replayed shard carries its pipeline step's requirements: a GPU step lands only on the GPU node, the worker's memory limit is the step's", async () => {
    const gpuNode = tc.agents[1]?.nodeId as string;
    const dispatcher = shared.dispatcher;
    if (!dispatcher) throw new Error('no dispatcher');
    const seen: { step: string; memoryLimitMb: number; gpu: unknown; memoryMb: unknown }[] = [];
    const run0 = dispatcher.run.bind(dispatcher);
    dispatcher.run = (a, o) => {
      seen.push({ step: a.stepName, memoryLimitMb: a.memoryLimitMb, gpu: o?.requirements?.gpu, memoryMb: o?.requirements?.memoryMb });
      return run0(a, o);
    };
    try {
      const report = await run({}, windowOf('accel'));
      expect(report.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
      expect(report.summary).toMatchObject({ records: ACCEL_RECORDS, matched: 2 * ACCEL_RECORDS });
      const boosts = report.steps.filter((s) => s.step === 'boost');
      expect(boosts).toHaveLength(ACCEL_RECORDS);
      for (const s of boosts) expect(s.replayNode).toBe(gpuNode);
      expect(seen.filter((x) => x.step === 'boost')).toEqual(boosts.map(() => ({ step: 'boost', memoryLimitMb: 0, gpu: 1, memoryMb: 0 })));
      expect(seen.filter((x) => x.step === 'tag')).toEqual(boosts.map(() => ({ step: 'tag', memoryLimitMb: 512, gpu: 0, memoryMb: 512 })));
      // With a policy cap too, the smaller of the two: the cap where the step asks for none.
      seen.length = 0;
      const capped = await run({ maxMemoryMb: 1024 }, windowOf('accel'));
      expect(capped.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
      expect(new Set(seen.map((x) => `${x.step} ${x.memoryLimitMb}`))).toEqual(new Set(['boost 1024', 'tag 512']));
    } finally {
      dispatcher.run = run0;
    }
  });

  it("refuses, before anything runs, a policy that a step's requirements cannot meet, naming the field and the step", async () => {
    const client = replay();
    const accel = windowOf('accel');
    const before = (await client.listReplays({})).replays.length;
    await expect(client.startReplay({ selector: accel, policy: { maxMemoryMb: 256 } as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^policy\.max_memory_mb: 256 MiB is less than the 512 MiB step "tag" of pipeline accel( version \d+)? requires$/) });
    await expect(client.startReplay({ selector: accel, policy: { gpu: GpuMode.GPU_MODE_NONE } as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^policy\.gpu: .*step "boost" of pipeline accel( version \d+)? requires a GPU$/) });
    // The plain node alone can run the policy, not the GPU step.
    await expect(client.startReplay({ selector: accel, policy: { targetLabels: { pool: 'prod' } } as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^policy: no node the policy allows meets the requirements of step "boost" of pipeline accel( version \d+)?: needs gpu ≥ 1: no READY node meets it \(1 READY node: /) });
    expect((await client.listReplays({})).replays.length).toBe(before);
    // The CLI's --max-memory says the same.
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (d: Buffer) => chunks.push(d));
    const code = await main(['replay', 'start', '--record', 'record:accel/raw:k1', '--max-memory', '256', '--coordinator', tc.grpcAddress, '--token', tc.token], { stdout: out, stderr: out });
    const text = Buffer.concat(chunks).toString();
    expect(code, text).not.toBe(0);
    expect(text).toMatch(/policy\.max_memory_mb: 256 MiB is less than the 512 MiB step "tag"/);
    expect((await client.listReplays({})).replays.length).toBe(before);
  });

  it('a what-if parameter shows exactly the affected downstream records and their value diffs', async () => {
    const report = await run({ stepParameters: { scale: { factor: 6 } } }, window);
    // amount 10*i*6 vs 10*i*2: record k0 (amount 0) is unchanged; the others change.
    expect(report.summary?.changedRecords).toBe(RECORDS - 1);
    expect(report.summary?.firstChangedRecords).not.toContain('record:orders/raw:k0');
    expect(report.summary?.nondeterministic).toBe(0);
    const k3 = report.steps.find((s) => s.record === 'record:orders/raw:k3' && s.step === 'scale');
    expect(k3?.valueDiffs).toEqual(['amount: 60 -> 180']);
    expect(k3?.overridden).toBe(true);
  });

  it('detects corrupted input and reports it', async () => {
    const report = await run({ faults: { seed: '3', outages: [], linkOutageProbability: 0, corruptInputProbability: 1, stepFailureProbability: 0, addedLatencyMs: 0 } }, one);
    expect(report.steps[0]?.status).toBe('INPUT_CORRUPTED');
    expect(report.summary?.corruptedInputsDetected).toBe(1);
    expect(report.state).toBe(ReplayState.REPLAY_STATE_FAILED);
  });

  it('an outage starting after the first shards went out gets the shards in flight there reassigned, and the replay succeeds', async () => {
    const gpuNode = tc.agents[1]?.nodeId as string;
    // All records at once: each shard is in flight for WAIT_MS, on both nodes, when the outage starts.
    const startedMs = Date.now();
    const report = await run({ faults: { seed: '1', outages: [{ nodeId: gpuNode, startAfterMs: 500, durationMs: 3000 }], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 } }, windowOf('slow'));
    expect(report.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
    expect(report.summary).toMatchObject({ records: SLOW_RECORDS, matched: SLOW_RECORDS, failed: 0 });
    expect(report.summary?.reassigned).toBeGreaterThan(0);
    // Reassigned shards ended on the other node, each after a first attempt on the one cut off.
    for (const s of report.steps.filter((x) => x.attempts > 1)) expect(s.replayNode).toBe(tc.agents[0]?.nodeId);
    // The outage outlives the replay: let it end before the next test places shards.
    await new Promise((r) => setTimeout(r, Math.max(0, startedMs + 3700 - Date.now())));
  }, 60_000);

  it('an outage on one agent link gets its shards reassigned and the replay completes', async () => {
    const gpuNode = tc.agents[1]?.nodeId as string;
    const report = await run({ faults: { seed: '1', outages: [{ nodeId: gpuNode, startAfterMs: 0, durationMs: 120_000 }], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 } }, window);
    expect(report.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
    expect(report.summary?.matched).toBe(RECORDS * 2);
    expect(Object.keys(report.summary?.placements ?? {})).toEqual([tc.agents[0]?.nodeId]);
  });

  it('refuses bad policies with the field at fault', async () => {
    const client = replay();
    await expect(client.startReplay({ selector: one, policy: { targetNodeIds: ['no-such-node'] } as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^policy\.target_node_ids\[0\]: unknown node/) });
    // A label no known node carries is refused as an unknown node is, not left to wait.
    await expect(client.startReplay({ selector: one, policy: { targetLabels: { pool: 'no-such-pool' } } as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^policy\.target_labels: no known node has pool=no-such-pool \(labels of known nodes: /) });
    await expect(client.startReplay({ selector: one, policy: { speed: 0 } as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^policy\.speed/) });
    // A label a node carries, but only the GPU node does, and the policy wants none with a GPU.
    await expect(client.startReplay({ selector: one, policy: { targetLabels: { pool: 'testing' }, gpu: GpuMode.GPU_MODE_NONE } as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^policy: no node can run the replay/) });
    await expect(client.startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:nope'] } } }, policy: {} as never })).rejects.toMatchObject({ code: Status.NOT_FOUND });
    await expect(client.startReplay({ policy: {} as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^selector/) });
    // A what-if for a step or transform the replay does not run would change nothing.
    await expect(client.startReplay({ selector: one, policy: { stepParameters: { nostep: { x: 1 } } } as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^policy\.step_parameters\[nostep\]: no replayed step is named "nostep" \(steps: .*scale/) });
    await expect(client.startReplay({ selector: one, policy: { codeVersions: { nope: `sha256:${'a'.repeat(64)}` } } as never })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^policy\.code_versions\[nope\]: no replayed step runs a transform named "nope"/) });
  });

  // Last: it stops the GPU agent.
  it('refuses a replay of a step that no node meets any more, naming the step', async () => {
    const gpu = tc.agents[1] as LocalAgent;
    await stopLocalAgents([gpu]);
    const deadline = Date.now() + 30_000;
    while (shared.mesh?.nodes().some((n) => n.nodeId === gpu.nodeId && n.state === NodeState.NODE_STATE_READY) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const client = replay();
    const before = (await client.listReplays({})).replays.length;
    await expect(client.startReplay({ selector: windowOf('accel'), policy: {} as never })).rejects.toMatchObject({ code: Status.FAILED_PRECONDITION, details: expect.stringMatching(/^selector: no node meets the requirements of step "boost" of pipeline accel( version \d+)?: needs gpu ≥ 1: no READY node meets it/) });
    expect((await client.listReplays({})).replays.length).toBe(before);
    // The records of a pipeline without requirements still replay on the node left.
    expect((await run({}, one)).state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
  }, 60_000);
});
