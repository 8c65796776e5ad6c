import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PublishedCode } from '../common/gen/retrace/v1/code.js';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { GpuMode, ReplayState } from '../common/gen/retrace/v1/replay.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { replayExtension, type ReplayShared } from '../coordinator/replay/replay-extension.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

// Every `retrace replay start` flag, from the command line to the policy the coordinator ran
// (the report echoes selector and policy) and to what it did. Shards run in-process on one
// node, "node-a", so the policies' effects that need real agents (caps, outages) are the
// end-to-end suites' business; here the point is that each flag arrives as meant.

const CODE = contentHashOf('v1');
const OTHER_CODE = contentHashOf('v2');
const GPU_CODE = contentHashOf('gpu');
const T0 = 1_767_225_600_000_000_000n;

/**
 * upper: the text upper-cased; tag: {value, tag, code}. Fails a shard whose faults say so and
 * refuses input that does not hash to its content hash, as an agent does; `sentAsIs` collects
 * the ids of shards whose inputs the caller said must travel as they are.
 */
function runner(calls: ShardAssignment[], sentAsIs: string[] = []): ShardRunner {
  return {
    async run(a, options) {
      calls.push(a);
      if ((options as { inputsAsSent?: boolean } | undefined)?.inputsAsSent) sentAsIs.push(a.shardId);
      const now0 = BigInt(Date.now()) * 1_000_000n;
      const corrupt = a.inputs.find((i) => contentHashOf(i.payload) !== i.contentHash);
      if (corrupt) {
        const outcome = { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_INPUT_CORRUPTED, outputs: [], resources: undefined, error: `${corrupt.name} is corrupted`, attempt: a.attempt, startedAtNs: String(now0), endedAtNs: String(now0), nodeId: 'node-a' };
        return { outcome, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
      }
      const failed = a.faults?.fail === true;
      const text = new TextDecoder().decode(a.inputs[0]?.payload);
      const out = a.transform === 'upper' ? text.toUpperCase() : JSON.stringify({ value: text, tag: (a.parameters as { tag?: string }).tag ?? '', code: a.codeVersion === CODE ? 1 : 2 });
      const now = BigInt(Date.now()) * 1_000_000n;
      const resources = { cpuTimeNs: '1000', peakMemoryBytes: '0', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1000' };
      const outcome = { shardId: a.shardId, status: failed ? ShardStatus.SHARD_STATUS_FAILED : ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: failed ? [] : [{ key: '', contentHash: '', payload: Buffer.from(out), mediaType: 'text/plain' }], resources, error: failed ? 'injected failure (faults.fail)' : '', attempt: a.attempt, startedAtNs: String(now - 1000n), endedAtNs: String(now), nodeId: 'node-a' };
      return { outcome, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
    },
  };
}

describe('retrace replay start: every flag reaches the replay', () => {
  let tc: TestCoordinator;
  const calls: ShardAssignment[] = [];
  const sentAsIs: string[] = [];
  let runId = '';
  let conn: string[] = [];
  const cli = (...argv: string[]): ReturnType<typeof runCli> => runCli([...argv, ...conn]);
  /** Starts a replay with --watch --json and returns its report as the CLI printed it. */
  const replay = async (argv: string[], expectCode = 0): Promise<{ report: any; err: string }> => {
    const r = await cli('replay', 'start', ...argv, '--watch', '--json');
    expect(r.code, r.err + r.out).toBe(expectCode);
    expect(r.out, r.err).not.toBe('');
    return { report: JSON.parse(r.out), err: r.err };
  };

  beforeAll(async () => {
    const shared: PipelineShared & ReplayShared = { dispatcher: runner(calls, sentAsIs), mesh: { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-a', state: NodeState.NODE_STATE_READY, labels: { pool: 'test' } })] } };
    tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner: runner(calls) }), replayExtension(shared)] });
    conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    const pipelines = tc.client(PipelineServiceDefinition);
    await pipelines.applyPipeline({
      pipeline: Pipeline.fromJSON({
        name: 'orders',
        sources: [{ name: 'raw', mediaType: 'text/plain' }],
        steps: [
          { name: 'shout', transform: 'upper', codeVersion: CODE, inputs: ['raw'] },
          { name: 'tagged', transform: 'tag', codeVersion: CODE, parameters: { tag: 'x' }, inputs: ['shout'] },
        ],
      }),
    });
    const ingested = await pipelines.ingest(
      (async function* () {
        yield { pipeline: 'orders', source: 'raw', records: ['a', 'b', 'c', 'd'].map((key, i) => ({ key, eventTimeNs: String(T0 + BigInt(i) * 20_000_000n), payload: Buffer.from(`order ${key}`), mediaType: '' })) };
      })(),
    );
    runId = ingested.runId;
    await pipelines.applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'gpu', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'shout', transform: 'upper', codeVersion: GPU_CODE, inputs: ['raw'] }] }) });
    await pipelines.ingest(
      (async function* () {
        yield { pipeline: 'gpu', source: 'raw', records: [{ key: 'g', eventTimeNs: String(T0), payload: Buffer.from('gpu order'), mediaType: '' }] };
      })(),
    );
    // A code store only now, for replay: GPU_CODE's manifest declares a GPU, which node-a lacks.
    // (Before, ApplyPipeline would have checked each step's transform name against it.)
    // OTHER_CODE is published for "tag" (what --code tag=... names; a version is published for one transform).
    shared.code = { describe: async (v: string) => PublishedCode.fromPartial({ codeVersion: v, manifest: { transform: v === OTHER_CODE ? 'tag' : 'upper', requirements: { cpu: 0, memoryMb: 0, gpu: v === GPU_CODE ? 1 : 0, instructionSets: [], networkMbps: 0 } } }) };
  });
  afterAll(async () => {
    await tc.stop();
  });

  it('--window, --speed, --target, --max-cpu, --max-memory, --gpu, --set, --fault latency, --watch', async () => {
    const from = '2026-01-01T00:00:00Z';
    const to = '2026-01-01T00:00:00.050Z';
    const { report, err } = await replay(['--window', 'orders/raw', from, to, '--speed', '2x', '--target', 'node-a', '--target', 'pool=test', '--max-cpu', '50%', '--max-memory', '256', '--gpu', 'none', '--set', 'tagged.tag="y"', '--fault', 'latency:5ms']);
    // --json is protobuf JSON: a oneof as its member, enums by name, every field.
    expect(report.selector).toEqual({ window: { pipeline: 'orders', source: 'raw', fromNs: String(T0), toNs: String(T0 + 50_000_000n) } });
    expect(report.policy).toMatchObject({ speed: 2, targetNodeIds: ['node-a'], targetLabels: { pool: 'test' }, maxCpuFraction: 0.5, maxMemoryMb: 256, gpu: GpuMode[GpuMode.GPU_MODE_NONE], stepParameters: { tagged: { tag: 'y' } } });
    expect(report.policy.faults).toMatchObject({ addedLatencyMs: 5, seed: '1' });
    // Records at 0, 20 and 40 ms of event time fall in the 50 ms window; the what-if changes each.
    expect(report.state).toBe(ReplayState[ReplayState.REPLAY_STATE_SUCCEEDED]);
    expect(report.summary).toMatchObject({ records: 3, steps: 6, speed: 2, changedRecords: 3 });
    // The watch's bar, as one line when stderr is not a terminal.
    expect(err).toMatch(/100% 6\/6 steps, 3\/3 records, 0 failed/);
    const shard = calls.filter((c) => c.transform === 'tag').at(-1);
    expect(shard?.parameters).toEqual({ tag: 'y' });
  });

  it('--record with --fault fail, corrupt, link and outage and --seed', async () => {
    const { report } = await replay(['--record', 'record:orders/raw:a', '--record', 'record:orders/raw:b', '--fault', 'fail:1', '--fault', 'corrupt:0.5', '--fault', 'link:0.25', '--fault', 'outage:node-a:after=10s:for=2s', '--seed', '3'], 1);
    expect(report.selector).toEqual({ recordIds: { objectIds: ['record:orders/raw:a', 'record:orders/raw:b'] } });
    expect(report.policy.faults).toEqual({ seed: '3', outages: [{ nodeId: 'node-a', startAfterMs: 10_000, durationMs: 2_000 }], linkOutageProbability: 0.25, corruptInputProbability: 0.5, stepFailureProbability: 1, addedLatencyMs: 0 });
    expect(report.state).toBe(ReplayState[ReplayState.REPLAY_STATE_FAILED]);
    // Every first step fails (probability 1), so the second steps never run.
    expect(report.summary).toMatchObject({ records: 2, steps: 4, failed: 2, upstreamFailed: 2 });
  });

  it('--fault fail: the report row of a step failed on purpose says "injected" once', async () => {
    const { report } = await replay(['--record', 'record:orders/raw:a', '--fault', 'fail:1'], 1);
    const failedStep = (report.steps as { status: string; error: string; faults: string[] }[]).find((x) => x.status === 'FAILED');
    // The JSON keeps both: the fault the policy injected, and the error the node reported.
    expect(failedStep).toMatchObject({ error: 'injected failure (faults.fail)', faults: ['injected step failure'] });
    const table = await cli('replay', 'report', report.replayId);
    const row = table.out.split('\n').find((l) => l.includes(' FAILED '));
    expect(row).toMatch(/injected failure \(faults\.fail\)\s*$/);
    expect(row?.match(/injected/g)).toHaveLength(1);
  });

  it('the report lists steps in processing order: records by event time, each along its path', async () => {
    // Given newest first, and run concurrently (their rows were added interleaved as steps ran).
    const ids = ['d', 'c', 'b', 'a'].map((k) => `record:orders/raw:${k}`);
    const { report } = await replay(ids.flatMap((id) => ['--record', id]));
    const order = ['a', 'b', 'c', 'd'].flatMap((k) => [`record:orders/raw:${k} shout`, `record:orders/raw:${k} tagged`]);
    expect((report.steps as { record: string; step: string }[]).map((x) => `${x.record} ${x.step}`)).toEqual(order);
    const table = await cli('replay', 'report', report.replayId);
    const rows = table.out.split('\n').filter((l) => /record:orders\/raw:\w\s/.test(l));
    expect(rows.map((l) => /record:orders\/raw:(\w)/.exec(l)?.[1])).toEqual(['a', 'a', 'b', 'b', 'c', 'c', 'd', 'd']);
  });

  it('report --limit N lists N steps and says how many it left out (a 10,000-record replay printed 30,000 rows)', async () => {
    const { report } = await replay(['--run', runId]);
    expect(report.summary).toMatchObject({ records: 4, steps: 8, matched: 8 });
    const limited = await cli('replay', 'report', report.replayId, '--limit', '3');
    expect(limited.code).toBe(0);
    const rows = limited.out.split('\n').filter((l) => /^record:orders\/raw:\w\s/.test(l));
    expect(rows.map((l) => /record:orders\/raw:(\w)\s+(\w+)/.exec(l)?.slice(1).join(' '))).toEqual(['a shout', 'a tagged', 'b shout']);
    expect(limited.out.endsWith('3 of 8 steps shown (--limit N, 0 for all)\n')).toBe(true);
    // 0 lists all, and a report within the limit has no such line.
    const all = await cli('replay', 'report', report.replayId, '--limit', '0');
    expect(all.out.split('\n').filter((l) => /^record:orders\/raw:\w\s/.test(l))).toHaveLength(8);
    expect(all.out).not.toContain('shown (');
    expect((await cli('replay', 'report', report.replayId, '--limit', '-1')).code).toBe(2);
  });

  it('--fault corrupt: the altered bytes reach the node as they are (never by reference), which refuses them', async () => {
    const before = calls.length;
    const asIsBefore = sentAsIs.length;
    const { report } = await replay(['--record', 'record:orders/raw:c', '--fault', 'corrupt:1'], 1);
    expect(report.summary).toMatchObject({ records: 1, corruptedInputsDetected: 1 });
    const shard = calls.slice(before)[0] as ShardAssignment;
    expect(contentHashOf(shard.inputs[0]?.payload ?? Buffer.alloc(0))).not.toBe(shard.inputs[0]?.contentHash);
    expect(sentAsIs.slice(asIsBefore)).toEqual([shard.shardId]);
  });

  it('--run and --last select records; --code runs another version of a transform', async () => {
    const byRun = await replay(['--run', runId, '--code', `tag=${OTHER_CODE}`]);
    expect(byRun.report.selector).toEqual({ runId });
    expect(byRun.report.policy.codeVersions).toEqual({ tag: OTHER_CODE });
    expect(byRun.report.summary).toMatchObject({ records: 4, changedRecords: 4 });
    expect(calls.filter((c) => c.codeVersion === OTHER_CODE)).toHaveLength(4);
    const last = await replay(['--last', '100000d', 'orders/raw']);
    expect(last.report.selector).toEqual({ last: { pipeline: 'orders', source: 'raw', minutes: 144_000_000 } });
    expect(last.report.summary).toMatchObject({ records: 4, matched: 8, changedRecords: 0 });
    const list = await cli('replay', 'list', '--json');
    expect(list.code).toBe(0);
    expect(list.out).toContain(byRun.report.replayId);
    // Newest first, as `retrace jobs` (the oldest came first), and --limit says what it left out.
    const all = await cli('replay', 'list', '--limit', '0');
    expect(all.out.indexOf(last.report.replayId)).toBeGreaterThan(0);
    expect(all.out.indexOf(last.report.replayId)).toBeLessThan(all.out.indexOf(byRun.report.replayId));
    const newest = await cli('replay', 'list', '--limit', '1');
    expect(newest.code, newest.err).toBe(0);
    expect(newest.out).toContain(last.report.replayId);
    expect(newest.out).not.toContain(byRun.report.replayId);
    expect(newest.out).toMatch(/\n1 of (\d+) replays shown, newest first \(\d+ older left out; --limit N, 0 for all\)\n$/);
  });

  it('what the replayed code declares (its manifest) is checked before anything runs, like the step\'s own requirements', async () => {
    const before = calls.length;
    const none = await cli('replay', 'start', '--record', 'record:gpu/raw:g', '--gpu', 'none');
    expect(none.code).toBe(1);
    expect(none.err).toContain('policy.gpu: GPU_MODE_NONE excludes every node with a GPU, and step "shout" of pipeline gpu version 1 requires a GPU');
    const nowhere = await cli('replay', 'start', '--record', 'record:gpu/raw:g');
    expect(nowhere.code).toBe(1);
    expect(nowhere.err).toContain('selector: no node meets the requirements of step "shout" of pipeline gpu version 1');
    expect(calls.length).toBe(before);
  });

  it('bad flags are usage errors naming them; bad policies are refused by the coordinator', async () => {
    for (const [argv, text] of [
      [['--record', 'record:orders/raw:a', '--speed', 'fast'], '--speed must be a factor like 0.5x'],
      [['--record', 'record:orders/raw:a', '--max-cpu', '150%'], '--max-cpu must be like 50% or 0.5'],
      [['--record', 'record:orders/raw:a', '--gpu', 'maybe'], '--gpu must be only or none'],
      [['--record', 'record:orders/raw:a', '--fault', 'fail:2'], '--fault fail: probability between 0 and 1 expected'],
      [['--record', 'record:orders/raw:a', '--fault', 'boom:1'], 'unknown fault "boom"'],
      [['--record', 'record:orders/raw:a', '--set', 'nodot=1'], '--set STEP.PARAM=VALUE'],
      [['--window', 'orders', '2026-01-01T00:00:00Z', '2026-01-02T00:00:00Z'], 'expected PIPELINE/SOURCE'],
      [['--window', 'orders/raw', '2026-01-01T00:00:00Z', 'tomorrow'], '--window: not an ISO-8601 date-time: "tomorrow"'],
      [[], 'a selector is required'],
    ] as const) {
      const r = await cli('replay', 'start', ...argv);
      expect(r.code, `${argv.join(' ')}: ${r.err}`).toBe(2);
      expect(r.err).toContain(text);
    }
    for (const [argv, text] of [
      [['--record', 'record:orders/raw:a', '--speed', '0x'], 'speed'],
      // A replay paced at 1e-9x would take centuries: refused, naming the field and the bound.
      [['--record', 'record:orders/raw:a', '--speed', '1e-9x'], 'policy.speed: 1e-9 is slower than the slowest pacing, 0.001x (a recorded second lasting 1000 s)'],
      [['--record', 'record:orders/raw:a', '--speed', 'Infinityx'], 'policy.speed: must be a positive factor'],
      [['--record', 'record:orders/raw:a', '--target', 'node-nope'], 'node-nope'],
      [['--record', 'record:orders/raw:a', '--set', 'nostep.tag=1'], 'nostep'],
      [['--record', 'record:orders/raw:a', '--fault', 'outage:node-z:after=1s:for=1s'], 'policy.faults.outages[0].node_id: unknown node "node-z"'],
    ] as const) {
      const r = await cli('replay', 'start', ...argv);
      expect(r.code, `${argv.join(' ')}: ${r.err}`).toBe(1);
      expect(r.err).toContain(text);
    }
  });
});
