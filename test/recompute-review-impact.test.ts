import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { contentHashOf } from '../common/hash.js';
import { collectAffected, toImpactResponse } from '../coordinator/recompute/impact-analysis.js';
import { twoRecordPipelineEvents } from './helpers/lineage-events.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

// raw:a (v1) → X → X:a → Y → Y:a and raw:b → X → X:b → Y → Y:b at 2 s; raw:a v2 re-ran X and Y at 5 s,
// so X:a and Y:a each have a superseded version (xa1, ya1) and a current one (xa2, ya2).
describe('impact objects (review)', () => {
  let tc: TestCoordinator;

  beforeAll(async () => {
    tc = await startTestCoordinator();
    await tc.coordinator.lineage.submit(twoRecordPipelineEvents());
  });
  afterAll(async () => tc?.stop());

  it('a step change lists the outputs of the executions it reruns, not the versions superseded ones made', async () => {
    const g = await collectAffected(tc.coordinator.lineage, [{ kind: 'pipelineStep', pipeline: 'p', step: 'X', transform: 'upper' }]);
    expect(g.nodes.map((n) => n.step.stepId).sort()).toEqual(['p/X/a2', 'p/X/b1', 'p/Y/a2', 'p/Y/b1']);
    // Before: xa1 and ya1 (made by p/X/a1 and p/Y/a1, which the re-ingest superseded) were listed too: 4 steps, 6 objects.
    expect(g.objects.map((o) => [o.objectId, o.contentHash, o.depth])).toEqual([
      ['record:p/X:a', contentHashOf('xa2'), 2],
      ['record:p/X:b', contentHashOf('xb1'), 2],
      ['record:p/Y:a', contentHashOf('ya2'), 3],
      ['record:p/Y:b', contentHashOf('yb1'), 3],
    ]);
    expect(await toImpactResponse(g, '0')).toMatchObject({ stepCount: 4, objectCount: 4 });
  });

  it('every object listed is an output of a listed step', async () => {
    // Every object listed is an output of a listed step, one each (the steps here have one output).
    const first = await collectAffected(tc.coordinator.lineage, [{ kind: 'version', objectId: 'record:p/raw:a', oldHash: contentHashOf('a1') }]);
    const outputs = first.nodes.flatMap((n) => n.outputs.map((o) => `${o.objectId}@${o.contentHash}`)).sort();
    expect(first.objects.map((o) => `${o.objectId}@${o.contentHash}`).sort()).toEqual(outputs);
    expect(first.objects).toHaveLength(first.nodes.length);
  });
});
