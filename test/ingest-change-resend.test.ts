import { describe, expect, it } from 'vitest';
import { Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ChangeKind, ChangePolicy, ChangeState, type Change } from '../common/gen/retrace/v1/recompute.js';
import { ShardStatus } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { recomputeExtension } from '../coordinator/recompute/recompute-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startTestCoordinator } from './helpers/test-coordinator.js';

/**
 * A record change left REPORTED although its record is current (a step of the ingest that noticed
 * it failed, or it was noticed under `manual`): a resend is a duplicate to the runner, not a
 * change, yet once it runs the missing steps successfully and durably under `auto` the change is
 * RECOMPUTED_BY_INGEST, as the README promises. In process on LevelDB with a fake shard runner.
 */

/** Shards fail while `failing` is set and an input contains "boom"; else they succeed. */
let failing = false;
const runner: ShardRunner = {
  async run(a) {
    const started = BigInt(Date.now()) * 1_000_000n;
    const text = `${a.stepName}:${a.inputs.map((i) => Buffer.from(i.payload).toString()).join(',')}`;
    const failed = failing && text.includes('boom');
    const resources = { cpuTimeNs: '1', peakMemoryBytes: '1', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1' };
    return {
      outcome: {
        shardId: a.shardId,
        startedAtNs: started.toString(),
        endedAtNs: (started + 1000n).toString(),
        nodeId: 'node-a',
        attempt: 1,
        status: failed ? ShardStatus.SHARD_STATUS_FAILED : ShardStatus.SHARD_STATUS_SUCCEEDED,
        outputs: failed ? [] : [{ key: '', contentHash: '', payload: Buffer.from(text), mediaType: 'text/plain' }],
        resources,
        error: failed ? 'boom' : '',
      },
      nodeId: 'node-a',
      attempts: 1,
      queuedMs: 0,
    };
  },
};

describe('a reported record change completed by a resend', () => {
  it('left reported by a failed step: completed once its steps succeed durably, still reported while they fail', async () => {
    const shared: CoordinatorServices = {};
    const tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner }), recomputeExtension(shared)] });
    try {
      const pipes = shared.pipelines as NonNullable<CoordinatorServices['pipelines']>;
      const step = (name: string, inputs: string[]) => ({ name, transform: 't', codeVersion: `sha256:${'0'.repeat(64)}`, parameters: { step: name }, inputs });
      await pipes.store.apply(Pipeline.fromJSON({ name: 'wf', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [step('a', ['raw']), step('b', ['a'])] }));
      const ingest = (value: string) => pipes.runner.ingest('wf', 'raw', [[{ key: 'k', payload: Buffer.from(value) }]], { principal: 'test' });
      const changes = async (): Promise<Change[]> => ((await shared.recompute?.changes.list({ pipeline: 'wf' }))?.changes ?? []).filter((c) => c.kind === ChangeKind.CHANGE_KIND_RECORD);
      expect((await ingest('v1')).shardsRun).toBe(2);

      failing = true;
      expect((await ingest('v2 boom')).shardsFailed).toBe(1);
      const [reported] = await changes();
      expect(reported).toMatchObject({ policy: ChangePolicy.CHANGE_POLICY_AUTO, state: ChangeState.CHANGE_STATE_REPORTED, jobIds: [] });
      // Resent while the step still fails: a duplicate, and still no more than reported.
      const again = await ingest('v2 boom');
      expect([again.duplicates, again.shardsFailed]).toEqual([1, 1]);
      expect(await changes()).toEqual([reported]);

      // Resent once the step succeeds: both steps recorded, the same change now recomputed by the ingest.
      failing = false;
      const done = await ingest('v2 boom');
      expect([done.duplicates, done.shardsRun, done.shardsFailed]).toEqual([1, 2, 0]);
      expect(await changes()).toEqual([{ ...reported, state: ChangeState.CHANGE_STATE_RECOMPUTED_BY_INGEST }]);
      expect((await pipes.store.getCurrent('wf', 'b', 'k'))?.contentHash).toBe(contentHashOf(Buffer.from('b:a:v2 boom')));

      // A later plain duplicate (every step reused) changes nothing.
      expect((await ingest('v2 boom')).shardsRun).toBe(0);
      expect((await changes()).map((c) => c.state)).toEqual([ChangeState.CHANGE_STATE_RECOMPUTED_BY_INGEST]);
    } finally {
      failing = false;
      await tc.stop();
    }
  }, 15_000);

  it('a change reported under manual is completed by a resend once the policy is auto and the steps ran', async () => {
    const shared: CoordinatorServices = {};
    const tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner }), recomputeExtension(shared)] });
    try {
      const pipes = shared.pipelines as NonNullable<CoordinatorServices['pipelines']>;
      const changeStore = shared.recompute?.changes as NonNullable<CoordinatorServices['recompute']>['changes'];
      await pipes.store.apply(Pipeline.fromJSON({ name: 'wf', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'a', transform: 't', codeVersion: `sha256:${'0'.repeat(64)}`, parameters: {}, inputs: ['raw'] }] }));
      const ingest = (value: string) => pipes.runner.ingest('wf', 'raw', [[{ key: 'k', payload: Buffer.from(value) }]], { principal: 'test' });
      expect((await ingest('v1')).shardsRun).toBe(1);
      await changeStore.setPolicy('wf', '', ChangePolicy.CHANGE_POLICY_MANUAL);
      expect((await ingest('v2')).shardsRun).toBe(0);
      const [reported] = (await changeStore.list({ pipeline: 'wf' })).changes;
      expect(reported).toMatchObject({ policy: ChangePolicy.CHANGE_POLICY_MANUAL, state: ChangeState.CHANGE_STATE_REPORTED });
      // Still manual: the resend runs nothing and the change waits.
      expect((await ingest('v2')).shardsRun).toBe(0);
      expect((await changeStore.list({ pipeline: 'wf' })).changes).toEqual([reported]);
      await changeStore.setPolicy('wf', '', ChangePolicy.CHANGE_POLICY_AUTO);
      expect((await ingest('v2')).shardsRun).toBe(1);
      expect((await changeStore.list({ pipeline: 'wf' })).changes).toEqual([{ ...reported, state: ChangeState.CHANGE_STATE_RECOMPUTED_BY_INGEST }]);
    } finally {
      await tc.stop();
    }
  }, 15_000);

  it('a record back at content a step already ran on reuses that recorded execution instead of running it again', async () => {
    // Non-deterministic: every run's output differs, as a transform reading a clock would.
    let runs = 0;
    const nondeterministic: ShardRunner = {
      async run(a) {
        runs++;
        const r = await runner.run(a);
        r.outcome.outputs = r.outcome.outputs.map((o) => ({ ...o, payload: Buffer.from(`${Buffer.from(o.payload).toString()}#${runs}`) }));
        return r;
      },
    };
    const shared: CoordinatorServices = {};
    const tc = await startTestCoordinator({ extensions: [pipelineExtension(shared, { runner: nondeterministic }), recomputeExtension(shared)] });
    try {
      const pipes = shared.pipelines as NonNullable<CoordinatorServices['pipelines']>;
      const lineage = tc.coordinator.lineage;
      await pipes.store.apply(Pipeline.fromJSON({ name: 'wf', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'a', transform: 't', codeVersion: `sha256:${'0'.repeat(64)}`, parameters: {}, inputs: ['raw'] }] }));
      const ingest = (value: string) => pipes.runner.ingest('wf', 'raw', [[{ key: 'k', payload: Buffer.from(value) }]], { principal: 'test' });
      expect((await ingest('v1')).shardsRun).toBe(1);
      const first = await pipes.store.getCurrent('wf', 'a', 'k');
      expect((await ingest('v2')).shardsRun).toBe(1);
      // Back to v1: the step over v1 is recorded, with its output; it is not run again.
      expect((await ingest('v1')).shardsRun).toBe(0);
      expect(runs).toBe(2);
      const current = await pipes.store.getCurrent('wf', 'a', 'k');
      expect(current?.contentHash).toBe(first?.contentHash);
      // The current output is one provenance recorded (a rerun's output would have been dropped with its duplicate step event).
      expect(await lineage.readVersion('record:wf/a:k', current?.contentHash ?? '')).toBeDefined();
    } finally {
      await tc.stop();
    }
  }, 15_000);
});
