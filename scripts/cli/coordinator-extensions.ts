import type { ExtensionFactory } from '../../coordinator/coordinator.js';
import { meshExtension } from '../../coordinator/mesh/mesh-extension.js';
import { codeExtension } from '../../coordinator/code/code-extension.js';

/** The features the CLI's coordinator runs besides lineage: the agents' mesh (inventory, history, forecasts). */
export function coordinatorExtensions(): ExtensionFactory[] {
  return [meshExtension(), codeExtension()];
}
