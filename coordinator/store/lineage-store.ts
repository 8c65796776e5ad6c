import type { AbstractSublevel } from 'abstract-level';
import type { Database } from './database.js';
import { DataLossError } from '../../common/errors.js';

type Table = AbstractSublevel<Database, string | Uint8Array, string, string>;
type BinaryTable = AbstractSublevel<Database, string | Uint8Array, string, Uint8Array>;

/** Which entity table an entry is indexed under. */
export type EntityRef =
  | { table: 'objects'; objectId: string; contentHash: string }
  | { table: 'steps'; stepId: string }
  | { table: 'runs'; runId: string };

/**
 * One ledger entry ready to write, with the index rows that belong to it: its ledger row as
 * `value`, or as `entryHash` and `body` for the store to join.
 */
export interface PreparedEntry {
  seq: bigint;
  /** H(previous entry hash ‖ body); unused when `value` is given. */
  entryHash?: Uint8Array;
  /** Canonical bytes (encoded LedgerEntryBody); unused when `value` is given. */
  body?: Uint8Array;
  /**
   * The ledger row, entryHash ‖ body, when the caller built it already. The engine builds every
   * row so, and sets no views of its parts: a Buffer view is an allocation a row, unread.
   */
  value?: Uint8Array;
  entity: EntityRef;
  /** Object versions the event describes besides its entity (a step's used_versions and generated_versions): an objects row each. */
  versions?: readonly { objectId: string; contentHash: string }[];
  /** For step events: their event time, the adjacency row's time order. */
  adjacency?: { timeNs: bigint };
}

/** One atomic, synced write being built; see LineageStore.startBatch. */
export interface LineageBatch {
  add(entry: PreparedEntry): void;
  /** Writes everything added plus the checkpoint row, synced; once. */
  write(checkpoint: { treeSize: bigint; json: string } | undefined): Promise<void>;
  /** Drops the batch unwritten (no-op after write). */
  discard(): Promise<void>;
}

export interface StoredEntry {
  seq: bigint;
  entryHash: Uint8Array;
  body: Uint8Array;
}

/** A step entry found through the time index: its event time and the entry itself. */
export interface AdjacencyRow {
  timeNs: bigint;
  seq: bigint;
  entry: StoredEntry;
}

/**
 * The lineage tables over LevelDB sublevels; the only code that knows their key layouts.
 *   ledger      seq(16 hex)                              → entryHash(32) ‖ body
 *   objects     objectId NUL contentHash NUL seq         → "" (object_version events; steps' described versions)
 *   steps       stepId NUL seq                           → ""
 *   runs        runId NUL seq                            → ""
 *   adjacency   timeNs(20 digits) NUL seq                → "" (one row per step event)
 *   checkpoints treeSize(16 hex)                         → Checkpoint JSON
 * Everything an event adds is written in the same atomic, fsynced batch as its ledger entry.
 *
 * An adjacency row is the time-ordered index of step entries: the edges (used → step →
 * generated, read either way) are in the entry it points at. Its value repeated them (object ids
 * and hex hashes, 300 B a row on average) until this version, a third of the bytes ingest wrote;
 * rows written then keep their value, which nothing reads but verify.
 *
 * Event ids have no table: the engine keeps them in memory, rebuilt from the ledger at start.
 * Earlier versions wrote an `event-ids` row per event that nothing read; its random keys (UUIDs,
 * mostly) spread every batch over the whole key space, so LevelDB's compactions rewrote far
 * more than the ledger's appends. dropLegacyEventIds removes those rows from an old data dir.
 */
export class LineageStore {
  readonly ledger: BinaryTable;
  readonly objects: Table;
  readonly steps: Table;
  readonly runs: Table;
  readonly adjacency: Table;
  readonly checkpoints: Table;

  /** Global key prefixes of the tables, for writes that bypass per-put sublevel options. */
  private readonly prefix: Record<'ledger' | 'objects' | 'steps' | 'runs' | 'adjacency' | 'checkpoints', string>;

