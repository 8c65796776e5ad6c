import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { ShardStatus } from '../common/gen/retrace/v1/shard.js';
import { codeExtension } from '../coordinator/code/code-extension.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { runExamplePipeline } from '../scripts/cli/example-pipeline.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * The quick start's example publishes its transforms as `retrace publish` does: with the
 * requirements their definitions declare (cpu 0.1, 64 MiB), which placement and a replay's
 * up-front checks read from the code manifest. It published them with none.
 */
describe('the quick start example pipeline', () => {
  let tc: TestCoordinator;
  const echo: ShardRunner = {
    async run(a) {
      const now = String(BigInt(Date.now()) * 1_000_000n);
      const outcome = { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from(a.inputs[0]?.payload ?? []), mediaType: 'application/json' }], resources: undefined, error: '', attempt: 1, startedAtNs: now, endedAtNs: now, nodeId: 'node-a' };
      return { outcome, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
    },
  };

  beforeAll(async () => {
    const shared: PipelineShared = {};
    tc = await startTestCoordinator({ extensions: [codeExtension({ onCodeStore: () => {} }), pipelineExtension(shared, { runner: echo })] });
  });
  afterAll(async () => tc?.stop());

  it('publishes scale-order and classify-order with their declared requirements, and runs', async () => {
    const r = await runExamplePipeline(tc.grpcAddress, tc.token, { records: 3 });
    expect(r.accepted).toBe(3);
    const { versions } = await tc.client(CodeServiceDefinition).listCode({ transform: '', pageSize: 0, pageToken: '' });
    const byName = Object.fromEntries(versions.map((v) => [v.manifest?.transform, v.manifest?.requirements]));
    for (const name of ['scale-order', 'classify-order']) expect(byName[name]).toMatchObject({ cpu: 0.1, memoryMb: 64 });
  }, 60_000);
});
