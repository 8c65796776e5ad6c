import { Status } from 'nice-grpc';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PublishedCode } from '../common/gen/retrace/v1/code.js';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ReplayPolicy, ReplayServiceDefinition } from '../common/gen/retrace/v1/replay.js';
import { ShardStatus, type ShardAssignment, type ShardOutcome } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { faultDraw } from '../coordinator/replay/fault-draw.js';
import { replayExtension, type ReplayShared } from '../coordinator/replay/replay-extension.js';
import { compileReplayPolicy } from '../coordinator/replay/replay-policy.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

// Policy input a careful user gets wrong: broken JSON in a what-if, a fault spelled without its
// value or with an option it does not take, a duration past what the policy carries, a what-if
// code version never published, and seeds past 32 bits. Each is refused naming what is wrong
// (nothing runs), or, for seeds, draws faults of its own.

const CODE = contentHashOf('upper v1');
const UNPUBLISHED = contentHashOf('upper v2, never published');
const LOWER = contentHashOf('lower v1');
const T0 = 1_767_225_600_000_000_000n;

describe('replay policy input', () => {
  let tc: TestCoordinator;
  let conn: string[] = [];
  const calls: ShardAssignment[] = [];
  const runner: ShardRunner = {
    async run(a) {
      calls.push(a);
      const now = String(BigInt(Date.now()) * 1_000_000n);
      const outcome: ShardOutcome = { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from(new TextDecoder().decode(a.inputs[0]?.payload).toUpperCase()), mediaType: 'text/plain' }], resources: undefined, error: '', attempt: a.attempt, startedAtNs: now, endedAtNs: now, nodeId: 'node-a' };
      return { outcome, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
    },
  };

  beforeAll(async () => {
    const shared: PipelineShared & ReplayShared = { dispatcher: runner, mesh: { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-a', state: NodeState.NODE_STATE_READY })] } };
    tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner }), replayExtension(shared)] });
    conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    const pipelines = tc.client(PipelineServiceDefinition);
    await pipelines.applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'orders', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'shout', transform: 'upper', codeVersion: CODE, inputs: ['raw'], parameters: { tag: 'x' } }] }) });
    await pipelines.ingest(
      (async function* () {
        yield { pipeline: 'orders', source: 'raw', records: [{ key: 'a', eventTimeNs: String(T0), payload: Buffer.from('order a'), mediaType: '' }] };
      })(),
    );
    // Only CODE (for upper) and LOWER (for another transform) are published.
    const published = new Map([[CODE, 'upper'], [LOWER, 'lower']]);
    shared.code = { describe: async (v: string) => (published.has(v) ? PublishedCode.fromPartial({ codeVersion: v, manifest: { transform: published.get(v) } }) : undefined) };
  });
  afterAll(async () => {
    await tc.stop();
  });

  it('bad --set JSON and --fault values are usage errors naming the flag; nothing is started', async () => {
    const before = calls.length;
    for (const [argv, text] of [
      [['--set', 'shout.tag={"a":'], '--set shout.tag: "{\\"a\\":" is not valid JSON'],
      [['--set', 'shout.tag=[1,'], '--set shout.tag: "[1," is not valid JSON'],
      [['--fault', 'link:'], '--fault link: probability between 0 and 1 expected, got "link:"'],
      [['--fault', 'fail'], '--fault fail: probability between 0 and 1 expected'],
      [['--fault', 'corrupt:0.1:0.2'], '--fault corrupt: probability between 0 and 1 expected'],
      [['--fault', 'outage:node-a:foo=1s'], 'takes after=DURATION and for=DURATION, got "foo=1s"'],
      [['--fault', 'outage:node-a:after'], 'takes after=DURATION and for=DURATION, got "after"'],
      [['--fault', 'latency:100d'], '--fault latency: at most 4294967295 ms'],
      [['--fault', 'outage:node-a:after=60d'], '--fault after: at most 4294967295 ms'],
    ] as const) {
      const r = await runCli(['replay', 'start', '--record', 'record:orders/raw:a', ...argv, ...conn]);
      expect(r.code, `${argv.join(' ')}: ${r.err}`).toBe(2);
      expect(r.err).toContain(text);
    }
    expect(calls.length).toBe(before);
    // A bare word is still a string, and valid JSON still JSON.
    const ok = await runCli(['replay', 'start', '--record', 'record:orders/raw:a', '--set', 'shout.tag=EUR', '--set', 'shout.+n=[1,2]', '--fault', 'latency:1.5ms', '--watch', '--json', ...conn]);
    expect(ok.code, ok.err).toBe(0);
    expect(JSON.parse(ok.out).policy).toMatchObject({ stepParameters: { shout: { tag: 'EUR', '+n': [1, 2] } }, faults: { addedLatencyMs: 2 } });
  });

  it('a what-if parameter the replayed step does not have is refused naming it, unless added with "+"', async () => {
    const before = calls.length;
    const typo = await runCli(['replay', 'start', '--record', 'record:orders/raw:a', '--set', 'shout.tga=EUR', ...conn]);
    expect(typo.code).toBe(1);
    expect(typo.err).toContain('policy.step_parameters[shout]: step "shout" has no parameter "tga" (its parameters: tag); to add a new one, give it as "+tga"');
    const client = tc.client(ReplayServiceDefinition);
    const one = { selector: { $case: 'recordIds' as const, value: { objectIds: ['record:orders/raw:a'] } } };
    await expect(client.startReplay({ selector: one, policy: ReplayPolicy.fromPartial({ stepParameters: { shout: { tag: 'y', tga: 1 } } }) })).rejects.toMatchObject({
      code: Status.INVALID_ARGUMENT,
      details: expect.stringContaining('policy.step_parameters[shout]: step "shout" has no parameter "tga"'),
    });
    await expect(client.startReplay({ selector: one, policy: ReplayPolicy.fromPartial({ stepParameters: { shout: { '+': 1 } } }) })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringContaining('"+" is not a parameter name') });
    expect(calls.length).toBe(before);
    // The explicit opt-in adds it; the shard gets it without the "+".
    const added = await runCli(['replay', 'start', '--record', 'record:orders/raw:a', '--set', 'shout.+tga=EUR', '--watch', ...conn]);
    expect(added.code, added.err).toBe(0);
    expect(calls.length).toBe(before + 1);
    expect(calls.at(-1)?.parameters).toMatchObject({ tag: 'x', tga: 'EUR' });
    expect(calls.at(-1)?.parameters).not.toHaveProperty('+tga');
  });

  it('a what-if code version that is not published, or published for another transform, is refused naming it, before anything runs', async () => {
    const before = calls.length;
    const r = await runCli(['replay', 'start', '--record', 'record:orders/raw:a', '--code', `upper=${UNPUBLISHED}`, ...conn]);
    expect(r.code).toBe(1);
    expect(r.err).toContain(`policy.code_versions[upper]: code version ${UNPUBLISHED} is not published`);
    expect(calls.length).toBe(before);
    // Published, but for another transform: its code would run under upper's name.
    const other = await runCli(['replay', 'start', '--record', 'record:orders/raw:a', '--code', `upper=${LOWER}`, ...conn]);
    expect(other.code).toBe(1);
    expect(other.err).toContain(`policy.code_versions[upper]: code version ${LOWER} is published for transform "lower", not "upper"`);
    expect(calls.length).toBe(before);
    const published = await runCli(['replay', 'start', '--record', 'record:orders/raw:a', '--code', `upper=${CODE}`, '--watch', ...conn]);
    expect(published.code, published.err).toBe(0);
  });

  it('seeds past 32 bits draw faults of their own; seeds within them draw as before', () => {
    const seed = (s: string): string => compileReplayPolicy(ReplayPolicy.fromPartial({ faults: { seed: s } }), undefined).seed;
    expect(seed('4294967296')).not.toBe(seed('0'));
    expect(seed('18446744073709551615')).toBe('18446744073709551615');
    expect(faultDraw(seed('3'), 'record:orders/raw:a', 'step-1', 'fail')).toBe(faultDraw(3, 'record:orders/raw:a', 'step-1', 'fail'));
  });
});
