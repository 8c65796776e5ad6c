import { NodeInfo, NodeState } from '../../common/gen/retrace/v1/node.js';
import { Pipeline, PipelineServiceDefinition, type IngestRequest } from '../../common/gen/retrace/v1/pipeline.js';
import { ShardStatus } from '../../common/gen/retrace/v1/shard.js';
import { codeExtension } from '../../coordinator/code/code-extension.js';
import type { CodeStore } from '../../coordinator/code/code-store.js';
import { pipelineExtension } from '../../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../../coordinator/pipeline/pipeline-runner.js';
import { recomputeExtension } from '../../coordinator/recompute/recompute-extension.js';
import type { CoordinatorServices } from '../../scripts/cli/coordinator-extensions.js';
import { startTestCoordinator, type TestCoordinator } from './test-coordinator.js';

/**
 * Runs every shard in-process on "cpu-node": its output is `step(input)`, so each record's
 * outputs differ by step and input, the shape the impact tests trace downstream.
 */
export const impactRunner: ShardRunner = {
  async run(assignment) {
    const started = BigInt(Date.now()) * 1_000_000n;
    const resources = { cpuTimeNs: '1000', peakMemoryBytes: '4096', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1000' };
    const payload = Buffer.from(`${assignment.stepName}(${new TextDecoder().decode(assignment.inputs[0]?.payload)})`);
    const outcome = { shardId: assignment.shardId, startedAtNs: started.toString(), endedAtNs: (started + 1000n).toString(), nodeId: 'cpu-node', attempt: 1, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload, mediaType: 'text/plain' }], resources, error: '' };
    return { outcome, nodeId: 'cpu-node', attempts: 1, queuedMs: 0, host: 'host-a' };
  },
};

/**
 * A real coordinator with the code, pipeline and recompute services, its pipelines run by
 * impactRunner, beside a mesh of one READY node "cpu-node" (where the allocator places them).
 */
export async function startImpactCoordinator(): Promise<{ tc: TestCoordinator; shared: CoordinatorServices; code: CodeStore }> {
  const shared: CoordinatorServices = {};
  shared.mesh = { nodes: () => [NodeInfo.fromPartial({ nodeId: 'cpu-node', state: NodeState.NODE_STATE_READY })] } as unknown as CoordinatorServices['mesh'];
  const tc = await startTestCoordinator({ extensions: [codeExtension({ onCodeStore: (s) => (shared.code = s) }), pipelineExtension(shared, { runner: impactRunner }), recomputeExtension(shared)] });
  return { tc, shared, code: shared.code as CodeStore };
}

/** Applies `pipeline` and ingests `records` (key, payload) into its source `raw` with one Ingest call. */
export async function applyAndIngest(tc: TestCoordinator, pipeline: Pipeline, records: readonly (readonly [string, string])[]): Promise<void> {
  const pipelines = tc.client(PipelineServiceDefinition);
  await pipelines.applyPipeline({ pipeline });
  await pipelines.ingest(
    (async function* (): AsyncIterable<IngestRequest> {
      yield { pipeline: pipeline.name, source: 'raw', records: records.map(([key, payload]) => ({ key, eventTimeNs: '0', payload: Buffer.from(payload), mediaType: '' })) };
    })(),
  );
}

/** Publishes transform "plain" and gives pipeline `name`: source raw -> scale -> classify, both steps "plain". */
export async function plainPipeline(code: CodeStore, name: string): Promise<Pipeline> {
  const plain = await code.publish(new TextEncoder().encode('// plain'), { transform: 'plain', requirements: undefined, sourceFile: 'plain.ts', bundler: 'test' });
  return Pipeline.fromJSON({
    name,
    sources: [{ name: 'raw', mediaType: 'text/plain' }],
    steps: [
      { name: 'scale', transform: 'plain', codeVersion: plain.code.codeVersion, inputs: ['raw'] },
      { name: 'classify', transform: 'plain', codeVersion: plain.code.codeVersion, inputs: ['scale'] },
    ],
  });
}
