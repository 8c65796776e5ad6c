import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadCheckpointSigner } from '../coordinator/ledger/checkpoint-signer.js';
import { verifyLedger } from '../coordinator/ledger/ledger-verifier.js';
import { LineageEngine } from '../coordinator/lineage/lineage-engine.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { LineageStore, seqKey } from '../coordinator/store/lineage-store.js';
import { objectEvent, ref, stepEvent } from './helpers/lineage-events.js';

/**
 * Tampering that used to end `retrace verify` and the coordinator's start with a bare parse
 * error (a checkpoint row that is not JSON, a ledger key that is not a position) or with a
 * submission error ("submit it first") for an altered entry: each must be named as tampering.
 */

const signer = loadCheckpointSigner(null);
let dir: string;
let db: Database;
let store: LineageStore;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'retrace-review-tamper-'));
  db = await openDatabase(join(dir, 'db'));
  store = new LineageStore(db);
  let t = 1_000_000n;
  const engine = new LineageEngine({ store, signer, clock: () => (t += 1000n) });
  await engine.start();
  await engine.submit([objectEvent('o1', 'raw:1', 'r1', '1000'), objectEvent('o2', 'raw:2', 'r2', '1000')]);
  await engine.submit([stepEvent('e1', 's1', [ref('raw:1', 'r1')], [ref('mid:1', 'm1')], { timeNs: '2000' })]);
  await engine.submit([stepEvent('e2', 's2', [ref('mid:1', 'm1')], [ref('out:1', 'x1')], { timeNs: '3000' })]);
  await engine.stop();
  expect((await verifyLedger(store)).ok).toBe(true);
});

afterEach(async () => {
  if (db.status === 'open') await db.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Starts an engine on the (tampered) store; resolves to the error it refused with. */
async function startError(): Promise<string> {
  const engine = new LineageEngine({ store, signer, clock: () => 5_000_000n, log: () => undefined });
  try {
    await engine.start();
  } catch (err) {
    return String(err);
  } finally {
    await engine.stop();
  }
  return 'started';
}

describe('tampering named by verify and refused at start', () => {
  it('a checkpoint row that is not a checkpoint', async () => {
    const keys: string[] = [];
    for await (const k of store.checkpoints.keys()) keys.push(k);
    expect(keys).toEqual([seqKey(2n), seqKey(3n), seqKey(4n)]);
    await store.checkpoints.put(seqKey(3n), '{not json');
    const report = await verifyLedger(store);
    expect(report.ok).toBe(false);
    expect(report.problem).toBe(`checkpoint row "${seqKey(3n)}" (tree size 3) is not a checkpoint (it does not parse): it was altered`);
    expect(report.firstBadSeq).toBe(2n);
    // The latest one is what the coordinator reads at start.
    await store.checkpoints.put(seqKey(4n), 'garbage');
    expect(await startError()).toMatch(/the latest checkpoint row does not parse: it was altered or damaged; run "retrace verify"/);
  });

  it('a checkpoint row moved under another tree size', async () => {
    const cp = await store.checkpoints.get(seqKey(2n));
    await store.checkpoints.put(seqKey(3n), cp as string);
    const report = await verifyLedger(store);
    expect(report.problem).toBe(`checkpoint row "${seqKey(3n)}" (tree size 3) holds a checkpoint of tree size 2: it was altered`);
  });

  it('a ledger row under a key that is not a position', async () => {
    await store.ledger.put('zzzz', new Uint8Array(40));
    const report = await verifyLedger(store);
    expect(report.ok).toBe(false);
    expect(report.problem).toBe('ledger row "zzzz" is not a ledger position (16 hex digits): it was written outside the coordinator');
    expect(report.firstBadSeq).toBe(4n);
    expect(await startError()).toMatch(/ledger row "zzzz" is not a ledger position .*; run "retrace verify"/);
  });

  it('an altered entry that a later one depends on is refused at start as tampering, not as a submission out of order', async () => {
    // Entry 2 (s1) generated mid:1; change the hash it names, so entry 3 (s2) uses a version nothing made.
    const value = Uint8Array.from((await store.ledger.get(seqKey(2n))) as Uint8Array);
    const at = Buffer.from(value).lastIndexOf(Buffer.from('sha256:'));
    value[at + 7] = value[at + 7] === 0x30 ? 0x31 : 0x30;
    await store.ledger.put(seqKey(2n), value);
    expect((await verifyLedger(store)).problem).toMatch(/^entry 2: stored hash does not match/);
    const err = await startError();
    expect(err).toMatch(/ledger entry 3 contradicts the entries before it \(ledger\[3\]\.step\.used\[0\]: unknown object version .*\): the ledger was altered or damaged; run "retrace verify"/);
  });
});
