import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { LineageStore, type PreparedEntry } from '../coordinator/store/lineage-store.js';

/** One contract, two backends: memory-level (fast) and LevelDB in a temp dir (real). */
const backends: [string, () => { dir: string | null; cleanup: () => void }][] = [
  ['memory-level', () => ({ dir: null, cleanup: () => {} })],
  ['LevelDB', () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrace-store-'));
    return { dir: join(dir, 'db'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
  }],
];

const entry = (seq: bigint, e: Partial<PreparedEntry> = {}): PreparedEntry => ({
  seq,
  entryHash: new Uint8Array(32).fill(Number(seq % 255n)),
  body: Buffer.from(`body-${seq}`),
  entity: { table: 'steps', stepId: `s${seq % 3n}` },
  ...e,
});

describe.each(backends)('lineage store contract on %s', (_name, make) => {
  let db: Database;
  let store: LineageStore;
  let env: { dir: string | null; cleanup: () => void };
  beforeEach(async () => {
    env = make();
    db = await openDatabase(env.dir);
    store = new LineageStore(db);
  });
  afterEach(async () => {
    await db.close();
    env.cleanup();
  });

  it('appends entries with their index rows atomically and reads them back in order', async () => {
    await store.append([entry(0n), entry(1n), entry(2n, { adjacency: { timeNs: 5n } })], { treeSize: 3n, json: '{"treeSize":"3"}' });
    await store.append([entry(3n, { entity: { table: 'objects', objectId: 'o', contentHash: 'sha256:1' } }), entry(4n, { entity: { table: 'runs', runId: 'r' } })], { treeSize: 5n, json: '{"treeSize":"5"}' });
    const all = [];
    for await (const e of store.entries()) all.push(e);
    expect(all.map((e) => e.seq)).toEqual([0n, 1n, 2n, 3n, 4n]);
    expect(Buffer.from(all[2]?.body ?? []).toString()).toBe('body-2');
    expect(Buffer.from(all[2]?.entryHash ?? []).equals(Buffer.alloc(32, 2))).toBe(true);
    expect(await store.entitySeqs('steps', 's0')).toEqual([0n]);
    expect(await store.entitySeqs('steps', 's2')).toEqual([2n]);
    expect([...(await store.objectVersionSeqs('o'))]).toEqual([['sha256:1', [3n]]]);
    expect(await store.entitySeqs('runs', 'r')).toEqual([4n]);
    expect(await store.latestCheckpoint()).toBe('{"treeSize":"5"}');
    const rows = [];
    for await (const r of store.adjacencyRows()) rows.push(r);
    expect(rows.map((r) => [r.timeNs, r.seq, Buffer.from(r.entry.body).toString()])).toEqual([[5n, 2n, 'body-2']]);
    // The row holds nothing the entry holds: its key is the index.
    expect(await store.adjacency.values().all()).toEqual(['']);
    const none = [];
    for await (const r of store.adjacencyRows(4n)) none.push(r);
    expect(none).toEqual([]);
    expect((await store.getEntries([4n, 9n, 0n])).map((e) => e.seq)).toEqual([4n, 0n]);
  });

  it('reads step entries in event-time order through the adjacency rows, as of a time, across chunks', async () => {
    // Event times run against seq order (later seqs, earlier times), and 600 rows span several lookups.
    const entries = Array.from({ length: 600 }, (_, i) => entry(BigInt(i), { adjacency: { timeNs: BigInt(10_000 - i * 10) } }));
    await store.append(entries, { treeSize: 600n, json: '{"treeSize":"600"}' });
    const all: bigint[] = [];
    for await (const r of store.adjacencyRows()) {
      expect(Buffer.from(r.entry.body).toString()).toBe(`body-${r.seq}`);
      expect(r.timeNs).toBe(BigInt(10_000 - Number(r.seq) * 10));
      all.push(r.seq);
    }
    expect(all).toEqual(Array.from({ length: 600 }, (_, i) => BigInt(599 - i)));
    const asOf: bigint[] = [];
    for await (const r of store.adjacencyRows(5_000n)) asOf.push(r.seq);
    // time ≤ 5000 ⇔ seq ≥ 500
    expect(asOf).toEqual(Array.from({ length: 100 }, (_, i) => BigInt(599 - i)));
  });

  it("drops an older version's event-ids rows once, and nothing else", async () => {
    await store.append([entry(0n), entry(1n)], { treeSize: 2n, json: '{"treeSize":"2"}' });
    const legacy = db.sublevel<string, string>('event-ids', {});
    await legacy.put('ev-0', '0000000000000000');
    await legacy.put('ev-1', '0000000000000001');
    expect(await store.dropLegacyEventIds()).toBe(true);
    expect(await legacy.keys().all()).toEqual([]);
    expect(await store.dropLegacyEventIds()).toBe(false);
    expect((await store.getEntries([0n, 1n])).map((e) => e.seq)).toEqual([0n, 1n]);
    expect(await store.entitySeqs('steps', 's1')).toEqual([1n]);
  });

  it('keeps ids that share prefixes apart', async () => {
    await store.append([entry(0n, { entity: { table: 'steps', stepId: 'a' } }), entry(1n, { entity: { table: 'steps', stepId: 'ab' } }), entry(2n, { entity: { table: 'objects', objectId: 'x', contentHash: 'sha256:1' } }), entry(3n, { entity: { table: 'objects', objectId: 'x:y', contentHash: 'sha256:2' } })], undefined);
    expect(await store.entitySeqs('steps', 'a')).toEqual([0n]);
    expect([...(await store.objectVersionSeqs('x')).keys()]).toEqual(['sha256:1']);
  });
});
