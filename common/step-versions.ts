import type { ObjectRef, ObjectVersion, Step } from './gen/retrace/v1/provenance.js';

const NONE: readonly ObjectVersion[] = [];

/**
 * The object versions a step event describes along with its edges: its used_versions, then its
 * generated_versions. Each is recorded as if sent as its own object_version event, so the engine
 * writes, the verifier expects and readers fold them alike.
 */
export function describedVersions(step: Step): readonly ObjectVersion[] {
  const used = step.usedVersions?.versions ?? NONE;
  const generated = step.generatedVersions?.versions ?? NONE;
  return used.length === 0 ? generated : generated.length === 0 ? used : [...used, ...generated];
}

/**
 * What the pipeline runner and recompute write under a step's `retrace` facet. The facet is
 * stored JSON, so readers still check each field's type before trusting it.
 */
export interface RetraceStepFacet {
  pipeline?: string;
  pipelineVersion?: number;
  step?: string;
  output?: string;
  inputs?: Record<string, string>;
  outputs?: Record<string, string>;
  reproduced?: unknown;
  [k: string]: unknown;
}

/** The `retrace` facet of a step, or {} for steps recorded outside pipelines. */
export function retraceFacetOf(step: Step): RetraceStepFacet {
  const f = (step.facets as Record<string, unknown> | undefined)?.retrace;
  return typeof f === 'object' && f !== null && !Array.isArray(f) ? (f as RetraceStepFacet) : {};
}

/**
 * A step's outputs: the versions it generated, then those it reproduced exactly (a recompute
 * whose output an earlier step had made records it in its facet, `reproduced`, not as generated).
 */
export function stepOutputs(step: Step): ObjectRef[] {
  const reproduced = retraceFacetOf(step).reproduced;
  const extra = Array.isArray(reproduced)
    ? reproduced.filter((r): r is { objectId: string; contentHash: string } => typeof r === 'object' && r !== null && typeof r.objectId === 'string' && typeof r.contentHash === 'string')
    : [];
  return [...step.generated, ...extra.map((r) => ({ objectId: r.objectId, contentHash: r.contentHash, unversioned: false }))];
}

/**
 * A step's logical identity: the same pipeline step (or transform, outside pipelines) over the
 * same input objects. Its re-executions (re-ingest, recomputes) share it.
 */
export function logicalStepKey(step: Step): string {
  const f = retraceFacetOf(step);
  return JSON.stringify([f.pipeline ?? '', f.step ?? step.transform, step.used.map((u) => u.objectId).sort()]);
}
