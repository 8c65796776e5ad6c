import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ChangeKind, ChangePolicy, ChangeState, type NotifyChangeRequest } from '../common/gen/retrace/v1/recompute.js';
import { ShardStatus } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { codeExtension } from '../coordinator/code/code-extension.js';
import { jobsExtension } from '../coordinator/jobs/jobs-extension.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { changeIdOf } from '../coordinator/recompute/change-store.js';
import { recomputeExtension } from '../coordinator/recompute/recompute-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * NotifyChange cut short by a coordinator stop, in process on LevelDB: the states a SIGKILL
 * between its writes leaves (made by hand through the stores, in the order notify writes), then
 * a restart on the same data dir and the same report sent again, as a client whose call broke
 * does. The repeated report must record the change and, under `auto`, submit its one job: it
 * used to answer `unchanged` with no change (the record had moved before its change was
 * recorded) or with a change that no job would ever recompute.
 */

const runner: ShardRunner = {
  async run(a) {
    const started = BigInt(Date.now()) * 1_000_000n;
    const resources = { cpuTimeNs: '1', peakMemoryBytes: '1', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1' };
    const text = `${a.stepName}:${a.inputs.map((i) => Buffer.from(i.payload).toString()).join(',')}`;
    return {
      outcome: { shardId: a.shardId, startedAtNs: started.toString(), endedAtNs: (started + 1000n).toString(), nodeId: 'node-a', attempt: 1, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from(text), mediaType: 'text/plain' }], resources, error: '' },
      nodeId: 'node-a',
      attempts: 1,
      queuedMs: 0,
    };
  },
};

type Shared = CoordinatorServices & Required<Pick<CoordinatorServices, 'code' | 'pipelines' | 'recompute' | 'jobs'>>;
const dirs: string[] = [];
let tc: TestCoordinator | undefined;
afterEach(async () => {
  await tc?.stop({ keepData: true });
  tc = undefined;
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function start(dataDir: string): Promise<Shared> {
  const shared: CoordinatorServices = {};
  tc = await startTestCoordinator({
    dataDir,
    extensions: [codeExtension({ onCodeStore: (s) => (shared.code = s) }), pipelineExtension(shared, { runner }), jobsExtension(shared, { seed: 1 }), recomputeExtension(shared)],
  });
  return shared as Shared;
}

const report = (key: string, value: string): NotifyChangeRequest => ({ objectId: `record:wf/raw:${key}`, contentHash: '', payload: Buffer.from(value), mediaType: 'text/plain', noticedBy: 'client' });

describe('a NotifyChange cut short by a stop', () => {
  it('is finished by the same report sent again: the change recorded and its auto job submitted once', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'retrace-notify-crash-'));
    dirs.push(dataDir);
    let shared = await start(dataDir);
    const cv = (await shared.code.publish(Buffer.from('export default 1'), { transform: 't', requirements: undefined, sourceFile: 'x.js', bundler: 'test' })).code.codeVersion;
    await shared.pipelines.store.apply(Pipeline.fromJSON({ name: 'wf', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'a', transform: 't', codeVersion: cv, parameters: {}, inputs: ['raw'] }] }));
    const keys = ['k1', 'k2', 'k3', 'k4'];
    await shared.pipelines.runner.ingest('wf', 'raw', [keys.map((key) => ({ key, payload: Buffer.from('v1') }))], { principal: 'test' });

    // k1: stopped after the new version and the current record were written, before the change
    // (what notify's old order could leave). k2: stopped after the change was recorded too,
    // before its job. k3: after its job was stored, before the job was noted on the change.
    // k4: after the change was recorded, before the current record moved (the new order).
    const lineage = tc?.coordinator.lineage;
    let unnoted = '';
    for (const key of keys) {
      const r = report(key, 'v2');
      const objectId = r.objectId;
      const oldHash = contentHashOf(Buffer.from('v1'));
      const hash = contentHashOf(r.payload);
      const input = { kind: ChangeKind.CHANGE_KIND_OBJECT, objectId, oldHash, newHash: hash, pipeline: 'wf', source: 'raw', noticedBy: 'client' };
      await shared.pipelines.payloads.put(r.payload);
      const nowNs = String(BigInt(Date.now()) * 1_000_000n);
      await lineage?.submit([{ eventId: `version:${objectId}@${hash}`, eventTimeNs: nowNs, producer: 'retrace://coordinator/recompute', body: { $case: 'objectVersion', value: { objectId, contentHash: hash, size: '2', mediaType: 'text/plain', createdAtNs: nowNs, attributes: { change_id: changeIdOf(input), previous_hash: oldHash, noticed_by: 'client', pipeline: 'wf', dataset: 'raw', key }, facets: undefined } } }]);
      if (key !== 'k4') await shared.pipelines.store.setCurrent('wf', [{ dataset: 'raw', key, record: { objectId, contentHash: hash, size: 2, mediaType: 'text/plain', eventTimeNs: nowNs } }]);
      if (key !== 'k1') await shared.recompute.changes.record(input);
      if (key === 'k3') unnoted = (await shared.jobs.submit({ kind: 'recompute', title: 'cut short', principal: 'auto-policy', tasks: [], payload: { changeIds: [changeIdOf(input)], principal: 'auto-policy', placement: {} } })).jobId;
    }
    await tc?.stop({ keepData: true });

    shared = await start(dataDir);
    for (const key of keys) {
      const again = await shared.recompute.recomputer.notify(report(key, 'v2'), 'client');
      expect(again.unchanged, key).toBe(key !== 'k4');
      expect(again.change, key).toMatchObject({ objectId: `record:wf/raw:${key}`, policy: ChangePolicy.CHANGE_POLICY_AUTO, state: ChangeState.CHANGE_STATE_RECOMPUTE_SUBMITTED });
      expect(again.change?.jobIds, key).toHaveLength(1);
      if (key === 'k3') expect(again.change?.jobIds, key).toEqual([unnoted]);
      expect((await shared.pipelines.store.getCurrent('wf', 'raw', key))?.contentHash, key).toBe(contentHashOf(Buffer.from('v2')));
      // Reported once more: the change is done, no second job.
      const third = await shared.recompute.recomputer.notify(report(key, 'v2'), 'client');
      expect(third.change, key).toEqual(again.change);
    }
    expect(await shared.jobs.list({ kind: 'recompute' })).toHaveLength(4);
  }, 15_000);
});
