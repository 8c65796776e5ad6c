import { Level } from 'level';
import { MemoryLevel } from 'memory-level';
import type { AbstractLevel } from 'abstract-level';

/** Any abstract-level database with string keys; the store runs on LevelDB and on memory-level alike. */
export type Database = AbstractLevel<string | Uint8Array, string, string>;

/**
 * Opens the coordinator's database: LevelDB in `dir`, or memory-level when `dir` is null (tests,
 * simulations). Resolves once the database is open.
 */
export async function openDatabase(dir: string | null): Promise<Database> {
  const db: Database = dir === null ? new MemoryLevel<string, string>() : new Level<string, string>(dir);
  await db.open();
  return db;
}
