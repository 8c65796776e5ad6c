import { existsSync, readFileSync } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { FailedPreconditionError } from '../../common/errors.js';
import type { Checkpoint } from '../../common/gen/retrace/v1/provenance.js';
import { syncDirectory } from '../directory-fsync.js';

/**
 * The latest signed checkpoint, kept beside the database in `<dataDir>/checkpoint.jsonl`. LevelDB
 * keeps its checkpoints in the same log as the entries they cover, so a log cut short (a crash
 * on a filesystem that loses the tail, or tampering) loses both and the shorter ledger still
 * verifies: this copy outside LevelDB is what proves the loss.
 *
 * Two lines of SLOT bytes each, a checkpoint as JSON padded with spaces, written in turn in
 * place (pwrite + fdatasync): the file's size and blocks never change, so a write costs no
 * journal commit, which on ext4 would also flush every other file's dirty data (LevelDB's
 * compactions): a rename per checkpoint took 135 ms (p50) under bulk ingest, against 1 ms idle.
 * A write torn by a power loss spoils one line; the other still holds an earlier checkpoint.
 * Every line ever written covered entries already durable, so the largest valid one is the
 * checkpoint the ledger must reach.
 */
export const CHECKPOINT_FILE = 'checkpoint.jsonl';
/** Bytes per line, newline included (a checkpoint is about 400 bytes of JSON). */
const SLOT = 1024;

const FIELDS = ['treeSize', 'rootHash', 'headHash', 'signedAtNs', 'signature', 'publicKey'] as const;

function parseLine(line: string): Checkpoint | undefined {
  try {
    const cp = JSON.parse(line) as Partial<Checkpoint>;
    if (cp === null || typeof cp !== 'object' || FIELDS.some((f) => typeof cp[f] !== 'string') || !/^\d+$/.test(cp.treeSize as string)) return undefined;
    return cp as Checkpoint;
  } catch {
    return undefined;
  }
}

/**
 * The checkpoint in `<dataDir>/checkpoint.jsonl` (of its lines, the valid one with the largest
 * tree size); undefined where there is no file (a data dir of an older version: the coordinator
 * writes it at start). FailedPreconditionError when no line holds a checkpoint (altered).
 */
export function readCheckpointFile(dataDir: string): Checkpoint | undefined {
  const file = join(dataDir, CHECKPOINT_FILE);
  if (!existsSync(file)) return undefined;
  let best: Checkpoint | undefined;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const cp = line.trim() === '' ? undefined : parseLine(line);
    if (cp && (!best || BigInt(cp.treeSize) > BigInt(best.treeSize))) best = cp;
  }
  if (!best) throw new FailedPreconditionError(`${file} holds no checkpoint: it was altered; restore it, or remove it to trust the ledger as it is`);
  return best;
}

function slotBytes(cp: Checkpoint): Buffer {
  const json = JSON.stringify(cp);
  if (json.length > SLOT - 1) throw new Error(`checkpoint of ${json.length} bytes does not fit a ${SLOT}-byte line`);
  return Buffer.from(`${json.padEnd(SLOT - 1, ' ')}\n`);
}

/**
 * Replaces `<dataDir>/checkpoint.jsonl` with `cp` in both lines, atomically and durably: a
 * temporary file, fsync, rename, fsync of the directory. A crash leaves the old file or the new.
 */
export async function writeCheckpointFile(dataDir: string, cp: Checkpoint): Promise<void> {
  const file = join(dataDir, CHECKPOINT_FILE);
  const tmp = `${file}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    const line = slotBytes(cp);
    await fh.writeFile(Buffer.concat([line, line]));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  syncDirectory(dataDir);
}

/** Removes `<dataDir>/checkpoint.jsonl` (durably), where there is one. */
export async function removeCheckpointFile(dataDir: string): Promise<void> {
  try {
    await unlink(join(dataDir, CHECKPOINT_FILE));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  syncDirectory(dataDir);
}

/**
 * Writes checkpoints into the lines of `<dataDir>/checkpoint.jsonl` in turn, in place, keeping
 * the file open. A file that is missing or not of two lines is replaced whole first.
 */
function createSlotWriter(dataDir: string): { write(cp: Checkpoint): Promise<void>; close(): Promise<void> } {
  let fh: FileHandle | undefined;
  let slot = 0;
  return {
    async write(cp) {
      if (!fh) {
        const file = join(dataDir, CHECKPOINT_FILE);
        const existing = await open(file, 'r+').catch((err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return undefined;
          throw err;
        });
        if (existing && (await existing.stat()).size === 2 * SLOT) fh = existing;
        else {
          await existing?.close();
          await writeCheckpointFile(dataDir, cp);
          fh = await open(file, 'r+');
          return;
        }
      }
      await fh.write(slotBytes(cp), 0, SLOT, slot * SLOT);
      await fh.datasync();
      slot = 1 - slot;
    },
    async close() {
      const f = fh;
      fh = undefined;
      await f?.close();
    },
  };
}

/**
 * Keeps `<dataDir>/checkpoint.jsonl` at the latest checkpoint with one write at a time: a save
 * called while a write runs waits for the next write, which takes the latest checkpoint saved
 * by then (the ones in between are skipped, as the latest covers them). So under bulk ingest
 * the file costs at most one write in flight, whatever the commit rate.
 */
export interface CheckpointFileWriter {
  /** Resolves once the file holds `cp` or a later checkpoint; rejects when that write failed. */
  save(cp: Checkpoint): Promise<void>;
  /** Resolves once every save called so far settled. */
  flush(): Promise<void>;
  /** Flushes, then closes the file. */
  close(): Promise<void>;
}

/** `write` replaces how one checkpoint is written (tests). */
export function createCheckpointFileWriter(dataDir: string, write?: (dir: string, cp: Checkpoint) => Promise<void>): CheckpointFileWriter {
  const slots = write ? undefined : createSlotWriter(dataDir);
  const writeOne = write ?? ((_dir: string, cp: Checkpoint) => (slots as ReturnType<typeof createSlotWriter>).write(cp));
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
        await writeOne(dataDir, cp);
        for (const w of settle) w.resolve();
      } catch (err) {
        for (const w of settle) w.reject(err);
      }
    }
    running = undefined;
  };

  const flush = async (): Promise<void> => {
    while (running) await running;
  };
  return {
    save(cp) {
      latest = cp;
      const done = new Promise<void>((resolve, reject) => waiters.push({ resolve, reject }));
      running ??= drain();
      return done;
    },
    flush,
    async close() {
      await flush();
      await slots?.close();
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
