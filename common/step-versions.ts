import type { ObjectVersion, Step } from './gen/retrace/v1/provenance.js';

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
