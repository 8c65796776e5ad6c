import { describe, expect, it } from 'vitest';
import { renderTable } from '../scripts/cli/format.js';

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
