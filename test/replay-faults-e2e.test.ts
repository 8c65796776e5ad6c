import { availableParallelism } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { TriggerKind } from '../common/gen/retrace/v1/provenance.js';
import { ReplayServiceDefinition, ReplayState, type ReplayPolicy, type ReplayReport, type ReplayStepResult } from '../common/gen/retrace/v1/replay.js';
import { effectiveReading } from '../common/node-resources.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import { faultDraw } from '../coordinator/replay/fault-draw.js';
import { replayExtension } from '../coordinator/replay/replay-extension.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import type { LocalAgent } from '../scripts/cli/local-agents.js';
import { startAgentCoordinator, type AgentCoordinator } from './helpers/test-coordinator.js';

// A fixed amount of CPU work per record (not a wall-clock loop), so CPU time is what the cap
// meters whatever the machine's load.
const BURN = `
import { defineTransform } from 'retrace/transform';
export default defineTransform({
  name: 'burn',
  run(input, params) {
    const o = input.json();
    let x = o.id;
    const n = Number(params.iterations ?? 1e6);
    for (let i = 0; i < n; i++) x = (x * 31 + i) % 1000003;
    return { json: { id: o.id, x } };
  },
});`;
// Slow but idle: a shard stays in flight for params.ms, so a SIGKILL lands mid-shard.
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
    return { json: { id: o.id, amount: o.amount * 3 } };
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

const BURN_RECORDS = 16;
const BURN_ITERATIONS = 4e7;
const SLOW_RECORDS = 24;
const WAIT_MS = 400;
const DICE_RECORDS = 40;

/** The lineage engine's step reader (the replayed steps carry the agent's start and end times). */
type StepReader = { readStep(id: string): Promise<{ startedAtNs: string; endedAtNs: string } | undefined> };

/**
 * CPU a replay's shards used on one node as a fraction of the node's CPUs, over the span from the
 * first shard's start to the last one's end there (the agent's clock, as recorded in provenance).
 */
async function nodeCpuUsage(steps: readonly ReplayStepResult[], nodeId: string, hostCpus: number, lineage: StepReader): Promise<{ usage: number; cpuMs: number; spanMs: number; shards: number }> {
  const on = steps.filter((s) => s.replayNode === nodeId && s.status === 'SUCCEEDED');
  let cpuNs = 0;
  let from = Number.POSITIVE_INFINITY;
  let to = Number.NEGATIVE_INFINITY;
  for (const s of on) {
    cpuNs += Number(s.replayResources?.cpuTimeNs ?? 0);
    const step = await lineage.readStep(s.replayStepId);
    if (!step) throw new Error(`replayed step ${s.replayStepId} is not in the lineage`);
    from = Math.min(from, Number(BigInt(step.startedAtNs) / 1000n) / 1e3);
    to = Math.max(to, Number(BigInt(step.endedAtNs) / 1000n) / 1e3);
  }
  const spanMs = to - from;
  return { usage: cpuNs / 1e6 / (spanMs * hostCpus), cpuMs: Math.round(cpuNs / 1e6), spanMs: Math.round(spanMs), shards: on.length };
}

