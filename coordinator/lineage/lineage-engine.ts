import { createHash } from 'node:crypto';
import {
  Direction,
  EdgeKind,
  NodeKind,
  type GetNodeRequest,
  type GetNodeResponse,
  type GetProofResponse,
  type GetRecordPathRequest,
  type GetRecordPathResponse,
  type ListRunsRequest,
  type ListRunsResponse,
  type NodeRef,
  type TraceEdge,
  type TraceNode,
  type TraceRequest,
  type TraceResponse,
  TraceView,
} from '../../common/gen/retrace/v1/lineage.js';
import { LedgerEntryBody, type Checkpoint, type LineageEvent, type ObjectVersion, type Run, type Step } from '../../common/gen/retrace/v1/provenance.js';
import { AsciiBinaryReader } from '../../common/ascii-binary-reader.js';
import { EVENT_LIMITS, normalizeEventChecked, type CheckedEventBytes } from '../../common/event-validation.js';
import { encodeLineageEvent } from '../../common/lineage-event-encoding.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import { isContentHash } from '../../common/hash.js';
import { nodeKey, nodeKindPrefix, parseNodeKey, versionKey } from '../../common/lineage-keys.js';
import { leafHash, MerkleTree } from '../../common/merkle.js';
import { describedVersions } from '../../common/step-versions.js';
import { nanosToIso } from '../../common/time.js';
import { encodeCompactTrace } from '../../common/trace-compact.js';
import { varintLength, writeVarint } from '../../common/varint.js';
import { CHECKPOINT_FILE, ledgerLossMessage, type CheckpointFileWriter } from '../ledger/checkpoint-file.js';
import { verifyCheckpoint, type CheckpointSigner } from '../ledger/checkpoint-signer.js';
import { LedgerHasher, type HashResult } from '../ledger/ledger-hasher.js';
import type { NanoClock } from '../clock.js';
import { LedgerRowError, type EntityRef, type LineageBatch, type LineageStore, type PreparedEntry, type StoredEntry } from '../store/lineage-store.js';
import { GraphIndex, type IndexMark } from './graph-index.js';
import { KeyTable } from './key-table.js';
import type { LineageApi, ObjectList, ObjectTable, SubmitResult, TransformObjects } from './lineage-api.js';
import { foldObjectVersions, foldRuns, foldSteps } from './step-fold.js';

export interface LineageEngineOptions {
  store: LineageStore;
  signer: CheckpointSigner;
  clock: NanoClock;
  log?: (line: string) => void;
  /**
   * Keeps the latest checkpoint outside the database as well (checkpoint-file.ts). A group's
   * submissions are acknowledged once the file holds its checkpoint or a later one; the next
   * group's write does not wait for the file.
   */
  checkpointFile?: CheckpointFileWriter;
}

export type LineageEngineState = 'NEW' | 'RECOVERING' | 'RUNNING' | 'STOPPING' | 'STOPPED';

/**
 * Events still in their wire form, decoded only when their commit group is prepared. While a
 * submission waits in the commit queue (up to a few hundred milliseconds under load) it is one
 * buffer, not the thousands of objects and strings decoding makes, which the young-generation
 * collector would copy and then promote into the old generation, where they die.
 */
export interface DeferredEvents {
  readonly count: number;
  /**
   * Decodes every event afresh, with each event's bytes as received (undefined for an event the
   * front end changed after decoding: it is encoded again). Throws InvalidArgumentError naming
   * `events[i]` on bytes that do not decode; a front end's own check may throw another RetraceError.
   */
  decode(): { events: LineageEvent[]; wire: (Uint8Array | undefined)[] };
}

interface Submission {
  /** Normalised events; for a deferred submission, only while prepareGroup uses them. */
  events: LineageEvent[] | undefined;
  deferred: DeferredEvents | undefined;
  count: number;
  /** received_at_ns for events without an event time: when submit() was called. */
  receivedAt: string;
  /** Per event, its wire bytes when they encode exactly the normalised event; else undefined. */
  wire: (Uint8Array | undefined)[] | undefined;
  resolve: (r: SubmitResult) => void;
  reject: (e: unknown) => void;
}

interface EngineMark {
  index: IndexMark;
  seq: bigint;
  head: Uint8Array;
  /** Absolute position in the added-log. */
  added: number;
}

interface PreparedGroup {
  mark: EngineMark;
  /** Emptied by sealGroup once the batch holds their rows; `entryCount` stays. */
  entries: PreparedEntry[];
  entryCount: number;
  accepted: { sub: Submission; result: SubmitResult }[];
  receivedAt: bigint;
  treeSize: bigint;
  addedEnd: number;
  /** The hasher's jobs over the entries' rows, in order (sent while the group was prepared); empty when there are none. */
  hashes: Promise<HashResult>[];
  /** Set by sealGroup, while the previous group is being written: the rows added, and the checkpoint. */
  batch?: LineageBatch;
  checkpoint?: Checkpoint;
}

const GENESIS = new Uint8Array(32);
const TRACE_DEFAULTS: TraceRequest = { start: undefined, direction: Direction.DIRECTION_UNSPECIFIED, depth: 0, asOfNs: '0', pageSize: 0, pageToken: '', includeEdges: false, objectLevel: false, view: TraceView.TRACE_VIEW_UNSPECIFIED };
const DEFAULT_PAGE = 1000;
/** Events per commit group (one synced write) at most, unless one submission is larger. */
const MAX_GROUP_EVENTS = 4000;
/** A group's rows go to the hasher once this many await it (at submission boundaries). */
const HASH_CHUNK_ROWS = 256;
/** Events waiting for a commit group beyond which `room()` makes streaming front ends wait. */
const MAX_QUEUED_EVENTS = 2 * MAX_GROUP_EVENTS;
/**
 * Step ids to pass readSteps at once when walking many: one ledger read for a batch, and no more
 * decoded steps held at a time than that (a run of a 60,000-record pipeline has 180,000).
 */
export const STEP_READ_BATCH = 256;
const MAX_PAGE = 100_000;

/**
 * The lineage store's engine: validates and appends events to the hash-chained, Merkle-tree
 * ledger with group commit (one fsync per group of submissions), keeps the in-memory graph index
 * in step with what is durable, and answers lineage queries. Only the committer writes.
 */
export class LineageEngine implements LineageApi {
  private state: LineageEngineState = 'NEW';
  readonly store: LineageStore;
  private readonly signer: CheckpointSigner;
  private readonly checkpointFile: CheckpointFileWriter | undefined;
  private readonly clock: NanoClock;
  private readonly log: (line: string) => void;

  readonly index = new GraphIndex();
  private readonly merkle = new MerkleTree();
  private readonly hasher = new LedgerHasher();
  /**
   * Event id → ledger seq: every entry adds its event id, in ledger order, so an id's number in
   * the table is its entry's seq. Undone by truncating to a seq.
   */
  private readonly eventIds = new KeyTable();
  private readonly knownRuns = new Set<string>();
  /**
   * Run ids applyToIndex added to knownRuns that are not yet durable, so a rejected batch or a
   * failed write can be undone; `addedBase` is the absolute position of its first item.
   */
  private readonly addedLog: string[] = [];
  private addedBase = 0;
  private nextSeq = 0n;
  private head: Uint8Array = GENESIS;
  private checkpoint: Checkpoint | undefined;

  /** received_at_ns of the group being prepared, encoded once for all its entries. */
  private receivedAtField: { ns: bigint; bytes: Uint8Array } = { ns: -1n, bytes: new Uint8Array(0) };

  private queue: Submission[] = [];
  /** Events in `queue`. */
  private queuedEvents = 0;
  private roomWaiters: (() => void)[] = [];
  private flushing: Promise<void> | undefined;

  constructor(options: LineageEngineOptions) {
    this.store = options.store;
    this.signer = options.signer;
    this.checkpointFile = options.checkpointFile;
    this.clock = options.clock;
    this.log = options.log ?? (() => {});
  }

  get treeSize(): bigint {
    return this.nextSeq;
  }

  get latestCheckpoint(): Checkpoint | undefined {
    return this.checkpoint;
  }

