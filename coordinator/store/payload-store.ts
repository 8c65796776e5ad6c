import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import { contentHashOf, isContentHash } from '../../common/hash.js';
import { coalescedRootWrites, type RootRow } from './call-coalescer.js';
import type { Database } from './database.js';

/** Options of the payload store. */
export interface PayloadStoreOptions {
  /**
   * Payloads neither stored again, retained nor found in use by a sweep for longer than this
   * are deleted by `sweep()`; undefined (the default) keeps every payload forever.
   */
  retentionMs?: number;
  /** Milliseconds since the epoch; defaults to Date.now. */
  now?: () => number;
}

/** What one sweep may not delete, and how it runs. */
export interface SweepOptions {
  /**
   * Content hashes ("sha256:<hex>") in use however old (current records, newest versions): kept,
   * and their reference time renewed, so one superseded later is kept for the retention from then.
   */
  inUse: () => AsyncIterable<string> | Iterable<string>;
  /** Count what would be deleted and change nothing. */
  dryRun?: boolean;
  /** Stops the sweep before it deletes anything (what it stamped stays). */
  signal?: AbortSignal;
}

/** What a sweep found and did. */
export interface SweepReport {
  retentionMs: number;
  /** Payloads looked at (every stored one). */
  scanned: number;
  /** Not referenced within the retention. */
  expired: number;
  /** Expired but in use, or stored again while the sweep ran: kept. */
  kept: number;
  /** Deleted (with `dryRun`: would be). */
  deleted: number;
  bytesDeleted: number;
  /** Stored while no retention was set (no reference time): their retention starts now. */
  stamped: number;
  dryRun: boolean;
}

/**
 * Content-addressed payloads (source records and step outputs) in the `payloads` sublevel of the
 * coordinator's database: `bytes` (hex → bytes, one copy per content) and `touched`
 * (hex → last time it was referenced, ms, as text; written only while a retention is set). The
 * only code that knows this layout.
 */
export interface PayloadStore {
  /** Stores the bytes once per content; returns "sha256:<hex>". Putting stored bytes again only refreshes their reference time. */
  put(bytes: Uint8Array): Promise<string>;
  /**
   * Stores many payloads in one batch; hashes in input order. `hashes`, when given, are the
   * content hashes the caller already computed for exactly these bytes (not re-hashed).
   */
  putMany(payloads: readonly Uint8Array[], hashes?: readonly string[]): Promise<string[]>;
  /**
   * Whether every one of these payloads is stored; the ones that are count as referenced now (a
   * sweep running meanwhile keeps them). For reusing earlier outputs without their bytes in hand.
   */
  retain(hashes: readonly string[]): Promise<boolean>;
  /** The bytes, or undefined when unknown (or swept). */
  find(hash: string): Promise<Uint8Array | undefined>;
  /** The bytes; NotFoundError (`content_hash`) when unknown. */
  get(hash: string): Promise<Uint8Array>;
  has(hash: string): Promise<boolean>;
  /**
   * Deletes payloads not referenced within `retentionMs` that `inUse` does not name; one sweep
   * at a time. FailedPreconditionError without a retention.
   */
  sweep(options: SweepOptions): Promise<SweepReport>;
  /** Every stored payload as [hex of its key, bytes], in key order, read as it goes (for verify). */
  stored(): AsyncIterable<[string, Uint8Array]>;
  readonly retentionMs: number | undefined;
}

function hexOf(hash: string): string {
  if (typeof hash !== 'string' || !isContentHash(hash)) {
    throw new InvalidArgumentError('content_hash', `expected "sha256:" and 64 lowercase hex digits, got ${JSON.stringify(String(hash).slice(0, 80))}`);
  }
  return hash.slice('sha256:'.length);
}

/** Rows a sweep writes or deletes per batch. */
const SWEEP_CHUNK = 1000;

