import { closeSync, fsyncSync, openSync } from 'node:fs';

/**
 * fsyncs directory `dir`, making a rename, create or unlink in it durable: without it the entry
 * can be lost in a power loss although the file's data was synced. Throws the system error when
 * the directory cannot be opened or synced.
 *
 * Synchronous, so that synchronous writers (tokens.json) and async ones (checkpoint.jsonl) share
 * it: the async ones call it only when they replace or remove a file whole, not per write.
 */
export function syncDirectory(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
