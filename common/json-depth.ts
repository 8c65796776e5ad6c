/**
 * Where a JSON-like value nests objects and lists more than `levels` deep (the value itself being
 * the first level): the path of the first member past the limit (`path` with `.key` and `[i]`
 * appended), or undefined when it stays within. Recurses at most `levels` + 1 deep, so it is safe
 * on input nested far deeper than the stack allows.
 */
export function tooDeepAt(value: unknown, levels: number, path = ''): string | undefined {
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array) return undefined;
  if (levels === 0) return path;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const at = tooDeepAt(value[i], levels - 1, `${path}[${i}]`);
      if (at !== undefined) return at;
    }
    return undefined;
  }
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    const at = tooDeepAt((value as Record<string, unknown>)[key], levels - 1, path === '' ? key : `${path}.${key}`);
    if (at !== undefined) return at;
  }
  return undefined;
}
