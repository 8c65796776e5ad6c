import { describe, expect, it } from 'vitest';
import { createRng } from '../common/random.js';
import { KeyTable } from '../coordinator/lineage/key-table.js';

describe('KeyTable', () => {
  it('interns keys as ids in insertion order and reads them back', () => {
    const t = new KeyTable();
    expect(t.get('a')).toBeUndefined();
    expect(t.add('version:orders:1@sha256:ab')).toBe(0);
    expect(t.add('')).toBe(1);
    expect(t.add('naïve ☃ 𝄞')).toBe(2);
    expect(t.get('version:orders:1@sha256:ab')).toBe(0);
    expect(t.get('')).toBe(1);
    expect(t.keyOf(2)).toBe('naïve ☃ 𝄞');
    expect(t.has('naïve ☃')).toBe(false);
    expect(t.size).toBe(3);
    expect(() => t.keyOf(3)).toThrow(RangeError);
    const long = 'x'.repeat(10_000) + 'y';
    expect(t.add(long)).toBe(3);
    expect(t.keyOf(3)).toBe(long);
    // One char above U+00FF makes a key wide (two bytes a char); equal chars below it do not match it.
    const longWide = 'ÿ'.repeat(5_000) + '☃';
    expect(t.add(longWide)).toBe(4);
    expect(t.keyOf(4)).toBe(longWide);
    expect(t.get('ÿ'.repeat(5_000) + 'ÿ')).toBeUndefined();
    expect(t.get(longWide)).toBe(4);
  });

  it('tests a prefix of a key from any char, narrow or wide, as startsWith on the key', () => {
    const t = new KeyTable();
    const keys = ['object:record:orders:1', 'object:naïve ☃', 'object:', '', 'object:\ud800x', 'object:ÿ'];
    keys.forEach((k) => t.add(k));
    const prefixes = ['', 'o', 'object:', 'object:record:', 'object:naïve', 'naïve ☃', 'naïve ☃!', '☃', 'ÿ', '\ud800', 'record:orders:1', 'record:orders:12'];
    keys.forEach((k, id) => {
      for (const from of [0, 'object:'.length]) for (const p of prefixes) expect(t.startsWith(id, p, from), `${k} ${from} ${p}`).toBe(k.startsWith(p, from) && k.length >= from);
    });
    expect(() => t.startsWith(keys.length, '')).toThrow(RangeError);
  });

  it('keeps keys apart that one byte encoding would merge: lone surrogates, Latin-1 and ASCII', () => {
    const t = new KeyTable();
    // UTF-8 writes every lone surrogate as U+FFFD; each is its own key here.
    const keys = ['a\uD800', 'a\uD801', 'a\uFFFD', 'a\uDC00b', 'café', 'cafe', 'caf\u00e9', 'x'.repeat(3), 'xx\u00ff', 'xx\u017f'];
    const ids = keys.map((k) => t.get(k) ?? t.add(k));
    // 'café' and 'caf\u00e9' are the same string.
    expect(ids).toEqual([0, 1, 2, 3, 4, 5, 4, 6, 7, 8]);
    keys.forEach((k, i) => {
      expect(t.get(k)).toBe(ids[i]);
      expect(t.keyOf(ids[i] as number)).toBe(k);
    });
    // A concatenated (not yet flattened) key finds the flat one, and the other way round.
    const part = 'version:orders:';
    expect(t.add(`${part}${'7'}`)).toBe(9);
    expect(t.get('version:orders:7')).toBe(9);
    expect(t.get(part + String(7))).toBe(9);
  });

  it('adds a key looked up just before, or earlier with other lookups and changes in between', () => {
    const t = new KeyTable();
    expect(t.get('step:a')).toBeUndefined();
    expect(t.add('step:a')).toBe(0);
    // A lookup of another key stages that one: adding the first must not take its bytes.
    expect(t.get('version:b@sha256:1')).toBeUndefined();
    expect(t.get('object:b')).toBeUndefined();
    expect(t.add('object:b')).toBe(1);
    expect(t.add('version:b@sha256:1')).toBe(2);
    // Truncation, a hit, an equal string built apart, a key that grows the arena in between.
    expect(t.get('run:c')).toBeUndefined();
    t.truncate(2);
    expect(t.add('run:c')).toBe(2);
    expect(t.get('run:c')).toBe(2);
    expect(t.get(`tr${'ansform:d'}`)).toBeUndefined();
    expect(t.add('transform:d')).toBe(3);
    expect(t.get('e')).toBeUndefined();
    expect(t.get('x'.repeat(200_000))).toBeUndefined();
    expect(t.add('e')).toBe(4);
    expect(t.get('ü☃')).toBeUndefined();
    expect(t.add('ü☃')).toBe(5);
    // The version was truncated away; every other key reads back as itself.
    const keys = ['step:a', 'object:b', 'run:c', 'transform:d', 'e', 'ü☃'];
    expect(keys.map((k) => t.get(k))).toEqual([0, 1, 2, 3, 4, 5]);
    expect(keys.map((_, id) => t.keyOf(id))).toEqual(keys);
    expect(t.get('version:b@sha256:1')).toBeUndefined();
  });

  it('agrees with a Map through growth and last-in-first-out truncation (seeded random operations)', () => {
    for (const seed of [1, 2, 3]) {
      const rng = createRng(seed);
      const t = new KeyTable();
      const keys: string[] = [];
      const ids = new Map<string, number>();
      for (let op = 0; op < 20_000; op++) {
        const r = rng();
        if (r < 0.97 || keys.length === 0) {
          // Short keys over a small alphabet, so lookups hit, miss and share hash slots often.
          const n = Math.floor(rng() * 40_000);
          const key = n % 7 === 0 ? `k☃${n.toString(36)}` : `k${n.toString(36)}`;
          const known = ids.get(key);
          expect(t.get(key)).toBe(known);
          if (known === undefined) {
            expect(t.add(key)).toBe(keys.length);
            ids.set(key, keys.length);
            keys.push(key);
          }
        } else {
          const size = Math.max(0, keys.length - 1 - Math.floor(rng() * 50));
          t.truncate(size);
          for (const k of keys.splice(size)) ids.delete(k);
          expect(t.size).toBe(keys.length);
        }
      }
      for (const [k, id] of ids) expect(t.get(k)).toBe(id);
      for (let id = 0; id < keys.length; id += 97) expect(t.keyOf(id)).toBe(keys[id]);
      // Removed keys are gone and can come back with new ids.
      const gone = `k${(40_000).toString(36)}-gone`;
      expect(t.get(gone)).toBeUndefined();
      expect(t.add(gone)).toBe(keys.length);
    }
  });
});
