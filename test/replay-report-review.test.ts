import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ReplayReport, ReplayServiceDefinition } from '../common/gen/retrace/v1/replay.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { replayExtension, type ReplayShared } from '../coordinator/replay/replay-extension.js';
import { replayReportSvg, watchReplayProgress } from '../scripts/cli/replay-commands.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { until } from './helpers/until.js';

// What a replay's report says about a what-if's effect downstream, and which selections are
// refused. Shards run in-process on one node: "scale" multiplies the number by its `factor`
// parameter, "label" wraps whatever it is given.

const CODE = contentHashOf('v1');
const T0 = 1_767_225_600_000_000_000n;

function runner(calls: ShardAssignment[]): ShardRunner {
  return {
    async run(a) {
      calls.push(a);
      const input = new TextDecoder().decode(a.inputs[0]?.payload);
      const out = a.transform === 'scale' ? JSON.stringify({ n: Number(input) * Number((a.parameters as { factor?: number }).factor ?? 1) }) : JSON.stringify({ label: `big:${input}` });
      const now = BigInt(Date.now()) * 1_000_000n;
      const resources = { cpuTimeNs: '1000', peakMemoryBytes: '0', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1000' };
      const outcome = { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from(out), mediaType: 'application/json' }], resources, error: '', attempt: a.attempt, startedAtNs: String(now - 1000n), endedAtNs: String(now), nodeId: 'node-a' };
      return { outcome, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
    },
  };
}

