import type { TransformRequirements } from './transform.js';

/** GPUs asked for: `true` is one. */
export function gpuCount(r: Pick<TransformRequirements, 'gpu'>): number {
  return r.gpu === true ? 1 : typeof r.gpu === 'number' ? r.gpu : 0;
}

/** No requirement at all (a manifest that declared none is stored as zeros). */
export function isEmpty(r: TransformRequirements): boolean {
  return !r.cpu && !r.memoryMb && gpuCount(r) === 0 && (r.instructionSets ?? []).length === 0 && !r.networkMbps;
}

/** What a published code version's manifest declares, or undefined when nothing (a manifest stores none as zeros). */
export function declaredRequirements(code: { manifest?: { requirements?: TransformRequirements | undefined } | undefined } | undefined): TransformRequirements | undefined {
  const r = code?.manifest?.requirements;
  return r && !isEmpty(r) ? r : undefined;
}

/**
 * What a shard needs when both its transform (the code manifest, as `defineTransform` declared
 * it) and its pipeline step state requirements: the larger of each amount, every instruction set
 * of either. Either side may be absent; with one side empty the other is returned as it is.
 */
export function mergeRequirements(a: TransformRequirements | undefined, b: TransformRequirements | undefined): TransformRequirements | undefined {
  if (!a || isEmpty(a)) return b;
  if (!b || isEmpty(b)) return a;
  return {
    cpu: Math.max(a.cpu ?? 0, b.cpu ?? 0),
    memoryMb: Math.max(a.memoryMb ?? 0, b.memoryMb ?? 0),
    gpu: Math.max(gpuCount(a), gpuCount(b)),
    instructionSets: [...new Set([...(a.instructionSets ?? []), ...(b.instructionSets ?? [])])],
    networkMbps: Math.max(a.networkMbps ?? 0, b.networkMbps ?? 0),
  };
}
