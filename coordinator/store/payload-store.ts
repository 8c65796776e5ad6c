import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import { contentHashOf, isContentHash } from '../../common/hash.js';
import { coalescedRootWrites, type RootRow } from './call-coalescer.js';
import type { Database } from './database.js';

/** Options of the payload store. */
export interface PayloadStoreOptions {
  /**
   * Payloads not referenced (put again) for longer than this are deleted by `sweep()`;
   * undefined (the default) keeps every payload forever.
   */
  retentionMs?: number;
  /** Milliseconds since the epoch; defaults to Date.now. */
  now?: () => number;
}

/**
 * Content-addressed payloads (source records and step outputs) in the `payloads` sublevel of the
 * coordinator's database: `bytes` (hex → bytes, one copy per content) and `touched`
 * (hex → last time it was put, ms, as text). The only code that knows this layout.
 */
export interface PayloadStore {
  /** Stores the bytes once per content; returns "sha256:<hex>". Putting stored bytes again only refreshes their reference time. */
  put(bytes: Uint8Array): Promise<string>;
  /**
   * Stores many payloads in one batch; hashes in input order. `hashes`, when given, are the
   * content hashes the caller already computed for exactly these bytes (not re-hashed).
   */
  putMany(payloads: readonly Uint8Array[], hashes?: readonly string[]): Promise<string[]>;
  /** The bytes, or undefined when unknown (or swept). */
  find(hash: string): Promise<Uint8Array | undefined>;
  /** The bytes; NotFoundError (`content_hash`) when unknown. */
  get(hash: string): Promise<Uint8Array>;
  has(hash: string): Promise<boolean>;
  /** Deletes payloads not referenced within `retentionMs`; returns how many. No-op without retention. */
  sweep(): Promise<number>;
  readonly retentionMs: number | undefined;
}

function hexOf(hash: string): string {
  if (typeof hash !== 'string' || !isContentHash(hash)) {
    throw new InvalidArgumentError('content_hash', `expected "sha256:" and 64 lowercase hex digits, got ${JSON.stringify(String(hash).slice(0, 80))}`);
  }
  return hash.slice('sha256:'.length);
}

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

  // Every ingested record stores its payloads: concurrent records share one batch.
  const bytesPrefix = bytes.prefix;
  const touchedPrefix = touched.prefix;
  const write = coalescedRootWrites(db);

  async function putMany(payloads: readonly Uint8Array[], known?: readonly string[]): Promise<string[]> {
    if (known && known.length !== payloads.length) throw new Error(`putMany: ${known.length} hashes for ${payloads.length} payloads`);
    const hashes = known ? [...known] : payloads.map((p) => contentHashOf(p));
    const unique = new Map<string, Uint8Array>();
    hashes.forEach((h, i) => unique.set(h.slice(7), payloads[i] as Uint8Array));
    // Writing the same bytes under the same key again is harmless and cheaper than reading first.
    const stamp = Buffer.from(String(now()));
    const ops: RootRow[] = [];
    for (const [hex, payload] of unique) {
      ops.push([bytesPrefix + hex, payload]);
      if (retentionMs !== undefined) ops.push([touchedPrefix + hex, stamp]);
    }
    if (ops.length > 0) await write(ops);
    return hashes;
  }

  return {
    retentionMs,
    async put(payload) {
      return (await putMany([payload]))[0] as string;
    },
    putMany,
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
    async sweep() {
      if (retentionMs === undefined) return 0;
      const cutoff = now() - retentionMs;
      const stale: string[] = [];
      for await (const [hex, at] of touched.iterator()) if (Number(at) < cutoff) stale.push(hex);
      if (stale.length === 0) return 0;
      const ops: never[] = [];
      for (const hex of stale) {
        ops.push({ type: 'del', key: hex, sublevel: bytes } as never);
        ops.push({ type: 'del', key: hex, sublevel: touched } as never);
      }
      await root.batch(ops);
      return stale.length;
    },
  };
}
