import { NodeKind, type NodeRef } from '../../common/gen/retrace/v1/lineage.js';
import { parseNodeKey } from '../../common/lineage-keys.js';
import { keptRows } from '../../common/row-limit.js';

/** Renders rows as an aligned text table with a header; cells are stringified. */
export function renderTable(headers: readonly string[], rows: readonly (readonly unknown[])[]): string {
  const cells = rows.map((r) => r.map((c) => (c === undefined || c === null ? '' : String(c))));
  // A loop, not Math.max(...cells): past about 120,000 rows (`jobs show` of a recompute over
  // 150,000 records) the spread overflowed the call stack and the command printed only an error.
  const widths = headers.map((h) => h.length);
  for (const r of cells) for (let i = 0; i < widths.length; i++) widths[i] = Math.max(widths[i] as number, (r[i] ?? '').length);
  const line = (r: readonly string[]): string => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n') + '\n';
}

/** Pretty JSON for `--json` output (bigint-safe). */
export function toJson(value: unknown): string {
  return `${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`;
}

/** Shortens "sha256:<64 hex>" to "sha256:<12 hex>…" for tables. */
export function shortHash(hash: string): string {
  return hash.startsWith('sha256:') && hash.length > 19 ? `${hash.slice(0, 19)}…` : hash;
}

/**
 * A lineage node's lines in a drawing: a step's transform (`label`) and id, an object version's
 * id and short hash, an object's id; any other key as it is.
 */
export function nodeLines(key: string, label = ''): string[] {
  let ref: NodeRef;
  try {
    ref = parseNodeKey(key);
  } catch {
    return [key];
  }
  switch (ref.kind) {
    case NodeKind.NODE_KIND_STEP:
      return [label || 'step', ref.id];
    case NodeKind.NODE_KIND_OBJECT_VERSION:
      return [ref.id, `@${shortHash(ref.contentHash)}`];
    case NodeKind.NODE_KIND_OBJECT:
      return [ref.id, 'object'];
    default:
      return [key];
  }
}

/**
 * Off a terminal, where a bar is not redrawn in place: whether to write it now as a line of its
 * own, at most every `everyMs` and only when `state` moved since the last line written, so a long
 * job's log shows it advancing without repeating itself.
 */
export function lineThrottle(everyMs: number, now: () => number = Date.now): (state: string) => boolean {
  let atMs = now();
  let last: string | undefined;
  return (state) => {
    if (state === last || now() - atMs < everyMs) return false;
    atMs = now();
    last = state;
    return true;
  };
}

/**
 * lineThrottle for a watch whose updates may stop for long (a replay waiting for a node, a job's
 * slow task): a line offered sooner than `everyMs` after the last one written is held and written
 * once that time is up, unless a newer one replaced it or its `state` is the one last written.
 * Dropped instead, the last change before a wait stayed out of the log for as long as it waited.
 * `close()` drops what is held (the caller writes its final line itself).
 */
export function heldLines(everyMs: number, write: (line: string) => void, now: () => number = Date.now): { offer(state: string, line: string): void; close(): void } {
  let atMs = now();
  let last: string | undefined;
  let held: { state: string; line: string } | undefined;
  let timer: NodeJS.Timeout | undefined;
  const emit = (state: string, line: string): void => {
    atMs = now();
    last = state;
    held = undefined;
    write(line);
  };
  return {
    offer(state, line) {
      if (state === last) {
        held = undefined;
        return;
      }
      const waitMs = atMs + everyMs - now();
      if (waitMs <= 0) {
        emit(state, line);
        return;
      }
      held = { state, line };
      timer ??= setTimeout(() => {
        timer = undefined;
        if (held) emit(held.state, held.line);
      }, waitMs);
    },
    close() {
      clearTimeout(timer);
      timer = undefined;
      held = undefined;
    },
  };
}

/** A one-line progress bar: "[#####.....] 50% label". */
export function progressBar(done: number, total: number, width = 30, label = ''): string {
  const frac = total <= 0 ? 1 : Math.min(1, done / total);
  const filled = Math.round(frac * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${Math.round(frac * 100)}% ${label}`.trimEnd();
}

/** Rows a long table prints by default (`--limit`, 0 for all), as `lineage trace` does. */
export const DEFAULT_TABLE_LIMIT = 1000;

/**
 * At most `limit` of `rows` (0: all), for a table that grows with the data (a replay's steps, a
 * job's tasks): the rows `notable` marks (failures, mismatches) are kept first, the rest fill
 * what is left, and the rows come out in their order. `footer` says what was left out and how to
 * see it ('' when nothing was), e.g. `1000 of 30000 steps shown (all 2 not matched among them;
 * --limit N, 0 for all)`: 30,000 rows flooded the terminal, and a failed row among them was easy to miss.
 */
export function limitRows<T>(rows: readonly T[], limit: number, notable: (row: T) => boolean, words: LimitWords): { rows: T[]; footer: string } {
  if (limit === 0 || rows.length <= limit) return { rows: [...rows], footer: '' };
  let notableCount = 0;
  for (const r of rows) if (notable(r)) notableCount++;
  const shown = keptRows(rows, limit, notable);
  return { rows: shown, footer: limitFooter(shown.length, rows.length, notableCount, limit, words) };
}

/** How `limitRows` names what it counts: `noun` (steps), `notable` (waiting for a node), `how` (to see all). */
export interface LimitWords {
  noun: string;
  notable: string;
  how: string;
}

/**
 * limitRows' footer from counts, for rows the server already cut (ImpactRequest.step_limit):
 * `shown` of `total`, `notableTotal` of them notable.
 */
export function limitFooter(shown: number, total: number, notableTotal: number, limit: number, words: LimitWords): string {
  if (shown >= total) return '';
  const hidden = notableTotal - Math.min(notableTotal, limit);
  const which = notableTotal === 0 ? '' : hidden > 0 ? `${limit} of ${notableTotal} ${words.notable} among them; ` : `all ${notableTotal} ${words.notable} among them; `;
  return `${shown} of ${total} ${words.noun} shown (${which}${words.how})\n`;
}
