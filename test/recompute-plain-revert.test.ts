import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LineageServiceDefinition } from '../common/gen/retrace/v1/lineage.js';
import { RecomputeServiceDefinition, type NotifyChangeResponse } from '../common/gen/retrace/v1/recompute.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { h, objectEvent } from './helpers/lineage-events.js';
import { startRawToCleanCoordinator } from './helpers/recompute-coordinator.js';
import type { TestCoordinator } from './helpers/test-coordinator.js';

/**
 * Objects that are not pipeline records (datasets an OpenLineage or gRPC producer reports) have no
 * current record: their content now is what the newest of their reported versions and notified
 * changes says. A revert (A→B, B→A) leaves the newest version first seen at B although the object
 * is back at A, so the same change made again (A→B) must still be a change.
 */
describe('changes of an object that is not a pipeline record', () => {
  let tc: TestCoordinator;
  const shared: CoordinatorServices = {};

  beforeAll(async () => {
    tc = await startRawToCleanCoordinator(shared, { jobs: false });
  }, 30_000);
  afterAll(async () => tc?.stop());

  const notify = (content: string): Promise<NotifyChangeResponse> =>
    tc.client(RecomputeServiceDefinition).notifyChange({ objectId: 'dataset:raw', contentHash: h(content), payload: Buffer.alloc(0), mediaType: '', noticedBy: 'test' });
  const objectRoot = async (): Promise<string | undefined> => {
    const impact = await tc.client(RecomputeServiceDefinition).impact({ target: { $case: 'objectId', value: 'dataset:raw' }, asOfNs: '' });
    return impact.roots[0];
  };

  it('A→B, B→A, A→B: three changes, each from the content the object was at; a repeat is unchanged', async () => {
    const first = await notify('B');
    expect(first.unchanged).toBe(false);
    expect([first.change?.oldHash, first.change?.newHash]).toEqual([h('A'), h('B')]);
    const back = await notify('A');
    expect(back.unchanged).toBe(false);
    expect([back.change?.oldHash, back.change?.newHash]).toEqual([h('B'), h('A')]);
    // Impact of the object walks from the content it is at now.
    expect(await objectRoot()).toContain(h('A'));
    const again = await notify('B');
    expect(again.unchanged).toBe(false);
    expect([again.change?.oldHash, again.change?.newHash]).toEqual([h('A'), h('B')]);
    expect(new Set([first.change?.changeId, back.change?.changeId, again.change?.changeId]).size).toBe(3);
    const repeat = await notify('B');
    expect(repeat.unchanged).toBe(true);
    expect(repeat.change?.changeId).toBe(again.change?.changeId);
  });

  it('a version a producer reports after the last change is the content now', async () => {
    await tc.client(LineageServiceDefinition).submitEvent({ event: objectEvent('v-c', 'dataset:raw', 'C', '5000') });
    const next = await notify('D');
    expect([next.change?.oldHash, next.change?.newHash]).toEqual([h('C'), h('D')]);
  });
});