  /** Rebuilds the in-memory state from the ledger. */
  async start(): Promise<void> {
    this.transition('RECOVERING');
    const started = Date.now();
    if (await this.store.dropLegacyEventIds()) this.log('lineage: removed the event-ids index an earlier version wrote (event ids are kept in memory)');
    const entries = this.store.entries();
    for (;;) {
      let next: IteratorResult<StoredEntry>;
      try {
        next = await entries.next();
      } catch (err) {
        if (err instanceof LedgerRowError) throw new FailedPreconditionError(`${err.message}; run "retrace verify"`);
        throw err;
      }
      if (next.done) break;
      const entry = next.value;
      if (entry.seq !== this.nextSeq) throw new FailedPreconditionError(`ledger has a gap at seq ${this.nextSeq} (found ${entry.seq}); run "retrace verify"`);
      let body: LedgerEntryBody;
      try {
        body = LedgerEntryBody.decode(new AsciiBinaryReader(entry.body));
      } catch {
        throw new FailedPreconditionError(`ledger entry ${entry.seq} does not decode: it was altered or damaged; run "retrace verify"`);
      }
      if (!body.event) throw new FailedPreconditionError(`ledger entry ${entry.seq} has no event; run "retrace verify"`);
      try {
        this.applyToIndex(body.event, entry.seq, `ledger[${entry.seq}]`);
      } catch (err) {
        // Every stored entry passed these checks when it was submitted: one that fails them now
        // was altered (or an entry it depends on was), not submitted out of order.
        if (!(err instanceof InvalidArgumentError)) throw err;
        throw new FailedPreconditionError(`ledger entry ${entry.seq} contradicts the entries before it (${err.message}): the ledger was altered or damaged; run "retrace verify"`);
      }
      this.merkle.appendLeafHash(leafHash(entry.body));
      this.head = entry.entryHash;
      this.nextSeq++;
    }
    this.addedLog.length = 0;
    this.addedBase = 0;
    const cp = await this.store.latestCheckpoint();
    try {
      this.checkpoint = cp === undefined ? undefined : (JSON.parse(cp) as Checkpoint);
    } catch {
      throw new FailedPreconditionError(`the latest checkpoint row does not parse: it was altered or damaged; run "retrace verify"`);
    }
    this.log(`lineage: recovered ${this.nextSeq} ledger entries, ${this.index.nodeCount} nodes, ${this.index.edgeCount} edges in ${Date.now() - started} ms`);
    this.transition('RUNNING');
  }

  /** Waits for pending commits; later submissions are refused. */
  async stop(): Promise<void> {
    if (this.state === 'STOPPED' || this.state === 'NEW') {
      this.state = 'STOPPED';
      return;
    }
    this.transition('STOPPING');
    // Waiting front ends go on, and their submissions are refused.
    this.releaseRoomWaiters();
    while (this.flushing) await this.flushing;
    await this.checkpointFile?.close();
    await this.hasher.stop();
    this.transition('STOPPED');
  }

