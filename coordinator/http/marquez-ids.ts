import { RETRACE_DEFAULT_NAMESPACE } from '../../common/openlineage/to-openlineage-event.js';

/**
 * Marquez node ids (`dataset:<ns>:<name>`, `job:<ns>:<name>`) for everything the store holds.
 * OpenLineage datasets and jobs are stored under exactly those ids; native objects and
 * transforms (`record:orders:1`, `aggregate-daily`) go to the `retrace` namespace, as the
 * OpenLineage export names them, so every node Marquez's API serves has an id it accepts back.
 * Where a native id and an OpenLineage one meet (`dataset:retrace:x` stored as well as `x`),
 * the OpenLineage one answers to the id.
 */
export const NATIVE_NAMESPACE = RETRACE_DEFAULT_NAMESPACE;

/** The Marquez dataset id of an object. */
export function datasetNodeId(objectId: string): string {
  return objectId.startsWith('dataset:') ? objectId : `dataset:${NATIVE_NAMESPACE}:${objectId}`;
}

/** The Marquez job id of a transform. */
export function jobNodeId(transform: string): string {
  return transform.startsWith('job:') ? transform : `job:${NATIVE_NAMESPACE}:${transform}`;
}

/** The native object or transform a Marquez id in the `retrace` namespace may stand for; undefined for others. */
export function nativeIdOf(nodeId: string): string | undefined {
  for (const kind of ['dataset', 'job']) {
    const prefix = `${kind}:${NATIVE_NAMESPACE}:`;
    if (!nodeId.startsWith(prefix)) continue;
    const id = nodeId.slice(prefix.length);
    // An id that already has the kind's prefix maps to itself, never into `retrace`.
    return id === '' || id.startsWith(`${kind}:`) ? undefined : id;
  }
  return undefined;
}

/** Marquez's RunState: NEW | RUNNING | COMPLETED | ABORTED | FAILED. */
export type MarquezRunState = 'NEW' | 'RUNNING' | 'COMPLETED' | 'ABORTED' | 'FAILED';

/**
 * The Marquez state of a run from its stored state (an OpenLineage eventType, which native runs
 * use too). As Marquez maps events: COMPLETE, FAIL and ABORT end the run, and START, RUNNING,
 * OTHER or no eventType at all leave it RUNNING (Marquez gives NEW only to runs created through
 * its own run API and never started, which OpenLineage cannot express). A state already in
 * Marquez's vocabulary stays as it is.
 */
export function marquezRunState(state: string): MarquezRunState {
  switch (state) {
    case 'COMPLETE':
    case 'COMPLETED':
      return 'COMPLETED';
    case 'FAIL':
    case 'FAILED':
      return 'FAILED';
    case 'ABORT':
    case 'ABORTED':
      return 'ABORTED';
    case 'NEW':
      return 'NEW';
    default:
      return 'RUNNING';
  }
}
