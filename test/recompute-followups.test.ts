import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ChangeKind, ChangePolicy, ChangeState, type Change } from '../common/gen/retrace/v1/recompute.js';
import { ShardStatus } from '../common/gen/retrace/v1/shard.js';
import { codeExtension } from '../coordinator/code/code-extension.js';
import { jobsExtension } from '../coordinator/jobs/jobs-extension.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { stepChanges } from '../coordinator/recompute/change-detector.js';
import { recomputeExtension } from '../coordinator/recompute/recompute-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { until } from './helpers/until.js';

/**
 * The follow-up notes of apply and publish, in process on LevelDB: the state a crash leaves
 * (a version or bundle stored with its note, part of the follow-up done) is made by hand through
 * the stores, the coordinator is stopped and started on the same data dir, and the start finishes
 * exactly what was owed: no second job, no second pipeline version, notes gone.
 */

/** Every shard succeeds with an output naming its step, code and input. */
const runner: ShardRunner = {
  async run(a) {
    const started = BigInt(Date.now()) * 1_000_000n;
    const text = `${a.stepName}:${a.codeVersion.slice(7, 15)}:${a.inputs.map((i) => i.objectId).join(',')}`;
    const resources = { cpuTimeNs: '1', peakMemoryBytes: '1', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1' };
    return {
      outcome: { shardId: a.shardId, startedAtNs: started.toString(), endedAtNs: (started + 1000n).toString(), nodeId: 'node-a', attempt: 1, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from(text), mediaType: 'text/plain' }], resources, error: '' },
      nodeId: 'node-a',
      attempts: 1,
      queuedMs: 0,
    };
  },
};

const dirs: string[] = [];
let tc: TestCoordinator | undefined;
afterEach(async () => {
  await tc?.stop({ keepData: true });
  tc = undefined;
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function start(dataDir: string): Promise<{ tc: TestCoordinator; shared: CoordinatorServices & { code: NonNullable<CoordinatorServices['code']> } }> {
  const shared: CoordinatorServices = {};
  tc = await startTestCoordinator({
    dataDir,
    extensions: [
      codeExtension({ onCodeStore: (s) => (shared.code = s), onPublished: async (c, p) => shared.recompute?.recomputer.onCodePublished(c, p) }),
      pipelineExtension(shared, { runner }),
      jobsExtension(shared, { seed: 1 }),
      recomputeExtension(shared),
    ],
  });
  return { tc, shared: shared as CoordinatorServices & { code: NonNullable<CoordinatorServices['code']> } };
}

const manifest = (transform: string) => ({ transform, requirements: undefined, sourceFile: 'x.js', bundler: 'test' });

function definition(name: string, codeVersion: string, tag: string): Pipeline {
  return Pipeline.fromJSON({ name, sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 's', transform: 'up', codeVersion, parameters: { tag }, inputs: ['raw'] }] });
}

