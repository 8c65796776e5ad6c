/**
 * At most `limit` of `rows` (0: all), in their order: the rows `notable` marks (failures, steps
 * waiting for a node) first, the rest filling what is left. What a long CLI table shows and what
 * a cut answer keeps (ImpactRequest.step_limit) are chosen the same way, so they agree.
 */
export function keptRows<T>(rows: readonly T[], limit: number, notable: (row: T) => boolean): T[] {
  if (limit === 0 || rows.length <= limit) return [...rows];
  const keep = new Uint8Array(rows.length);
  let kept = 0;
  for (let i = 0; i < rows.length && kept < limit; i++) {
    if (notable(rows[i] as T)) {
      keep[i] = 1;
      kept++;
    }
  }
  for (let i = 0; i < rows.length && kept < limit; i++) {
    if (keep[i] === 0) {
      keep[i] = 1;
      kept++;
    }
  }
  return rows.filter((_, i) => keep[i] === 1);
}
