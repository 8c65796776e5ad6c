import { NodeServiceConnectWireDefinition } from '../../common/connect-wire.js';
import type { LogFn } from '../../common/log.js';
import type { CoordinatorExtension, ExtensionFactory } from '../coordinator.js';
import { createNodeMesh, type MeshForecaster, type MeshHistoryStore, type NodeMesh, type NodeMeshOptions } from './node-mesh.js';

/** Options of the mesh as a coordinator extension. */
export interface MeshExtensionOptions {
  options?: NodeMeshOptions;
  /** For the Forecast RPC; without one it answers FAILED_PRECONDITION. */
  forecaster?: MeshForecaster<never>;
  /** Default: the mesh's own history store over `db.sublevel('history')`, compacted by the mesh. */
  history?: MeshHistoryStore;
  /** Receives the mesh once created (e.g. for the scheduler to read nodes and listen to `node:lost`). */
  onMesh?: (mesh: NodeMesh) => void;
}

/**
 * The node mesh as a coordinator extension: `new Coordinator(opts, [meshExtension(), ...])`
 * mounts NodeService behind the server's auth and error middleware, starts the mesh before the
 * server listens and stops it on shutdown. Log lines go to the coordinator's log as
 * `mesh: <event> {fields}` (debug lines are dropped).
 */
export function meshExtension(extension: MeshExtensionOptions = {}): ExtensionFactory {
  return (ctx): CoordinatorExtension => {
    const log: LogFn = (level, event, fields) => {
      if (level !== 'debug') ctx.log(`mesh: ${event}${fields ? ` ${JSON.stringify(fields)}` : ''}`);
    };
    const mesh = createNodeMesh({
      db: ctx.db,
      log,
      hasTokenNamed: (name) => ctx.hasTokenNamed(name),
      ...(extension.history ? { history: extension.history } : {}),
      ...(extension.forecaster ? { forecaster: extension.forecaster } : {}),
      ...(extension.options ? { options: extension.options } : {}),
    });
    extension.onMesh?.(mesh);
    return {
      name: 'mesh',
      services: [{ definition: NodeServiceConnectWireDefinition, implementation: mesh.implementation }],
      start: () => mesh.start(),
      stop: () => mesh.stop(),
    };
  };
}
