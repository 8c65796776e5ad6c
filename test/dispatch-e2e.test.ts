import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { CACHED_PAYLOAD_MIN_BYTES } from '../common/payload-locality.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import { createDispatcher } from '../coordinator/scheduler/dispatcher.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import type { LocalAgent } from '../scripts/cli/local-agents.js';
import { runCli } from './helpers/in-process-cli.js';
import { publishTransform } from './helpers/publish-transform.js';
import { startAgentCoordinator, type AgentCoordinator } from './helpers/test-coordinator.js';

// A transform that echoes its input after `params.sleepMs`, so shards can be caught in flight.
const SOURCE = `
import { defineTransform } from 'retrace/transform';
export default defineTransform({
  name: 'slow-echo',
  async run(input, params, ctx) {
    const ms = Number(params.sleepMs ?? 0);
    if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
    return { json: { key: input.key, value: input.json(), node: ctx.nodeId } };
  },
});
`;

describe('dispatch end to end (real coordinator, real agent processes)', () => {
  let tc: AgentCoordinator;
  const shared: CoordinatorServices = {};
  let codeVersion = '';
  let seq = 0;

  function shard(sleepMs = 0): ShardAssignment {
    const id = `e2e-${++seq}`;
    const payload = Buffer.from(JSON.stringify({ n: seq }));
    return {
      shardId: id,
      stepName: 'echo',
      transform: 'slow-echo',
      codeVersion,
      parameters: { sleepMs },
      inputs: [{ name: 'in', objectId: `obj-${seq}`, contentHash: contentHashOf(payload), payload, key: `k${seq}`, eventTimeNs: '0', mediaType: 'application/json', cached: false }],
      timeoutMs: 0,
      memoryLimitMb: 0,
      jobId: '',
      attempt: 0,
    };
  }
  const dispatcher = () => {
    if (!shared.dispatcher) throw new Error('no dispatcher');
    return shared.dispatcher;
  };
  async function until(cond: () => boolean, ms = 15_000): Promise<void> {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) throw new Error('timed out waiting');
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  beforeAll(async () => {
    tc = await startAgentCoordinator({
      tmpPrefix: 'retrace-dispatch-',
      shared,
      mesh: { minReportIntervalMs: 50, suspectAfterIntervals: 5, lostAfterIntervals: 10 },
      extensions: () => [schedulerExtension(shared, { shardTimeoutMs: 20_000, maxInFlightPerNode: 8 }), pipelineExtension(shared)],
      transforms: [{ name: 'slow-echo', source: SOURCE, file: 'echo.ts' }],
      agents: [{ name: 'a' }, { name: 'b' }, { name: 'gpu', advertise: 'gpu=1' }],
    });
    codeVersion = tc.codeVersions['slow-echo'] ?? '';
  }, 60_000);

  afterAll(async () => {
    await tc?.stop();
  }, 30_000);

  it('runs shards on agents; outcomes come back with hashes and measured resources', async () => {
    const results = await Promise.all(Array.from({ length: 40 }, () => dispatcher().run(shard())));
    for (const r of results) {
      expect(r.outcome.status, r.outcome.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      expect(r.outcome.outputs[0]?.contentHash).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(Number(r.outcome.resources?.wallTimeNs)).toBeGreaterThan(0);
      expect(Number(r.outcome.resources?.netBytesIn)).toBeGreaterThan(0);
      expect(r.attempts).toBeLessThanOrEqual(2); // TODO: an occasional first-batch reassignment, cause not yet found
    }
    expect(new Set(results.map((r) => r.nodeId)).size).toBeGreaterThanOrEqual(2);
    // Each agent fetched the bundle once over CodeService into <data>/code (reported as a code version at its next registration).
    const hex = codeVersion.slice('sha256:'.length);
    expect(existsSync(join(tc.dir, 'agents', 'a', 'code', `${hex}.mjs`)) || existsSync(join(tc.dir, 'agents', 'b', 'code', `${hex}.mjs`))).toBe(true);
    // Only the agent's user can change what its workers load.
    for (const d of ['a', 'b'].map((n) => join(tc.dir, 'agents', n, 'code')).filter((d) => existsSync(d))) {
      expect(statSync(d).mode & 0o777).toBe(0o700);
      for (const f of readdirSync(d)) expect(statSync(join(d, f)).mode & 0o777, f).toBe(0o600);
    }
    // The token reached the agents through a pipe: not their command lines (which any local user
    // can read), nor their environments (which the transforms they run read in /proc/self/environ).
    if (process.platform === 'linux') {
      for (const a of tc.agents) expect(readFileSync(`/proc/${a.process.pid}/cmdline`, 'utf8')).not.toContain(tc.token);
      for (const a of tc.agents) expect(readFileSync(`/proc/${a.process.pid}/environ`, 'utf8')).not.toContain(tc.token);
    }
  }, 60_000);

  it('an idle node reserves exactly nothing once fractional reservations are released', async () => {
    const node = tc.agents[0]?.nodeId as string;
    // 0.1 + 0.2 + 0.3 reserved, then released in another order: the sum alone would end at about 1e-17, not 0.
    const cpus = [0.1, 0.2, 0.3, 0.7];
    const results = await Promise.all(cpus.map((cpu, i) => dispatcher().run(shard(20 * (cpus.length - i)), { placement: { nodeIds: [node] }, requirements: { cpu, memoryMb: 0.3 * (i + 1) } })));
    for (const r of results) expect(r.outcome.status, r.outcome.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    expect(dispatcher().reservedOn(node)).toEqual({ cpuCores: 0, memoryMb: 0 });
  }, 60_000);

  it('a gpu-only placement lands only on the agent advertising a gpu', async () => {
    const gpuNode = tc.agents[2]?.nodeId;
    const results = await Promise.all(Array.from({ length: 12 }, () => dispatcher().run(shard(), { placement: { gpu: 'only' } })));
    expect(results.map((r) => r.nodeId)).toEqual(results.map(() => gpuNode));
    expect(results.every((r) => r.outcome.status === ShardStatus.SHARD_STATUS_SUCCEEDED)).toBe(true);
  }, 60_000);

  it('a large input crosses the network once: the next shard on that agent names it by reference', async () => {
    const node = tc.agents[0]?.nodeId as string;
    const payload = Buffer.from(JSON.stringify({ pad: 'p'.repeat(2 * CACHED_PAYLOAD_MIN_BYTES) }));
    const withBig = (): ShardAssignment => {
      const s = shard();
      return { ...s, inputs: [{ ...(s.inputs[0] as ShardAssignment['inputs'][number]), contentHash: contentHashOf(payload), payload }] };
    };
    const first = await dispatcher().run(withBig(), { placement: { nodeIds: [node] } });
    const second = await dispatcher().run(withBig(), { placement: { nodeIds: [node] } });
    for (const r of [first, second]) expect(r.outcome.status, r.outcome.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    // What the agent measured coming in: the bytes the first time, nothing the second.
    expect(Number(first.outcome.resources?.netBytesIn)).toBe(payload.length);
    expect(second.outcome.resources?.netBytesIn).toBe('0');
    const value = (r: typeof first): unknown => (JSON.parse(r.outcome.outputs[0]?.payload.toString() ?? '{}') as { value: unknown }).value;
    expect(value(second)).toEqual(value(first));
  }, 60_000);

  it("a transform's own declared requirements (its code manifest) place its shards, with no step requirements", async () => {
    const publish = async (tag: string, requirements: object): Promise<string> => {
      const file = join(tc.dir, 'src', `echo-${tag}.ts`);
      writeFileSync(file, `${SOURCE}\n// ${tag}\n`);
      return publishTransform(tc.client(CodeServiceDefinition), file, 'slow-echo', { requirements: { cpu: 0, memoryMb: 0, gpu: 0, instructionSets: [], networkMbps: 0, ...requirements } });
    };
    const gpuCode = await publish('gpu', { gpu: 1 });
    const results = await Promise.all(Array.from({ length: 8 }, () => dispatcher().run({ ...shard(), codeVersion: gpuCode })));
    expect(results.map((r) => r.nodeId)).toEqual(results.map(() => tc.agents[2]?.nodeId));
    expect(results.every((r) => r.outcome.status === ShardStatus.SHARD_STATUS_SUCCEEDED)).toBe(true);
    // Step and code requirements add up: an instruction set no node has makes the shard wait, named.
    const isaCode = await publish('isa', { instructionSets: ['no-such-isa'] });
    const s = { ...shard(), codeVersion: isaCode };
    const stop = new AbortController();
    const p = dispatcher().run(s, { requirements: { cpu: 0.1 }, signal: stop.signal });
    await until(() => dispatcher().waiting().some((w) => w.shardId === s.shardId));
    expect(dispatcher().waiting().find((w) => w.shardId === s.shardId)?.reason).toMatch(/no-such-isa/);
    stop.abort();
    expect((await p).outcome.status).toBe(ShardStatus.SHARD_STATUS_CANCELLED);
  }, 60_000);

  it('a pipeline step no READY node can run: apply warns (code requirements counted), ingest prints what it waits for, --wait-timeout gives up', async () => {
    const file = join(tc.dir, 'src', 'echo-huge.ts');
    writeFileSync(file, `${SOURCE}\n// huge\n`);
    const huge = await publishTransform(tc.client(CodeServiceDefinition), file, 'slow-echo', { requirements: { cpu: 0, memoryMb: 50_000_000, gpu: 0, instructionSets: [], networkMbps: 0 } });
    const def = join(tc.dir, 'huge.json');
    writeFileSync(
      def,
      JSON.stringify({
        name: 'huge',
        sources: [{ name: 'in' }],
        steps: [
          { name: 'fits', transform: 'slow-echo', codeVersion, inputs: ['in'] },
          { name: 'big', transform: 'slow-echo', codeVersion: huge, inputs: ['in'] },
          { name: 'gpus', transform: 'slow-echo', codeVersion, requirements: { gpu: 2 }, inputs: ['in'] },
        ],
      }),
    );
    const conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    const applied = await runCli(['pipeline', 'apply', def, ...conn]);
    expect(applied.code, applied.err).toBe(0);
    expect(applied.out).toMatch(/huge version 1 {2}created/);
    expect(applied.err).toMatch(/^warning: steps\[1\] \(big\): needs memory ≥ 50000000 MiB: no READY node meets it \(3 READY nodes: .*\); its shards will wait until such a node joins$/m);
    expect(applied.err).toMatch(/^warning: steps\[2\] \(gpus\): needs gpu ≥ 2: no READY node meets it/m);
    expect(applied.err).not.toMatch(/fits/);
    const data = join(tc.dir, 'huge.jsonl');
    writeFileSync(data, `${JSON.stringify({ key: 'k', payload: { n: 1 } })}\n`);
    const ing = await runCli(['ingest', 'huge', 'in', data, '--wait-timeout', '1s', ...conn]);
    expect(ing.code, ing.out + ing.err).toBe(1);
    expect(ing.err).toMatch(/^waiting: 1 shard\(s\) of step big wait: needs memory ≥ 50000000 MiB: no READY node meets it/m);
    expect(ing.err).toMatch(/^ingest cancelled after --wait-timeout 1s: 1 shard\(s\) of step big wait: needs memory/m);
    // The cancelled call took its waiting shard with it.
    await until(() => dispatcher().waiting().length === 0 && shared.pipelines?.runner.running().length === 0);
  }, 60_000);

  it('a run given earlier attempts numbers its placements after them', async () => {
    const r = await dispatcher().run(shard(), { attemptsBefore: 2 });
    expect(r.outcome.status, r.outcome.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    expect([r.attempts, r.outcome.attempt]).toEqual([1, 3]);
  }, 30_000);

  it('an impossible requirement waits with a reason, then runs when a fitting agent joins', async () => {
    const s = shard();
    const p = dispatcher().run(s, { requirements: { cpu: 512 } });
    await until(() => dispatcher().waiting().some((w) => w.shardId === s.shardId));
    expect(dispatcher().waiting().find((w) => w.shardId === s.shardId)?.reason).toMatch(/needs cpu ≥ 512: no READY node meets it \(3 READY nodes/);
    const [big] = await tc.startAgents([{ name: 'big', advertise: 'cpu=1024' }]);
    const r = await p;
    expect(r.nodeId).toBe(big?.nodeId);
    expect(r.outcome.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    expect(dispatcher().waiting()).toEqual([]);
  }, 60_000);

  it('the agent answers a shard placed again while it still runs it for the newest attempt: it joins a live run, and runs again after a cancelled one', async () => {
    const mesh = shared.mesh;
    if (!mesh) throw new Error('no mesh');
    const node = (tc.agents[1] as LocalAgent).nodeId;
    const joined = shard(600);
    const rerun = shard(1500);
    const got: string[] = [];
    const off = mesh.onMessage((from, m) => {
      if (from !== node || m.body?.$case !== 'outcomes') return;
      for (const o of m.body.value.outcomes) got.push(`${o.shardId}#${o.attempt} ${ShardStatus[o.status]}`);
    });
    const assign = (a: ShardAssignment) => mesh.send(node, { body: { $case: 'assign', value: { shards: [a] } } });
    try {
      assign({ ...joined, attempt: 1 });
      assign({ ...rerun, attempt: 1 });
      await new Promise((r) => setTimeout(r, 300));
      assign({ ...joined, attempt: 2 }); // e.g. after a reconnect: the run goes on and answers attempt 2
      // The coordinator timed attempt 1 out: it cancels it and places it here again at once.
      mesh.send(node, { body: { $case: 'cancel', value: { shardIds: [rerun.shardId], reason: 'timed out; reassigned' } } });
      assign({ ...rerun, parameters: { sleepMs: 50 }, attempt: 2 });
      await until(() => got.length >= 2, 15_000);
      await new Promise((r) => setTimeout(r, 200));
      expect(got.sort()).toEqual([`${joined.shardId}#2 SHARD_STATUS_SUCCEEDED`, `${rerun.shardId}#2 SHARD_STATUS_SUCCEEDED`].sort());
    } finally {
      off();
    }
  }, 30_000);

  it('shards queued on a busy agent are not timed out for waiting: the deadline counts from the node\'s last answer', async () => {
    const mesh = shared.mesh;
    if (!mesh) throw new Error('no mesh');
    const node = (tc.agents[1] as LocalAgent).nodeId;
    // Its own dispatcher with a short deadline; the agent runs one shard at a time.
    const d = createDispatcher({ mesh, log: () => {}, shardTimeoutMs: 1500 });
    mesh.send(node, { body: { $case: 'throttle', value: { cpuFraction: 0, maxConcurrent: 1 } } });
    try {
      // 4 x 800 ms one after the other: the last answers about 3.2 s after it was placed.
      const results = await Promise.all(Array.from({ length: 4 }, () => d.run(shard(800), { placement: { nodeIds: [node] } })));
      for (const r of results) expect(r, r.outcome.error).toMatchObject({ nodeId: node, attempts: 1, outcome: { status: ShardStatus.SHARD_STATUS_SUCCEEDED } });
    } finally {
      d.stop();
      mesh.send(node, { body: { $case: 'throttle', value: { cpuFraction: 0, maxConcurrent: 0 } } });
    }
  }, 30_000);

  it('an agent SIGKILLed with shards in flight: they complete elsewhere, none lost or duplicated', async () => {
    const victim = tc.agents[0] as LocalAgent;
    const shards = Array.from({ length: 24 }, () => shard(1500));
    const runs = shards.map((s) => dispatcher().run(s, { placement: { gpu: 'none' } }));
    await until(() => (dispatcher().inFlight().get(victim.nodeId) ?? 0) > 0);
    victim.process.kill('SIGKILL');
    const results = await Promise.all(runs);
    expect(results.every((r) => r.outcome.status === ShardStatus.SHARD_STATUS_SUCCEEDED)).toBe(true);
    expect(new Set(results.map((r) => r.outcome.shardId))).toEqual(new Set(shards.map((s) => s.shardId)));
    const moved = results.filter((r) => r.attempts > 1);
    expect(moved.length).toBeGreaterThan(0);
    expect(moved.every((r) => r.nodeId !== victim.nodeId)).toBe(true);
  }, 90_000);

  it('a link outage: its shards are reassigned and complete', async () => {
    const cut = tc.agents[1] as LocalAgent;
    const shards = Array.from({ length: 12 }, () => shard(800));
    const runs = shards.map((s) => dispatcher().run(s));
    await until(() => (dispatcher().inFlight().get(cut.nodeId) ?? 0) > 0);
    dispatcher().setLinkOutage(cut.nodeId, Date.now() + 3000);
    const results = await Promise.all(runs);
    expect(results.every((r) => r.outcome.status === ShardStatus.SHARD_STATUS_SUCCEEDED)).toBe(true);
    expect(results.filter((r) => r.attempts > 1).length).toBeGreaterThan(0);
    expect(results.every((r) => r.nodeId !== cut.nodeId)).toBe(true);
  }, 60_000);
});