  constructor(readonly db: Database) {
    this.ledger = db.sublevel<string, Uint8Array>('ledger', { valueEncoding: 'view' });
    this.objects = db.sublevel<string, string>('objects', {});
    this.steps = db.sublevel<string, string>('steps', {});
    this.runs = db.sublevel<string, string>('runs', {});
    this.adjacency = db.sublevel<string, string>('adjacency', {});
    this.checkpoints = db.sublevel<string, string>('checkpoints', {});
    this.prefix = {
      ledger: this.ledger.prefix,
      objects: this.objects.prefix,
      steps: this.steps.prefix,
      runs: this.runs.prefix,
      adjacency: this.adjacency.prefix,
      checkpoints: this.checkpoints.prefix,
    };
  }

  /** Writes entries and their index rows, plus a checkpoint, as one synced batch. */
  async append(entries: readonly PreparedEntry[], checkpoint: { treeSize: bigint; json: string } | undefined): Promise<void> {
    const batch = this.startBatch();
    for (const e of entries) batch.add(e);
    await batch.write(checkpoint);
  }

  /**
   * A batch to fill entry by entry (while an earlier batch is still being written, so building
   * it overlaps the disk) and then write once, synced, with its checkpoint; or discard.
   */
  startBatch(): LineageBatch {
    const p = this.prefix;
    const batch = this.db.batch();
    let open = true;
    return {
      add(e: PreparedEntry): void {
        const seq = seqKey(e.seq);
        let value = e.value;
        if (!value) {
          if (!e.entryHash || !e.body) throw new Error(`prepared entry ${e.seq} has neither its row nor its entry hash and body`);
          value = new Uint8Array(32 + e.body.length);
          value.set(e.entryHash, 0);
          value.set(e.body, 32);
        }
        batch.put(p.ledger + seq, value);
        batch.put(p[e.entity.table] + entityKey(e.entity, seq), EMPTY);
        if (e.versions) for (const v of e.versions) batch.put(p.objects + objectRowKey(v.objectId, v.contentHash, seq), EMPTY);
        if (e.adjacency) batch.put(p.adjacency + adjacencyKey(e.adjacency.timeNs, seq), EMPTY);
      },
      async write(checkpoint: { treeSize: bigint; json: string } | undefined): Promise<void> {
        open = false;
        if (checkpoint) batch.put(p.checkpoints + seqKey(checkpoint.treeSize), Buffer.from(checkpoint.json));
        await batch.write({ sync: true });
      },
      async discard(): Promise<void> {
        if (!open) return;
        open = false;
        await batch.close();
      },
    };
  }

  async getEntry(seq: bigint): Promise<StoredEntry | undefined> {
    const value = await this.ledger.get(seqKey(seq));
    return value === undefined ? undefined : splitEntry(seq, value);
  }

  async getEntries(seqs: readonly bigint[]): Promise<StoredEntry[]> {
    if (seqs.length === 0) return [];
    const values = await this.ledger.getMany(seqs.map(seqKey));
    const out: StoredEntry[] = [];
    values.forEach((v, i) => {
      if (v !== undefined) out.push(splitEntry(seqs[i] as bigint, v));
    });
    return out;
  }

  /** Every entry from `fromSeq` on, in order. */
  async *entries(fromSeq = 0n): AsyncGenerator<StoredEntry> {
    for await (const [key, value] of this.ledger.iterator({ gte: seqKey(fromSeq) })) {
      // Only the coordinator writes this table, always under seqKey; any other key was put there
      // by hand (BigInt would throw a bare SyntaxError on it).
      const seq = parseSeqKey(key);
      if (seq === undefined) throw new LedgerRowError(`ledger row ${JSON.stringify(key.slice(0, 64))} is not a ledger position (16 hex digits): it was written outside the coordinator`);
      if (value.length < 32) throw new LedgerRowError(`ledger row ${key} holds ${value.length} bytes, less than an entry hash: it was altered`);
      yield splitEntry(seq, value);
    }
  }

  /**
   * Deletes the `event-ids` rows an older version wrote (see the class comment); returns
   * whether there were any. Safe to repeat after a crash: the rows are derived and unread.
   */
  async dropLegacyEventIds(): Promise<boolean> {
    const legacy = this.db.sublevel<string, string>('event-ids', {});
    for await (const _ of legacy.keys({ limit: 1 })) {
      await legacy.clear();
      return true;
    }
    return false;
  }

