import { open, readdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { InsufficientStorageError } from '../../common/errors.js';
import type { Database } from './database.js';

/** `WRITABLE`: writes go through. `FULL`: the data dir ran out of space; writes are refused until a probe finds room again. */
export type StorageState = 'WRITABLE' | 'FULL';

export interface StorageGuardOptions {
  /** The database's folder: named in errors, probed for space. */
  dir: string;
  log?: (line: string) => void;
  /** How often a full data dir is probed, in ms; default 1000. */
  probeIntervalMs?: number;
  /**
   * Resolves once `bytes` more fit under `dir`, rejects while they do not. Default: writes a
   * scratch file of that size there (synced) and removes it.
   */
  probeSpace?: (bytes: number) => Promise<void>;
}

/** See guardStorage. */
export interface StorageGuard {
  readonly state: StorageState;
  /** Calls `listener` on every transition; returns the unsubscribe. */
  onChange(listener: (state: StorageState) => void): () => void;
  /** Probes a FULL data dir now instead of at the next tick; resolves with the state after. */
  probe(): Promise<StorageState>;
  /** Ends the probing (before the database is closed); waits for a probe under way. */
  stop(): Promise<void>;
}

/** Room a reopen needs besides the log files' size: a new manifest, a new log, LevelDB's slack. */
const REOPEN_SLACK_BYTES = 1024 * 1024;
const PROBE_FILE = 'space-probe.tmp';

/** Whether `err` (or one of its causes) says the file system is full: ENOSPC, or a quota (EDQUOT). */
export function isOutOfSpace(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return true;
    // LevelDB's errors carry the OS's text only: "IO error: /dir/000005.ldb: No space left on device".
    if (/No space left on device|Disk quota exceeded/.test(e.message)) return true;
  }
  return false;
}

type WriteHooks = {
  _put(...args: unknown[]): Promise<void>;
  _del(...args: unknown[]): Promise<void>;
  _batch(...args: unknown[]): Promise<void>;
  _clear(...args: unknown[]): Promise<void>;
  _chainedBatch(): { _write(...args: unknown[]): Promise<void> };
  batch(...args: unknown[]): unknown;
  put(...args: unknown[]): Promise<void>;
  del(...args: unknown[]): Promise<void>;
  sublevel(...args: unknown[]): Sublevel;
};
type Sublevel = { status: string; open(): Promise<void>; sublevel(...args: unknown[]): Sublevel };

/**
 * Watches every write to a LevelDB database (root and sublevels alike) for a full disk. The write
 * that meets one fails with InsufficientStorageError naming `dir` (LevelDB's batch is atomic:
 * nothing of it is stored) and the guard goes FULL: later writes are refused at once with the
 * same error, reads go on. Every `probeIntervalMs` it checks for room (the log files' size and
 * 1 MiB); once there is, it closes and reopens the database and goes WRITABLE again, without a
 * restart of the process.
 *
 * Why the reopen: LevelDB fails every later write with the same error, for good, once a
 * compaction or a log sync failed (a background error only a reopen clears); and a log write
 * the disk cut short leaves a torn record that misplaces every record appended after it, which a
 * restart would then drop although they were acknowledged. Refusing writes until the reopen, and
 * reopening (LevelDB replays the log up to the torn record and starts a new one) avoids both.
 * Sublevels are reopened with the root; reads and iterators under way during the reopen (a few
 * ms) fail with LEVEL_DATABASE_NOT_OPEN.
 */
