import { existsSync, readFileSync } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { FailedPreconditionError } from '../../common/errors.js';
import type { Checkpoint } from '../../common/gen/retrace/v1/provenance.js';

/**
 * The latest signed checkpoint, kept beside the database in `<dataDir>/checkpoint.json`. LevelDB
 * keeps its checkpoints in the same log as the entries they cover, so a log cut short (a crash
 * on a filesystem that loses the tail, or tampering) loses both and the shorter ledger still
 * verifies: this copy outside LevelDB is what proves the loss.
 */
export const CHECKPOINT_FILE = 'checkpoint.json';

/**
 * The checkpoint in `<dataDir>/checkpoint.json`; undefined where there is none (a data dir of an
 * older version: the file is written at the next checkpoint). FailedPreconditionError when the
 * file does not hold a checkpoint (it is written atomically, so it was altered).
 */
export function readCheckpointFile(dataDir: string): Checkpoint | undefined {
  const file = join(dataDir, CHECKPOINT_FILE);
  if (!existsSync(file)) return undefined;
  let cp: Partial<Checkpoint>;
  try {
    cp = JSON.parse(readFileSync(file, 'utf8')) as Partial<Checkpoint>;
  } catch (err) {
    throw new FailedPreconditionError(`${file} is not JSON (${(err as Error).message}): it was altered; restore it or remove it`);
  }
  for (const field of ['treeSize', 'rootHash', 'headHash', 'signedAtNs', 'signature', 'publicKey'] as const) {
    if (typeof cp[field] !== 'string') throw new FailedPreconditionError(`${file}: field ${field} is missing: it was altered; restore it or remove it`);
  }
  if (!/^\d+$/.test(cp.treeSize as string)) throw new FailedPreconditionError(`${file}: field treeSize is not a number: it was altered`);
  return cp as Checkpoint;
}

/**
 * Writes `cp` to `<dataDir>/checkpoint.json` atomically and durably: a temporary file, fsync,
 * rename over the old one, fsync of the directory. A crash leaves the old file or the new one.
 */
export async function writeCheckpointFile(dataDir: string, cp: Checkpoint): Promise<void> {
  const file = join(dataDir, CHECKPOINT_FILE);
  const tmp = `${file}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(cp)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  await syncDir(dataDir);
}

/** Removes `<dataDir>/checkpoint.json` (durably), where there is one. */
export async function removeCheckpointFile(dataDir: string): Promise<void> {
  try {
    await unlink(join(dataDir, CHECKPOINT_FILE));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  await syncDir(dataDir);
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * Keeps `<dataDir>/checkpoint.json` at the latest checkpoint with one write at a time: a save
 * called while a write runs waits for the next write, which takes the latest checkpoint saved
 * by then (the ones in between are skipped, as the latest covers them). So under bulk ingest
 * the file costs at most one write in flight, whatever the commit rate.
 */
export interface CheckpointFileWriter {
  /** Resolves once the file holds `cp` or a later checkpoint; rejects when that write failed. */
  save(cp: Checkpoint): Promise<void>;
  /** Resolves once every save called so far settled. */
  flush(): Promise<void>;
}

export function createCheckpointFileWriter(dataDir: string, write: (dir: string, cp: Checkpoint) => Promise<void> = writeCheckpointFile): CheckpointFileWriter {
  let latest: Checkpoint | undefined;
  let waiters: { resolve: () => void; reject: (err: unknown) => void }[] = [];
  let running: Promise<void> | undefined;

  const drain = async (): Promise<void> => {
    while (latest !== undefined) {
      const cp = latest;
      const settle = waiters;
      latest = undefined;
      waiters = [];
      try {
        await write(dataDir, cp);
        for (const w of settle) w.resolve();
      } catch (err) {
        for (const w of settle) w.reject(err);
      }
    }
    running = undefined;
  };

  return {
    save(cp) {
      latest = cp;
      const done = new Promise<void>((resolve, reject) => waiters.push({ resolve, reject }));
      running ??= drain();
      return done;
    },
    async flush() {
      while (running) await running;
    },
  };
}

/**
 * The message for a ledger that lost entries or was rewritten below the checkpoint kept outside
 * the database: "ledger truncated/rewritten: checkpoint signed at size N (time), ledger has M".
 */
export function ledgerLossMessage(cp: Checkpoint, ledgerSize: bigint, detail = ''): string {
  const ms = Number(BigInt(cp.signedAtNs) / 1_000_000n);
  // Date covers ±8.64e15 ms; beyond (a forged file) the raw figure is shown.
  const time = ms > 0 && ms <= 8.64e15 ? new Date(ms).toISOString() : `${cp.signedAtNs} ns`;
  return `ledger truncated/rewritten: checkpoint signed at size ${cp.treeSize} (${time}), ledger has ${ledgerSize}${detail ? `; ${detail}` : ''} (${CHECKPOINT_FILE} holds the checkpoint; LevelDB lost or rewrote acknowledged entries)`;
}
