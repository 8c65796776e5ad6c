import type { LogFn } from '../../common/log.js';
import type { CoordinatorExtension, ExtensionFactory } from '../coordinator.js';
import type { NodeMesh } from '../mesh/node-mesh.js';
import { createDispatcher, type Dispatcher, type DispatcherOptions } from './dispatcher.js';

/** Services the scheduler extension reads and publishes (filled in by the extensions before it). */
export interface SchedulerShared {
  /** Set by `meshExtension({ onMesh })`, which must come first. */
  mesh?: NodeMesh;
  /** Set by this extension when the coordinator starts its extensions. */
  dispatcher?: Dispatcher;
}

/** Tunables passed to the dispatcher (mesh and log are the extension's). */
export type SchedulerExtensionOptions = Omit<DispatcherOptions, 'mesh' | 'log'>;

/**
 * Shard dispatch as a coordinator extension: creates the dispatcher over `shared.mesh` and
 * stores it in `shared.dispatcher` for later extensions (pipelines, replay); stops it on
 * shutdown (open shards resolve CANCELLED). Throws when no mesh was set (meshExtension missing
 * or after this one).
 */
export function schedulerExtension(shared: SchedulerShared, options: SchedulerExtensionOptions = {}): ExtensionFactory {
  return (ctx): CoordinatorExtension => {
    const mesh = shared.mesh;
    if (!mesh) throw new Error('schedulerExtension needs the mesh: put meshExtension({ onMesh }) before it');
    const log: LogFn = (level, event, fields) => {
      if (level !== 'debug') ctx.log(`scheduler: ${event}${fields ? ` ${JSON.stringify(fields)}` : ''}`);
    };
    const dispatcher = createDispatcher({ shardTimeoutMs: 60_000, ...options, mesh, log });
    shared.dispatcher = dispatcher;
    // Forecasts of free capacity subtract what assigned shards hold.
    mesh.setReservationSource((nodeId) => dispatcher.reservedOn(nodeId));
    return {
      name: 'scheduler',
      async stop() {
        dispatcher.stop();
        if (shared.dispatcher === dispatcher) delete shared.dispatcher;
      },
    };
  };
}
