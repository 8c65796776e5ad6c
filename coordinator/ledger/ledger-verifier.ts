import { createHash } from 'node:crypto';
import { LedgerEntryBody, type Checkpoint, type Step } from '../../common/gen/retrace/v1/provenance.js';
import { versionKey } from '../../common/lineage-keys.js';
import { leafHash, MerkleTree } from '../../common/merkle.js';
import { describedVersions } from '../../common/step-versions.js';
import { KeyTable } from '../lineage/key-table.js';
import { adjacencyKey, entityKey, LedgerRowError, objectRowKey, parseSeqKey, seqKey, type EntityRef, type LineageStore, type StoredEntry } from '../store/lineage-store.js';
import { CHECKPOINT_FILE, ledgerLossMessage } from './checkpoint-file.js';
import { verifyCheckpoint } from './checkpoint-signer.js';

export interface VerifyReport {
  ok: boolean;
  entriesChecked: bigint;
  /** First entry found bad (ok = false); for index rows, the entry the row points at. */
  firstBadSeq?: bigint;
  problem?: string;
  checkpoint?: Checkpoint;
}

/**
 * Recomputes the hash chain and the Merkle tree from the stored entries, checks every signed
 * checkpoint against the recomputed root (signature and, when given, the expected public key),
 * and cross-checks every index row against the entries, both ways: a missing, altered or
 * extra row is reported, and that no event id is stored twice. Works on a live store or on a
 * data dir with the coordinator stopped.
 */