describe('replay report: a what-if and what it changed downstream', () => {
  let tc: TestCoordinator;
  const calls: ShardAssignment[] = [];
  let conn: string[] = [];
  const cli = (...argv: string[]): ReturnType<typeof runCli> => runCli([...argv, ...conn]);

  beforeAll(async () => {
    const shared: PipelineShared & ReplayShared = { dispatcher: runner(calls), mesh: { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-a', state: NodeState.NODE_STATE_READY })] } };
    tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner: runner(calls) }), replayExtension(shared)] });
    conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    const pipelines = tc.client(PipelineServiceDefinition);
    await pipelines.applyPipeline({
      pipeline: Pipeline.fromJSON({
        name: 'nums',
        sources: [{ name: 'raw', mediaType: 'text/plain' }],
        steps: [
          { name: 'scale', transform: 'scale', codeVersion: CODE, parameters: { factor: 2 }, inputs: ['raw'] },
          { name: 'label', transform: 'label', codeVersion: CODE, inputs: ['scale'] },
        ],
      }),
    });
    await pipelines.ingest(
      (async function* () {
        yield { pipeline: 'nums', source: 'raw', records: ['1', '2'].map((key, i) => ({ key, eventTimeNs: String(T0 + BigInt(i) * 10_000_000n), payload: Buffer.from(key), mediaType: '' })) };
      })(),
    );
  });
  afterAll(async () => {
    await tc.stop();
  });

  it('a step whose input a what-if changed upstream is "changed", not flagged as non-deterministic, in the table, --json and the --svg chart', async () => {
    const r = await cli('replay', 'start', '--record', 'record:nums/raw:1', '--set', 'scale.factor=3', '--watch');
    expect(r.code, r.err).toBe(0);
    // Both steps differ from the original, both because of the what-if: neither is "NO".
    const rows = r.out.split('\n').filter((l) => l.startsWith('record:nums/raw:1'));
    expect(rows).toHaveLength(2);
    for (const row of rows) expect(row.split(/\s{2,}/)[3], row).toBe('changed');
    expect(r.out).toContain('non-deterministic 0');
    const id = /replay (replay-\S+):/.exec(r.err)?.[1] as string;
    const { report } = await tc.client(ReplayServiceDefinition).getReplayReport({ replayId: id });
    expect(report?.steps.map((s) => [s.step, s.matches, s.overridden])).toEqual([
      ['scale', false, true],
      ['label', false, true],
    ]);
    // The record is charted as changed by the what-if, not as having differed on its own.
    const svg = replayReportSvg(report as ReplayReport);
    expect(svg).toContain('changed (1)');
    expect(svg).toContain('differed (0)');
  });

  it('without a what-if, steps that match read yes', async () => {
    // The runner is deterministic: with no what-if nothing changes.
    const r = await cli('replay', 'start', '--record', 'record:nums/raw:2', '--watch');
    expect(r.code, r.err).toBe(0);
    const rows = r.out.split('\n').filter((l) => l.startsWith('record:nums/raw:2'));
    for (const row of rows) expect(row.split(/\s{2,}/)[3], row).toBe('yes');
  });

  it('a record selected twice is refused, naming the repeat, and nothing is recorded', async () => {
    const before = (await tc.client(ReplayServiceDefinition).listReplays({})).replays.length;
    const callsBefore = calls.length;
    const r = await cli('replay', 'start', '--record', 'record:nums/raw:1', '--record', 'record:nums/raw:2', '--record', 'record:nums/raw:1');
    expect(r.code, r.out).toBe(1);
    expect(r.err.trim()).toBe('error: selector.record_ids.object_ids[2]: record "record:nums/raw:1" is already selected (object_ids[0]); name each record once');
    expect((await tc.client(ReplayServiceDefinition).listReplays({})).replays).toHaveLength(before);
    expect(calls.length).toBe(callsBefore);
  });

  it('off a terminal (a log), a paced replay shows its bar as it advances, not only when it ends', async () => {
    const client = tc.client(ReplayServiceDefinition);
    // Two records 10 ms apart at 0.02x: the second is due 500 ms after the first.
    const { replayId } = await client.startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:nums/raw:1', 'record:nums/raw:2'] } } }, policy: { speed: 0.02 } as never });
    let err = '';
    const stderr = new Writable({
      write(chunk: Buffer, _enc, cb) {
        err += chunk.toString();
        cb();
      },
    });
    await watchReplayProgress(client, replayId, { stderr, signal: new AbortController().signal }, { lineEveryMs: 0 });
    const lines = err.split('\n').filter(Boolean);
    // The first record's steps, then the final bar: more than the one line a log got before.
    expect(lines.length, err).toBeGreaterThan(1);
    expect(lines.some((l) => l.includes('2/4 steps')), err).toBe(true);
    expect(lines.at(-1)).toContain('4/4 steps, 2/2 records');
  });

  it('a word past those a replay command takes is a usage error naming it (exit 2, nothing started)', async () => {
    const before = (await tc.client(ReplayServiceDefinition).listReplays({})).replays.length;
    const callsBefore = calls.length;
    for (const [argv, text] of [
      [['replay', 'start', '--record', 'record:nums/raw:1', 'record:nums/raw:2'], 'unexpected argument "record:nums/raw:2" (give each record its own --record)'],
      [['replay', 'start', '--window', 'nums/raw', '2026-01-01T00:00:00Z', '2026-01-02T00:00:00Z', 'extra'], 'unexpected argument "extra"'],
      [['replay', 'start', '--last', '100000d', 'nums/raw', 'extra'], 'unexpected argument "extra"'],
      [['replay', 'start', '--run', 'r', 'extra'], 'unexpected argument "extra"'],
      [['replay', 'report', 'replay-a', 'replay-b'], 'unexpected argument "replay-b"'],
      [['replay', 'cancel', 'replay-a', 'replay-b'], 'unexpected argument "replay-b"'],
      [['replay', 'watch', 'replay-a', 'replay-b'], 'unexpected argument "replay-b"'],
      [['replay', 'list', 'x'], 'unexpected argument "x"'],
    ] as const) {
      const r = await cli(...argv);
      expect(r.code, `${argv.join(' ')}: ${r.err}`).toBe(2);
      expect(r.err.split('\n')[0]).toBe(`error: ${text}`);
    }
    expect((await tc.client(ReplayServiceDefinition).listReplays({})).replays).toHaveLength(before);
    expect(calls.length).toBe(callsBefore);
  });

  it('--max-cpu 0% (0 is "no cap" on the wire) is refused rather than run uncapped', async () => {
    const before = (await tc.client(ReplayServiceDefinition).listReplays({})).replays.length;
    for (const v of ['0%', '0', '0.0']) {
      const r = await cli('replay', 'start', '--record', 'record:nums/raw:1', `--max-cpu=${v}`);
      expect(r.code, `${v}: ${r.err}${r.out}`).toBe(2);
      expect(r.err.split('\n')[0]).toBe(`error: --max-cpu must be above 0% (leave it out for no cap), got ${JSON.stringify(v)}`);
    }
    const empty = await cli('replay', 'start', '--record', 'record:nums/raw:1', '--max-cpu=%');
    expect(empty.code).toBe(2);
    expect(empty.err.split('\n')[0]).toBe('error: --max-cpu must be like 50% or 0.5');
    expect((await tc.client(ReplayServiceDefinition).listReplays({})).replays).toHaveLength(before);
  });

  it('a scheduled outage is reported on the steps sent while it lasted, and only on those', async () => {
    const client = tc.client(ReplayServiceDefinition);
    const during = await cli('replay', 'start', '--record', 'record:nums/raw:1', '--fault', 'outage:node-a:after=0s:for=1h', '--watch', '--json');
    expect(during.code, during.err).toBe(0);
    const report = JSON.parse(during.out) as { steps: { faults: string[] }[] };
    expect(report.steps.map((x) => x.faults)).toEqual([['sent during the outage of node-a (after 0 ms for 1h)'], ['sent during the outage of node-a (after 0 ms for 1h)']]);
    const before = await cli('replay', 'start', '--record', 'record:nums/raw:1', '--fault', 'outage:node-a:after=1h:for=1s', '--watch');
    expect(before.code, before.err).toBe(0);
    const id = /replay (replay-\S+):/.exec(before.err)?.[1] as string;
    const { report: later } = await client.getReplayReport({ replayId: id });
    expect(later?.steps.map((x) => x.faults)).toEqual([[], []]);
  });

  it('a running replay\'s report and listing count the steps finished so far', async () => {
    const client = tc.client(ReplayServiceDefinition);
    // The second record is due 10 s after the first (the slowest pacing, 0.001x): the replay runs on while it is read.
    const { replayId } = await client.startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:nums/raw:1', 'record:nums/raw:2'] } } }, policy: { speed: 0.001 } as never });
    try {
      const report = await until('the first record replayed', async () => {
        const { report: r } = await client.getReplayReport({ replayId });
        return r?.steps.filter((x) => x.status === 'SUCCEEDED').length === 2 ? r : undefined;
      });
      expect(report.summary).toMatchObject({ records: 2, steps: 4, matched: 2, failed: 0, cancelled: 0 });
      const text = await cli('replay', 'report', replayId);
      expect(text.out).toContain('2 records, 4 steps: 2 matched, 0 differed, 0 failed, 2 still to run;');
      const listed = (await client.listReplays({})).replays.find((x) => x.replayId === replayId);
      expect(listed?.summary).toMatchObject({ steps: 4, matched: 2 });
    } finally {
      await client.cancelReplay({ replayId });
    }
  });
});


