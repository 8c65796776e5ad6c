import type { ExtensionFactory } from '../../coordinator/coordinator.js';
import type { CodeStore } from '../../coordinator/code/code-store.js';
import { meshExtension } from '../../coordinator/mesh/mesh-extension.js';
import { codeExtension } from '../../coordinator/code/code-extension.js';
import type { NodeMesh } from '../../coordinator/mesh/node-mesh.js';
import type { Dispatcher } from '../../coordinator/scheduler/dispatcher.js';
import { schedulerExtension, type SchedulerShared } from '../../coordinator/scheduler/scheduler-extension.js';
import { pipelineExtension, type PipelineExtensionOptions, type PipelineHandles } from '../../coordinator/pipeline/pipeline-extension.js';
import { replayExtension } from '../../coordinator/replay/replay-extension.js';
import type { ReplayEngine } from '../../coordinator/replay/replay-engine.js';
import { jobsExtension } from '../../coordinator/jobs/jobs-extension.js';
import type { JobManager } from '../../coordinator/jobs/job-manager.js';
import { recomputeExtension, type RecomputeHandles } from '../../coordinator/recompute/recompute-extension.js';

/** What the coordinator's extensions publish for the ones after them (pipelines, replay). */
export interface CoordinatorServices {
  mesh?: NodeMesh;
  code?: CodeStore;
  dispatcher?: Dispatcher;
  /** A node's forecast headroom as the allocator ranks by it (set by schedulerExtension). */
  headroom?: SchedulerShared['headroom'];
  /** Pipeline definitions/versions and payloads (set by pipelineExtension). */
  pipelines?: PipelineHandles;
  /** The replay engine (set by replayExtension). */
  replay?: ReplayEngine;
  /** The job orchestrator (set by jobsExtension); recompute registers its executor here. */
  jobs?: JobManager;
  /** Change detection, impact and recompute (set by recomputeExtension). */
  recompute?: RecomputeHandles;
}

/**
 * The features the CLI's coordinator runs besides lineage: the agents' mesh (inventory, history,
 * forecasts), published code, shard dispatch, pipelines and replay. Pass `shared` to read the services once the
 * coordinator has started its extensions; `options.pipelines` sets the payload retention.
 */
export function coordinatorExtensions(shared: CoordinatorServices = {}, options: { pipelines?: PipelineExtensionOptions } = {}): ExtensionFactory[] {
  return [
    meshExtension({ onMesh: (m) => (shared.mesh = m) }),
    codeExtension({
      onCodeStore: (s) => (shared.code = s),
      onPublished: async (code, principal) => shared.recompute?.recomputer.onCodePublished(code, principal),
    }),
    schedulerExtension(shared),
    pipelineExtension(shared, options.pipelines),
    jobsExtension(shared),
    replayExtension(shared),
    recomputeExtension(shared),
  ];
}
