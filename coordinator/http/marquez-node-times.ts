import type { LineageApi } from '../lineage/lineage-api.js';

/** A node of Marquez's lineage graph as the times are added to it: its id, type and data. */
export interface TimedNode {
  id: string;
  type: 'DATASET' | 'JOB';
  data: Record<string, unknown>;
}

/**
 * Adds to a lineage graph's nodes the times (and a job's parentJobName) their own answers give
 * (`GET .../datasets/{name}`, `GET .../jobs/{name}`), which Marquez's node data always carries.
 */
export type NodeTimes = (nodes: readonly TimedNode[]) => Promise<void>;

const registry = new WeakMap<LineageApi, NodeTimes>();

/**
 * Registers how the Marquez read routes over `lineage` date datasets and jobs, for the lineage
 * graph's nodes (openlineage-routes.ts serves the graph; marquez-routes.ts knows the times).
 */
export function registerNodeTimes(lineage: LineageApi, times: NodeTimes): void {
  registry.set(lineage, times);
}

/** The dating registered for `lineage`, if Marquez's read routes are served over it. */
export function nodeTimesOf(lineage: LineageApi): NodeTimes | undefined {
  return registry.get(lineage);
}