describe('apply and publish follow-ups left by a crash', () => {
  it('a restart submits the owed auto changes once, notes a job submitted but not noted, and moves the pipelines a publish never reached', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'retrace-followups-'));
    dirs.push(dataDir);
    let { shared } = await start(dataDir);
    const v1 = (await shared.code.publish(Buffer.from('export default 1'), manifest('up'))).code.codeVersion;
    for (const name of ['p1', 'p2']) {
      expect((await shared.pipelines?.store.apply(definition(name, v1, 't1')))?.created).toBe(true);
      await shared.pipelines?.runner.ingest(name, 'raw', [[{ key: 'k', payload: Buffer.from('x') }]], { principal: 'test' });
    }
    const recorded = async (kind: ChangeKind, pipeline: string): Promise<Change[]> => (await shared.recompute?.changes.list({ pipeline }))?.changes.filter((c) => c.kind === kind) ?? [];

    // p1: a version stored with its note and its change recorded, then the crash (no job).
    const p1v1 = await shared.pipelines?.store.get('p1');
    const p1v2 = (await shared.pipelines?.store.apply(definition('p1', v1, 't2'), { followUp: 'alice' }))?.pipeline;
    for (const input of stepChanges(p1v1, p1v2 as NonNullable<typeof p1v2>, 'apply:alice')) await shared.recompute?.changes.record(input);
    // p2: the same, but its job was stored before the crash and never noted on the change.
    const p2v1 = await shared.pipelines?.store.get('p2');
    const p2v2 = (await shared.pipelines?.store.apply(definition('p2', v1, 't2'), { followUp: 'bob' }))?.pipeline;
    const [p2Change] = await Promise.all(stepChanges(p2v1, p2v2 as NonNullable<typeof p2v2>, 'apply:bob').map(async (i) => (await shared.recompute?.changes.record(i))?.change));
    const unnoted = await shared.jobs?.submit({ kind: 'recompute', title: 'cut short', principal: 'auto-policy', tasks: [], payload: { changeIds: [p2Change?.changeId ?? ''], principal: 'auto-policy', placement: {} } });
    // A publish of a new `up` whose change for p1 was recorded, then the crash: no pipeline moved.
    const v2 = (await shared.code.publish(Buffer.from('export default 2'), manifest('up'), { followUp: 'carol' })).code.codeVersion;
    await shared.recompute?.changes.record({ kind: ChangeKind.CHANGE_KIND_CODE_PUBLISHED, objectId: 'code:up', oldHash: v1, newHash: v2, pipeline: 'p1', step: 's', noticedBy: 'publish:carol' });
    expect((await recorded(ChangeKind.CHANGE_KIND_PARAMETERS, 'p1'))[0]).toMatchObject({ state: ChangeState.CHANGE_STATE_REPORTED, jobIds: [], policy: ChangePolicy.CHANGE_POLICY_AUTO });
    await tc?.stop({ keepData: true });

    ({ shared } = await start(dataDir));
    const settled = async (): Promise<true | undefined> => ((await shared.pipelines?.store.followUps())?.length === 0 && (await shared.code.followUps()).length === 0 ? true : undefined);
    await until('the follow-ups finished', settled, 10_000, 20);
    const [p1Params] = await recorded(ChangeKind.CHANGE_KIND_PARAMETERS, 'p1');
    expect(p1Params).toMatchObject({ state: ChangeState.CHANGE_STATE_RECOMPUTE_SUBMITTED });
    expect(p1Params?.jobIds).toHaveLength(1);
    expect((await recorded(ChangeKind.CHANGE_KIND_PARAMETERS, 'p2'))[0]).toMatchObject({ state: ChangeState.CHANGE_STATE_RECOMPUTE_SUBMITTED, jobIds: [unnoted?.jobId] });
    // The publish reached both pipelines, whether or not its change was recorded before the crash.
    for (const [name, version] of [['p1', 3], ['p2', 3]] as const) {
      const pv = await shared.pipelines?.store.get(name);
      expect(pv?.version, name).toBe(version);
      expect(pv?.pipeline?.steps[0]?.codeVersion, name).toBe(v2);
      const followed = (await recorded(ChangeKind.CHANGE_KIND_CODE_VERSION, name)).filter((c) => c.newHash === v2);
      expect(followed.map((c) => c.jobIds.length), name).toEqual([1]);
    }
    const jobsAfterFirstRestart = (await shared.jobs?.list({ kind: 'recompute' }))?.map((j) => j.jobId).sort();
    expect(jobsAfterFirstRestart).toHaveLength(4);
    await tc?.stop({ keepData: true });

    // Nothing is owed any more: another start submits nothing and moves nothing.
    ({ shared } = await start(dataDir));
    await new Promise((r) => setTimeout(r, 200));
    expect((await shared.jobs?.list({ kind: 'recompute' }))?.map((j) => j.jobId).sort()).toEqual(jobsAfterFirstRestart);
    expect(await shared.pipelines?.store.versions('p1')).toEqual([1, 2, 3]);
  }, 30_000);
});
