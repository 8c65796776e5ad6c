import { describe, expect, it } from 'vitest';
import { Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import type { LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { PipelineRunner, type PipelineRunnerOptions, type ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { createPipelineStore, type PipelineStore } from '../coordinator/pipeline/pipeline-store.js';
import { coalesceCalls } from '../coordinator/store/call-coalescer.js';
import { openDatabase } from '../coordinator/store/database.js';
import { createPayloadStore, type PayloadStore } from '../coordinator/store/payload-store.js';
import { until } from './helpers/until.js';

const CODE = contentHashOf('upper bundle');

/** Upper-cases its input in-process; records every assignment. */
function upperRunner(calls: ShardAssignment[]): ShardRunner {
  return {
    async run(a) {
      calls.push(a);
      if (new TextDecoder().decode(a.inputs[0]?.payload) === 'fail') {
        return { outcome: { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_FAILED, outputs: [], resources: undefined, error: 'asked to fail', startedAtNs: '1', endedAtNs: '2', nodeId: 'n', attempt: 1 }, nodeId: 'n', attempts: 1, queuedMs: 0 };
      }
      const payload = Buffer.from(new TextDecoder().decode(a.inputs[0]?.payload).toUpperCase());
      return {
        outcome: { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: contentHashOf(payload), payload, mediaType: 'text/plain' }], resources: undefined, error: '', startedAtNs: '1', endedAtNs: '2', nodeId: 'n', attempt: 1 },
        nodeId: 'n',
        attempts: 1,
        queuedMs: 0,
      };
    },
  };
}

/**
 * A lineage engine stand-in whose record submissions become durable only when the test says so
 * (run events are durable at once), or fail.
 */
function gatedLineage(): PipelineRunnerOptions['lineage'] & { held: { events: LineageEvent[]; settle(err?: Error): void }[] } {
  const held: { events: LineageEvent[]; settle(err?: Error): void }[] = [];
  return {
    held,
    async submit(events: readonly LineageEvent[]) {
      if (events.every((e) => e.body?.$case === 'run')) return { accepted: events.length, duplicates: 0, seqs: [], treeSize: 0n };
      return new Promise((resolve, reject) => {
        held.push({ events: [...events], settle: (err) => (err ? reject(err) : resolve({ accepted: events.length, duplicates: 0, seqs: [], treeSize: 0n })) });
      });
    },
    async readStep() {
      return undefined;
    },
    async readVersion() {
      return undefined;
    },
    index: { has: () => false },
  };
}

/** A lineage that takes every submission at once and keeps the events. */
function recordingLineage(): PipelineRunnerOptions['lineage'] & { events: LineageEvent[] } {
  const events: LineageEvent[] = [];
  return {
    events,
    async submit(submitted: readonly LineageEvent[]) {
      events.push(...submitted);
      return { accepted: submitted.length, duplicates: 0, seqs: [], treeSize: 0n };
    },
    async readStep() {
      return undefined;
    },
    async readVersion() {
      return undefined;
    },
    index: { has: () => false },
  };
}

async function setup(concurrency: number): Promise<{ runner: PipelineRunner; lineage: ReturnType<typeof gatedLineage>; pipelines: PipelineStore; payloads: PayloadStore; calls: ShardAssignment[] }> {
  const db = await openDatabase(null);
  const clock = (): bigint => BigInt(Date.now()) * 1_000_000n;
  const pipelines = createPipelineStore(db, clock);
  const payloads = createPayloadStore(db);
  await pipelines.apply(Pipeline.fromJSON({ name: 'p', sources: [{ name: 'raw' }], steps: [{ name: 'up', transform: 'upper', codeVersion: CODE, inputs: ['raw'] }] }));
  const lineage = gatedLineage();
  const calls: ShardAssignment[] = [];
  const runner = new PipelineRunner({ lineage, pipelines, payloads, runner: upperRunner(calls), clock, concurrency });
  return { runner, lineage, pipelines, payloads, calls };
}

const rec = (key: string, text: string): { key: string; payload: Uint8Array } => ({ key, payload: Buffer.from(text) });

describe('pipeline capture and durability', () => {
  it('answers an ingest only once every record is durable; records run on while earlier ones wait for durability', async () => {
    const { runner, lineage, pipelines, payloads, calls } = await setup(1);
    let answered = false;
    const ingest = runner.ingest('p', 'raw', [[rec('k1', 'a'), rec('k2', 'b'), rec('k3', 'c')]]).finally(() => (answered = true));
    // One slot, nothing durable yet: all three records still ran their step and submitted.
    await until('three submissions', () => (lineage.held.length === 3 ? true : undefined), 5000, 5);
    expect(calls).toHaveLength(3);
    // Payloads are written before the events that name them are submitted.
    expect(await payloads.has(contentHashOf('B'))).toBe(true);
    // Not durable: no current record, no answer.
    expect(await pipelines.getCurrent('p', 'raw', 'k1')).toBeUndefined();
    expect(answered).toBe(false);
    // Each submission is the record's whole path: here one step event, which describes the
    // source record's version it read and its output's version itself.
    expect(lineage.held[1]?.events.map((e) => e.body?.$case)).toEqual(['step']);
    const step = lineage.held[1]?.events[0]?.body;
    const described = (list: 'usedVersions' | 'generatedVersions') => (step?.$case === 'step' ? step.value[list]?.versions.map((v) => [v.objectId, v.contentHash, v.size, v.attributes.dataset, v.attributes.key]) : undefined);
    expect(described('usedVersions')).toEqual([['record:p/raw:k2', contentHashOf('b'), '1', 'raw', 'k2']]);
    expect(described('generatedVersions')).toEqual([['record:p/up:k2', contentHashOf('B'), '1', 'up', 'k2']]);
    for (const h of lineage.held.slice(0, 2)) h.settle();
    await until('k2 current', () => pipelines.getCurrent('p', 'up', 'k2'), 5000, 5);
    expect(answered).toBe(false);
    lineage.held[2]?.settle();
    const summary = await ingest;
    expect([summary.accepted, summary.shardsRun, summary.shardsFailed]).toEqual([3, 3, 0]);
    expect((await pipelines.getCurrent('p', 'up', 'k3'))?.contentHash).toBe(contentHashOf('C'));
  });

  it('runs a key\'s next record only after the previous one is durable and current', async () => {
    const { runner, lineage, calls } = await setup(4);
    const ingest = runner.ingest('p', 'raw', [[rec('k', 'a'), rec('k', 'a'), rec('k', 'b')]]);
    // Each of the key's records starts once the one before it is durable (and current).
    for (let n = 1; n <= 3; n++) {
      await until(`submission ${n}`, () => (lineage.held.length === n ? true : undefined), 5000, 5);
      await new Promise((r) => setTimeout(r, 20));
      expect([calls.length, lineage.held.length]).toEqual([n, n]);
      lineage.held[n - 1]?.settle();
    }
    const summary = await ingest;
    // The second record equals the current one: a duplicate, whose source version is not submitted again.
    expect([summary.accepted, summary.duplicates, summary.shardsRun]).toEqual([2, 1, 3]);
    expect(lineage.held[1]?.events.map((e) => e.body?.$case)).toEqual(['step']);
  });

  it('records a new source version on its own when no step that reads it succeeds', async () => {
    const { runner, lineage } = await setup(1);
    const ingest = runner.ingest('p', 'raw', [[rec('k', 'fail')]]);
    await until('submission', () => (lineage.held.length === 1 ? true : undefined), 5000, 5);
    lineage.held[0]?.settle();
    expect((await ingest).shardsFailed).toBe(1);
    const only = lineage.held[0]?.events ?? [];
    expect(only.map((e) => [e.eventId, e.body?.$case])).toEqual([[`version:record:p/raw:k@${contentHashOf('fail')}`, 'objectVersion']]);
  });

  it('fails the ingest and records no current record when provenance cannot be made durable', async () => {
    const { runner, lineage, pipelines } = await setup(2);
    const ingest = runner.ingest('p', 'raw', [[rec('k1', 'a'), rec('k2', 'b')]]);
    await until('two submissions', () => (lineage.held.length === 2 ? true : undefined), 5000, 5);
    lineage.held[0]?.settle(new Error('disk full'));
    lineage.held[1]?.settle();
    await expect(ingest).rejects.toThrow(/disk full/);
    expect(await pipelines.getCurrent('p', 'raw', 'k1')).toBeUndefined();
  });

  it('checks a whole batch before running any of it, and closes a failed ingest run as FAIL', async () => {
    const db = await openDatabase(null);
    const clock = (): bigint => BigInt(Date.now()) * 1_000_000n;
    const pipelines = createPipelineStore(db, clock);
    await pipelines.apply(Pipeline.fromJSON({ name: 'p', sources: [{ name: 'raw' }], steps: [{ name: 'up', transform: 'upper', codeVersion: CODE, inputs: ['raw'] }] }));
    const lineage = recordingLineage();
    const calls: ShardAssignment[] = [];
    const runner = new PipelineRunner({ lineage, pipelines, payloads: createPayloadStore(db), runner: upperRunner(calls), clock, concurrency: 4 });
    const runStates = (): string[] => lineage.events.flatMap((e) => (e.body?.$case === 'run' ? [e.body.value.state] : []));
    for (const [bad, message] of [
      [{ key: 'k\u0000', payload: Buffer.from('x') }, /^records\[1\]\.key: contains a NUL character$/],
      [{ key: 'k'.repeat(1020), payload: Buffer.from('x') }, /^records\[1\]\.key: longer than \d+ characters/],
      [{ key: 'k', eventTimeNs: '9223372036854775808', payload: Buffer.from('x') }, /^records\[1\]\.event_time_ns: must be non-negative/],
    ] as const) {
      lineage.events.length = 0;
      await expect(runner.ingest('p', 'raw', [[rec('good', 'a'), bad]])).rejects.toThrow(message);
      // The good record of the same batch never ran; the run was opened and closed as failed.
      expect(calls).toHaveLength(0);
      expect(runStates()).toEqual(['RUNNING', 'FAIL']);
    }
    // A bad record in a later batch: the earlier batch ran, and the run is closed all the same.
    lineage.events.length = 0;
    await expect(runner.ingest('p', 'raw', [[rec('first', 'a')], [{ key: '', payload: Buffer.from('x') }]])).rejects.toThrow(/^records\[1\]\.key: is required$/);
    expect(calls).toHaveLength(1);
    expect(runStates()).toEqual(['RUNNING', 'FAIL']);
    const end = lineage.events.at(-1);
    expect(end?.body?.$case === 'run' ? end.body.value.facets : undefined).toMatchObject({ retrace: { error: 'records[1].key: is required' } });
  });

  it('the runner without capture runs the same steps and records nothing', async () => {
    const { runner, lineage, pipelines, payloads, calls } = await setup(2);
    const summary = await runner.withoutCapture().ingest('p', 'raw', [[rec('k1', 'a'), rec('k2', 'b')]]);
    expect([summary.shardsRun, summary.shardsFailed]).toEqual([2, 0]);
    expect(calls.map((c) => new TextDecoder().decode(c.inputs[0]?.payload))).toEqual(['a', 'b']);
    expect(lineage.held).toHaveLength(0);
    expect(await pipelines.getCurrent('p', 'raw', 'k1')).toBeUndefined();
    expect(await payloads.has(contentHashOf('A'))).toBe(false);
  });
});

describe('coalesceCalls', () => {
  it('serves calls made together in one call, and calls made meanwhile in the next, in order', async () => {
    const served: number[][] = [];
    let gate: (() => void) | undefined;
    const double = coalesceCalls(async (xs: number[]) => {
      served.push(xs);
      if (served.length === 1) await new Promise<void>((r) => (gate = r));
      return xs.map((x) => x * 2);
    });
    const first = [double(1), double(2)];
    await until('first serve', () => gate, 1000, 1);
    const second = [double(3), double(4), double(5)];
    gate?.();
    expect(await Promise.all([...first, ...second])).toEqual([2, 4, 6, 8, 10]);
    expect(served).toEqual([
      [1, 2],
      [3, 4, 5],
    ]);
  });

  it('rejects every call of a failed serve, and serves later calls', async () => {
    let fail = true;
    const f = coalesceCalls(async (xs: string[]) => {
      if (fail) throw new Error('boom');
      return xs.map((x) => x.toUpperCase());
    });
    const results = await Promise.allSettled([f('a'), f('b')]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    fail = false;
    expect(await f('c')).toBe('C');
  });
});
