import { mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

/**
 * Creates `dir` and any missing parents, like `mkdir -p`; resolves when it exists as a directory.
 * Rejects with the system error (ENOENT, EACCES, ENOTDIR...) of the first level that cannot be
 * made. `mode` applies to each level it creates.
 *
 * Not `mkdir(dir, { recursive: true })`: in Node 20 that never settles, spinning a libuv thread,
 * when the kernel answers ENOENT for a child of a parent that exists (`/proc/nope`: mkdir of
 * /proc/nope is ENOENT, of /proc is EEXIST, and Node retries the child forever). Here the missing
 * levels are found by stat from the bottom up and made one at a time, top down, without
 * `recursive`, so every system error reaches the caller.
 */
export async function makeDirectory(dir: string, mode?: number): Promise<void> {
  const missing: string[] = [];
  for (let p = resolve(dir); ; ) {
    try {
      const st = await stat(p);
      if (!st.isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${p}'`), { code: 'ENOTDIR', path: p });
      break;
    } catch (err) {
      const parent = dirname(p);
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || parent === p) throw err;
      missing.push(p);
      p = parent;
    }
  }
  for (const p of missing.reverse()) {
    try {
      await mkdir(p, mode === undefined ? {} : { mode });
    } catch (err) {
      // Another process made it between our stat and mkdir: it exists, which is all we need.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}
