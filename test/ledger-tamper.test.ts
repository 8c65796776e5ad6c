import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LineageServiceDefinition } from '../common/gen/retrace/v1/lineage.js';
import { LedgerEntryBody, LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { contentHashOf } from '../common/hash.js';
import { versionKey } from '../common/lineage-keys.js';
import { readPublicKey } from '../coordinator/ledger/checkpoint-signer.js';
import { verifyLedger, type VerifyReport } from '../coordinator/ledger/ledger-verifier.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { adjacencyKey, entityKey, LineageStore, objectRowKey, seqKey } from '../coordinator/store/lineage-store.js';
import { runCliProcess } from './helpers/coordinator-process.js';
import { filledDataDir } from './helpers/test-coordinator.js';

/**
 * Tamper evidence of the ledger: a real coordinator fills a LevelDB data dir, is stopped, and each
 * case alters a fresh copy of it directly (ledger values, index rows, a whole re-chained entry);
 * verifyLedger and `retrace verify` must report the altered entry.
 */

const BASE_NS = 1_710_000_000_000_000_000n;
const PRODUCER = 'test://ledger-tamper';
/** Events per submission; each submission is one commit with its own signed checkpoint. */
const BATCH = 5;

const hash = (content: string): string => contentHashOf(content);

/** The events in ledger order: event i is entry (seq) i. */
function buildEvents(): LineageEvent[] {
  const events: LineageEvent[] = [];
  const add = (partial: Parameters<typeof LineageEvent.fromPartial>[0]): void => {
    events.push(LineageEvent.fromPartial({ eventTimeNs: (BASE_NS + BigInt(events.length) * 1_000_000_000n).toString(), producer: PRODUCER, ...partial }));
  };
  const run = (runId: string, state: string): void => add({ eventId: `run:${runId}:${state}`, body: { $case: 'run', value: { runId, name: `pipeline-${runId}`, state } } });
  const version = (objectId: string, content: string, id = `obj:${objectId}:${content}`): void =>
    add({ eventId: id, body: { $case: 'objectVersion', value: { objectId, contentHash: hash(content), size: String(content.length), mediaType: 'text/csv' } } });
  run('r1', 'RUNNING');
  run('r2', 'RUNNING');
  for (let i = 0; i < 10; i++) version(`raw/${i}`, `raw ${i}`);
  for (let i = 0; i < 10; i++) {
    add({
      eventId: `step:clean-${i}`,
      body: { $case: 'step', value: { stepId: `clean-${i}`, runId: 'r1', transform: 'clean', used: [{ objectId: `raw/${i}`, contentHash: hash(`raw ${i}`) }], generated: [{ objectId: `clean/${i}`, contentHash: hash(`clean ${i}`) }] } },
    });
  }
  for (let k = 0; k < 5; k++) {
    add({
      eventId: `step:join-${k}`,
      body: {
        $case: 'step',
        value: {
          stepId: `join-${k}`,
          runId: 'r2',
          transform: 'join',
          used: [
            { objectId: `clean/${2 * k}`, contentHash: hash(`clean ${2 * k}`) },
            { objectId: `clean/${2 * k + 1}`, contentHash: hash(`clean ${2 * k + 1}`) },
            { objectId: 'lookup', unversioned: true },
          ],
          generated: [{ objectId: `joined/${k}`, contentHash: hash(`joined ${k}`) }],
        },
      },
    });
  }
  // A step that describes its outputs' versions itself (generated_versions): an objects row each.
  add({
    eventId: 'step:split-0',
    body: {
      $case: 'step',
      value: {
        stepId: 'split-0',
        runId: 'r2',
        transform: 'split',
        used: [
          { objectId: 'joined/0', contentHash: hash('joined 0') },
          { objectId: 'rules', contentHash: hash('rules') },
        ],
        usedVersions: { versions: [{ objectId: 'rules', contentHash: hash('rules'), size: '5', mediaType: 'text/plain', createdAtNs: '0', attributes: {} }] },
        generated: [0, 1].map((p) => ({ objectId: `split/${p}`, contentHash: hash(`split ${p}`) })),
        generatedVersions: { versions: [0, 1].map((p) => ({ objectId: `split/${p}`, contentHash: hash(`split ${p}`), size: '7', mediaType: 'text/csv', createdAtNs: '0', attributes: { part: String(p) } })) },
      },
    },
  });
  version('clean/0', 'clean 0', 'obj:clean/0:described');
  run('r1', 'COMPLETE');
  for (let v = 2; v <= 5; v++) version('raw/0', `raw 0 v${v}`);
  return events;
}

const EVENTS = buildEvents();
const seqOf = (eventId: string): bigint => {
  const i = EVENTS.findIndex((e) => e.eventId === eventId);
  if (i < 0) throw new Error(`no event ${eventId}`);
  return BigInt(i);
};
const eventAt = (seq: bigint): LineageEvent => EVENTS[Number(seq)] as LineageEvent;

let baseDir: string;
const openDbs: Database[] = [];
const copies: string[] = [];

beforeAll(async () => {
  baseDir = await filledDataDir(async (tc) => {
    const client = tc.client(LineageServiceDefinition);
    for (let i = 0; i < EVENTS.length; i += BATCH) {
      const events = EVENTS.slice(i, i + BATCH);
      const r = await client.submitEvents(
        (async function* () {
          yield { events };
        })(),
      );
      expect(r.accepted).toBe(String(events.length));
    }
    for (const [i, e] of EVENTS.entries()) expect((await client.getProof({ eventId: e.eventId })).seq).toBe(String(i));
  });
});

afterAll(() => {
  if (baseDir) rmSync(baseDir, { recursive: true, force: true });
});

afterEach(async () => {
  for (const db of openDbs.splice(0)) if (db.status === 'open') await db.close();
  for (const d of copies.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A fresh copy of the filled data dir. */
function copyData(): string {
  const dir = mkdtempSync(join(tmpdir(), 'retrace-tamper-'));
  copies.push(dir);
  cpSync(baseDir, dir, { recursive: true });
  return dir;
}

/** Opens the copy's LevelDB (the coordinator is stopped), lets `tamper` change it, and verifies. */
async function tamperAndVerify(tamper: (store: LineageStore) => Promise<void>, dir = copyData()): Promise<VerifyReport> {
  const db = await openDatabase(join(dir, 'db'));
  openDbs.push(db);
  const store = new LineageStore(db);
  await tamper(store);
  const publicKey = readPublicKey(dir);
  expect(publicKey).toBeDefined();
  const report = await verifyLedger(store, publicKey ? { publicKey } : {});
  await db.close();
  return report;
}

function entityRowKey(seq: bigint): { table: 'objects' | 'steps' | 'runs'; key: string } {
  const body = eventAt(seq).body;
  const s = seqKey(seq);
  switch (body?.$case) {
    case 'objectVersion':
      return { table: 'objects', key: entityKey({ table: 'objects', objectId: body.value.objectId, contentHash: body.value.contentHash }, s) };
    case 'step':
      return { table: 'steps', key: entityKey({ table: 'steps', stepId: body.value.stepId }, s) };
    case 'run':
      return { table: 'runs', key: entityKey({ table: 'runs', runId: body.value.runId }, s) };
    default:
      throw new Error(`entry ${seq} has no body`);
  }
}

function adjacencyRowKey(seq: bigint): string {
  return adjacencyKey(BigInt(eventAt(seq).eventTimeNs), seqKey(seq));
}

const runCli = (args: string[]) => runCliProcess(args);

/** Flips one bit of entry `seq`'s stored value at `offset` (0..31: the stored hash; 32..: the body). */
async function flipByte(store: LineageStore, seq: bigint, offset: number): Promise<void> {
  const value = await store.ledger.get(seqKey(seq));
  if (!value) throw new Error(`no entry ${seq}`);
  const changed = Uint8Array.from(value);
  changed[offset] = (changed[offset] as number) ^ 0x01;
  await store.ledger.put(seqKey(seq), changed);
}

/**
 * Rewrites entry `seq` (its decoded body handed to `change`) and recomputes its stored hash and
 * every later one, so the hash chain is consistent again.
 */
async function rewriteAndRechain(store: LineageStore, seq: bigint, change: (body: LedgerEntryBody) => void): Promise<void> {
  const before = await store.getEntry(seq - 1n);
  if (!before) throw new Error('no previous entry');
  let head: Uint8Array = before.entryHash;
  const entries: { seq: bigint; body: Uint8Array }[] = [];
  for await (const e of store.entries(seq)) entries.push({ seq: e.seq, body: Uint8Array.from(e.body) });
  const target = entries[0];
  if (!target) throw new Error(`no entry ${seq}`);
  const decoded = LedgerEntryBody.decode(target.body);
  // The canonical encoding round-trips, so only the intended fields change.
  expect(Buffer.from(LedgerEntryBody.encode(decoded).finish()).equals(Buffer.from(target.body))).toBe(true);
  change(decoded);
  target.body = LedgerEntryBody.encode(decoded).finish();
  for (const e of entries) {
    const entryHash = createHash('sha256').update(head).update(e.body).digest();
    const value = new Uint8Array(32 + e.body.length);
    value.set(entryHash, 0);
    value.set(e.body, 32);
    await store.ledger.put(seqKey(e.seq), value);
    head = entryHash;
  }
}

describe('ledger verification of a tampered data dir', () => {
  it('passes on an untouched copy', async () => {
    const report = await tamperAndVerify(async () => {});
    expect(report).toMatchObject({ ok: true, entriesChecked: BigInt(EVENTS.length) });
    expect(report.checkpoint?.treeSize).toBe(String(EVENTS.length));
  });

  it.each([
    ['a body byte', 32 + 7],
    ['a byte of the stored hash', 3],
  ])('(a) flipping %s of one stored ledger value names that entry', async (_what, offset) => {
    const seq = seqOf('step:clean-3');
    const report = await tamperAndVerify((store) => flipByte(store, seq, offset));
    expect(report.ok).toBe(false);
    expect(report.firstBadSeq).toBe(seq);
    expect(report.problem).toContain(`entry ${seq}: stored hash does not match`);
    expect(report.entriesChecked).toBe(seq);
  });

  it('(b) an entry rewritten, and the chain after it, to repeat an earlier event id', async () => {
    const seq = seqOf('obj:raw/4:raw 4');
    const report = await tamperAndVerify((store) =>
      rewriteAndRechain(store, seq, (body) => {
        (body.event as LineageEvent).eventId = 'obj:raw/3:raw 3';
      }),
    );
    expect(report).toMatchObject({ ok: false, firstBadSeq: seq, entriesChecked: seq });
    expect(report.problem).toBe(`entry ${seq} repeats event id "obj:raw/3:raw 3" of entry ${seqOf('obj:raw/3:raw 3')}: an event is stored once`);
  });

  it.each([
    ['objects', 'obj:raw/6:raw 6'],
    ['objects', 'obj:clean/0:described'],
    ['steps', 'step:join-2'],
    ['runs', 'run:r2:RUNNING'],
  ])('(c) a deleted %s index row (%s)', async (table, eventId) => {
    const seq = seqOf(eventId);
    const row = entityRowKey(seq);
    expect(row.table).toBe(table);
    const report = await tamperAndVerify(async (store) => {
      const sub = store[row.table];
      expect(await sub.get(row.key)).toBe('');
      await sub.del(row.key);
    });
    expect(report).toMatchObject({ ok: false, firstBadSeq: seq });
    expect(report.problem).toBe(`${table} row for entry is missing`);
  });

  it.each([
    ['an output (generated_versions), deleted', 'is missing'],
    ['an output (generated_versions), moved to another version', 'does not match any ledger entry'],
    ['an input (used_versions), deleted', 'is missing'],
  ])('(c) an objects row of a version a step describes, %s', async (how, problem) => {
    const seq = seqOf('step:split-0');
    const [id, content] = how.includes('used_versions') ? ['rules', 'rules'] : ['split/1', 'split 1'];
    const key = objectRowKey(id, hash(content), seqKey(seq));
    const report = await tamperAndVerify(async (store) => {
      expect(await store.objects.get(key)).toBe('');
      await store.objects.del(key);
      if (how.includes('moved')) await store.objects.put(objectRowKey('split/1', hash('split 2'), seqKey(seq)), '');
    });
    expect(report).toMatchObject({ ok: false, firstBadSeq: seq });
    expect(report.problem).toContain(problem);
  });

  it('(d) an adjacency row given a value (rows point at their entry and hold nothing)', async () => {
    const seq = seqOf('step:join-1');
    const report = await tamperAndVerify(async (store) => {
      const key = adjacencyRowKey(seq);
      expect(await store.adjacency.get(key)).toBe('');
      await store.adjacency.put(key, JSON.stringify({ s: 'join-1', u: [], g: [versionKey('ghost', hash('ghost'))] }));
    });
    expect(report).toMatchObject({ ok: false, firstBadSeq: seq });
    expect(report.problem).toBe(`adjacency row of entry ${seq} was altered`);
  });

  it("(d) adjacency rows as an earlier version wrote them (the step's edges as JSON) verify, and an altered one is named", async () => {
    const legacyValue = (seq: bigint): string => {
      const body = eventAt(seq).body;
      if (body?.$case !== 'step') throw new Error(`entry ${seq} is not a step`);
      const s = body.value;
      return JSON.stringify({ s: s.stepId, u: s.used.map((r) => (r.unversioned ? `object:${r.objectId}` : versionKey(r.objectId, r.contentHash))), g: s.generated.map((r) => versionKey(r.objectId, r.contentHash)) });
    };
    const steps = EVENTS.map((_, i) => BigInt(i)).filter((seq) => eventAt(seq).body?.$case === 'step');
    expect(steps.length).toBeGreaterThan(10);
    const toLegacy = async (store: LineageStore): Promise<void> => {
      for (const seq of steps) await store.adjacency.put(adjacencyRowKey(seq), legacyValue(seq));
    };
    const dir = copyData();
    expect(await tamperAndVerify(toLegacy, dir)).toMatchObject({ ok: true });
    const seq = seqOf('step:join-1');
    const report = await tamperAndVerify(async (store) => {
      const row = JSON.parse(legacyValue(seq)) as { s: string; u: string[]; g: string[] };
      expect(row.u).toContain(versionKey('clean/2', hash('clean 2')));
      row.u = row.u.filter((u) => u !== versionKey('clean/2', hash('clean 2')));
      await store.adjacency.put(adjacencyRowKey(seq), JSON.stringify(row));
    }, dir);
    expect(report).toMatchObject({ ok: false, firstBadSeq: seq });
    expect(report.problem).toBe(`adjacency row of entry ${seq} was altered`);
  });

  it('(d) an adjacency row moved to another time', async () => {
    const seq = seqOf('step:clean-7');
    const report = await tamperAndVerify(async (store) => {
      const key = adjacencyRowKey(seq);
      const value = await store.adjacency.get(key);
      if (value === undefined) throw new Error('no adjacency row');
      await store.adjacency.del(key);
      await store.adjacency.put(adjacencyKey(BASE_NS - 1n, seqKey(seq)), value);
    });
    expect(report).toMatchObject({ ok: false, firstBadSeq: seq });
    expect(report.problem).toMatch(/adjacency row .*(does not match any ledger entry|is missing)/);
  });

  it.each([
    ['objects', (seq: bigint) => ({ table: 'objects' as const, key: entityKey({ table: 'objects', objectId: 'bogus/object', contentHash: hash('bogus') }, seqKey(seq)), value: '' }), /^objects row ".*bogus\/object.*" does not match any ledger entry$/],
    ['steps', (seq: bigint) => ({ table: 'steps' as const, key: entityKey({ table: 'steps', stepId: 'ghost-step' }, seqKey(seq)), value: '' }), /^steps row ".*ghost-step.*" does not match any ledger entry$/],
    [
      'adjacency',
      (seq: bigint) => ({ table: 'adjacency' as const, key: adjacencyKey(BASE_NS + 999n, seqKey(seq)), value: JSON.stringify({ s: 'ghost-step', u: [], g: [versionKey('ghost', hash('ghost'))] }) }),
      /^adjacency row ".*" does not match any ledger entry$/,
    ],
  ])('(e) a bogus %s row names the entry it points at', async (_table, row, problem) => {
    const seq = seqOf('step:clean-8');
    const report = await tamperAndVerify(async (store) => {
      const r = row(seq);
      await store[r.table].put(r.key, r.value);
    });
    expect(report).toMatchObject({ ok: false, firstBadSeq: seq });
    expect(report.problem).toMatch(problem);
  });

  it('(f) a ledger entry deleted in the middle', async () => {
    const seq = seqOf('step:clean-5');
    const report = await tamperAndVerify((store) => store.ledger.del(seqKey(seq)));
    expect(report).toMatchObject({ ok: false, firstBadSeq: seq, entriesChecked: seq });
    expect(report.problem).toBe(`entry ${seq} is missing (next stored entry is ${seq + 1n})`);
  });

  it('(f) the last ledger entry deleted is caught by the checkpoint that covers it', async () => {
    const last = BigInt(EVENTS.length - 1);
    const report = await tamperAndVerify((store) => store.ledger.del(seqKey(last)));
    expect(report).toMatchObject({ ok: false, firstBadSeq: last });
    expect(report.problem).toContain(`checkpoint at tree size ${EVENTS.length} covers entries that are missing`);
  });

  it('(g) an entry rewritten with its hash and every later hash recomputed is caught by the signed checkpoint', async () => {
    // An object version: the rewrite leaves every index row as it was, and a checkpoint boundary is not at it.
    const seq = seqOf('obj:raw/7:raw 7');
    expect(seq % BigInt(BATCH)).not.toBe(0n);
    const report = await tamperAndVerify((store) =>
      rewriteAndRechain(store, seq, (body) => {
        const ev = body.event;
        if (ev?.body?.$case !== 'objectVersion') throw new Error('expected an object version');
        ev.body.value.size = '999999';
        ev.producer = 'test://forger';
      }),
    );
    expect(report.ok).toBe(false);
    expect(report.firstBadSeq).toBeDefined();
    expect(report.firstBadSeq as bigint).toBeLessThanOrEqual(seq);
    expect(report.problem).toContain('checkpoint');
    expect(report.problem).not.toContain('stored hash does not match');
    const range = /entries (\d+)\.\.(\d+)/.exec(report.problem ?? '');
    expect(range, report.problem).not.toBeNull();
    const [from, to] = [BigInt(range?.[1] ?? -1), BigInt(range?.[2] ?? -1)];
    expect(from).toBe(report.firstBadSeq);
    expect(from <= seq && seq <= to, `${from}..${to} contains ${seq}`).toBe(true);
    // The checkpoints are one per commit of BATCH events, so the range is that commit.
    expect(from).toBe(seq - (seq % BigInt(BATCH)));
  });

  // Every commit writes its checkpoint in the same atomic batch, so an uncovered tail is itself
  // tampering: deleting the checkpoints that cover a re-chained rewrite must not hide it.
  it('(g) a re-chained rewrite whose covering checkpoints were deleted is still caught', async () => {
    const seq = seqOf('step:join-4');
    const report = await tamperAndVerify(async (store) => {
      await rewriteAndRechain(store, seq, (body) => {
        if (body.event) body.event.producer = 'test://forger';
      });
      for await (const k of store.checkpoints.keys()) if (BigInt(`0x${k}`) > seq) await store.checkpoints.del(k);
    });
    expect(report.ok).toBe(false);
    expect(report.firstBadSeq as bigint).toBeLessThanOrEqual(seq);
  });

  it('`retrace verify --data` exits 1 naming the entry on a tampered copy and 0 on an untouched one', async () => {
    const seq = seqOf('step:join-3');
    const tampered = copyData();
    const report = await tamperAndVerify((store) => flipByte(store, seq, 40), tampered);
    expect(report.firstBadSeq).toBe(seq);
    const bad = await runCli(['verify', '--data', tampered]);
    expect(bad.code, bad.stderr).toBe(1);
    expect(bad.stdout).toContain(`TAMPERED: first bad entry ${seq}: entry ${seq}: stored hash does not match`);

    const json = await runCli(['verify', '--data', tampered, '--json']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: false, firstBadSeq: String(seq) });

    const clean = await runCli(['verify', '--data', copyData()]);
    expect(clean.code, clean.stdout + clean.stderr).toBe(0);
    expect(clean.stdout).toContain(`ok: ${EVENTS.length} entries`);
    expect(clean.stdout).toContain(`signed checkpoint at tree size ${EVENTS.length}`);

    // A mistyped path is an error, not an empty ledger that verifies, and nothing is created there.
    const missing = join(copyData(), 'no-such-dir');
    const none = await runCli(['verify', '--data', missing]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain(`no Retrace data in ${missing}`);
    expect(existsSync(missing)).toBe(false);
  });
});
