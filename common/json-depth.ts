/**
 * Where a JSON-like value nests objects and lists more than `levels` deep (the value itself being
 * the first level): the path of the first member past the limit (`path` with `.key` and `[i]`
 * appended), or undefined when it stays within. Recurses at most `levels` + 1 deep, so it is safe
 * on input nested far deeper than the stack allows. It runs on every event's facets and
 * parameters, so the path is spelled out only when there is one to report.
 */
export function tooDeepAt(value: unknown, levels: number, path = ''): string | undefined {
  const trail: (string | number)[] = [];
  if (!deeper(value, levels, trail)) return undefined;
  let out = path;
  for (let i = trail.length - 1; i >= 0; i--) {
    const step = trail[i] as string | number;
    out = typeof step === 'number' ? `${out}[${step}]` : out === '' ? step : `${out}.${step}`;
  }
  return out;
}

/** True when `value` nests past `levels`; `trail` then holds the way down, innermost first. */
function deeper(value: unknown, levels: number, trail: (string | number)[]): boolean {
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array) return false;
  if (levels === 0) return true;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      if (deeper(value[i], levels - 1, trail)) {
        trail.push(i);
        return true;
      }
    }
    return false;
  }
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    if (deeper((value as Record<string, unknown>)[key], levels - 1, trail)) {
      trail.push(key);
      return true;
    }
  }
  return false;
}
