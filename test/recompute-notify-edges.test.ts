import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { h } from './helpers/lineage-events.js';
import { startRawToCleanCoordinator } from './helpers/recompute-coordinator.js';
import type { TestCoordinator } from './helpers/test-coordinator.js';

/**
 * A change reported by hash only has no bytes, and a recompute of it fails "content is not
 * stored: send its bytes". Sending them (the same content, now with its payload) answers
 * `unchanged`, and must still store them, or the job can never be resumed. And a dry run
 * answers what the real run would, for a change with nothing downstream too.
 */
describe('notified changes: bytes sent later, nothing downstream', () => {
  let tc: TestCoordinator;
  const shared: CoordinatorServices = {};

  beforeAll(async () => {
    tc = await startRawToCleanCoordinator(shared);
  }, 30_000);
  afterAll(async () => tc?.stop());

  const stored = async (content: string): Promise<string | undefined> => {
    try {
      const r = await tc.client(PipelineServiceDefinition).getPayload({ contentHash: h(content) });
      return r.payload.toString();
    } catch {
      return undefined;
    }
  };

  it('notify with the bytes of the version a hash-only report made current stores them', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const byHash = await recompute.notifyChange({ objectId: 'dataset:raw', contentHash: h('B'), payload: Buffer.alloc(0), mediaType: '', noticedBy: 'test' });
    expect(byHash.unchanged).toBe(false);
    expect(await stored('B')).toBeUndefined();
    const withBytes = await recompute.notifyChange({ objectId: 'dataset:raw', contentHash: '', payload: Buffer.from('B'), mediaType: '', noticedBy: 'test' });
    expect(withBytes.unchanged).toBe(true);
    expect(withBytes.change?.changeId).toBe(byHash.change?.changeId);
    expect(await stored('B')).toBe('B');
  });

  it('recompute --content of that version stores the bytes too; a dry run does not', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const byHash = await recompute.notifyChange({ objectId: 'dataset:raw', contentHash: h('C'), payload: Buffer.alloc(0), mediaType: '', noticedBy: 'test' });
    expect(byHash.unchanged).toBe(false);
    const request = (dryRun: boolean) => ({ changeIds: [], objectIds: [], newContents: [{ objectId: 'dataset:raw', payload: Buffer.from('C'), mediaType: '' }], policy: { maxAttempts: 0, concurrency: 0, targetNodeIds: [], targetLabels: {}, dryRun } });
    const dry = await recompute.recompute(request(true));
    expect(dry.changeIds).toEqual([byHash.change?.changeId]);
    expect(await stored('C')).toBeUndefined();
    const real = await recompute.recompute(request(false));
    expect(real.changeIds).toEqual([byHash.change?.changeId]);
    expect(await stored('C')).toBe('C');
  });

  it('a change with nothing downstream: the dry run refuses it as the real run does, naming why', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    // dataset:clean is an output no step reads.
    const leaf = await recompute.notifyChange({ objectId: 'dataset:clean', contentHash: h('CB'), payload: Buffer.alloc(0), mediaType: '', noticedBy: 'test' });
    const request = (dryRun: boolean) => ({ changeIds: [leaf.change?.changeId ?? ''], objectIds: [], newContents: [], policy: { maxAttempts: 0, concurrency: 0, targetNodeIds: [], targetLabels: {}, dryRun } });
    for (const dryRun of [true, false]) {
      await expect(recompute.recompute(request(dryRun))).rejects.toMatchObject({ message: expect.stringMatching(/FAILED_PRECONDITION: change_ids: no recorded step used the changed versions .*nothing to recompute/) });
    }
  });
});