describe('replay under a CPU cap and an agent SIGKILL (real coordinator, real agent processes)', () => {
  let tc: AgentCoordinator;
  const shared: CoordinatorServices = {};
  const t0 = 1_767_225_600_000_000_000n;

  const replay = () => tc.client(ReplayServiceDefinition);
  async function startReplay(policy: Partial<ReplayPolicy>, selector: Parameters<ReturnType<typeof replay>['startReplay']>[0]['selector']): Promise<string> {
    const started = await replay().startReplay({ selector, policy: { faults: { seed: '7', outages: [], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 }, ...policy } as ReplayPolicy });
    return started.replayId;
  }
  async function finish(replayId: string): Promise<ReplayReport> {
    const client = replay();
    for await (const p of client.watchReplay({ replayId })) void p;
    const { report } = await client.getReplayReport({ replayId });
    if (!report) throw new Error('no report');
    return report;
  }
  const windowOf = (pipeline: string) => ({ selector: { $case: 'window' as const, value: { pipeline, source: 'raw', fromNs: t0.toString(), toNs: (t0 + 100_000_000_000n).toString() } } });

  beforeAll(async () => {
    tc = await startAgentCoordinator({
      tmpPrefix: 'retrace-replay-faults-',
      shared,
      // The default mesh options (LOST after 12 silent 200 ms intervals): a killed agent's shards
      // move within ~3 s, while a loaded machine does not make live agents flap.
      extensions: () => [schedulerExtension(shared, { shardTimeoutMs: 60_000 }), pipelineExtension(shared), replayExtension(shared)],
      transforms: [{ name: 'burn', source: BURN }, { name: 'wait', source: WAIT }, { name: 'label', source: LABEL }],
      agents: [{ name: 'cpu', labels: ['role=cpu'] }, { name: 'io-a', labels: ['role=io'] }, { name: 'io-b', labels: ['role=io'] }],
    });
    const versions = tc.codeVersions;
    const pipelines = tc.client(PipelineServiceDefinition);
    const step = (name: string, transform: string, parameters: Record<string, unknown>, inputs: string[]) => ({ name, transform, codeVersion: versions[transform] ?? '', parameters, requirements: undefined, inputs, output: '', timeoutMs: 0 });
    await pipelines.applyPipeline({ pipeline: { name: 'burn', sources: [{ name: 'raw', mediaType: 'application/json' }], steps: [step('burn', 'burn', { iterations: BURN_ITERATIONS }, ['raw'])] } } as never);
    // Two quick steps a record, for seeded faults: a failed first step leaves the second unrun.
    await pipelines.applyPipeline({ pipeline: { name: 'dice', sources: [{ name: 'raw', mediaType: 'application/json' }], steps: [step('first', 'label', {}, ['raw']), step('second', 'label', {}, ['first'])] } } as never);
    await pipelines.applyPipeline({ pipeline: { name: 'slow', sources: [{ name: 'raw', mediaType: 'application/json' }], steps: [step('wait', 'wait', { ms: WAIT_MS }, ['raw']), step('label', 'label', {}, ['wait'])] } } as never);
    for (const [pipeline, n] of [['burn', BURN_RECORDS], ['slow', SLOW_RECORDS], ['dice', DICE_RECORDS]] as const) {
      const records = Array.from({ length: n }, (_, i) => ({ key: `k${i}`, eventTimeNs: (t0 + BigInt(i * 10) * 1_000_000n).toString(), payload: Buffer.from(JSON.stringify({ id: i, amount: 5 * i })), mediaType: '' }));
      const r = await pipelines.ingest((async function* () {
        yield { pipeline, source: 'raw', records };
      })());
      expect(Number(r.accepted)).toBe(n);
    }
  }, 180_000);

  afterAll(async () => {
    await tc?.stop();
  });

  it('the allocator sees forecast headroom from the mesh forecast of real agents', async () => {
    const cpuNode = tc.agents[0]?.nodeId as string;
    // Refreshed on reports (every 5 s at most) once the node has enough history to forecast.
    const deadline = Date.now() + 30_000;
    let h = shared.headroom?.(cpuNode);
    while (!h && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      h = shared.headroom?.(cpuNode);
    }
    expect(h).toBeDefined();
    expect(h?.cpuCores).toBeGreaterThanOrEqual(0);
    expect(h?.cpuCores).toBeLessThanOrEqual(availableParallelism() + 1e-9);
    expect(h?.memoryMb).toBeGreaterThan(0);
  }, 60_000);

  it('a 50% CPU cap holds the measured usage of the agent to about half its CPUs; uncapped, the same work uses clearly more', async (ctx) => {
    const cpuNode = tc.agents[0]?.nodeId as string;
    const info = shared.mesh?.nodes().find((n) => n.nodeId === cpuNode);
    const hostCpus = (info && (effectiveReading(info.capabilities, 'cpu.threads')?.value ?? effectiveReading(info.capabilities, 'cpu.cores')?.value)) || availableParallelism();
    // What the agent's executor was told (its JSON log on stderr): the cap must reach it whatever
    // the machine's load, and be lifted once the capped job's shards are done.
    const throttles: number[] = [];
    let partial = '';
    tc.agents[0]?.process.stderr?.on('data', (d: Buffer) => {
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.includes('shard-executor:throttle')) continue;
        try {
          throttles.push(Number((JSON.parse(line) as { cpuFraction?: number }).cpuFraction));
        } catch {
          // not a log line
        }
      }
    });
    const measure = async (policy: Partial<ReplayPolicy>) => {
      const report = await finish(await startReplay({ targetNodeIds: [cpuNode], ...policy }, windowOf('burn')));
      expect(report.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
      expect(report.summary?.matched).toBe(BURN_RECORDS);
      expect(Object.keys(report.summary?.placements ?? {})).toEqual([cpuNode]);
      return nodeCpuUsage(report.steps, cpuNode, hostCpus, tc.coordinator.lineage);
    };
    // Whether the cap is enforced shows only when the uncapped run can use more than the cap,
    // i.e. when other processes leave this agent more than half the machine. A shared, loaded
    // machine may not: then a 10% cap shows it instead, and if even that cannot be told apart,
    // the pair is measured again and at last the comparison is skipped (the bound on the capped
    // run and the throttle reaching the agent are asserted every time).
    for (let attempt = 1; attempt <= 2; attempt++) {
      const u0 = await measure({});
      const u1 = await measure({ maxCpuFraction: 0.5 });
      expect(throttles).toContain(0.5);
      for (let waited = 0; throttles.at(-1) !== 0 && waited < 10_000; waited += 100) await new Promise((r) => setTimeout(r, 100));
      expect(throttles.at(-1)).toBe(0);
      console.log(`cpu cap, attempt ${attempt}: ${hostCpus} CPUs; uncapped ${JSON.stringify(u0)}; capped at 50% ${JSON.stringify(u1)}`);
      // Same work both times (a fixed iteration count), so CPU time is comparable.
      expect(u1.cpuMs).toBeGreaterThan(u0.cpuMs * 0.5);
      // The cap meters CPU time against wall time; the first shards start before any debt is
      // charged, which a 16-shard run dilutes to a few percent, hence the tolerance.
      expect(u1.usage).toBeLessThanOrEqual(0.6);
      if (u0.usage >= 0.6) {
        // Uncapped, the agent ran a shard per CPU and used clearly more than the cap allows;
        // capped, the same work stayed within it.
        expect(u1.usage).toBeLessThanOrEqual(0.55);
        expect(u1.usage).toBeLessThan(u0.usage * 0.9);
        return;
      }
      if (u0.usage >= 0.2) {
        // Too loaded to tell at 50%, not at 10% (0.2 of a core on 2 CPUs): the same mechanism
        // must hold this run well below what the uncapped one got. The two shards that start
        // before any debt is charged add about 0.02 over a 16-shard run.
        const u2 = await measure({ maxCpuFraction: 0.1 });
        console.log(`cpu cap, attempt ${attempt}: capped at 10% ${JSON.stringify(u2)}`);
        expect(u2.usage).toBeLessThanOrEqual(0.14);
        expect(u2.usage).toBeLessThan(u0.usage * 0.7);
        return;
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
    ctx.skip('the machine is too loaded for an uncapped run to exceed 20% of its CPUs, so an enforced cap cannot be told from an idle one');
  }, 300_000);

  it('seeded faults are repeatable: the same seed fails and corrupts the same steps whatever the timing, another seed others', async () => {
    const FAIL = 0.3;
    const CORRUPT = 0.2;
    const faults = (seed: number) => ({ seed: String(seed), outages: [], linkOutageProbability: 0, corruptInputProbability: CORRUPT, stepFailureProbability: FAIL, addedLatencyMs: 0 });
    // Every step's faults and outcome, by (record, step).
    const outcomes = (r: ReplayReport) => r.steps.map((s) => `${s.record}|${s.step}|${s.status}|${s.faults.join(',')}`).sort();
    const faulted = (r: ReplayReport) => r.steps.filter((s) => s.faults.length > 0).map((s) => `${s.record}|${s.step}|${s.faults.join(',')}`).sort();
    // As fast as possible (32 records at once, finishing in any order), then paced at 1x (one
    // record at a time, in event-time order): the draws must not depend on which ran first.
    const a1 = await finish(await startReplay({ faults: faults(5) }, windowOf('dice')));
    const a2 = await finish(await startReplay({ faults: faults(5), speed: 1 }, windowOf('dice')));
    const b = await finish(await startReplay({ faults: faults(6) }, windowOf('dice')));
    for (const r of [a1, a2, b]) {
      expect(r.state).toBe(ReplayState.REPLAY_STATE_FAILED);
      expect(r.summary?.records).toBe(DICE_RECORDS);
    }
    expect(faulted(a1).length).toBeGreaterThan(0);
    expect(outcomes(a2)).toEqual(outcomes(a1));
    expect(a2.summary).toMatchObject({ failed: a1.summary?.failed, upstreamFailed: a1.summary?.upstreamFailed, corruptedInputsDetected: a1.summary?.corruptedInputsDetected });
    expect(faulted(b)).not.toEqual(faulted(a1));
    // Each step that ran was faulted exactly where the seeded draw for its (record, step) says.
    for (const [seed, report] of [[5, a1], [6, b]] as const) {
      for (const s of report.steps) {
        if (s.status === 'SKIPPED') {
          expect(s.error).toBe('an upstream step of this record failed');
          continue;
        }
        const fail = faultDraw(seed, s.record, s.originalStepId, 'fail') < FAIL;
        // The payloads are ASCII JSON and the corrupted byte has its high bit set: always a change.
        const corrupt = faultDraw(seed, s.record, s.originalStepId, 'corrupt', 0) < CORRUPT;
        expect(s.faults.includes('injected step failure'), `${s.record} ${s.step}`).toBe(fail);
        expect(s.faults.some((f) => f.startsWith('corrupted input')), `${s.record} ${s.step}`).toBe(corrupt);
        expect(s.status).toBe(corrupt ? 'INPUT_CORRUPTED' : fail ? 'FAILED' : 'SUCCEEDED');
      }
    }
  }, 120_000);

  it('an agent SIGKILLed mid-replay loses nothing: every step once, every hash as recorded', async () => {
    const victim = tc.agents[2] as LocalAgent;
    const replayId = await startReplay({ targetLabels: { role: 'io' } }, windowOf('slow'));
    // Kill the victim once it holds shards (assigned, not yet answered).
    const deadline = Date.now() + 30_000;
    let held = 0;
    while (Date.now() < deadline) {
      held = shared.dispatcher?.inFlight().get(victim.nodeId) ?? 0;
      if (held > 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(held).toBeGreaterThan(0);
    victim.process.kill('SIGKILL');
    const report = await finish(replayId);
    expect(report.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
    expect(report.summary).toMatchObject({ records: SLOW_RECORDS, steps: SLOW_RECORDS * 2, matched: SLOW_RECORDS * 2, differed: 0, failed: 0 });
    // The killed agent's shards were reassigned (not silently dropped or answered twice).
    expect(report.summary?.reassigned).toBeGreaterThanOrEqual(1);
    const keys = report.steps.map((s) => `${s.record}|${s.step}`);
    expect(new Set(keys).size).toBe(SLOW_RECORDS * 2);
    for (const s of report.steps) {
      expect(s.status).toBe('SUCCEEDED');
      expect(s.replayOutputHashes).toEqual(s.originalOutputHashes);
      expect(s.replayNode).not.toBe(victim.nodeId);
    }
    // Provenance: the replay run holds exactly one step per replayed step, each recorded with
    // why = this replay and the original output hashes.
    const lineage = tc.coordinator.lineage;
    const members = lineage.index.membersOf(`run:${replayId}`);
    expect(members.length).toBe(SLOW_RECORDS * 2);
    expect(new Set(members).size).toBe(members.length);
    const expected = new Map(report.steps.map((s) => [s.replayStepId, s.originalOutputHashes]));
    for (const key of members) {
      const step = await lineage.readStep(key.slice('step:'.length));
      expect(step?.why).toMatchObject({ kind: TriggerKind.TRIGGER_KIND_REPLAY, id: replayId });
      expect(step?.generated.map((g) => g.contentHash)).toEqual(expected.get(step?.stepId ?? ''));
      expected.delete(step?.stepId ?? '');
    }
    expect(expected.size).toBe(0);
  }, 180_000);
});
