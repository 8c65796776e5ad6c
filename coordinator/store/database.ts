import { Level } from 'level';
import { MemoryLevel } from 'memory-level';
import type { AbstractLevel } from 'abstract-level';

/**
 * Any abstract-level database with string keys; the store runs on LevelDB and on memory-level
 * alike. The root's values are bytes: hot write paths put pre-prefixed keys straight into a
 * root batch (per-put sublevel options are several times slower); sublevels pick their own
 * encodings.
 */
export type Database = AbstractLevel<string | Uint8Array, string, Uint8Array>;

/**
 * Opens the coordinator's database: LevelDB in `dir`, or memory-level when `dir` is null (tests,
 * simulations). Resolves once the database is open. `createIfMissing: false` (readers such as an
 * offline verify) rejects when there is no database in `dir` instead of making an empty one.
 */
export async function openDatabase(dir: string | null, options: { createIfMissing?: boolean } = {}): Promise<Database> {
  const db: Database = dir === null ? new MemoryLevel<string, Uint8Array>({ valueEncoding: 'view' }) : new Level<string, Uint8Array>(dir, { valueEncoding: 'view' });
  await db.open({ createIfMissing: options.createIfMissing ?? true });
  return db;
}
