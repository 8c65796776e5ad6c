import { LineageServiceDefinition } from '../../common/gen/retrace/v1/lineage.js';
import { jobsExtension } from '../../coordinator/jobs/jobs-extension.js';
import { pipelineExtension } from '../../coordinator/pipeline/pipeline-extension.js';
import { recomputeExtension } from '../../coordinator/recompute/recompute-extension.js';
import type { CoordinatorServices } from '../../scripts/cli/coordinator-extensions.js';
import { objectEvent, ref, stepEvent } from './lineage-events.js';
import { startTestCoordinator, type TestCoordinator } from './test-coordinator.js';

/**
 * A coordinator with the pipeline, jobs and recompute extensions (`jobs: false` leaves jobs out),
 * whose lineage holds dataset:raw (content A) and step s1 (job/clean/1) that made dataset:clean
 * (content CA) from it, submitted over gRPC.
 */
export async function startRawToCleanCoordinator(shared: CoordinatorServices, options: { jobs?: boolean } = {}): Promise<TestCoordinator> {
  const tc = await startTestCoordinator({ extensions: [pipelineExtension(shared), ...(options.jobs === false ? [] : [jobsExtension(shared)]), recomputeExtension(shared)] });
  const lineage = tc.client(LineageServiceDefinition);
  for (const event of [objectEvent('v-a', 'dataset:raw', 'A'), stepEvent('s1', 'job/clean/1', [ref('dataset:raw', 'A')], [ref('dataset:clean', 'CA')])]) await lineage.submitEvent({ event });
  return tc;
}
