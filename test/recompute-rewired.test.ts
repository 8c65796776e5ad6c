import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ChangeKind, RecomputeServiceDefinition, type RecomputeRequest } from '../common/gen/retrace/v1/recompute.js';
import type { CodeStore } from '../coordinator/code/code-store.js';
import { applyAndIngest, plainPipeline, startImpactCoordinator } from './helpers/impact-runner.js';
import type { TestCoordinator } from './helpers/test-coordinator.js';

/**
 * A recompute reruns recorded executions over the inputs they used. A step rewired since it ran
 * (classify reading raw instead of scale) was recomputed over its old input: the new code's
 * output recorded as made from scale, and the current record moved to it. Now it is refused.
 */
describe('a recompute of a rewired step', () => {
  let tc: TestCoordinator;
  let code: CodeStore;

  beforeAll(async () => {
    ({ tc, code } = await startImpactCoordinator());
    const pipeline = await plainPipeline(code, 'rewired');
    await applyAndIngest(tc, pipeline, [['k1', 'r1']]);
    const v2 = await code.publish(new TextEncoder().encode('// plain v2'), { transform: 'plain', requirements: undefined, sourceFile: 'plain.ts', bundler: 'test' });
    // scale gets new code (a change whose impact reaches classify); classify now reads raw.
    const steps = pipeline.steps.map((s) => (s.name === 'scale' ? { ...s, codeVersion: v2.code.codeVersion } : { ...s, inputs: ['raw'] }));
    await tc.client(PipelineServiceDefinition).applyPipeline({ pipeline: { ...pipeline, steps } });
  }, 30_000);
  afterAll(async () => tc?.stop());

  it('is refused with FAILED_PRECONDITION naming the step, its inputs then and now, and the way out; nothing is recorded', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const changes = (await recompute.listChanges({ pipeline: 'rewired', pageSize: 0, pageToken: '' })).changes;
    const change = changes.find((c) => c.kind === ChangeKind.CHANGE_KIND_CODE_VERSION);
    expect(change).toBeDefined();
    const request = { changeIds: [change?.changeId ?? ''], objectIds: [], newContents: [] } as Partial<RecomputeRequest>;
    for (const dryRun of [true, false]) {
      await expect(recompute.recompute({ ...request, policy: { dryRun } as RecomputeRequest['policy'] })).rejects.toThrow(
        /FAILED_PRECONDITION.*change_ids: step rewired\/classify reads raw in the pipeline's current version, but its execution for key "k1" read scale: .*ingest the record again/,
      );
    }
    expect((await recompute.listChanges({ pipeline: 'rewired', pageSize: 0, pageToken: '' })).changes).toEqual(changes);
  });
});