export async function verifyLedger(
  store: LineageStore,
  options: {
    publicKey?: string;
    onProgress?: (checked: bigint) => void;
    /** Verify only the first `treeSize` entries (a live store keeps growing while it is read). */
    treeSize?: bigint;
    /**
     * The checkpoint kept outside the database (checkpoint-file.ts): the ledger must reach its
     * tree size with its root and head, else it lost or rewrote acknowledged entries.
     */
    external?: Checkpoint;
  } = {},
): Promise<VerifyReport> {
  const limit = options.treeSize;
  const checkpoints: Checkpoint[] = [];
  for await (const { key, json } of store.checkpointRows()) {
    // A row altered by hand must be named as such, not end the check with a parse error.
    const cp = parseCheckpointRow(json);
    const keySize = parseSeqKey(key);
    if (!cp || keySize === undefined || BigInt(cp.treeSize) !== keySize) {
      if (limit !== undefined && keySize !== undefined && keySize > limit) continue;
      const what = !cp ? 'is not a checkpoint (it does not parse)' : `holds a checkpoint of tree size ${cp.treeSize}`;
      return { ok: false, entriesChecked: 0n, firstBadSeq: keySize !== undefined && keySize > 0n ? keySize - 1n : 0n, problem: `checkpoint row ${JSON.stringify(key.slice(0, 64))}${keySize !== undefined ? ` (tree size ${keySize})` : ''} ${what}: it was altered` };
    }
    if (limit === undefined || BigInt(cp.treeSize) <= limit) checkpoints.push(cp);
  }
  let cpIndex = 0;
  const tree = new MerkleTree();
  let head: Uint8Array = new Uint8Array(32);
  let expectedSeq = 0n;
  /** Adjacency rows expected: key → the seq of the step entry it points at. */
  const expectedRows = { entities: new Set<string>(), adjacency: new Map<string, bigint>() };
  /** Step entries whose adjacency row has a legacy (non-empty) value, to check against the entry. */
  const legacyRows = new Map<bigint, string>();
  /**
   * Event ids so far, each numbered by its entry's seq (as in the engine): the engine stores an
   * event id once (resubmissions are acknowledged, not stored).
   */
  const eventIds = new KeyTable();
  let lastCheckpoint: Checkpoint | undefined;
  const fail = (seq: bigint, problem: string): VerifyReport => ({ ok: false, entriesChecked: expectedSeq, firstBadSeq: seq, problem, ...(lastCheckpoint ? { checkpoint: lastCheckpoint } : {}) });

  const external = options.external;
  if (external && !verifyCheckpoint(external, options.publicKey ?? external.publicKey)) {
    return { ok: false, entriesChecked: 0n, firstBadSeq: 0n, problem: `${CHECKPOINT_FILE} (the checkpoint kept outside the database, tree size ${external.treeSize}) has a bad signature: it was altered` };
  }
  const externalSize = external ? BigInt(external.treeSize) : -1n;
  const checkExternal = (): VerifyReport | undefined => {
    if (!external || expectedSeq !== externalSize) return undefined;
    if (external.rootHash !== tree.root().toString('hex') || external.headHash !== Buffer.from(head).toString('hex')) {
      return fail(0n, ledgerLossMessage(external, expectedSeq, `the ledger's Merkle root at size ${external.treeSize} differs from it: an entry below ${external.treeSize} was rewritten`));
    }
    return undefined;
  };
  const bad0 = checkExternal();
  if (bad0) return bad0;

  const checkCheckpoints = (): VerifyReport | undefined => {
    while (cpIndex < checkpoints.length && BigInt((checkpoints[cpIndex] as Checkpoint).treeSize) === expectedSeq) {
      const cp = checkpoints[cpIndex] as Checkpoint;
      const from = cpIndex > 0 ? BigInt((checkpoints[cpIndex - 1] as Checkpoint).treeSize) : 0n;
      if (!verifyCheckpoint(cp, options.publicKey ?? cp.publicKey)) return fail(from, `checkpoint at tree size ${cp.treeSize} has a bad signature`);
      if (cp.rootHash !== tree.root().toString('hex')) {
        return fail(from, `Merkle root of entries ${from}..${expectedSeq - 1n} differs from the signed checkpoint at tree size ${cp.treeSize}: an entry in that range was altered`);
      }
      if (cp.headHash !== Buffer.from(head).toString('hex')) return fail(expectedSeq - 1n, `chain head differs from the signed checkpoint at tree size ${cp.treeSize}`);
      lastCheckpoint = cp;
      cpIndex++;
    }
    return undefined;
  };

  const entries = store.entries();
  for (;;) {
    let next: IteratorResult<StoredEntry>;
    try {
      next = await entries.next();
    } catch (err) {
      if (err instanceof LedgerRowError) return fail(expectedSeq, err.message);
      throw err;
    }
    if (next.done) break;
    const entry = next.value;
    if (limit !== undefined && entry.seq >= limit) {
      await entries.return(undefined);
      break;
    }
    if (entry.seq !== expectedSeq) return fail(expectedSeq, `entry ${expectedSeq} is missing (next stored entry is ${entry.seq})`);
    const computed = createHash('sha256').update(head).update(entry.body).digest();
    if (!computed.equals(Buffer.from(entry.entryHash))) return fail(entry.seq, `entry ${entry.seq}: stored hash does not match H(previous hash, body): the entry was altered`);
    let body: LedgerEntryBody;
    try {
      body = LedgerEntryBody.decode(entry.body);
    } catch {
      return fail(entry.seq, `entry ${entry.seq}: body does not decode`);
    }
    if (body.seq !== entry.seq.toString() || !body.event) return fail(entry.seq, `entry ${entry.seq}: body names seq ${body.seq}`);
    const seq = seqKey(entry.seq);
    const ev = body.event;
    const earlier = eventIds.get(ev.eventId);
    if (earlier !== undefined) return fail(entry.seq, `entry ${entry.seq} repeats event id ${JSON.stringify(ev.eventId)} of entry ${earlier}: an event is stored once`);
    eventIds.add(ev.eventId);
    const b = ev.body;
    let entity: EntityRef | undefined;
    if (b?.$case === 'objectVersion') entity = { table: 'objects', objectId: b.value.objectId, contentHash: b.value.contentHash };
    else if (b?.$case === 'run') entity = { table: 'runs', runId: b.value.runId };
    else if (b?.$case === 'step') {
      entity = { table: 'steps', stepId: b.value.stepId };
      expectedRows.adjacency.set(adjacencyKey(BigInt(ev.eventTimeNs), seq), entry.seq);
      for (const v of describedVersions(b.value)) expectedRows.entities.add(`objects\u0000${objectRowKey(v.objectId, v.contentHash, seq)}`);
    }
    if (entity) expectedRows.entities.add(`${entity.table}\u0000${entityKey(entity, seq)}`);
    tree.appendLeafHash(leafHash(entry.body));
    head = computed;
    expectedSeq++;
    const bad = checkCheckpoints() ?? checkExternal();
    if (bad) return bad;
    if (expectedSeq % 10_000n === 0n) options.onProgress?.(expectedSeq);
  }
  // Before the stored checkpoints: a log cut short loses them with the entries they cover.
  if (external && expectedSeq < externalSize) return fail(expectedSeq, ledgerLossMessage(external, expectedSeq));
  if (cpIndex < checkpoints.length) {
    return fail(expectedSeq, `checkpoint at tree size ${(checkpoints[cpIndex] as Checkpoint).treeSize} covers entries that are missing (ledger has ${expectedSeq})`);
  }
  // Every commit writes its checkpoint in the same atomic batch, so entries that no signed
  // checkpoint covers were added or rewritten behind the coordinator's back.
  const covered = lastCheckpoint ? BigInt(lastCheckpoint.treeSize) : 0n;
  if (expectedSeq > covered) {
    return fail(covered, `entries ${covered}..${expectedSeq - 1n} are not covered by any signed checkpoint (last one at tree size ${covered}): they were appended or rewritten outside the coordinator`);
  }

  // Index rows, both ways. The smallest seq at fault is reported.
  let worst: { seq: bigint; problem: string } | undefined;
  const note = (seqHex: string | undefined, problem: string): void => {
    const s = (seqHex === undefined ? undefined : parseSeqKey(seqHex)) ?? 0n;
    if (!worst || s < worst.seq) worst = { seq: s, problem };
  };
  // An older version's event-ids rows (LineageStore.dropLegacyEventIds) are not an index any more: not checked.
  for (const [table, sub] of [['objects', store.objects], ['steps', store.steps], ['runs', store.runs]] as const) {
    for await (const key of sub.keys()) {
      const full = `${table}\u0000${key}`;
      if (!expectedRows.entities.delete(full)) note(key.slice(key.lastIndexOf('\u0000') + 1), `${table} row ${JSON.stringify(key)} does not match any ledger entry`);
    }
  }
  for (const missing of expectedRows.entities) note(missing.slice(missing.lastIndexOf('\u0000') + 1), `${missing.split('\u0000')[0]} row for entry is missing`);
  for await (const [key, value] of store.adjacency.iterator()) {
    const seq = expectedRows.adjacency.get(key);
    const seqHex = key.split('\u0000')[1];
    if (seq === undefined) note(seqHex, `adjacency row ${JSON.stringify(key)} does not match any ledger entry`);
    else if (value !== '') legacyRows.set(seq, value);
    expectedRows.adjacency.delete(key);
  }
  for (const key of expectedRows.adjacency.keys()) note(key.split('\u0000')[1], 'adjacency row for entry is missing');
  // Rows written before adjacency values were dropped repeat the step's edges; they must still match.
  const legacySeqs = [...legacyRows.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  legacy: for (let i = 0; i < legacySeqs.length; i += 256) {
    for (const stored of await store.getEntries(legacySeqs.slice(i, i + 256))) {
      if (worst && worst.seq <= stored.seq) break legacy;
      const ev = LedgerEntryBody.decode(stored.body).event;
      if (ev?.body?.$case !== 'step' || legacyAdjacencyValue(ev.body.value) !== legacyRows.get(stored.seq)) {
        note(seqKey(stored.seq), `adjacency row of entry ${stored.seq} was altered`);
        break legacy;
      }
    }
  }
  if (worst) return fail(worst.seq, worst.problem);
  return { ok: true, entriesChecked: expectedSeq, ...(lastCheckpoint ? { checkpoint: lastCheckpoint } : {}) };
}

/** A checkpoint row's JSON as a checkpoint, or undefined when it is not one. */
function parseCheckpointRow(json: string): Checkpoint | undefined {
  try {
    const cp = JSON.parse(json) as Partial<Checkpoint> | null;
    if (!cp || typeof cp !== 'object' || typeof cp.treeSize !== 'string' || !/^\d+$/.test(cp.treeSize)) return undefined;
    return cp as Checkpoint;
  } catch {
    return undefined;
  }
}

/** The value an adjacency row had before this version: the step's id and edges as JSON. */
function legacyAdjacencyValue(step: Step): string {
  const used = step.used.map((r) => (r.unversioned ? `object:${r.objectId}` : versionKey(r.objectId, r.contentHash)));
  const generated = step.generated.map((r) => versionKey(r.objectId, r.contentHash));
  return JSON.stringify({ s: step.stepId, u: used, g: generated });
}
