/**
 * Canonical JSON: object keys sorted, no whitespace, `undefined` members dropped. Two values
 * that mean the same produce the same text, so their hashes agree.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

/** A deep copy of `value` whose object keys are in sorted order. */
export function sortKeys<T>(value: T): T {
  if (Array.isArray(value)) return value.map((v) => sortKeys(v)) as T;
  if (value !== null && typeof value === 'object' && !(value instanceof Uint8Array)) {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value as Record<string, unknown>).sort()) {
      const v = (value as Record<string, unknown>)[key];
      if (v === undefined) continue;
      // Assigning `__proto__` would set the copy's prototype, dropping the key: defined as an own property.
      if (key === '__proto__') Object.defineProperty(out, key, { value: sortKeys(v), enumerable: true, writable: true, configurable: true });
      else out[key] = sortKeys(v);
    }
    return out as T;
  }
  return value;
}
