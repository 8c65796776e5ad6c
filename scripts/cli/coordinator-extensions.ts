import type { ExtensionFactory } from '../../coordinator/coordinator.js';

/** The features the CLI's coordinator runs besides lineage (agents' mesh, replay, recompute...). */
export function coordinatorExtensions(): ExtensionFactory[] {
  return [];
}