  /** Ledger seqs of every event about a step or a run, oldest first. */
  async entitySeqs(table: 'steps' | 'runs', id: string): Promise<bigint[]> {
    const t = table === 'steps' ? this.steps : this.runs;
    const seqs: bigint[] = [];
    for await (const key of t.keys({ gt: `${id}\u0000`, lt: `${id}\u0001` })) seqs.push(BigInt(`0x${key.slice(id.length + 1)}`));
    return seqs;
  }

  /** Versions of an object: content hash and the seqs of the events about each, oldest first. */
  async objectVersionSeqs(objectId: string, contentHash?: string): Promise<Map<string, bigint[]>> {
    const prefix = contentHash === undefined ? `${objectId}\u0000` : `${objectId}\u0000${contentHash}\u0000`;
    const out = new Map<string, bigint[]>();
    for await (const key of this.objects.keys({ gte: prefix, lt: `${prefix.slice(0, -1)}\u0001` })) {
      const rest = key.slice(objectId.length + 1);
      const sep = rest.indexOf('\u0000');
      const hash = rest.slice(0, sep);
      const list = out.get(hash) ?? [];
      list.push(BigInt(`0x${rest.slice(sep + 1)}`));
      out.set(hash, list);
    }
    return out;
  }

  /**
   * objectVersionSeqs(objectId, contentHash) of many versions at once, each named
   * `${objectId}\u0000${contentHash}`; a version with no rows gets an empty list. One iterator
   * reads the table: it seeks to a version not yet found and reads on through the rows after
   * it while they are versions asked for, so the versions of a job's 20,000 records cost a read
   * of their rows, not an iterator each (60,000 iterators took 10 s).
   */
  async versionSeqs(versions: readonly string[]): Promise<Map<string, bigint[]>> {
    const found = new Map<string, bigint[]>();
    const pending = new Set(versions);
    const it = this.objects.keys();
    try {
      for (const target of [...pending].sort()) {
        if (!pending.has(target)) continue;
        it.seek(`${target}\u0000`);
        // The rows of one version are contiguous: a version's list is complete once a row of
        // another follows its last in this run, or the table ends. A run starts at the target's
        // first row (if any), so every version met after a row of another in it is whole.
        let current = target;
        let seqs: bigint[] = [];
        // Whether the run holds the current version's first row: not sure of the one the seek
        // lands in unless it is the target's.
        let whole = true;
        let first = true;
        let misses = 0;
        const close = (): void => {
          if (whole && pending.delete(current)) found.set(current, seqs);
        };
        for (let size = 4; ; size = Math.min(1000, size * 4)) {
          const keys = await it.nextv(size);
          if (keys.length === 0) {
            close();
            break;
          }
          for (const key of keys) {
            const last = key.lastIndexOf('\u0000');
            const version = key.slice(0, last);
            if (version !== current) {
              close();
              current = version;
              seqs = [];
              whole = !first;
            }
            first = false;
            seqs.push(BigInt(`0x${key.slice(last + 1)}`));
            misses = pending.has(version) ? 0 : misses + 1;
          }
          // Rows of versions not asked for: the next one asked for may be far on, a seek away.
          if (pending.size === 0 || misses >= VERSION_SEEK_AFTER) break;
        }
        // A version whose last row ended the run may have more: it stays pending, and is sought.
      }
    } finally {
      await it.close();
    }
    return found;
  }

  /** Object versions whose object id starts with `prefix`: id, hash and event seqs, in id order. */
  async *objectVersionsWithPrefix(prefix: string): AsyncGenerator<{ objectId: string; contentHash: string; seq: bigint }> {
    for await (const key of this.objects.keys({ gte: prefix, lt: `${prefix}\uffff` })) {
      const last = key.lastIndexOf('\u0000');
      const mid = key.lastIndexOf('\u0000', last - 1);
      yield { objectId: key.slice(0, mid), contentHash: key.slice(mid + 1, last), seq: BigInt(`0x${key.slice(last + 1)}`) };
    }
  }

