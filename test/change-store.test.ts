import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChangeKind } from '../common/gen/retrace/v1/recompute.js';
import { h } from './helpers/lineage-events.js';
import { loadCheckpointSigner } from '../coordinator/ledger/checkpoint-signer.js';
import { LineageEngine } from '../coordinator/lineage/lineage-engine.js';
import { changeIdOf, createChangeStore } from '../coordinator/recompute/change-store.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { LineageStore } from '../coordinator/store/lineage-store.js';

let dir: string;
let db: Database;
let engine: LineageEngine;
let t = 1_000_000n;
const clock = (): bigint => (t += 1000n);

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'retrace-change-store-'));
  db = await openDatabase(dir);
  engine = new LineageEngine({ store: new LineageStore(db), signer: loadCheckpointSigner(null), clock });
  await engine.start();
});
afterEach(async () => {
  await engine.stop();
  await db.close();
  rmSync(dir, { recursive: true, force: true });
});

const content = (objectId: string, oldHash: string, newHash: string, kind = ChangeKind.CHANGE_KIND_OBJECT) => ({ kind, objectId, oldHash, newHash, pipeline: '', noticedBy: 'test' });

describe('change store: a change made again', () => {
  it('is a change of its own after the object moved away and back; a report repeated before the object moves is the same one', async () => {
    const changes = createChangeStore(db, engine, clock);
    const [a, b] = [h('a'), h('b')];
    const first = await changes.record(content('obj', a, b, ChangeKind.CHANGE_KIND_RECORD));
    expect((await changes.record(content('obj', a, b, ChangeKind.CHANGE_KIND_RECORD))).created).toBe(false);
    const back = await changes.record(content('obj', b, a, ChangeKind.CHANGE_KIND_RECORD));
    const again = await changes.record(content('obj', a, b, ChangeKind.CHANGE_KIND_RECORD));
    expect(again.created).toBe(true);
    expect(new Set([first.change.changeId, back.change.changeId, again.change.changeId]).size).toBe(3);
    // Reported again while still at a (a stop cut it short): the same, newest one.
    expect((await changes.record(content('obj', a, b, ChangeKind.CHANGE_KIND_RECORD))).change.changeId).toBe(again.change.changeId);
    expect(await changes.idOf(content('obj', a, b, ChangeKind.CHANGE_KIND_RECORD))).toBe(again.change.changeId);
    expect((await changes.preview(content('obj', a, b, ChangeKind.CHANGE_KIND_RECORD))).created).toBe(false);
    // The first, made from a content no change made current, keeps the id it always had.
    expect(first.change.changeId).toBe(changeIdOf(content('obj', a, b, ChangeKind.CHANGE_KIND_RECORD)));
  });
});

describe('change store: the change that made a content current', () => {
  it('answers with the newest content change to a hash, in one lookup, and ignores other kinds and objects', async () => {
    const changes = createChangeStore(db, engine, clock);
    const [a, b, c] = [h('a'), h('b'), h('c')];
    await changes.record(content('obj', a, b));
    await changes.record(content('obj', b, c, ChangeKind.CHANGE_KIND_FILE));
    // Back to b from c: the newer change to b is the one to name.
    const back = (await changes.record(content('obj', c, b, ChangeKind.CHANGE_KIND_RECORD))).change;
    await changes.record({ kind: ChangeKind.CHANGE_KIND_CODE_PUBLISHED, objectId: 'code:t', oldHash: a, newHash: b, pipeline: 'p', step: 's', noticedBy: 'test' });
    expect((await changes.latestTo('', 'obj', b))?.changeId).toBe(back.changeId);
    expect((await changes.latestTo('', 'obj', a))).toBeUndefined();
    expect((await changes.latestTo('', 'other', b))).toBeUndefined();
    expect((await changes.latestTo('p', 'code:t', b))).toBeUndefined();
  });

  it('indexes the changes of a data dir written before the index, once, at first use', async () => {
    const before = createChangeStore(db, engine, clock);
    const [a, b, c] = [h('a'), h('b'), h('c')];
    await before.record(content('obj', a, b));
    const newer = (await before.record(content('obj', c, b))).change;
    // What a data dir of an earlier version holds: the changes, no index and no mark.
    const root = db.sublevel('recompute');
    await root.sublevel('changes-to').clear();
    await root.sublevel('meta').clear();
    const after = createChangeStore(db, engine, clock);
    expect((await after.latestTo('', 'obj', b))?.changeId).toBe(newer.changeId);
    expect(await root.sublevel<string, string>('meta', { valueEncoding: 'utf8' }).get('changes-to-built')).toBe('1');
  });
});
