import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import { applyAndIngest, startImpactCoordinator } from './helpers/impact-runner.js';
import type { TestCoordinator } from './helpers/test-coordinator.js';

/**
 * Impact says where the allocator would place each affected step now. A transform's declared
 * requirements (defineTransform's, kept in its code manifest) count there as they do when its
 * shards are dispatched: a step whose transform needs a GPU is not "placed" on a node without one.
 */

describe('impact placement', () => {
  let tc: TestCoordinator;

  beforeAll(async () => {
    const started = await startImpactCoordinator();
    tc = started.tc;
    const code = started.code;
    const plain = await code.publish(new TextEncoder().encode('// plain'), { transform: 'plain', requirements: undefined, sourceFile: 'plain.ts', bundler: 'test' });
    const gpu = await code.publish(new TextEncoder().encode('// gpu'), { transform: 'render', requirements: { cpu: 0, memoryMb: 0, gpu: 1, instructionSets: [], networkMbps: 0 }, sourceFile: 'render.ts', bundler: 'test' });
    const pipeline = Pipeline.fromJSON({
      name: 'pics',
      sources: [{ name: 'raw', mediaType: 'text/plain' }],
      steps: [
        { name: 'cleaned', transform: 'plain', codeVersion: plain.code.codeVersion, inputs: ['raw'] },
        { name: 'rendered', transform: 'render', codeVersion: gpu.code.codeVersion, inputs: ['cleaned'] },
      ],
    });
    await applyAndIngest(tc, pipeline, [['k', 'a picture']]);
  }, 30_000);
  afterAll(async () => tc?.stop());

  it("a step whose transform declares a GPU waits for one; the step without requirements is placed", async () => {
    const impact = await tc.client(RecomputeServiceDefinition).impact({ target: { $case: 'objectId', value: 'record:pics/raw:k' }, asOfNs: '' });
    const byStep = Object.fromEntries(impact.steps.map((s) => [s.step, { node: s.placementNodeId, waiting: s.placementWaiting }]));
    expect(byStep.cleaned).toEqual({ node: 'cpu-node', waiting: '' });
    expect(byStep.rendered?.node).toBe('');
    expect(byStep.rendered?.waiting).toContain('needs gpu ≥ 1');
    expect(impact.placements).toEqual({ 'cpu-node': 1 });
  });
});