describe('replay watch across a coordinator shutdown', () => {
  it('says the replay ended CANCELLED by the shutdown, not only that the coordinator cannot be reached', async () => {
    const calls: ShardAssignment[] = [];
    const shared: PipelineShared & ReplayShared = { dispatcher: runner(calls), mesh: { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-a', state: NodeState.NODE_STATE_READY })] } };
    const tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner: runner(calls) }), replayExtension(shared)] });
    try {
      const pipelines = tc.client(PipelineServiceDefinition);
      await pipelines.applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'nums', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'scale', transform: 'scale', codeVersion: CODE, parameters: { factor: 2 }, inputs: ['raw'] }] }) });
      await pipelines.ingest(
        (async function* () {
          yield { pipeline: 'nums', source: 'raw', records: ['1', '2'].map((key, i) => ({ key, eventTimeNs: String(T0 + BigInt(i) * 1_000_000_000n), payload: Buffer.from(key), mediaType: '' })) };
        })(),
      );
      // The second record is due 100 s in: the replay is still running when the coordinator stops.
      const { replayId } = await tc.client(ReplayServiceDefinition).startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:nums/raw:1', 'record:nums/raw:2'] } } }, policy: { speed: 0.01 } as never });
      const watching = runCli(['replay', 'watch', replayId, '--coordinator', tc.grpcAddress, '--token', tc.token]);
      await new Promise((r) => setTimeout(r, 300));
      await tc.stop({ keepData: true });
      const r = await watching;
      expect(r.code).toBe(1);
      expect(r.err).toContain(`replay ${replayId}: CANCELLED (cancelled: the coordinator shut down during the replay; start it again); the coordinator went away before its report could be read`);
    } finally {
      await tc.stop().catch(() => undefined);
    }
  });
});
