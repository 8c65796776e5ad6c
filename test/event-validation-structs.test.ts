import { describe, expect, it } from 'vitest';
import { sortKeys } from '../common/canonical-json.js';
import { isCanonical, MAX_STRUCT_DEPTH, normalizeEventChecked } from '../common/event-validation.js';
import { tooDeepAt } from '../common/json-depth.js';
import { createRng } from '../common/random.js';
import { stepEvent } from './helpers/lineage-events.js';

/** What normalising a step's parameters did when depth and key order were two separate walks. */
function expected(parameters: Record<string, unknown>): { error: string } | { same: boolean; value: unknown } {
  const deep = tooDeepAt(parameters, MAX_STRUCT_DEPTH, 'events[0].step.parameters');
  if (deep !== undefined) return { error: `${deep}: nested more than ${MAX_STRUCT_DEPTH} levels of objects and lists deep` };
  return isCanonical(parameters) ? { same: true, value: parameters } : { same: false, value: sortKeys(parameters) };
}

describe('Struct fields: depth and key order', () => {
  it('refuses, keeps or sorts a Struct as the separate depth and order checks did', () => {
    const r = createRng(11);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
    const make = (depth: number, sorted: boolean): unknown => {
      const kind = r();
      if (depth <= 1 || kind < 0.2) return r() < 0.03 ? undefined : pick([1, 'x', null, true]);
      if (kind < 0.45) return Array.from({ length: 1 + Math.floor(r() * 2) }, () => make(depth - 1, sorted));
      const keys = Array.from({ length: 1 + Math.floor(r() * 2) }, () => pick(['a', 'b', 'c', 'deep', 'Z']));
      const unique = [...new Set(keys)];
      if (sorted) unique.sort();
      return Object.fromEntries(unique.map((k) => [k, make(depth - 1, sorted)]));
    };
    let kept = 0;
    let copied = 0;
    let refused = 0;
    for (let i = 0; i < 3000; i++) {
      const depth = MAX_STRUCT_DEPTH - 12 + Math.floor(r() * 12);
      // Nested along one chain to reach the limit, with random members beside it.
      let parameters: Record<string, unknown> = { leaf: make(3, r() < 0.9) };
      for (let d = 1; d < depth; d++) parameters = r() < 0.2 ? { a: [parameters], b: make(2, r() < 0.9) } : { deep: parameters, ...(r() < 0.3 ? { e: make(2, r() < 0.9) } : {}) };
      const want = expected(parameters);
      let got: { error: string } | { same: boolean; value: unknown };
      try {
        const n = normalizeEventChecked(stepEvent('e', 's', [], [], { parameters }), 'events[0]', '1');
        const value = n.event.body?.$case === 'step' ? n.event.body.value.parameters : undefined;
        got = { same: value === parameters && !n.changed, value };
      } catch (err) {
        got = { error: (err as Error).message };
      }
      if ('error' in want) refused++;
      else if (want.same) kept++;
      else copied++;
      expect(got).toStrictEqual(want);
    }
    expect(Math.min(kept, copied, refused), `kept ${kept}, copied ${copied}, refused ${refused}`).toBeGreaterThan(200);
  });
});
