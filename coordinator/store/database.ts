import { existsSync, readdirSync } from 'node:fs';
import { Level } from 'level';
import { FailedPreconditionError, UnavailableError } from '../../common/errors.js';
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
 * simulations). Resolves once the database is open. A new database is made only where `dir` is
 * absent or empty, and not at all with `createIfMissing: false` (readers such as an offline
 * verify): a folder that holds LevelDB files but lost its CURRENT would otherwise be opened as a
 * new, empty database, and LevelDB deletes the old table files as it does so.
 * FailedPreconditionError when the folder is damaged or another process holds it.
 */
export async function openDatabase(dir: string | null, options: { createIfMissing?: boolean; writeBufferBytes?: number } = {}): Promise<Database> {
  if (dir === null) {
    const db: Database = new MemoryLevel<string, Uint8Array>({ valueEncoding: 'view' });
    await db.open();
    return db;
  }
  const present = existsSync(dir) ? readdirSync(dir) : [];
  if (present.length > 0 && !present.includes('CURRENT')) {
    throw new FailedPreconditionError(`${dir} holds ${present.length} file(s) but no CURRENT: the database is damaged; refusing to open it (a new one would replace it). Restore it from a backup`);
  }
  // In the constructor's options, which every later open() (the storage guard's reopen) reuses.
  const db: Database = new Level<string, Uint8Array>(dir, { valueEncoding: 'view', ...(options.writeBufferBytes === undefined ? {} : { writeBufferSize: options.writeBufferBytes }) });
  try {
    await db.open({ createIfMissing: (options.createIfMissing ?? true) && present.length === 0 });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    if (cause?.code === 'LEVEL_LOCKED') throw new FailedPreconditionError(`${dir} is in use by another process (a coordinator already runs on this data dir)`);
    throw new FailedPreconditionError(`cannot open ${dir}: ${cause?.message ?? (err as Error).message}`);
  }
  return db;
}

/**
 * The store's errors that are not bugs, as the error funnels should answer them: a read or write
 * that met the database closed (the storage guard reopening it after a full disk, or the
 * coordinator stopping) is worth retrying, so it is UNAVAILABLE rather than INTERNAL. Else undefined.
 */
export function storeErrorOf(err: unknown): UnavailableError | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if ((e as { code?: unknown }).code === 'LEVEL_DATABASE_NOT_OPEN') return new UnavailableError('the database is not open (reopening after the data dir was full, or the coordinator is stopping); retry', err);
  }
  return undefined;
}