  /** Step entries with event time ≤ asOfNs (all when undefined), in time order, through the adjacency rows. */
  async *adjacencyRows(asOfNs?: bigint): AsyncGenerator<AdjacencyRow> {
    const range = asOfNs === undefined ? {} : { lt: `${timeKey(asOfNs)}\u0001` };
    let chunk: { timeNs: bigint; seq: bigint }[] = [];
    for await (const key of this.adjacency.keys(range)) {
      const [t, s] = key.split('\u0000') as [string, string];
      chunk.push({ timeNs: BigInt(t), seq: BigInt(`0x${s}`) });
      if (chunk.length === 256) {
        yield* await this.withEntries(chunk);
        chunk = [];
      }
    }
    yield* await this.withEntries(chunk);
  }

  private async withEntries(rows: readonly { timeNs: bigint; seq: bigint }[]): Promise<AdjacencyRow[]> {
    // getEntries keeps the order and leaves out missing entries: a shorter answer names the first gap.
    const entries = await this.getEntries(rows.map((r) => r.seq));
    return rows.map((r, i) => {
      const entry = entries[i];
      if (entry?.seq !== r.seq) throw new Error(`adjacency row at ${r.timeNs} points at ledger entry ${r.seq}, which is missing`);
      return { ...r, entry };
    });
  }

  async latestCheckpoint(): Promise<string | undefined> {
    for await (const value of this.checkpoints.values({ reverse: true, limit: 1 })) return value;
    return undefined;
  }

  /** Checkpoints in tree-size order. */
  async *allCheckpoints(): AsyncGenerator<string> {
    yield* this.checkpoints.values();
  }

  /** Checkpoint rows in key order: each row's key (seqKey of its tree size) and its JSON, unparsed. */
  async *checkpointRows(): AsyncGenerator<{ key: string; json: string }> {
    for await (const [key, json] of this.checkpoints.iterator()) yield { key, json };
  }
}

/** A ledger row that is not one the coordinator writes (tampering or damage); names the row. */
export class LedgerRowError extends DataLossError {
  constructor(message: string) {
    super(message);
    this.name = 'LedgerRowError';
  }
}

const SEQ_KEY = /^[0-9a-f]{16}$/;
/**
 * Rows of versions not asked for, one after another, after which versionSeqs stops reading on
 * and seeks to the next version asked for: a dense list is read straight through, a sparse one
 * reads little beyond its own rows.
 */
const VERSION_SEEK_AFTER = 64;

/** The seq a `seqKey` names, or undefined for a key no `seqKey` makes (one written by hand). */
export function parseSeqKey(key: string): bigint | undefined {
  return SEQ_KEY.test(key) ? BigInt(`0x${key}`) : undefined;
}

const EMPTY = new Uint8Array(0);

export function seqKey(seq: bigint): string {
  // Through a number below 2^53 (every seq in practice): its hex formatting is cheaper than a BigInt's.
  return (seq < 9_007_199_254_740_992n ? Number(seq).toString(16) : seq.toString(16)).padStart(16, '0');
}

export function timeKey(ns: bigint): string {
  return ns.toString().padStart(20, '0');
}

export function entityKey(e: EntityRef, seq: string): string {
  switch (e.table) {
    case 'objects':
      return objectRowKey(e.objectId, e.contentHash, seq);
    case 'steps':
      return `${e.stepId}\u0000${seq}`;
    case 'runs':
      return `${e.runId}\u0000${seq}`;
  }
}

/** Key of an objects row: an event at `seq` describes this object version. */
export function objectRowKey(objectId: string, contentHash: string, seq: string): string {
  return `${objectId}\u0000${contentHash}\u0000${seq}`;
}

export function adjacencyKey(timeNs: bigint, seq: string): string {
  return `${timeKey(timeNs)}\u0000${seq}`;
}

function splitEntry(seq: bigint, value: Uint8Array): StoredEntry {
  return { seq, entryHash: value.subarray(0, 32), body: value.subarray(32) };
}
