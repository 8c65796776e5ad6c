import { describe, expect, it } from 'vitest';
import { limitRows, renderTable } from '../scripts/cli/format.js';

describe('renderTable', () => {
  it('aligns columns to the widest cell', () => {
    expect(renderTable(['a', 'bb'], [['xyz', 1], [null, 'longer']])).toBe('a    bb\n---  ------\nxyz  1\n     longer\n');
  });

  it('renders 200,000 rows (a recompute job of 200,000 tasks) without overflowing the stack', () => {
    // The widths were Math.max(...every row's cell): past about 120,000 rows, RangeError.
    const rows = Array.from({ length: 200_000 }, (_, i) => [`t${i}`, 'SUCCEEDED']);
    const text = renderTable(['task', 'state'], rows);
    const lines = text.split('\n');
    expect(lines).toHaveLength(200_003);
    expect(lines[1]).toBe('-------  ---------');
    expect(lines[200_001]).toBe('t199999  SUCCEEDED');
  });
});

describe('limitRows', () => {
  const words = { noun: 'steps', notable: 'not matched', how: '--limit N, 0 for all' };
  const rows = Array.from({ length: 10 }, (_, i) => ({ i, ok: i !== 7 && i !== 9 }));

  it('keeps the rows that are not ok first, then the others, in their order', () => {
    const r = limitRows(rows, 4, (x) => !x.ok, words);
    expect(r.rows.map((x) => x.i)).toEqual([0, 1, 7, 9]);
    expect(r.footer).toBe('4 of 10 steps shown (all 2 not matched among them; --limit N, 0 for all)\n');
  });

  it('says how many of the rows that are not ok it left out', () => {
    const r = limitRows(rows, 1, (x) => !x.ok, words);
    expect(r.rows.map((x) => x.i)).toEqual([7]);
    expect(r.footer).toBe('1 of 10 steps shown (1 of 2 not matched among them; --limit N, 0 for all)\n');
  });

  it('shows all with limit 0 or rows within the limit, and says nothing', () => {
    expect(limitRows(rows, 0, (x) => !x.ok, words)).toEqual({ rows, footer: '' });
    expect(limitRows(rows, 10, (x) => !x.ok, words)).toEqual({ rows, footer: '' });
  });
});
