import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import type { ExtensionFactory } from '../../coordinator/coordinator.js';
import type { CoordinatorOptions } from '../../coordinator/coordinator-options.js';
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
import { recomputeExtension, type RecomputeExtensionOptions, type RecomputeHandles } from '../../coordinator/recompute/recompute-extension.js';
import { durationFlagMs, flag, flagAll, hasFlag, intFlag, UsageError, type ParsedArgs } from './command.js';

/** Settings of the coordinator's features, as `coordinatorFlags` reads them. */
export interface CoordinatorFeatureOptions {
  pipelines?: PipelineExtensionOptions;
  recompute?: RecomputeExtensionOptions;
}

/** Usage lines of the flags `coordinatorFlags` reads (`retrace coordinator`, `retrace start`). */
export const COORDINATOR_FEATURE_USAGE = `  --payload-retention 30d: delete stored payloads (source records, step outputs) not stored, reused
  or found in use for that long (swept hourly, or every retention period if shorter; see retrace
  payloads sweep); current records and every object's newest version are kept. Default: keep all.
  --watch-root DIR (repeatable): a directory retrace watch may read files in (none: watching is off;
  never the data dir).`;

/** The features' settings from the command line; usage errors name the flag. */
export function coordinatorFlags(args: ParsedArgs): CoordinatorFeatureOptions {
  const payloadRetentionMs = durationFlagMs(args, 'payload-retention', { minMs: 1000 });
  return {
    ...(payloadRetentionMs === undefined ? {} : { pipelines: { payloadRetentionMs } }),
    recompute: {
      watchRoots: flagAll(args, 'watch-root').map((d) => {
        if (!statSync(d, { throwIfNoEntry: false })?.isDirectory()) throw new UsageError(`--watch-root: ${JSON.stringify(d)} is not a directory`);
        return resolve(d);
      }),
    },
  };
}

/** Usage line of `--publish-receive-timeout`, which `retrace coordinator` and `retrace start` both take. */
export const PUBLISH_RECEIVE_TIMEOUT_USAGE = `  --publish-receive-timeout DURATION: how long a PublishCode call let into the publish budget may take
  to deliver its bundle (default 5m, at least 1s); a slower one ends DEADLINE_EXCEEDED.`;

/**
 * The coordinator's own settings (data dir, publish deadline) that `retrace coordinator` and
 * `retrace start` both take; usage errors name the flag.
 */
export function coordinatorOptionFlags(args: ParsedArgs): Pick<CoordinatorOptions, 'acceptLedgerLoss' | 'dbWriteBufferMiB' | 'publishReceiveTimeoutMs'> {
  const bufferMiB = flag(args, 'db-write-buffer-mib') === undefined ? undefined : intFlag(args, 'db-write-buffer-mib', 0);
  // The coordinator's own check names its option (dbWriteBufferMiB); on the command line the flag is what was wrong.
  if (bufferMiB !== undefined && (bufferMiB < 1 || bufferMiB > 1024)) throw new UsageError(`--db-write-buffer-mib: expected a whole number of MiB from 1 to 1024, got ${bufferMiB}`);
  // Less than a second would cut off every publish but the smallest; the coordinator takes whole ms.
  const publishMs = durationFlagMs(args, 'publish-receive-timeout', { minMs: 1000 });
  return {
    acceptLedgerLoss: hasFlag(args, 'accept-ledger-loss'),
    dbWriteBufferMiB: bufferMiB,
    ...(publishMs === undefined ? {} : { publishReceiveTimeoutMs: Math.round(publishMs) }),
  };
}

/** What the coordinator's extensions publish for the ones after them (pipelines, replay). */
export interface CoordinatorServices {
  mesh?: NodeMesh;
  code?: CodeStore;
  dispatcher?: Dispatcher;
  /** A node's forecast headroom as the allocator ranks by it (set by schedulerExtension). */
  headroom?: SchedulerShared['headroom'];
  /** Why no READY node could run a pipeline step now (set by schedulerExtension). */
  unmetRequirements?: SchedulerShared['unmetRequirements'];
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
 * coordinator has started its extensions; `options` carries the features' settings.
 */
export function coordinatorExtensions(shared: CoordinatorServices = {}, options: CoordinatorFeatureOptions = {}): ExtensionFactory[] {
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
    recomputeExtension(shared, options.recompute),
  ];
}
