import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ReplayServiceDefinition, ReplayState, type WatchReplayResponse } from '../common/gen/retrace/v1/replay.js';
import { ShardStatus, type ShardAssignment, type ShardOutcome } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { replayExtension, type ReplayShared } from '../coordinator/replay/replay-extension.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

// A paced replay whose records are far apart in event time (two 50 ms apart, the third an hour
// later at 1x): while it waits for the third, what do ListReplays, WatchReplay and, once it is
// cancelled, the report's pacing say? Shards run in-process on "node-a", as the dispatcher does:
// a shard whose signal is already aborted ends CANCELLED without reaching a node.

const CODE = contentHashOf('upper');
const T0 = 1_767_225_600_000_000_000n;

function runner(): ShardRunner {
  return {
    async run(a: ShardAssignment, options?: { signal?: AbortSignal }) {
      const now = String(BigInt(Date.now()) * 1_000_000n);
      if (options?.signal?.aborted) {
        const outcome: ShardOutcome = { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_CANCELLED, outputs: [], resources: undefined, error: 'cancelled before it was placed', attempt: a.attempt, startedAtNs: now, endedAtNs: now, nodeId: '' };
        return { outcome, nodeId: '', attempts: 0, queuedMs: 0, host: '' };
      }
      const text = new TextDecoder().decode(a.inputs[0]?.payload);
      const outcome: ShardOutcome = { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from(text.toUpperCase()), mediaType: 'text/plain' }], resources: undefined, error: '', attempt: a.attempt, startedAtNs: now, endedAtNs: now, nodeId: 'node-a' };
      return { outcome, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
    },
  };
}

describe('a paced replay waiting a long gap for its next record', () => {
  let tc: TestCoordinator;
  let conn: string[] = [];

  beforeAll(async () => {
    const shared: PipelineShared & ReplayShared = { dispatcher: runner(), mesh: { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-a', state: NodeState.NODE_STATE_READY })] } };
    tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner: runner() }), replayExtension(shared)] });
    conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    const pipelines = tc.client(PipelineServiceDefinition);
    await pipelines.applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'orders', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'shout', transform: 'upper', codeVersion: CODE, inputs: ['raw'] }] }) });
    const times = { a: T0, b: T0 + 50_000_000n, c: T0 + 3_600_000_000_000n };
    await pipelines.ingest(
      (async function* () {
        yield { pipeline: 'orders', source: 'raw', records: Object.entries(times).map(([key, t]) => ({ key, eventTimeNs: String(t), payload: Buffer.from(`order ${key}`), mediaType: '' })) };
      })(),
    );
  });
  afterAll(async () => {
    await tc.stop();
  });

  it('is listed RUNNING, says which record it waits for and when it is due, and a cancel (CLI) leaves that record out of the pacing', async () => {
    const replays = tc.client(ReplayServiceDefinition);
    const { replayId } = await replays.startReplay({ selector: { selector: { $case: 'window', value: { pipeline: 'orders', source: 'raw', fromNs: String(T0), toNs: String(T0 + 7_200_000_000_000n) } } }, policy: { speed: 1 } as never });
    const watching = new AbortController();
    let waiting: WatchReplayResponse | undefined;
    try {
      for await (const p of replays.watchReplay({ replayId }, { signal: watching.signal })) {
        if (p.recordsDone === 2 && p.message.includes('next record')) {
          waiting = p;
          break;
        }
      }
    } finally {
      watching.abort();
    }
    expect(waiting?.state).toBe(ReplayState.REPLAY_STATE_RUNNING);
    expect(waiting?.message).toMatch(/next record c due at \d{4}-\d\d-\d\dT[\d:.]+Z \(in (59m \d+s|1h)\, at 1x\)/);

    // The table holds the replay as saved at its start (PENDING) until it ends.
    const listed = (await replays.listReplays({})).replays.find((r) => r.replayId === replayId);
    expect(listed?.state).toBe(ReplayState.REPLAY_STATE_RUNNING);
    const cliList = await runCli(['replay', 'list', ...conn]);
    expect(cliList.out).toMatch(new RegExp(`${replayId}\\s+RUNNING`));

    // A watcher started before the cancel ends with the replay, exiting 1: it did not succeed.
    const watcher = runCli(['replay', 'watch', replayId, ...conn]);
    const cancelled = await runCli(['replay', 'cancel', replayId, ...conn]);
    expect(cancelled).toMatchObject({ code: 0, out: `${replayId}: CANCELLED\n` });
    const watched = await watcher;
    expect(watched.code).toBe(1);
    expect(watched.err).toMatch(new RegExp(`replay ${replayId}: CANCELLED`));
    // c was cancelled, not failed: the watch counts it as the report does.
    expect(watched.err).toMatch(/3\/3 steps, \d\/3 records, 0 failed, 1 not run/);
    const after = await replays.watchReplay({ replayId })[Symbol.asyncIterator]().next();
    expect(after.value).toMatchObject({ stepsFailed: 0, stepsSkipped: 1 });
    expect(JSON.parse((await runCli(['replay', 'cancel', replayId, '--json', ...conn])).out)).toEqual({ state: 'REPLAY_STATE_CANCELLED' });
    const unknown = await runCli(['replay', 'cancel', 'replay-nope', ...conn]);
    expect(unknown.code).not.toBe(0);
    expect(unknown.err).toContain('replay_id');
    const { report } = await replays.getReplayReport({ replayId });
    const c = report?.steps.find((s) => s.record === 'record:orders/raw:c');
    expect(c?.status).toMatch(/^(SKIPPED|CANCELLED)$/);
    // c was never dispatched: it has no dispatch time, and the pacing covers a and b only.
    expect(c?.dispatchedAtMs).toBe(0);
    const printed = await runCli(['replay', 'report', replayId, ...conn]);
    expect(printed.code).toBe(0);
    expect(printed.out).toMatch(/pacing, dispatched - due over 2 records: p50 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms/);
  });

  it('an empty window says where the source\'s records are; an unknown source says it has none', async () => {
    const replays = tc.client(ReplayServiceDefinition);
    const window = (source: string, from: bigint, to: bigint) => replays.startReplay({ selector: { selector: { $case: 'window', value: { pipeline: 'orders', source, fromNs: String(from), toNs: String(to) } } }, policy: undefined }).catch((e: unknown) => e as Error);
    const empty = await window('raw', T0 + 7_200_000_000_000n, T0 + 10_800_000_000_000n);
    expect(String(empty)).toContain('NOT_FOUND: selector.window: no record of orders/raw has an event time in [2026-01-01T02:00:00Z, 2026-01-01T03:00:00Z): its 3 record version(s) run from 2026-01-01T00:00:00Z to 2026-01-01T01:00:00Z');
    const unknown = await window('nope', T0, T0 + 1n);
    expect(String(unknown)).toContain('NOT_FOUND: selector.window: no record of orders/nope is in provenance (is the pipeline or source name right?)');
  });
});