  /**
   * Appends `events` atomically (see LineageApi.submit). DeferredEvents (the gRPC front end's)
   * are decoded and validated when their commit group is prepared, and the same errors reject
   * the submission then; an event that normalising leaves unchanged is stored with its bytes as
   * received instead of being encoded again.
   */
  submit(events: readonly LineageEvent[] | DeferredEvents, options?: { signal?: AbortSignal }): Promise<SubmitResult> {
    if (this.state !== 'RUNNING') return Promise.reject(new FailedPreconditionError(`lineage engine is ${this.state}`));
    if (options?.signal?.aborted) return Promise.reject(options.signal.reason);
    const deferred = isDeferred(events) ? events : undefined;
    const count = deferred ? deferred.count : (events as readonly LineageEvent[]).length;
    if (count > EVENT_LIMITS.maxEventsPerBatch) {
      return Promise.reject(new InvalidArgumentError('events', `${count} events in one batch; the limit is ${EVENT_LIMITS.maxEventsPerBatch}`));
    }
    const receivedAt = this.clock().toString();
    let normalized: LineageEvent[] | undefined;
    let wire: (Uint8Array | undefined)[] | undefined;
    if (!deferred) {
      try {
        ({ normalized, wire } = normalizeAll(events as readonly LineageEvent[], undefined, receivedAt));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return new Promise<SubmitResult>((resolve, reject) => {
      this.queue.push({ events: normalized, deferred, count, receivedAt, wire, resolve, reject });
      this.queuedEvents += count;
      this.kick();
    });
  }

  /**
   * Undefined while fewer than MAX_QUEUED_EVENTS events wait for a commit group, else a promise
   * of room. A streaming front end awaits it before each submission: that bounds the queue, so
   * the memory and acknowledgement latency of a busy coordinator, whatever the number of
   * streams. (Each stream's own pipelining is bounded separately, by its handler.)
   */
  room(): Promise<void> | undefined {
    if (this.queuedEvents < MAX_QUEUED_EVENTS || this.state !== 'RUNNING') return undefined;
    return new Promise<void>((resolve) => this.roomWaiters.push(resolve));
  }

  private releaseRoomWaiters(): void {
    if (this.roomWaiters.length === 0) return;
    for (const resolve of this.roomWaiters.splice(0)) resolve();
  }

  /** Starts the commit loop unless it runs; restarts it for submissions that arrived as it ended. */
  private kick(): void {
    if (this.flushing) return;
    this.flushing = this.flushLoop()
      .catch((err: unknown) => this.log(`lineage: commit loop failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`))
      .finally(() => {
        this.flushing = undefined;
        if (this.queue.length > 0) this.kick();
      });
  }

  /**
   * Commit pipeline: while one group's batch is being written and fsynced, the next group is
   * validated and prepared on this thread and hashed on the hasher's, so CPU work overlaps the
   * disk. Writes stay strictly in order; a group is acknowledged only after its own write and
   * every earlier one succeeded.
   */
  private async flushLoop(): Promise<void> {
    // Always yield first: a loop that finished synchronously would end before kick() stored it.
    await null;
    let writing: Promise<{ group: PreparedGroup; err: unknown } | undefined> | undefined;
    while (this.queue.length > 0 || writing) {
      let next: PreparedGroup | undefined;
      if (this.queue.length > 0) next = this.prepareGroup(this.takeGroup());
      // The previous group was sealed before its write began, so `next` chains onto it.
      const sealing = next && next.hashes.length > 0 ? this.sealGroup(next) : undefined;
      if (writing) {
        const failed = await writing;
        writing = undefined;
        if (failed) {
          // Undo the failed group and everything after it, once `next`'s hashes (which extend
          // the tree) are in; then validate `next`'s submissions again.
          if (sealing) await sealing;
          this.rollbackAll(failed.group.mark);
          this.log(`lineage: commit of ${failed.group.entryCount} entries failed: ${String(failed.err)}`);
          for (const { sub } of failed.group.accepted) sub.reject(failed.err);
          if (next) {
            void next.batch?.discard().catch(() => {});
            this.queue.unshift(...next.accepted.map((a) => a.sub));
            for (const a of next.accepted) this.queuedEvents += a.sub.count;
          }
          continue;
        }
      }
      if (!next) continue;
      const sealErr = sealing ? await sealing : undefined;
      if (sealErr !== undefined) {
        this.rollbackAll(next.mark);
        this.log(`lineage: sealing ${next.entryCount} entries failed: ${String(sealErr)}`);
        for (const { sub } of next.accepted) sub.reject(sealErr);
        continue;
      }
      writing = this.writeGroup(next);
    }
  }

  /**
   * The next commit group: queued submissions up to MAX_GROUP_EVENTS events (at least one).
   * Bounding a group bounds what is held in memory until its write, and so the garbage
   * collector's work, and the acknowledgement latency of its submissions.
   */
  private takeGroup(): Submission[] {
    let n = 0;
    let k = 0;
    while (k < this.queue.length && (k === 0 || n + (this.queue[k] as Submission).count <= MAX_GROUP_EVENTS)) {
      n += (this.queue[k] as Submission).count;
      k++;
    }
    this.queuedEvents -= n;
    if (this.queuedEvents < MAX_QUEUED_EVENTS) this.releaseRoomWaiters();
    if (k === this.queue.length) {
      const all = this.queue;
      this.queue = [];
      return all;
    }
    return this.queue.splice(0, k);
  }

  /** Validates and applies a group of submissions in memory; rejects the bad ones, each atomically. */
  private prepareGroup(group: Submission[]): PreparedGroup | undefined {
    const groupMark = this.markAll();
    const entries: PreparedEntry[] = [];
    const accepted: { sub: Submission; result: SubmitResult }[] = [];
    const receivedAt = this.clock();
    const hashes: Promise<HashResult>[] = [];
    let hashed = 0;
    // Rows go to the hasher in chunks as submissions are accepted, so hashing runs beside the
    // rest of the group's preparation instead of after it (the committer used to wait for the
    // whole group's hashes, a quarter of ingest's wall time). Only accepted submissions' rows
    // are sent: a rejected one is undone before anything of it leaves.
    const sendRows = (): void => {
      const job = { ...packRows(entries, hashed), ...(hashes.length === 0 ? { start: { head: this.head, frontier: this.merkle.frontier() } } : {}) };
      const p = this.hasher.hash(job);
      // Awaited by sealGroup; until then a failure must not count as unhandled.
      p.catch(() => {});
      hashes.push(p);
      hashed = entries.length;
    };
    for (const sub of group) {
      const mark = this.markAll();
      const before = entries.length;
      try {
        if (sub.deferred) {
          const d = sub.deferred.decode();
          ({ normalized: sub.events, wire: sub.wire } = normalizeAll(d.events, d.wire, sub.receivedAt));
        }
        const events = sub.events as LineageEvent[];
        let dup = 0;
        const seqs: bigint[] = [];
        for (let i = 0; i < events.length; i++) {
          const event = events[i] as LineageEvent;
          const existing = this.eventIds.get(event.eventId);
          if (existing !== undefined) {
            dup++;
            seqs.push(BigInt(existing));
            continue;
          }
          const entry = this.prepare(event, sub.wire?.[i], receivedAt, i);
          entries.push(entry);
          seqs.push(entry.seq);
        }
        accepted.push({ sub, result: { accepted: events.length - dup, duplicates: dup, seqs, treeSize: 0n } });
        if (entries.length - hashed >= HASH_CHUNK_ROWS) sendRows();
      } catch (err) {
        entries.length = before;
        this.rollbackAll(mark);
        sub.reject(err);
      }
      // Decoded again should the group have to be prepared again (see flushLoop).
      if (sub.deferred) sub.events = sub.wire = undefined;
    }
    if (accepted.length === 0) return undefined;
    if (entries.length > hashed) sendRows();
    return { mark: groupMark, entries, entryCount: entries.length, accepted, receivedAt, treeSize: this.nextSeq, addedEnd: this.addedBase + this.addedLog.length, hashes };
  }

  /**
   * Takes a prepared group's hashes (chain and Merkle tree) from the hasher, then builds its
   * batch and signs its checkpoint. Resolves to the error when hashing failed, else undefined.
   */
  private async sealGroup(g: PreparedGroup): Promise<unknown> {
    try {
      const results = await Promise.all(g.hashes);
      for (const r of results) {
        this.merkle.appendPrecomputed(r.leaves, r.nodes);
        this.head = r.head;
      }
      const batch = this.store.startBatch();
      // Each entry's value is its whole row, entry hash included (the hasher wrote it in place).
      for (const e of g.entries) batch.add(e);
      // The batch holds its own copy of every row: let the entries go before the write.
      g.entries = [];
      g.batch = batch;
      g.checkpoint = this.signer.sign(g.treeSize, this.merkle.root().toString('hex'), Buffer.from(this.head).toString('hex'), g.receivedAt);
      return undefined;
    } catch (err) {
      return err ?? new Error('hashing failed');
    }
  }

  /**
   * Writes a sealed group (one synced batch) and settles its submissions. A failed write is
   * returned, not rolled back here: the loop undoes it once the next group's hashing settled.
   */
  private async writeGroup(g: PreparedGroup): Promise<{ group: PreparedGroup; err: unknown } | undefined> {
    try {
      if (g.batch) await g.batch.write(g.checkpoint && { treeSize: g.treeSize, json: JSON.stringify(g.checkpoint) });
    } catch (err) {
      return { group: g, err };
    }
    if (g.checkpoint) this.checkpoint = g.checkpoint;
    // What this group added can no longer be rolled back.
    this.addedLog.splice(0, g.addedEnd - this.addedBase);
    this.addedBase = g.addedEnd;
    const acknowledge = (): void => {
      for (const { sub, result } of g.accepted) {
        result.treeSize = g.treeSize;
        sub.resolve(result);
      }
    };
    if (!g.checkpoint || !this.checkpointFile) {
      acknowledge();
      return undefined;
    }
    // The entries are durable in the database whatever happens to the file: a failed write is
    // logged, not turned into a failed submission (a resubmission would only be a duplicate).
    this.checkpointFile.save(g.checkpoint).then(acknowledge, (err: unknown) => {
      this.log(`lineage: writing the checkpoint file at tree size ${g.treeSize} failed (a lost ledger tail could go unnoticed until the next one): ${String(err)}`);
      acknowledge();
    });
    return undefined;
  }

  /**
   * Why the ledger as recovered cannot be the one `cp` (a checkpoint kept outside the database)
   * was signed over: a bad signature, fewer entries than its tree size, or another root or
   * chain head at that size. Undefined when it matches. Call after start().
   */
  async ledgerLoss(cp: Checkpoint): Promise<string | undefined> {
    if (!verifyCheckpoint(cp, this.signer.publicKeyBase64)) return `${CHECKPOINT_FILE} (tree size ${cp.treeSize}) has a bad signature: it was altered`;
    const size = BigInt(cp.treeSize);
    if (size > this.nextSeq) return ledgerLossMessage(cp, this.nextSeq);
    const head = size === 0n ? GENESIS : (await this.store.getEntry(size - 1n))?.entryHash;
    if (this.merkle.root(Number(size)).toString('hex') !== cp.rootHash || head === undefined || Buffer.from(head).toString('hex') !== cp.headHash) {
      return ledgerLossMessage(cp, this.nextSeq, `the ledger's Merkle root at size ${cp.treeSize} differs from it: an entry below ${cp.treeSize} was rewritten`);
    }
    return undefined;
  }

  /**
   * Validates `event` against the graph, applies it to the in-memory state, and builds its
   * ledger row, 32 bytes of room for its entry hash (sealGroup fills them) and its body. With
   * `wire` (the event's own bytes) the body is written around them without encoding the event
   * again; the bytes decode to the same event either way.
   */
  private prepare(event: LineageEvent, wire: Uint8Array | undefined, receivedAtNs: bigint, index: number): PreparedEntry {
    const seq = this.nextSeq;
    const entity = this.applyToIndex(event, seq, `events[${index}]`);
    // The ledger row is entryHash(32) ‖ body; the body is built in place after the first 32 bytes.
    let value: Buffer;
    // Events submitted in-process (the pipeline runner's, the dispatcher's outcomes) come
    // without wire bytes: the fast encoder writes the generated encoder's bytes for them.
    const bytes = wire ?? encodeLineageEvent(event);
    if (bytes) {
      if (this.receivedAtField.ns !== receivedAtNs) this.receivedAtField = { ns: receivedAtNs, bytes: encodeReceivedAt(receivedAtNs) };
      value = writeEntryBody(Number(seq), this.receivedAtField.bytes, bytes);
    } else {
      const encoded = LedgerEntryBody.encode({ seq: seq.toString(), receivedAtNs: receivedAtNs.toString(), event }).finish();
      value = Buffer.allocUnsafe(32 + encoded.length);
      value.set(encoded, 32);
    }
    const bodyLength = value.length - 32;
    if (bodyLength > EVENT_LIMITS.maxEventBytes) {
      throw new InvalidArgumentError(`events[${index}]`, `event is ${bodyLength} bytes encoded; the limit is ${EVENT_LIMITS.maxEventBytes}`);
    }
    this.nextSeq++;
    const entry: PreparedEntry = { seq, value, entity: entity.ref };
    if (entity.adjacency) entry.adjacency = entity.adjacency;
    if (event.body?.$case === 'step') {
      const versions = describedVersions(event.body.value);
      if (versions.length > 0) entry.versions = versions;
    }
    return entry;
  }

  /** Applies an event to the graph index, the event-id map and the run set; throws on invalid references. */
  private applyToIndex(event: LineageEvent, seq: bigint, path: string): { ref: EntityRef; adjacency?: PreparedEntry['adjacency'] } {
    const timeNs = BigInt(event.eventTimeNs);
    const timeMs = nsToMs(timeNs);
    const body = event.body;
    if (!body) throw new InvalidArgumentError(`${path}.body`, 'is required');
    let result: { ref: EntityRef; adjacency?: PreparedEntry['adjacency'] };
    switch (body.$case) {
      case 'objectVersion': {
        const v = body.value;
        const created = v.createdAtNs !== '0' ? nsToMs(BigInt(v.createdAtNs)) : timeMs;
        this.index.ensureNode(versionKey(v.objectId, v.contentHash), NodeKind.NODE_KIND_OBJECT_VERSION, created);
        result = { ref: { table: 'objects', objectId: v.objectId, contentHash: v.contentHash } };
        break;
      }
      case 'run': {
        this.index.ensureNode(`run:${body.value.runId}`, NodeKind.NODE_KIND_RUN, timeMs);
        if (!this.knownRuns.has(body.value.runId)) {
          this.knownRuns.add(body.value.runId);
          this.addedLog.push(body.value.runId);
        }
        result = { ref: { table: 'runs', runId: body.value.runId } };
        break;
      }
      case 'step': {
        const s = body.value;
        const p = `${path}.step`;
        if (s.runId !== '' && !this.knownRuns.has(s.runId)) {
          throw new InvalidArgumentError(`${p}.run_id`, `unknown run ${JSON.stringify(s.runId)}; submit its run event first (the same batch is fine)`);
        }
        // Inputs described in the step are recorded first, as their object_version events would be.
        for (const v of s.usedVersions?.versions ?? []) {
          this.index.ensureNode(versionKey(v.objectId, v.contentHash), NodeKind.NODE_KIND_OBJECT_VERSION, v.createdAtNs !== '0' ? nsToMs(BigInt(v.createdAtNs)) : timeMs);
        }
        const usedIds: number[] = [];
        const used = s.used.map((r, i) => {
          if (r.unversioned) {
            usedIds.push(-1);
            return `object:${r.objectId}`;
          }
          const key = versionKey(r.objectId, r.contentHash);
          const id = this.index.idOf(key);
          if (id === undefined) {
            throw new InvalidArgumentError(`${p}.used[${i}]`, `unknown object version ${key}; submit it (object_version event) or the step that generated it first`);
          }
          usedIds.push(id);
          return key;
        });
        const generated = s.generated.map((r) => versionKey(r.objectId, r.contentHash));
        this.index.addStep(
          {
            stepKey: `step:${s.stepId}`,
            transformKey: `transform:${s.transform}`,
            runKey: s.runId ? `run:${s.runId}` : undefined,
            used,
            usedIds,
            generated,
          },
          timeMs,
          p,
          seq,
        );
        result = { ref: { table: 'steps', stepId: s.stepId }, adjacency: { timeNs } };
        break;
      }
    }
    if (this.eventIds.add(event.eventId) !== Number(seq)) throw new Error(`event id table out of step with the ledger at seq ${seq}`);
    return result;
  }

  private markAll(): EngineMark {
    return { index: this.index.mark(), seq: this.nextSeq, head: this.head, added: this.addedBase + this.addedLog.length };
  }

  /** Undoes everything applied since `mark`: graph, Merkle tree, chain head, event ids, runs. */
  private rollbackAll(mark: EngineMark): void {
    this.index.rollback(mark.index);
    this.merkle.truncate(Number(mark.seq));
    this.head = mark.head;
    this.eventIds.truncate(Number(mark.seq));
    while (this.addedBase + this.addedLog.length > mark.added) this.knownRuns.delete(this.addedLog.pop() as string);
    this.nextSeq = mark.seq;
  }

  // ---- queries ----

  listNodes(kind: NodeKind, idPrefix: string): { id: string; firstSeenMs: number; lastChangedMs: number }[] {
    const index = this.index;
    const prefix = `${nodeKindPrefix(kind)}${idPrefix}`;
    const out: { id: string; firstSeenMs: number; lastChangedMs: number }[] = [];
    for (let n = 0; n < index.nodeCount; n++) {
      if (index.kindOf(n) !== kind) continue;
      const key = index.keyOf(n);
      if (key.startsWith(prefix)) out.push({ id: key.slice(prefix.length - idPrefix.length), firstSeenMs: index.timeOf(n), lastChangedMs: index.lastChangedOf(n) });
    }
    return out;
  }

  listObjects(): ObjectTable {
    const index = this.index;
    const nodes: number[] = [];
    for (let n = 0; n < index.nodeCount; n++) if (index.kindOf(n) === NodeKind.NODE_KIND_OBJECT) nodes.push(n);
    const ids = Int32Array.from(nodes);
    const { list, node } = objectListOf(index, ids);
    const from = OBJECT_PREFIX.length;
    return {
      ...list,
      lastChangedMs: (i) => index.lastChangedOf(node(i)),
      indexOf: (objectId) => {
        const n = index.idOf(`${OBJECT_PREFIX}${objectId}`);
        if (n === undefined) return undefined;
        // Node numbers grow in the order first seen, and so does the table.
        let lo = 0;
        let hi = ids.length - 1;
        while (lo <= hi) {
          const mid = (lo + hi) >>> 1;
          const m = ids[mid] as number;
          if (m === n) return mid;
          if (m < n) lo = mid + 1;
          else hi = mid - 1;
        }
        return undefined;
      },
      compareIds: (i, j) => index.compareKeys(node(i), node(j), from),
      idIncludesLowerCase: (i, needle) => index.keyIncludesLowerCase(node(i), needle, from),
    };
  }

  async getNode(request: GetNodeRequest): Promise<GetNodeResponse> {
    const ref = request.node;
    if (!ref) throw new InvalidArgumentError('node', 'is required');
    checkNodeRef(ref, 'node');
    const key = nodeKey(ref);
    const id = this.index.idOf(key);
    // The index's time of a node: a version's created_at where given, else its first event's.
    const firstSeenNs = id === undefined ? '0' : msToNsString(this.index.timeOf(id));
    switch (ref.kind) {
      case NodeKind.NODE_KIND_STEP: {
        const step = await this.readStep(ref.id);
        if (!step) throw new NotFoundError(`step ${JSON.stringify(ref.id)}`, 'node.id');
        return { node: ref, body: { $case: 'step', value: step }, generatedBy: '', relatedSteps: [], firstSeenNs };
      }
      case NodeKind.NODE_KIND_RUN: {
        const seqs = await this.store.entitySeqs('runs', ref.id);
        if (seqs.length === 0) throw new NotFoundError(`run ${JSON.stringify(ref.id)}`, 'node.id');
        const run = foldRuns((await this.readEvents(seqs)).flatMap((e) => (e.body?.$case === 'run' ? [{ timeNs: BigInt(e.eventTimeNs), run: e.body.value }] : [])));
        return { node: ref, body: { $case: 'run', value: run }, generatedBy: '', relatedSteps: this.index.membersOf(key), firstSeenNs };
      }
      case NodeKind.NODE_KIND_OBJECT_VERSION: {
        const version = await this.readVersion(ref.id, ref.contentHash);
        if (!version) throw new NotFoundError(`object version ${key}`, 'node');
        return {
          node: ref,
          body: { $case: 'objectVersion', value: version },
          generatedBy: this.index.generatorOf(key) ?? '',
          relatedSteps: this.index.consumersOf(key),
          firstSeenNs,
        };
      }
      case NodeKind.NODE_KIND_OBJECT: {
        if (!this.index.has(key)) throw new NotFoundError(`object ${JSON.stringify(ref.id)}`, 'node.id');
        const versionKeys = this.index.membersOf(key);
        const versions = await Promise.all(versionKeys.map((k) => this.readVersion(ref.id, parseNodeKey(k).contentHash)));
        return {
          node: ref,
          body: { $case: 'object', value: { objectId: ref.id, versions: versions.filter((v): v is ObjectVersion => v !== undefined) } },
          generatedBy: '',
          relatedSteps: this.index.consumersOf(key),
          firstSeenNs,
        };
      }
      case NodeKind.NODE_KIND_TRANSFORM: {
        if (!this.index.has(key)) throw new NotFoundError(`transform ${JSON.stringify(ref.id)}`, 'node.id');
        return { node: ref, body: undefined, generatedBy: '', relatedSteps: this.index.membersOf(key), firstSeenNs };
      }
      default:
        throw new InvalidArgumentError('node.kind', 'is required');
    }
  }

  /** Closure of a node; unset fields take their proto defaults. */
  async trace(partial: Partial<TraceRequest>): Promise<TraceResponse> {
    const request: TraceRequest = { ...TRACE_DEFAULTS, ...partial };
    const start = request.start;
    if (!start) throw new InvalidArgumentError('start', 'is required');
    checkNodeRef(start, 'start');
    checkAsOf(request.asOfNs);
    if (!(request.view in TraceView) || request.view === TraceView.UNRECOGNIZED) throw new InvalidArgumentError('view', `unknown view ${request.view}`);
    const key = nodeKey(start);
    const id = this.index.idOf(key);
    if (id === undefined) throw new NotFoundError(`node ${key}`, 'start');
    if (request.pageSize > MAX_PAGE) throw new InvalidArgumentError('page_size', `at most ${MAX_PAGE}`);
    const pageSize = request.pageSize === 0 ? DEFAULT_PAGE : request.pageSize;
    const asOfMs = request.asOfNs === '0' || request.asOfNs === '' ? Number.POSITIVE_INFINITY : nsToMs(BigInt(request.asOfNs));
    // A node first seen after as_of did not exist then: unknown, as an unknown node is, not an empty closure.
    if (this.index.timeOf(id) > asOfMs) throw new NotFoundError(`node ${key}`, 'start', `at as_of_ns ${request.asOfNs} (${nanosToIso(request.asOfNs)})`);
    const objectLevel = request.objectLevel || start.kind === NodeKind.NODE_KIND_OBJECT || start.kind === NodeKind.NODE_KIND_TRANSFORM;
    const direction = request.direction === Direction.DIRECTION_UNSPECIFIED ? Direction.DIRECTION_DOWNSTREAM : request.direction;
    // Needed only to read or write a page token: a closure that fits one page skips the hashing.
    const query = (): string => traceQueryFingerprint({ key, direction, depth: request.depth, asOfMs, objectLevel, view: request.view, includeEdges: request.includeEdges });
    const offset = request.pageToken === '' ? 0 : decodePageToken(request.pageToken, query());
    let starts = [id];
    if (start.kind === NodeKind.NODE_KIND_TRANSFORM || start.kind === NodeKind.NODE_KIND_RUN) {
      // As of a time, only the steps recorded by then (the walk filters edges, not starts).
      starts = this.index.membersOf(key).map((k) => this.index.idOf(k) as number).filter((n) => this.index.timeOf(n) <= asOfMs);
    } else if (objectLevel && start.kind === NodeKind.NODE_KIND_OBJECT_VERSION) {
      starts = [this.index.idOf(`object:${start.id}`) as number];
    }
    const depth = request.depth;
    let nodes: Int32Array;
    let distances: Int32Array;
    if (direction === Direction.DIRECTION_BOTH) {
      const down = this.index.walk(starts, { mode: 'down', objectLevel, depth, asOfMs });
      const up = this.index.walk(starts, { mode: 'up', objectLevel, depth, asOfMs });
      // At object level a cycle across versions (raw → … → a new version of raw) puts nodes both
      // upstream and downstream: each is answered once, at its downstream distance.
      const seen = new Set<number>(down.nodes);
      nodes = new Int32Array(down.nodes.length + up.nodes.length);
      distances = new Int32Array(nodes.length);
      nodes.set(down.nodes);
      distances.set(down.distances);
      let n = down.nodes.length;
      for (let i = 0; i < up.nodes.length; i++) {
        const id = up.nodes[i] as number;
        if (seen.has(id)) continue;
        nodes[n] = id;
        distances[n++] = up.distances[i] as number;
      }
      nodes = nodes.subarray(0, n);
      distances = distances.subarray(0, n);
    } else {
      const mode = direction === Direction.DIRECTION_UPSTREAM ? 'up' : direction === Direction.DIRECTION_ANY ? 'any' : 'down';
      if (direction !== Direction.DIRECTION_DOWNSTREAM && mode === 'down') throw new InvalidArgumentError('direction', 'unknown direction');
      // Views of the index's scratch buffers: used (copied) below before anything walks again.
      ({ nodes, distances } = this.index.walkScratch(starts, { mode, objectLevel, depth, asOfMs }));
    }
    // A transform's or run's own steps are part of its answer. Walks never return their starts.
    if (start.kind === NodeKind.NODE_KIND_TRANSFORM || start.kind === NodeKind.NODE_KIND_RUN) {
      const withStarts = new Int32Array(starts.length + nodes.length);
      withStarts.set(starts);
      withStarts.set(nodes, starts.length);
      const d = new Int32Array(withStarts.length);
      d.set(distances, starts.length);
      nodes = withStarts;
      distances = d;
    }
    const end = Math.max(offset, Math.min(nodes.length, offset + pageSize));
    const nextPageToken = end < nodes.length ? encodePageToken(end, query()) : '';
    const totalNodes = nodes.length.toString();
    const ids = nodes.subarray(offset, end);
    const idDistances = distances.subarray(offset, end);
    const response: TraceResponse = { nodes: [], edges: [], totalNodes, nextPageToken, keys: [], nodeIds: [], distances: [], packedNodeIds: EMPTY_BYTES, packedDistances: EMPTY_BYTES, compactDistances: [], compactCounts: [], compactNodeIds: EMPTY_BYTES };
    switch (request.view) {
      case TraceView.TRACE_VIEW_COMPACT:
        return Object.assign(response, encodeCompactTrace(ids, idDistances));
      case TraceView.TRACE_VIEW_PACKED_IDS:
        response.packedNodeIds = packUint32(ids);
        response.packedDistances = packUint32(idDistances);
        return response;
      case TraceView.TRACE_VIEW_IDS:
        response.nodeIds = Array.from(ids);
        response.distances = Array.from(idDistances);
        return response;
      case TraceView.TRACE_VIEW_KEYS:
        response.keys = Array.from(ids, (n) => this.index.keyOf(n));
        response.distances = Array.from(idDistances);
        return response;
      default:
        break;
    }
    const all = Array.from(ids);
    const dist = Array.from(idDistances);
    const page: TraceNode[] = [];
    for (let i = 0; i < all.length; i++) {
      const n = all[i] as number;
      const k = this.index.keyOf(n);
      page.push({
        node: parseNodeKey(k),
        key: k,
        distance: dist[i] as number,
        timeNs: msToNsString(this.index.timeOf(n)),
        label: this.index.labelOf(n) ?? '',
      });
    }
    const edges: TraceEdge[] = [];
    if (request.includeEdges) {
      const set = new Set<number>(all);
      for (const s of starts) set.add(s);
      for (const [from, to] of this.index.edgesAmong(set, objectLevel, asOfMs)) {
        const fromKind = this.index.kindOf(from);
        if (fromKind === NodeKind.NODE_KIND_STEP) edges.push({ from: this.index.keyOf(to), to: this.index.keyOf(from), kind: EdgeKind.EDGE_KIND_GENERATED_BY });
        else edges.push({ from: this.index.keyOf(to), to: this.index.keyOf(from), kind: EdgeKind.EDGE_KIND_USED });
      }
    }
    response.nodes = page;
    response.edges = edges;
    return response;
  }

  transformObjects(transformId: string, pageSize: number): TransformObjects | undefined {
    const index = this.index;
    const key = nodeKey({ kind: NodeKind.NODE_KIND_TRANSFORM, id: transformId, contentHash: '' });
    if (!index.has(key)) return undefined;
    const { steps, used, generated } = index.transformObjects(key, pageSize);
    let latest: number | undefined;
    let latestUs = Number.NEGATIVE_INFINITY;
    for (const s of steps) {
      // Trace's times are whole microseconds (msToNsString): steps within one tie there.
      const us = Math.round(index.timeOf(s) * 1000);
      if (us > latestUs) {
        latest = s;
        latestUs = us;
      }
    }
    return { latestStepId: latest === undefined ? undefined : index.keyOf(latest).slice('step:'.length), used: objectListOf(index, used).list, generated: objectListOf(index, generated).list };
  }

  runStepOf(runId: string, transformId: string): string | undefined {
    const step = this.index.runStepOf(`run:${runId}`, `transform:${transformId}`);
    return step === undefined ? undefined : this.index.keyOf(step).slice('step:'.length);
  }

  /** Keys of node numbers (from TRACE_VIEW_IDS); empty strings for unknown numbers. */
  resolveNodes(ids: readonly number[]): string[] {
    return ids.map((n) => (n >= 0 && n < this.index.nodeCount ? this.index.keyOf(n) : ''));
  }

  /** Whether the ledger has version `contentHash` of object `objectId`. */
  hasVersion(objectId: string, contentHash: string): boolean {
    return this.index.idOf(versionKey(objectId, contentHash)) !== undefined;
  }

  async getRecordPath(request: GetRecordPathRequest): Promise<GetRecordPathResponse> {
    if (request.objectId === '') throw new InvalidArgumentError('object_id', 'is required');
    if (request.contentHash !== '' && !isContentHash(request.contentHash)) throw new InvalidArgumentError('content_hash', `malformed hash ${JSON.stringify(request.contentHash.slice(0, 80))}; expected sha256:<64 lowercase hex digits>`);
    checkAsOf(request.asOfNs);
    const objectKey = `object:${request.objectId}`;
    if (!this.index.has(objectKey)) throw new NotFoundError(`object ${JSON.stringify(request.objectId)}`, 'object_id');
    const asOfMs = request.asOfNs === '0' || request.asOfNs === '' ? Number.POSITIVE_INFINITY : nsToMs(BigInt(request.asOfNs));
    let hash = request.contentHash;
    if (hash === '') {
      const versions = this.index.membersOf(objectKey).filter((k) => this.index.timeOf(this.index.idOf(k) as number) <= asOfMs);
      const latest = versions[versions.length - 1];
      if (!latest) throw new NotFoundError(`a version of ${JSON.stringify(request.objectId)} as of that time`, 'as_of_ns');
      hash = parseNodeKey(latest).contentHash;
    }
    const key = versionKey(request.objectId, hash);
    const id = this.index.idOf(key);
    if (id === undefined) throw new NotFoundError(`object version ${key}`, 'content_hash');
    const { nodes } = this.index.walk([id], { mode: 'up', objectLevel: false, depth: 0, asOfMs });
    const stepIds = [...nodes].filter((n) => this.index.kindOf(n) === NodeKind.NODE_KIND_STEP);
    const steps = (await Promise.all(stepIds.map((n) => this.readStep(parseNodeKey(this.index.keyOf(n)).id)))).filter((s): s is Step => s !== undefined);
    const record = (await this.readVersion(request.objectId, hash)) ?? emptyVersion(request.objectId, hash);
    return { record, steps: orderByDependencies(steps) };
  }

  /**
   * Runs newest first (by their first event's time, then id), as run listings are read: the
   * latest runs are the ones looked for. The page token is the last listed run's place.
   */
  async listRuns(request: ListRunsRequest): Promise<ListRunsResponse> {
    if (request.pageSize > MAX_PAGE) throw new InvalidArgumentError('page_size', `at most ${MAX_PAGE}`);
    const pageSize = request.pageSize === 0 ? 100 : request.pageSize;
    const after = request.pageToken === '' ? undefined : parseRunToken(request.pageToken);
    const order = this.listNodes(NodeKind.NODE_KIND_RUN, '').sort((a, b) => b.firstSeenMs - a.firstSeenMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    let i = after === undefined ? 0 : order.findIndex((r) => r.firstSeenMs < after.ms || (r.firstSeenMs === after.ms && r.id > after.id));
    if (i < 0) i = order.length;
    const runs: Run[] = [];
    let last: { firstSeenMs: number; id: string } | undefined;
    for (; i < order.length && runs.length < pageSize; i++) {
      const entry = order[i] as { firstSeenMs: number; id: string };
      last = entry;
      const run = await this.readRun(entry.id);
      if (run && (request.namePrefix === '' || run.name.startsWith(request.namePrefix))) runs.push(run);
    }
    const more = i < order.length && last !== undefined;
    return { runs, nextPageToken: more && last ? Buffer.from(JSON.stringify([last.firstSeenMs, last.id])).toString('base64url') : '' };
  }

  async getProof(eventId: string): Promise<GetProofResponse> {
    if (eventId === '') throw new InvalidArgumentError('event_id', 'is required');
    const n = this.eventIds.get(eventId);
    const seq = n === undefined ? undefined : BigInt(n);
    const checkpoint = this.checkpoint;
    if (seq === undefined || !checkpoint || seq >= BigInt(checkpoint.treeSize)) throw new NotFoundError(`event ${JSON.stringify(eventId)}`, 'event_id');
    const entry = await this.store.getEntry(seq);
    if (!entry) throw new NotFoundError(`ledger entry ${seq}`, 'event_id');
    const size = Number(checkpoint.treeSize);
    return {
      seq: seq.toString(),
      leafHash: leafHash(entry.body).toString('hex'),
      entryHash: Buffer.from(entry.entryHash).toString('hex'),
      auditPath: this.merkle.auditPath(Number(seq), size).map((h) => h.toString('hex')),
      checkpoint,
      entryBody: Buffer.from(entry.body).toString('base64'),
    };
  }

  /**
   * The folded view of a step, or undefined. With `asOfMs`, only its events recorded by then
   * (as Trace's edges are): undefined when it had none.
   */
  async readStep(stepId: string, asOfMs = Number.POSITIVE_INFINITY): Promise<Step | undefined> {
    const key = `step:${stepId}`;
    const sole = this.index.soleEventSeqOf(key);
    // The index holds every stored step (it takes a step's event before the store does, and
    // gives it back if the write fails): one it does not know needs no scan of the steps table,
    // which the recompute executor's look-ups of steps not yet run did each time.
    if (sole === undefined && !this.index.has(key)) return undefined;
    const seqs = sole !== undefined ? [sole] : await this.store.entitySeqs('steps', stepId);
    if (seqs.length === 0) return undefined;
    return foldStepEvents(await this.readEvents(seqs), asOfMs);
  }

  /**
   * readStep of each step id, in the order given: the steps with one event (most) in one read of
   * the ledger, which for thousands of steps costs a fraction of a read each. Callers walking
   * many steps pass STEP_READ_BATCH at a time.
   */
  async readSteps(stepIds: readonly string[], asOfMs = Number.POSITIVE_INFINITY): Promise<(Step | undefined)[]> {
    const sole = stepIds.map((id) => this.index.soleEventSeqOf(`step:${id}`));
    const events = new Map<bigint, LineageEvent>();
    for (const entry of await this.store.getEntries(sole.filter((seq): seq is bigint => seq !== undefined))) {
      const event = eventOf(entry);
      if (event) events.set(entry.seq, event);
    }
    return Promise.all(
      stepIds.map((id, i) => {
        const seq = sole[i];
        if (seq === undefined) return this.readStep(id, asOfMs);
        const event = events.get(seq);
        return event ? foldStepEvents([event], asOfMs) : undefined;
      }),
    );
  }

  /** Whether the graph held `ref` as of `asOfMs` (a node appears with its first event). */
  hasNodeAsOf(ref: NodeRef, asOfMs: number): boolean {
    const id = this.index.idOf(nodeKey(ref));
    return id !== undefined && this.index.timeOf(id) <= asOfMs;
  }

  /** The folded view of a run, or undefined when no event names it. */
  async readRun(runId: string): Promise<Run | undefined> {
    const seqs = await this.store.entitySeqs('runs', runId);
    if (seqs.length === 0) return undefined;
    const runs = (await this.readEvents(seqs)).flatMap((e) => (e.body?.$case === 'run' ? [{ timeNs: BigInt(e.eventTimeNs), run: e.body.value }] : []));
    return runs.length > 0 ? foldRuns(runs) : undefined;
  }

  /**
   * The folded view of an object version: its object_version events and the steps that describe
   * it (generated_versions, used_versions); a version known only as a step's output has neither
   * and gets a bare record.
   */
  async readVersion(objectId: string, contentHash: string): Promise<ObjectVersion | undefined> {
    const seqs = (await this.store.objectVersionSeqs(objectId, contentHash)).get(contentHash) ?? [];
    if (seqs.length === 0) return this.index.has(versionKey(objectId, contentHash)) ? emptyVersion(objectId, contentHash) : undefined;
    return foldVersion(objectId, contentHash, await this.readEvents(seqs));
  }

  /**
   * The versions getNode gives each object (its `object` body's versions, in that order), or
   * undefined for an object the graph does not hold. The versions' rows are found by one
   * iterator and their events read together (an event describing several is decoded once): a
   * job's lineage graph over 20,000 records read its 60,000 objects one getNode each, 10 s.
   */
  async readObjects(objectIds: readonly string[]): Promise<(ObjectVersion[] | undefined)[]> {
    const hashes = objectIds.map((id) => {
      const key = nodeKey({ kind: NodeKind.NODE_KIND_OBJECT, id, contentHash: '' });
      return this.index.has(key) ? this.index.membersOf(key).map((k) => parseNodeKey(k).contentHash) : undefined;
    });
    const wanted: string[] = [];
    objectIds.forEach((id, i) => {
      for (const hash of hashes[i] ?? []) wanted.push(`${id}\u0000${hash}`);
    });
    const seqsOf = await this.store.versionSeqs(wanted);
    const unique = [...new Set([...seqsOf.values()].flat())];
    const events = new Map<bigint, LineageEvent>();
    for (const entry of await this.store.getEntries(unique)) {
      const event = eventOf(entry);
      if (event) events.set(entry.seq, event);
    }
    return objectIds.map((id, i) => {
      const list = hashes[i];
      if (list === undefined) return undefined;
      const versions: ObjectVersion[] = [];
      for (const hash of list) {
        const seqs = seqsOf.get(`${id}\u0000${hash}`) ?? [];
        if (seqs.length === 0) {
          if (this.index.has(versionKey(id, hash))) versions.push(emptyVersion(id, hash));
          continue;
        }
        versions.push(foldVersion(id, hash, seqs.flatMap((seq) => events.get(seq) ?? [])));
      }
      return versions;
    });
  }

  /** Events stored at these ledger positions, in the given order. */
  async readEvents(seqs: readonly bigint[]): Promise<LineageEvent[]> {
    const entries = await this.store.getEntries(seqs);
    return entries.flatMap((e) => {
      const event = eventOf(e);
      return event ? [event] : [];
    });
  }

  private transition(to: LineageEngineState): void {
    this.log(`lineage: ${this.state} -> ${to}`);
    this.state = to;
  }
}

/**
 * A query's node: an object version's hash must be one (a malformed one is bad input, not an
 * unknown node), and every node needs an id.
 */
function checkNodeRef(ref: NodeRef, field: string): void {
  if (!(ref.kind in NodeKind) || ref.kind === NodeKind.NODE_KIND_UNSPECIFIED || ref.kind === NodeKind.UNRECOGNIZED) {
    throw new InvalidArgumentError(`${field}.kind`, 'must be OBJECT, OBJECT_VERSION, STEP, RUN or TRANSFORM');
  }
  if (ref.id === '') throw new InvalidArgumentError(`${field}.id`, 'is required');
  if (ref.kind === NodeKind.NODE_KIND_OBJECT_VERSION && !isContentHash(ref.contentHash)) {
    throw new InvalidArgumentError(`${field}.content_hash`, ref.contentHash === '' ? 'is required for an object version (sha256:<64 hex digits>)' : `malformed hash ${JSON.stringify(ref.contentHash.slice(0, 80))}; expected sha256:<64 lowercase hex digits>`);
  }
}

/** as_of_ns: 0 (now) or a time in nanoseconds since the epoch. */
function checkAsOf(asOfNs: string): void {
  if (asOfNs !== '' && asOfNs.startsWith('-')) throw new InvalidArgumentError('as_of_ns', `must be 0 (now) or nanoseconds since the epoch, got ${asOfNs}`);
}

/** The event a stored ledger entry holds, if any. */
function eventOf(entry: StoredEntry): LineageEvent | undefined {
  return LedgerEntryBody.decode(new AsciiBinaryReader(entry.body)).event;
}

/** The folded view of a step from its events; with `asOfMs`, those recorded by then. */
function foldStepEvents(events: readonly LineageEvent[], asOfMs: number): Step | undefined {
  const folded = events.flatMap((e) => (e.body?.$case === 'step' && nsToMs(BigInt(e.eventTimeNs)) <= asOfMs ? [{ timeNs: BigInt(e.eventTimeNs), step: e.body.value }] : []));
  return folded.length > 0 ? foldSteps(folded) : undefined;
}

/**
 * An object version folded from the events its rows name: its object_version events and the
 * steps that describe it (generated_versions, used_versions); a bare one when none describes it.
 */
function foldVersion(objectId: string, contentHash: string, events: readonly LineageEvent[]): ObjectVersion {
  const versions: { timeNs: bigint; version: ObjectVersion }[] = [];
  for (const e of events) {
    if (e.body?.$case === 'objectVersion') versions.push({ timeNs: BigInt(e.eventTimeNs), version: e.body.value });
    else if (e.body?.$case === 'step') {
      for (const v of describedVersions(e.body.value)) {
        if (v.objectId === objectId && v.contentHash === contentHash) versions.push({ timeNs: BigInt(e.eventTimeNs), version: v });
      }
    }
  }
  return versions.length > 0 ? foldObjectVersions(versions) : emptyVersion(objectId, contentHash);
}

function emptyVersion(objectId: string, contentHash: string): ObjectVersion {
  return { objectId, contentHash, size: '0', mediaType: '', createdAtNs: '0', attributes: {}, facets: undefined };
}

/** Dependencies before dependants; ties by start time, then step id. */
export function orderByDependencies(steps: Step[]): Step[] {
  const producers = new Map<string, Step>();
  for (const s of steps) for (const g of s.generated) producers.set(`${g.objectId}@${g.contentHash}`, s);
  const sorted = [...steps].sort((a, b) => compareNs(a.startedAtNs, b.startedAtNs) || a.stepId.localeCompare(b.stepId));
  const done = new Set<Step>();
  const out: Step[] = [];
  const visit = (s: Step, stack: Set<Step>): void => {
    if (done.has(s) || stack.has(s)) return;
    stack.add(s);
    for (const u of s.used) {
      const p = producers.get(`${u.objectId}@${u.contentHash}`);
      if (p) visit(p, stack);
    }
    stack.delete(s);
    done.add(s);
    out.push(s);
  };
  for (const s of sorted) visit(s, new Set());
  return out;
}

function compareNs(a: string, b: string): number {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

export function nsToMs(ns: bigint): number {
  return Number(ns / 1000n) / 1000;
}

function msToNsString(ms: number): string {
  if (!Number.isFinite(ms)) return '0';
  return (BigInt(Math.round(ms * 1000)) * 1000n).toString();
}

const EMPTY_BYTES = Buffer.alloc(0);

/**
 * A hasher job over the rows of entries[from..]. Rows writeEntryBody built already lie in one
 * shared buffer, which the job names as is; otherwise (a row encoded another way, or rows on
 * both sides of a new chunk) they are copied into a new one and the entries pointed at them.
 */
function packRows(entries: PreparedEntry[], from: number): { buf: SharedArrayBuffer; offsets: Int32Array } {
  const offsets = new Int32Array(2 * (entries.length - from));
  const shared = ((entries[from] as PreparedEntry).value as Uint8Array).buffer;
  let total = 0;
  let inPlace = shared instanceof SharedArrayBuffer;
  for (let i = from; i < entries.length; i++) {
    const value = (entries[i] as PreparedEntry).value as Uint8Array;
    offsets[2 * (i - from)] = value.byteOffset;
    offsets[2 * (i - from) + 1] = value.byteOffset + value.length;
    total += value.length;
    if (value.buffer !== shared) inPlace = false;
  }
  if (inPlace) return { buf: shared as SharedArrayBuffer, offsets };
  const buf = new SharedArrayBuffer(total);
  const arena = Buffer.from(buf);
  let pos = 0;
  for (let i = from; i < entries.length; i++) {
    const e = entries[i] as PreparedEntry;
    const value = e.value as Uint8Array;
    arena.set(value, pos);
    offsets[2 * (i - from)] = pos;
    offsets[2 * (i - from) + 1] = pos + value.length;
    e.value = arena.subarray(pos, pos + value.length);
    pos += value.length;
  }
  return { buf, offsets };
}

/** Bytes of shared memory writeEntryBody takes at a time for the rows it builds. */
const ROW_CHUNK_BYTES = 4 << 20;

/**
 * Where writeEntryBody builds rows: in shared memory, so that the hasher (which writes their
 * entry hashes in place) takes them where they lie. Built one allocation a row and then copied
 * into a hasher job, they cost the committer a copy and a view a row, and the collector an
 * 8 KiB pool buffer every 23 rows. A chunk lives while any row in it does; the batch copies
 * the rows, so that is until a group is sealed.
 */
let rowChunk = { bytes: Buffer.from(new SharedArrayBuffer(0)), pos: 0 };

/**
 * 32 free bytes, then LedgerEntryBody { seq = 1; received_at_ns = 2; event = 3 } written by hand
 * around the event's own bytes, field for field what LedgerEntryBody.encode writes (zero scalars
 * left out). `receivedAt` is field 2 already encoded (tag and varint), shared by a commit group.
 */
function writeEntryBody(seq: number, receivedAt: Uint8Array, event: Uint8Array): Buffer {
  const head = 32 + (seq === 0 ? 0 : 1 + varintLength(seq)) + receivedAt.length + 1 + varintLength(event.length);
  const length = head + event.length;
  if (rowChunk.pos + length > rowChunk.bytes.length) rowChunk = { bytes: Buffer.from(new SharedArrayBuffer(Math.max(ROW_CHUNK_BYTES, length))), pos: 0 };
  const out = rowChunk.bytes.subarray(rowChunk.pos, rowChunk.pos + length);
  rowChunk.pos += length;
  let pos = 32;
  if (seq !== 0) {
    out[pos++] = 0x08;
    pos = writeVarint(out, pos, seq);
  }
  out.set(receivedAt, pos);
  pos += receivedAt.length;
  out[pos++] = 0x1a;
  pos = writeVarint(out, pos, event.length);
  out.set(event, pos);
  return out;
}

/** Field 2 (int64 received_at_ns) as LedgerEntryBody.encode writes it: nothing for zero. */
function encodeReceivedAt(ns: bigint): Uint8Array {
  if (ns === 0n) return new Uint8Array(0);
  const bytes = [0x10];
  let v = BigInt.asUintN(64, ns);
  while (v >= 0x80n) {
    bytes.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  bytes.push(Number(v));
  return Uint8Array.from(bytes);
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** Little-endian uint32s of `values` (non-negative int32s), in a fresh buffer. */
function packUint32(values: Int32Array): Buffer {
  if (LITTLE_ENDIAN) return Buffer.from(values.slice().buffer);
  const out = Buffer.allocUnsafe(values.length * 4);
  for (let i = 0; i < values.length; i++) out.writeUInt32LE(values[i] as number, i * 4);
  return out;
}

/**
 * What a Trace page token is tied to: everything that shapes the closure and its pages but the
 * page size (which, as in AIP-158, may change between pages). A token from another query would
 * silently page through the wrong answer.
 */
function traceQueryFingerprint(q: { key: string; direction: Direction; depth: number; asOfMs: number; objectLevel: boolean; view: TraceView; includeEdges: boolean }): string {
  const view = q.view === TraceView.TRACE_VIEW_UNSPECIFIED ? TraceView.TRACE_VIEW_FULL : q.view;
  const text = JSON.stringify([q.key, q.direction, q.depth, Number.isFinite(q.asOfMs) ? q.asOfMs : 'now', q.objectLevel, view, q.includeEdges]);
  return createHash('sha256').update(text).digest('base64url').slice(0, 16);
}

function encodePageToken(offset: number, query: string): string {
  return Buffer.from(JSON.stringify({ o: offset, q: query })).toString('base64url');
}

/** The offset a page token resumes at. Throws for a malformed token or one of another query. */
function decodePageToken(token: string, query: string): number {
  let v: { o?: unknown; q?: unknown };
  try {
    v = JSON.parse(Buffer.from(token, 'base64url').toString()) as { o?: unknown; q?: unknown };
    if (typeof v.o !== 'number' || !Number.isInteger(v.o) || v.o < 0) throw new Error('bad offset');
  } catch {
    throw new InvalidArgumentError('page_token', 'malformed page token');
  }
  if (v.q !== query) {
    throw new InvalidArgumentError('page_token', 'was issued for a different query: repeat the first page\'s start, direction, depth, as_of_ns, object_level, view and include_edges with it (only page_size may change), or leave it empty to start over');
  }
  return v.o;
}

export type { NodeRef };

function isDeferred(events: readonly LineageEvent[] | DeferredEvents): events is DeferredEvents {
  return !Array.isArray(events);
}

/** Normalises a submission's events; `given` bytes are kept for the events normalising leaves unchanged. */
function normalizeAll(
  events: readonly LineageEvent[],
  given: CheckedEventBytes | undefined,
  receivedAt: string,
): { normalized: LineageEvent[]; wire: (Uint8Array | undefined)[] | undefined } {
  const bytes = given !== undefined && given.length === events.length ? given : undefined;
  const normalized = new Array<LineageEvent>(events.length);
  const wire = bytes ? new Array<Uint8Array | undefined>(events.length) : undefined;
  const plain = bytes?.plain;
  for (let i = 0; i < events.length; i++) {
    if (plain !== undefined && plain[i] === 1 && wire && bytes?.[i] !== undefined) {
      normalized[i] = events[i] as LineageEvent;
      wire[i] = bytes[i];
      continue;
    }
    const n = normalizeEventChecked(events[i] as LineageEvent, `events[${i}]`, receivedAt);
    normalized[i] = n.event;
    if (wire && bytes) wire[i] = n.changed ? undefined : bytes[i];
  }
  return { normalized, wire };
}

/** A ListRuns page token: [first event ms, run id] of the last run listed. */
function parseRunToken(token: string): { ms: number; id: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, 'base64url').toString());
  } catch {
    parsed = undefined;
  }
  if (!Array.isArray(parsed) || parsed.length !== 2 || typeof parsed[0] !== 'number' || typeof parsed[1] !== 'string') {
    throw new InvalidArgumentError('page_token', 'is not a token from a previous ListRuns response');
  }
  return { ms: parsed[0], id: parsed[1] };
}

const OBJECT_PREFIX = 'object:';

/** The objects of graph nodes `ids` as an ObjectList (ids made strings only when asked for), and the node of each entry. */
function objectListOf(index: GraphIndex, ids: ArrayLike<number>): { list: ObjectList; node: (i: number) => number } {
  const from = OBJECT_PREFIX.length;
  const node = (i: number): number => {
    const n = ids[i];
    if (n === undefined) throw new RangeError(`no object ${i} of ${ids.length}`);
    return n;
  };
  const list: ObjectList = {
    length: ids.length,
    objectId: (i) => index.keyOf(node(i)).slice(from),
    firstSeenMs: (i) => index.timeOf(node(i)),
    idStartsWith: (i, prefix) => index.keyStartsWith(node(i), prefix, from),
  };
  return { list, node };
}