/** Opens the payload store on `db` (creates the sublevels; writes nothing). */
export function createPayloadStore(db: Database, options: PayloadStoreOptions = {}): PayloadStore {
  const root = db.sublevel('payloads');
  const bytes = root.sublevel<string, Uint8Array>('bytes', { valueEncoding: 'view' });
  const touched = root.sublevel<string, string>('touched', { valueEncoding: 'utf8' });
  const now = options.now ?? Date.now;
  const retentionMs = options.retentionMs;
  if (retentionMs !== undefined && (!Number.isFinite(retentionMs) || retentionMs <= 0)) {
    throw new InvalidArgumentError('retention_ms', 'must be a positive number of milliseconds');
  }

  // Every ingested record stores its payloads: concurrent records share one batch. A sweep's
  // deletes go through the same queue, so a put called after them lands after them.
  const bytesPrefix = bytes.prefix;
  const touchedPrefix = touched.prefix;
  const write = coalescedRootWrites(db);
  // While a sweep runs: every payload stored or retained since it began, which it must not delete.
  let referencedDuringSweep: Set<string> | undefined;
  let sweeping: Promise<unknown> = Promise.resolve();

  function stampRows(hexes: Iterable<string>): RootRow[] {
    const stamp = Buffer.from(String(now()));
    const rows: RootRow[] = [];
    for (const hex of hexes) rows.push([touchedPrefix + hex, stamp]);
    return rows;
  }

  async function putMany(payloads: readonly Uint8Array[], known?: readonly string[]): Promise<string[]> {
    if (known && known.length !== payloads.length) throw new Error(`putMany: ${known.length} hashes for ${payloads.length} payloads`);
    const hashes = known ? [...known] : payloads.map((p) => contentHashOf(p));
    const unique = new Map<string, Uint8Array>();
    hashes.forEach((h, i) => unique.set(h.slice(7), payloads[i] as Uint8Array));
    // Writing the same bytes under the same key again is harmless and cheaper than reading first.
    const ops: RootRow[] = [];
    for (const [hex, payload] of unique) ops.push([bytesPrefix + hex, payload]);
    if (retentionMs !== undefined) ops.push(...stampRows(unique.keys()));
    if (referencedDuringSweep) for (const hex of unique.keys()) referencedDuringSweep.add(hex);
    if (ops.length > 0) await write(ops);
    return hashes;
  }

  async function retain(hashes: readonly string[]): Promise<boolean> {
    const hexes = [...new Set(hashes.map(hexOf))];
    if (referencedDuringSweep) for (const hex of hexes) referencedDuringSweep.add(hex);
    // Also waits for every write queued before it, a sweep's deletes included: the reads below
    // see them.
    await write(retentionMs === undefined ? [] : stampRows(hexes));
    const found = hexes.length === 0 ? [] : await bytes.getMany(hexes);
    return found.every((b) => b !== undefined);
  }

  async function sweepOnce(retention: number, { inUse, dryRun = false, signal }: SweepOptions): Promise<SweepReport> {
    const referenced = new Set<string>();
    referencedDuringSweep = referenced;
    try {
      // Every put called before the sweep began is written: the scan sees its reference time.
      await write([]);
      const cutoff = now() - retention;
      const report: SweepReport = { retentionMs: retention, scanned: 0, expired: 0, kept: 0, deleted: 0, bytesDeleted: 0, stamped: 0, dryRun };
      const expired = new Set<string>();
      let unstamped: string[] = [];
      // Reference times of payloads no longer stored (retain() stamps before it knows).
      const orphans: string[] = [];
      // Both sublevels are sorted by hex: one pass over each.
      const stamps = touched.iterator();
      try {
        let stamp = await stamps.next();
        for await (const hex of bytes.keys()) {
          if (++report.scanned % SWEEP_CHUNK === 0) signal?.throwIfAborted();
          while (stamp !== undefined && stamp[0] < hex) {
            orphans.push(stamp[0]);
            stamp = await stamps.next();
          }
          if (stamp !== undefined && stamp[0] === hex) {
            if (Number(stamp[1]) < cutoff) expired.add(hex);
            stamp = await stamps.next();
            continue;
          }
          report.stamped++;
          if (dryRun) continue;
          unstamped.push(hex);
          if (unstamped.length >= SWEEP_CHUNK) {
            await write(stampRows(unstamped));
            unstamped = [];
          }
        }
        for (; stamp !== undefined; stamp = await stamps.next()) orphans.push(stamp[0]);
      } finally {
        await stamps.close();
      }
      if (unstamped.length > 0) await write(stampRows(unstamped));
      report.expired = expired.size;
      let renew: string[] = [];
      let seen = 0;
      for await (const hash of inUse()) {
        const hex = hash.startsWith('sha256:') ? hash.slice(7) : hash;
        if (expired.delete(hex)) renew.push(hex);
        if (renew.length >= SWEEP_CHUNK) {
          if (!dryRun) await write(stampRows(renew));
          report.kept += renew.length;
          renew = [];
        }
        // In-use lists can be millions long: let I/O through now and then.
        if (++seen % 10_000 === 0) {
          await new Promise<void>((r) => setImmediate(r));
          signal?.throwIfAborted();
        }
      }
      if (!dryRun && renew.length > 0) await write(stampRows(renew));
      report.kept += renew.length;
      signal?.throwIfAborted();
      const doomed = [...expired];
      const sizes = new Map<string, number>();
      for (let i = 0; i < doomed.length; i += SWEEP_CHUNK) {
        const chunk = doomed.slice(i, i + SWEEP_CHUNK);
        (await bytes.getMany(chunk)).forEach((b, j) => sizes.set(chunk[j] as string, b?.byteLength ?? 0));
      }
      // From here to the queued delete nothing awaits: a payload stored or retained up to now is
      // spared, and one stored afterwards is written after the delete.
      const ops: RootRow[] = [];
      for (const hex of orphans) if (!referenced.has(hex)) ops.push([touchedPrefix + hex, null]);
      for (const hex of doomed) {
        if (referenced.has(hex)) {
          report.kept++;
          continue;
        }
        report.deleted++;
        report.bytesDeleted += sizes.get(hex) ?? 0;
        ops.push([bytesPrefix + hex, null], [touchedPrefix + hex, null]);
      }
      referencedDuringSweep = undefined;
      if (!dryRun && ops.length > 0) await write(ops);
      return report;
    } finally {
      if (referencedDuringSweep === referenced) referencedDuringSweep = undefined;
    }
  }

  return {
    retentionMs,
    async put(payload) {
      return (await putMany([payload]))[0] as string;
    },
    putMany,
    retain,
    async find(hash) {
      return bytes.get(hexOf(hash));
    },
    async get(hash) {
      const found = await bytes.get(hexOf(hash));
      if (found === undefined) throw new NotFoundError(`payload ${hash}`, 'content_hash');
      return found;
    },
    async has(hash) {
      return bytes.has(hexOf(hash));
    },
    stored() {
      return bytes.iterator();
    },
    async sweep(sweepOptions) {
      if (retentionMs === undefined) throw new FailedPreconditionError('payloads are kept forever: start the coordinator with --payload-retention DURATION to sweep them');
      const run = sweeping.then(() => sweepOnce(retentionMs, sweepOptions));
      sweeping = run.catch(() => {});
      return run;
    },
  };
}