export function guardStorage(db: Database, options: StorageGuardOptions): StorageGuard {
  const { dir } = options;
  const log = options.log ?? (() => {});
  const intervalMs = options.probeIntervalMs ?? 1000;
  const probeSpace = options.probeSpace ?? ((bytes: number) => writeScratchFile(join(dir, PROBE_FILE), bytes));
  const hooks = db as unknown as WriteHooks;
  let state: StorageState = 'WRITABLE';
  const listeners = new Set<(state: StorageState) => void>();
  let timer: NodeJS.Timeout | undefined;
  let probing: Promise<StorageState> | undefined;
  let stopped = false;
  let lastProbeError = '';

  // Every sublevel made on this database, oldest (so parents) first: the root's close closes them too.
  const sublevels: WeakRef<Sublevel>[] = [];
  const track = (owner: { sublevel(...args: unknown[]): Sublevel }): void => {
    const make = owner.sublevel.bind(owner);
    owner.sublevel = (...args: unknown[]): Sublevel => {
      const s = make(...args);
      sublevels.push(new WeakRef(s));
      track(s);
      return s;
    };
  };
  track(hooks);

  const setState = (to: StorageState, why: string): void => {
    if (state === to) return;
    log(`storage: ${state} -> ${to} (${why})`);
    state = to;
    for (const l of listeners) l(to);
  };

  const guarded = <A extends unknown[]>(write: (...args: A) => Promise<void>) =>
    async (...args: A): Promise<void> => {
      if (state !== 'WRITABLE') throw new InsufficientStorageError(dir);
      try {
        await write(...args);
      } catch (err) {
        if (!isOutOfSpace(err)) throw err;
        setState('FULL', `a write failed: ${(err as Error).message}`);
        schedule();
        throw new InsufficientStorageError(dir, err);
      }
    };
  hooks._put = guarded(hooks._put.bind(db));
  hooks._del = guarded(hooks._del.bind(db));
  hooks._batch = guarded(hooks._batch.bind(db));
  hooks._clear = guarded(hooks._clear.bind(db));
  const chained = hooks._chainedBatch.bind(db);
  hooks._chainedBatch = () => {
    const b = chained();
    b._write = guarded(b._write.bind(b));
    return b;
  };
  // Refused before the database is asked too: while it reopens it would answer "not open".
  const batch = hooks.batch.bind(db);
  hooks.batch = (...args: unknown[]) => {
    if (state === 'WRITABLE') return batch(...args);
    if (args.length === 0) throw new InsufficientStorageError(dir);
    return Promise.reject(new InsufficientStorageError(dir));
  };
  for (const name of ['put', 'del'] as const) {
    const write = hooks[name].bind(db);
    hooks[name] = (...args: unknown[]) => (state === 'WRITABLE' ? write(...args) : Promise.reject(new InsufficientStorageError(dir)));
  }

  function schedule(): void {
    if (timer || stopped || state === 'WRITABLE') return;
    timer = setTimeout(() => {
      timer = undefined;
      void probe().then(schedule);
    }, intervalMs);
    timer.unref();
  }

  async function reopen(): Promise<void> {
    if (db.status === 'open') await db.close();
    const opening = db.open({ createIfMissing: false });
    // Opened while the root opens, so operations on them wait for it instead of failing.
    const reopened: Promise<void>[] = [];
    for (let i = 0; i < sublevels.length; i++) {
      const s = (sublevels[i] as WeakRef<Sublevel>).deref();
      if (!s) {
        sublevels.splice(i--, 1);
        continue;
      }
      if (s.status === 'closed') reopened.push(s.open());
    }
    try {
      await opening;
    } finally {
      // Settled either way: a root that failed to open fails its sublevels' opens too.
      const settled = await Promise.allSettled(reopened);
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed && db.status === 'open') throw failed.reason;
    }
  }

  function probe(): Promise<StorageState> {
    if (state === 'WRITABLE' || stopped) return Promise.resolve(state);
    probing ??= (async (): Promise<StorageState> => {
      try {
        await probeSpace((await logBytes(dir)) + REOPEN_SLACK_BYTES);
        await reopen();
      } catch (err) {
        const message = (err as Error).message;
        // Once per distinct failure: a disk stays full for a while.
        if (message !== lastProbeError) log(`storage: ${dir} still cannot be written: ${message}`);
        lastProbeError = message;
        return state;
      }
      lastProbeError = '';
      setState('WRITABLE', 'space was freed; the database was reopened');
      return state;
    })().finally(() => (probing = undefined));
    return probing;
  }

  return {
    get state() {
      return state;
    },
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    probe,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      timer = undefined;
      await probing;
    },
  };
}

/** Bytes in LevelDB's log files under `dir`: what a reopen writes into a table again. */
async function logBytes(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) {
    if (name.endsWith('.log')) total += (await stat(join(dir, name))).size;
  }
  return total;
}

/** Writes `bytes` zero bytes to `file`, synced, then removes it; rejects (having removed it) where they do not fit. */
async function writeScratchFile(file: string, bytes: number): Promise<void> {
  const chunk = Buffer.alloc(Math.min(bytes, 1024 * 1024));
  const fh = await open(file, 'w');
  try {
    for (let left = bytes; left > 0; left -= chunk.length) await fh.write(chunk, 0, Math.min(left, chunk.length));
    await fh.datasync();
  } finally {
    await fh.close().catch(() => {});
    await unlink(file).catch(() => {});
  }
}
