import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Direction, NodeKind, TraceView } from '../common/gen/retrace/v1/lineage.js';
import { InvalidArgumentError, NotFoundError } from '../common/errors.js';
import { leafHash, verifyInclusion } from '../common/merkle.js';
import { loadCheckpointSigner, verifyCheckpoint } from '../coordinator/ledger/checkpoint-signer.js';
import { verifyLedger } from '../coordinator/ledger/ledger-verifier.js';
import { LineageEngine } from '../coordinator/lineage/lineage-engine.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { LineageStore } from '../coordinator/store/lineage-store.js';
import { h, objectEvent, ref, runEvent, stepEvent } from './helpers/lineage-events.js';
import { decodeSubmitEventsRequest, type LazySubmitEventsRequest } from '../coordinator/grpc/lineage-wire.js';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { LedgerEntryBody, LineageEvent, type ObjectVersion, type Step } from '../common/gen/retrace/v1/provenance.js';

let db: Database;
let store: LineageStore;
let engine: LineageEngine;
let t = 1_000_000n;
const clock = (): bigint => (t += 1000n);
const signer = loadCheckpointSigner(null);

beforeEach(async () => {
  db = await openDatabase(null);
  store = new LineageStore(db);
  engine = new LineageEngine({ store, signer, clock });
  await engine.start();
});
afterEach(async () => {
  await engine.stop();
  await db.close();
});

/** A submission in wire form, as SubmitEvents hands it over: the events' bytes as given, decoded when its group is prepared. */
function wireForm(bytes: readonly Uint8Array[]): LazySubmitEventsRequest {
  const w = new BinaryWriter();
  for (const b of bytes) w.uint32(10).bytes(b); // field 1, length-delimited
  return decodeSubmitEventsRequest(w.finish()) as LazySubmitEventsRequest;
}

/** raw:1 → s1 → mid:1 → s2 → out:1, plus raw:2 → s3 → side:1 */
async function chain(): Promise<void> {
  await engine.submit([
    objectEvent('o1', 'raw:1', 'r1', '1000'),
    objectEvent('o2', 'raw:2', 'r2', '1000'),
    stepEvent('e1', 's1', [ref('raw:1', 'r1')], [ref('mid:1', 'm1')], { timeNs: '2000' }),
    stepEvent('e2', 's2', [ref('mid:1', 'm1')], [ref('out:1', 'x1')], { timeNs: '3000' }),
    stepEvent('e3', 's3', [ref('raw:2', 'r2')], [ref('side:1', 'y1')], { timeNs: '4000' }),
  ]);
}

const version = (id: string, content: string) => ({ kind: NodeKind.NODE_KIND_OBJECT_VERSION, id, contentHash: h(content) });
const keysOf = (r: { nodes: { key: string }[] }) => r.nodes.map((n) => n.key).sort();

describe('lineage engine', () => {
  it('traces downstream, upstream, both and any, with depth limits', async () => {
    await chain();
    const down = await engine.trace({ start: version('raw:1', 'r1'), direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: '0', pageSize: 0, pageToken: '', includeEdges: true, objectLevel: false });
    expect(keysOf(down)).toEqual(['step:s1', 'step:s2', `version:mid:1@${h('m1')}`, `version:out:1@${h('x1')}`].sort());
    expect(down.totalNodes).toBe('4');
    expect(down.edges).toHaveLength(4);
    const up = await engine.trace({ start: version('out:1', 'x1'), direction: Direction.DIRECTION_UPSTREAM, depth: 2, asOfNs: '0', pageSize: 0, pageToken: '', includeEdges: false, objectLevel: false });
    expect(keysOf(up)).toEqual(['step:s2', `version:mid:1@${h('m1')}`].sort());
    const both = await engine.trace({ start: version('mid:1', 'm1'), direction: Direction.DIRECTION_BOTH, depth: 0, asOfNs: '0', pageSize: 0, pageToken: '', includeEdges: false, objectLevel: false });
    expect(both.totalNodes).toBe('4');
    const any = await engine.trace({ start: { kind: NodeKind.NODE_KIND_TRANSFORM, id: 'upper', contentHash: '' }, direction: Direction.DIRECTION_ANY, depth: 0, asOfNs: '0', pageSize: 0, pageToken: '', includeEdges: false, objectLevel: true });
    expect(keysOf(any)).toEqual(['object:mid:1', 'object:out:1', 'object:raw:1', 'object:raw:2', 'object:side:1', 'step:s1', 'step:s2', 'step:s3']);
  });

  it('answers as of a past time', async () => {
    await chain();
    const at = (ns: string) => engine.trace({ start: version('raw:1', 'r1'), direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: ns, pageSize: 0, pageToken: '', includeEdges: false, objectLevel: false });
    expect((await at('1500')).totalNodes).toBe('0');
    expect(keysOf(await at('2500'))).toEqual(['step:s1', `version:mid:1@${h('m1')}`].sort());
    expect((await at('3000')).totalNodes).toBe('4');
  });

  it('pages through a closure with stable tokens', async () => {
    const events = [objectEvent('src', 'src', 'src')];
    for (let i = 0; i < 25; i++) events.push(stepEvent(`s${i}`, `s${i}`, [ref('src', 'src')], [ref(`o${i}`, `c${i}`)]));
    await engine.submit(events);
    const seen: string[] = [];
    let token = '';
    do {
      const page = await engine.trace({ start: version('src', 'src'), direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: '0', pageSize: 7, pageToken: token, includeEdges: false, objectLevel: false });
      expect(page.totalNodes).toBe('50');
      seen.push(...page.nodes.map((n) => n.key));
      token = page.nextPageToken;
    } while (token);
    expect(new Set(seen).size).toBe(50);
    await expect(engine.trace({ start: version('src', 'src'), direction: 0, depth: 0, asOfNs: '0', pageSize: 7, pageToken: '!!bad', includeEdges: false, objectLevel: false })).rejects.toThrow(/page_token/);
  });

  it('refuses a page token from another query (INVALID_ARGUMENT naming page_token); page_size alone may change', async () => {
    const events = [objectEvent('src', 'src', 'src'), objectEvent('src2', 'src2', 'src2')];
    for (let i = 0; i < 25; i++) events.push(stepEvent(`s${i}`, `s${i}`, [ref('src', 'src'), ref('src2', 'src2')], [ref(`o${i}`, `c${i}`)], { timeNs: String(2000 + i * 1000) }));
    await engine.submit(events);
    const query = { start: version('src', 'src'), direction: Direction.DIRECTION_DOWNSTREAM, pageSize: 7 };
    const all = (await engine.trace({ ...query, pageSize: 0 })).nodes.map((n) => n.key);
    const first = await engine.trace(query);
    const token = first.nextPageToken;
    expect(token).not.toBe('');
    const others = [
      { start: version('src2', 'src2') },
      { direction: Direction.DIRECTION_BOTH },
      { depth: 1 },
      { asOfNs: '30000' },
      { objectLevel: true },
      { view: TraceView.TRACE_VIEW_KEYS },
      { includeEdges: true },
    ];
    for (const other of others) {
      await expect(engine.trace({ ...query, ...other, pageToken: token }), JSON.stringify(other)).rejects.toThrow(/^page_token: was issued for a different query/);
      await expect(engine.trace({ ...query, ...other, pageToken: token })).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    // The same query with another page size goes on where the first page ended.
    expect((await engine.trace({ ...query, pageSize: 3, pageToken: token })).nodes.map((n) => n.key)).toEqual(all.slice(7, 10));
    expect((await engine.trace({ ...query, pageToken: token })).nodes.map((n) => n.key)).toEqual(all.slice(7, 14));
  });

  it('answers NOT_FOUND for a start that did not exist yet as of the time asked, as for an unknown one', async () => {
    await chain();
    const out = version('out:1', 'x1');
    const unknown = engine.trace({ start: version('out:1', 'nope'), direction: Direction.DIRECTION_UPSTREAM });
    await expect(unknown).rejects.toThrow(`start: node version:out:1@${h('nope')} not found`);
    // out:1 came with s2 at 3000 ns.
    const early = engine.trace({ start: out, direction: Direction.DIRECTION_UPSTREAM, asOfNs: '2500' });
    await expect(early).rejects.toBeInstanceOf(NotFoundError);
    await expect(early).rejects.toThrow(`start: node version:out:1@${h('x1')} not found at as_of_ns 2500 (1970-01-01T00:00:00.0000025Z)`);
    await expect(engine.trace({ start: { kind: NodeKind.NODE_KIND_OBJECT, id: 'out:1', contentHash: '' }, asOfNs: '2500' })).rejects.toThrow(/^start: node object:out:1 not found at as_of_ns 2500/);
    await expect(engine.trace({ start: { kind: NodeKind.NODE_KIND_STEP, id: 's2', contentHash: '' }, asOfNs: '2999' })).rejects.toBeInstanceOf(NotFoundError);
    expect(keysOf(await engine.trace({ start: out, direction: Direction.DIRECTION_UPSTREAM, asOfNs: '3000' }))).toContain('step:s2');
  });

  it('answers the same closure in every view, page by page, packed ids as little-endian uint32s', async () => {
    await chain();
    const events = [objectEvent('fan', 'fan', 'fan')];
    for (let i = 0; i < 12; i++) events.push(stepEvent(`f${i}`, `f${i}`, [ref('fan', 'fan'), ref('raw:1', 'r1')], [ref(`fo${i}`, `fc${i}`)]));
    await engine.submit(events);
    const page = (view: TraceView, pageToken: string) =>
      engine.trace({ start: version('raw:1', 'r1'), direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: '0', pageSize: 5, pageToken, includeEdges: false, objectLevel: false, view });
    const collect = async (view: TraceView) => {
      const out: { key: string; distance: number }[] = [];
      let token = '';
      do {
        const r = await page(view, token);
        expect(r.totalNodes).toBe('28');
        if (view === TraceView.TRACE_VIEW_PACKED_IDS) {
          expect(r.nodeIds).toEqual([]);
          expect(r.packedNodeIds.length).toBe(r.packedDistances.length);
          for (let i = 0; i < r.packedNodeIds.length; i += 4) {
            out.push({ key: engine.resolveNodes([r.packedNodeIds.readUInt32LE(i)])[0] as string, distance: r.packedDistances.readUInt32LE(i) });
          }
        } else if (view === TraceView.TRACE_VIEW_IDS) {
          expect(r.packedNodeIds.length).toBe(0);
          engine.resolveNodes(r.nodeIds).forEach((key, i) => out.push({ key, distance: r.distances[i] as number }));
        } else if (view === TraceView.TRACE_VIEW_KEYS) {
          r.keys.forEach((key, i) => out.push({ key, distance: r.distances[i] as number }));
        } else {
          for (const n of r.nodes) out.push({ key: n.key, distance: n.distance });
        }
        token = r.nextPageToken;
      } while (token);
      return out;
    };
    const full = await collect(TraceView.TRACE_VIEW_FULL);
    expect(full).toHaveLength(28);
    expect(full.find((n) => n.key === `version:out:1@${h('x1')}`)?.distance).toBe(4);
    expect(await collect(TraceView.TRACE_VIEW_KEYS)).toEqual(full);
    expect(await collect(TraceView.TRACE_VIEW_IDS)).toEqual(full);
    expect(await collect(TraceView.TRACE_VIEW_PACKED_IDS)).toEqual(full);
    // A run's or transform's own steps lead its answer at distance 0 in the packed view too.
    const t = await engine.trace({ start: { kind: NodeKind.NODE_KIND_TRANSFORM, id: 'upper', contentHash: '' }, direction: Direction.DIRECTION_DOWNSTREAM, pageSize: 100, view: TraceView.TRACE_VIEW_PACKED_IDS });
    const f = await engine.trace({ start: { kind: NodeKind.NODE_KIND_TRANSFORM, id: 'upper', contentHash: '' }, direction: Direction.DIRECTION_DOWNSTREAM, pageSize: 100, view: TraceView.TRACE_VIEW_FULL });
    expect(t.packedNodeIds.length / 4).toBe(f.nodes.length);
    expect(engine.resolveNodes([t.packedNodeIds.readUInt32LE(0)])).toEqual([f.nodes[0]?.key]);
    expect(f.nodes[0]?.distance).toBe(0);
  });

  it('stores received event bytes as they are when they are canonical, and the normalised encoding when not', async () => {
    const plain = objectEvent('w1', 'wire:1', 'w1');
    const unsorted = { ...objectEvent('w2', 'wire:2', 'w2'), body: { $case: 'objectVersion' as const, value: { ...(objectEvent('w2', 'wire:2', 'w2').body?.value as ObjectVersion), attributes: { zone: 'a', app: 'b' } } } };
    const untimed = { ...objectEvent('w3', 'wire:3', 'w3'), eventTimeNs: '0' };
    // The first event's bytes put its body before its id, time and producer: the same event,
    // bytes the generated encoder would not write, so "stored as received" is visible.
    const reordered = Buffer.concat([LineageEvent.encode({ eventId: '', eventTimeNs: '0', producer: '', body: plain.body }).finish(), LineageEvent.encode({ ...plain, body: undefined }).finish()]);
    expect(LineageEvent.decode(reordered)).toEqual(plain);
    const wire = [reordered, LineageEvent.encode(unsorted).finish(), LineageEvent.encode(untimed).finish()];
    const r = await engine.submit(wireForm(wire));
    const stored = await store.getEntries(r.seqs);
    const bodies = stored.map((e) => LedgerEntryBody.decode(e.body));
    // Canonical: the body holds the received bytes verbatim, and they decode to the event.
    expect(Buffer.from(stored[0]?.body ?? []).includes(reordered)).toBe(true);
    expect(bodies[0]?.event).toEqual(plain);
    expect(bodies[0]?.seq).toBe(r.seqs[0]?.toString());
    // Not canonical: sorted attributes, event time filled in, encoded as the generated encoder does.
    expect(Object.keys((bodies[1]?.event?.body?.value as ObjectVersion).attributes)).toEqual(['app', 'zone']);
    expect(BigInt(bodies[2]?.event?.eventTimeNs ?? '0')).toBeGreaterThan(0n); // the time submit received it
    for (const i of [1, 2]) expect(Buffer.from(stored[i]?.body ?? [])).toEqual(Buffer.from(LedgerEntryBody.encode(bodies[i] as LedgerEntryBody).finish()));
    // Bytes as the generated encoder writes them: the hand-written body is byte-identical.
    const more = Array.from({ length: 200 }, (_, i) => objectEvent(`wc${i}`, `wire:c${i}`, `c${i}`));
    const r2 = await engine.submit(wireForm(more.map((e) => LineageEvent.encode(e).finish())));
    for (const e of await store.getEntries([r2.seqs[0] as bigint, r2.seqs[199] as bigint])) {
      expect(Buffer.from(e.body)).toEqual(Buffer.from(LedgerEntryBody.encode(LedgerEntryBody.decode(e.body)).finish()));
    }
    expect((await verifyLedger(store)).ok).toBe(true);
    // Restart: the graph is rebuilt from the stored bytes.
    await engine.stop();
    engine = new LineageEngine({ store, signer, clock });
    await engine.start();
    expect((await engine.getNode({ node: version('wire:1', 'w1') })).node).toEqual(version('wire:1', 'w1'));
  });

  it('is idempotent by event id, within a batch and across batches', async () => {
    await chain();
    const size = engine.treeSize;
    const again = await engine.submit([objectEvent('o1', 'raw:1', 'r1'), objectEvent('new', 'raw:9', 'r9'), objectEvent('new', 'raw:9', 'r9')]);
    expect(again).toMatchObject({ accepted: 1, duplicates: 2 });
    expect(engine.treeSize).toBe(size + 1n);
  });

  it('rejects a bad batch atomically, naming the field, and stores nothing of it', async () => {
    await chain();
    const size = engine.treeSize;
    const cases: [ReturnType<typeof stepEvent>[], RegExp][] = [
      [[objectEvent('ok1', 'a', 'a'), stepEvent('bad', 'sx', [ref('a', 'a')], [{ objectId: 'b', contentHash: 'sha256:XYZ', unversioned: false }])], /events\[1\]\.step\.generated\[0\]\.content_hash: malformed hash/],
      [[objectEvent('ok2', 'a', 'a'), stepEvent('bad', 'sx', [{ objectId: 'a', contentHash: '', unversioned: false }], [])], /events\[1\]\.step\.used\[0\]\.content_hash: is required/],
      [[objectEvent('ok3', 'a', 'a'), stepEvent('bad', 'sx', [ref('nope', 'n')], [])], /events\[1\]\.step\.used\[0\]: unknown object version/],
      [[stepEvent('bad', 'sx', [ref('raw:1', 'r1')], [ref('z', 'z')], { runId: 'no-such-run' })], /events\[0\]\.step\.run_id: unknown run/],
      // out:1 was generated by s2; another generator is a conflict
      [[stepEvent('bad', 'sx', [ref('raw:1', 'r1')], [ref('out:1', 'x1')])], /events\[0\]\.step\.generated\[0\]: .* already generated by step:s2/],
      // out:1 → s-cycle → raw:1 would make s1's input downstream of its own output
      [[stepEvent('bad', 'sc', [ref('out:1', 'x1')], [ref('raw:1', 'r1')])], /events\[0\]\.step\.generated: would close a cycle/],
      [[stepEvent('bad', 'self', [ref('raw:2', 'r2')], [ref('raw:2', 'r2')])], /cycle/],
      [[{ eventId: '', eventTimeNs: '0', producer: '', body: undefined }], /events\[0\]\.event_id: is required/],
      // Past int64: the protobuf encoder would throw (INTERNAL) if validation let it through.
      [[{ ...objectEvent('late', 'late', 'l'), eventTimeNs: '9223372036854775808' }], /events\[0\]\.event_time_ns: must be non-negative nanoseconds/],
      [[{ ...objectEvent('huge', 'huge', 'h'), body: { $case: 'objectVersion', value: { objectId: 'huge', contentHash: h('h'), size: '9999999999999999999', mediaType: '', createdAtNs: '0', attributes: {}, facets: undefined } } }], /events\[0\]\.object_version\.size: must be a non-negative integer/],
      [[{ eventId: 'x', eventTimeNs: '0', producer: '', body: undefined }], /events\[0\]\.body/],
      [[objectEvent('big', 'big', 'b', '1'), { ...objectEvent('big2', 'big2', 'b'), body: { $case: 'objectVersion', value: { objectId: 'big2', contentHash: h('b'), size: '1', mediaType: '', createdAtNs: '0', attributes: { blob: 'x'.repeat(1_100_000) }, facets: undefined } } }], /events\[1\]: event is \d+ bytes encoded; the limit is/],
    ];
    for (const [events, message] of cases) {
      const err = await engine.submit(events).then(() => undefined, (e: unknown) => e);
      expect(err, String(message)).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toMatch(message);
      expect(engine.treeSize).toBe(size);
    }
    // Nothing from the rejected batches is visible: the object version of case 1 never arrived.
    await expect(engine.getNode({ node: version('a', 'a') })).rejects.toBeInstanceOf(NotFoundError);
    // The graph is unchanged and the ledger still verifies.
    expect((await verifyLedger(store)).ok).toBe(true);
    const down = await engine.trace({ start: version('raw:1', 'r1'), direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: '0', pageSize: 0, pageToken: '', includeEdges: false, objectLevel: false });
    expect(down.totalNodes).toBe('4');
  });

  it('commits concurrent submissions in groups without losing or mixing any', async () => {
    const batches = Array.from({ length: 40 }, (_, b) => Array.from({ length: 25 }, (_, i) => objectEvent(`c${b}-${i}`, `obj:${b}:${i}`, `v${b}-${i}`)));
    // Asserted at once: the rejection comes while the other submissions are still being hashed.
    const bad = expect(engine.submit([objectEvent('bad-ok', 'ok', 'ok'), stepEvent('bad', 's', [ref('missing', 'm')], [])])).rejects.toThrow(/unknown object version/);
    const results = await Promise.all(batches.map((events) => engine.submit(events)));
    await bad;
    expect(results.every((r) => r.accepted === 25)).toBe(true);
    expect(engine.treeSize).toBe(1000n);
    const seqs = results.flatMap((r) => r.seqs.map(Number)).sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect((await verifyLedger(store)).ok).toBe(true);
  });

  it('bounds a commit group at 4000 events, but never splits a submission', async () => {
    const batch = (tag: string, n: number) => Array.from({ length: n }, (_, i) => objectEvent(`${tag}-${i}`, `${tag}:${i}`, `${tag}${i}`));
    const results = await Promise.all([batch('a', 1500), batch('b', 1500), batch('c', 1500), batch('d', 1500), batch('e', 5000)].map((events) => engine.submit(events)));
    expect(results.map((r) => r.accepted)).toEqual([1500, 1500, 1500, 1500, 5000]);
    const sizes: bigint[] = [];
    for await (const json of store.allCheckpoints()) sizes.push(BigInt((JSON.parse(json) as { treeSize: string }).treeSize));
    const groups = sizes.map((size, i) => size - (i > 0 ? (sizes[i - 1] as bigint) : 0n));
    expect(groups.reduce((a, b) => a + b, 0n)).toBe(11_000n);
    // Groups hold whole submissions: at most 4000 events, or the 5000-event one alone.
    for (const g of groups) expect(g <= 4000n || g === 5000n).toBe(true);
    expect(groups).toContain(5000n);
    expect((await verifyLedger(store)).ok).toBe(true);
  });

  it('hashes a group in chunks as its submissions are accepted; a rejected one between chunks leaves no trace', async () => {
    const batch = (tag: string, n: number) => Array.from({ length: n }, (_, i) => objectEvent(`${tag}-${i}`, `${tag}:${i}`, `${tag}${i}`));
    // A step using a version nobody recorded: the whole submission is rejected.
    const bad = [...batch('bad', 299), stepEvent('bad-step', 'bad-step', [ref('nowhere', 'x')], [ref('out', 'o')])];
    const submissions = [batch('a', 300), batch('b', 10), bad, batch('c', 300), batch('d', 5)].map((events) => engine.submit(events));
    const settled = await Promise.allSettled(submissions);
    expect(settled.map((s) => s.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
    expect(engine.treeSize).toBe(615n);
    const sizes: bigint[] = [];
    for await (const json of store.allCheckpoints()) sizes.push(BigInt((JSON.parse(json) as { treeSize: string }).treeSize));
    // One group, its rows hashed in chunks of 300, 310 (b waited for c's) and 5.
    expect(sizes).toEqual([615n]);
    expect((await verifyLedger(store)).ok).toBe(true);
    const tags = new Set<string>();
    for await (const e of store.entries()) tags.add(LedgerEntryBody.decode(e.body).event?.eventId.replace(/-\d+$/, '') ?? '');
    expect(tags).toEqual(new Set(['a', 'b', 'c', 'd']));
    // The chain and tree the chunks left are the ones the next group continues.
    await engine.submit(batch('e', 3));
    expect((await verifyLedger(store)).ok).toBe(true);
  });

  it('a chunk whose hashing fails rejects its whole group and stores none of it; the next group starts the chain afresh', async () => {
    const batch = (tag: string, n: number) => Array.from({ length: n }, (_, i) => objectEvent(`${tag}-${i}`, `${tag}:${i}`, `${tag}${i}`));
    await engine.submit(batch('before', 3));
    // The hasher's second job of the next group fails, as a continuing job does on a replaced worker.
    const hasher = (engine as unknown as { hasher: { hash(job: { start?: unknown }): Promise<unknown> } }).hasher;
    const hash = hasher.hash.bind(hasher);
    let continued = 0;
    hasher.hash = (job) => (job.start === undefined && ++continued === 1 ? Promise.reject(new Error('hasher worker lost')) : hash(job));
    const failed = await Promise.allSettled([batch('x', 300), batch('y', 300), batch('z', 300)].map((events) => engine.submit(events)));
    expect(failed.map((s) => s.status)).toEqual(['rejected', 'rejected', 'rejected']);
    expect(String((failed[0] as PromiseRejectedResult).reason)).toMatch(/hasher worker lost/);
    expect(engine.treeSize).toBe(3n);
    // Sent again, the same events are stored (nothing of the failed group counts as a duplicate).
    const again = await engine.submit(batch('x', 300));
    expect(again).toMatchObject({ accepted: 300, duplicates: 0 });
    expect(engine.treeSize).toBe(303n);
    expect((await verifyLedger(store)).ok).toBe(true);
  });

  it('bounds its commit queue: room() is a promise while 8000 events wait, settled once a group is taken', async () => {
    const batch = (tag: string) => Array.from({ length: 4000 }, (_, i) => objectEvent(`${tag}-${i}`, `${tag}:${i}`, `${tag}${i}`));
    expect(engine.room()).toBeUndefined();
    const first = engine.submit(batch('qa'));
    expect(engine.room()).toBeUndefined();
    const second = engine.submit(batch('qb'));
    const room = engine.room();
    expect(room).toBeInstanceOf(Promise);
    let settled = false;
    void room?.then(() => (settled = true));
    // Nothing was taken yet: the commit loop starts on a later tick.
    await null;
    expect(settled).toBe(false);
    await room;
    expect(engine.room()).toBeUndefined();
    expect((await Promise.all([first, second])).map((r) => r.accepted)).toEqual([4000, 4000]);
  });

  it('a failed write rejects its group, undoes it, and commits the group prepared behind it after validating it again', async () => {
    // Wire-form submissions (as SubmitEvents hands them over), decoded when their group is prepared.
    const wire = (tag: string) => wireForm(Array.from({ length: 3000 }, (_, i) => LineageEvent.encode(objectEvent(`${tag}-${i}`, `${tag}:${i}`, `${tag}${i}`)).finish()));
    const startBatch = store.startBatch.bind(store);
    let writes = 0;
    store.startBatch = () => {
      const batch = startBatch();
      const n = writes++;
      return {
        add: (e) => batch.add(e),
        discard: () => batch.discard(),
        // The first group's write fails after a while, so the second group is prepared meanwhile.
        write: async (checkpoint) => {
          if (n > 0) return batch.write(checkpoint);
          await new Promise((r) => setTimeout(r, 50));
          await batch.discard();
          throw new Error('disk full');
        },
      };
    };
    const [a, b] = [engine.submit(wire('fa')), engine.submit(wire('fb'))].map((p) => p.then((r) => r, (e: unknown) => e));
    expect(await a).toMatchObject({ message: 'disk full' });
    expect(await b).toMatchObject({ accepted: 3000, duplicates: 0 });
    expect(writes).toBe(3); // fa (failed), fb (sealed meanwhile, discarded), fb again
    expect(engine.treeSize).toBe(3000n);
    expect((await engine.getProof('fb-0')).seq).toBe('0');
    await expect(engine.getProof('fa-0')).rejects.toBeInstanceOf(NotFoundError);
    // Nothing of the failed group is left behind: it is stored in full when sent again.
    expect(await engine.submit(wire('fa'))).toMatchObject({ accepted: 3000, duplicates: 0 });
    expect(await verifyLedger(store)).toMatchObject({ ok: true, entriesChecked: 6000n });
  });

  it('merges several events about one step (OpenLineage START then COMPLETE)', async () => {
    await engine.submit([runEvent('r', 'run-1'), objectEvent('i', 'in', 'in')]);
    await engine.submit([stepEvent('start', 'ol-step', [ref('in', 'in')], [], { runId: 'run-1', timeNs: '5000', endedAtNs: '0' })]);
    await engine.submit([stepEvent('complete', 'ol-step', [], [ref('out', 'out')], { runId: 'run-1', timeNs: '6000', endedAtNs: '6000' })]);
    const node = await engine.getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: 'ol-step', contentHash: '' } });
    expect(node.body?.$case).toBe('step');
    const step = node.body?.$case === 'step' ? node.body.value : undefined;
    expect(step?.used.map((u) => u.objectId)).toEqual(['in']);
    expect(step?.generated.map((u) => u.objectId)).toEqual(['out']);
    expect(step?.endedAtNs).toBe('6000');
    const run = await engine.getNode({ node: { kind: NodeKind.NODE_KIND_RUN, id: 'run-1', contentHash: '' } });
    expect(run.relatedSteps).toEqual(['step:ol-step']);
    await expect(engine.submit([stepEvent('other', 'ol-step', [], [], { transform: 'different' })])).rejects.toThrow(/events\[0\]\.step\.transform: step already recorded/);
  });

  it('reads a step with one event at the position the index keeps, one with several from its rows; alike after a rejected batch and a restart', async () => {
    await chain();
    await engine.submit([stepEvent('start', 'two', [ref('raw:1', 'r1')], [], { timeNs: '5000', endedAtNs: '0' })]);
    await engine.submit([stepEvent('complete', 'two', [], [ref('two:1', 't1')], { timeNs: '6000', endedAtNs: '6000' })]);
    // A second event about s1 in a batch that is then rejected: s1 is read from its rows from
    // here on, which gives the same step.
    await expect(engine.submit([stepEvent('late', 's1', [], []), stepEvent('bad', 'sx', [ref('missing', 'm')], [])])).rejects.toThrow(/unknown object version/);
    expect(engine.index.soleEventSeqOf('step:s2')).toBe(3n);
    expect(engine.index.soleEventSeqOf('step:s1')).toBeUndefined();
    expect(engine.index.soleEventSeqOf('step:two')).toBeUndefined();
    const ids = ['s2', 'two', 'nope', 's1', 's3'];
    const shape = (s: Step | undefined) => s && { id: s.stepId, used: s.used.map((u) => u.objectId), generated: s.generated.map((g) => g.objectId), endedAtNs: s.endedAtNs };
    const expected = [
      { id: 's2', used: ['mid:1'], generated: ['out:1'], endedAtNs: expect.any(String) as unknown as string },
      { id: 'two', used: ['raw:1'], generated: ['two:1'], endedAtNs: '6000' },
      undefined,
      { id: 's1', used: ['raw:1'], generated: ['mid:1'], endedAtNs: expect.any(String) as unknown as string },
      { id: 's3', used: ['raw:2'], generated: ['side:1'], endedAtNs: expect.any(String) as unknown as string },
    ];
    // Only the steps with several events are looked up in the steps table; an unknown one is
    // not looked up at all (the index holds every stored step).
    const scans = vi.spyOn(store, 'entitySeqs');
    const batched = await engine.readSteps(ids);
    expect(scans.mock.calls.map((c) => c[1])).toEqual(['two', 's1']);
    scans.mockRestore();
    expect(batched.map(shape)).toEqual(expected);
    expect(await Promise.all(ids.map((id) => engine.readStep(id)))).toEqual(batched);
    // As of a time before the COMPLETE: the START alone.
    expect(shape((await engine.readSteps(['two'], 0.0055))[0])).toMatchObject({ generated: [] });
    // Rebuilt from the ledger at start: the same positions.
    await engine.stop();
    engine = new LineageEngine({ store, signer, clock });
    await engine.start();
    expect(engine.index.soleEventSeqOf('step:s2')).toBe(3n);
    expect(engine.index.soleEventSeqOf('step:two')).toBeUndefined();
    expect((await engine.readSteps(ids)).map(shape)).toEqual(expected);
  });

  it('a START that arrives after its run ended, stamped with the same instant, does not reopen the run; a later one does', async () => {
    const run = (eventId: string, state: string, timeNs: string, endedAtNs: string): LineageEvent => ({
      eventId,
      eventTimeNs: timeNs,
      producer: 'test',
      body: { $case: 'run', value: { runId: 'quick', name: 'job/quick', parentRunId: '', state, startedAtNs: state === 'START' ? timeNs : '0', endedAtNs, facets: undefined } },
    });
    // A producer's retry delivers the COMPLETE first; both carry the same eventTime.
    await engine.submit([run('complete', 'COMPLETE', '7000', '7000')]);
    await engine.submit([run('start', 'START', '7000', '0')]);
    expect(await engine.readRun('quick')).toMatchObject({ state: 'COMPLETE', startedAtNs: '7000', endedAtNs: '7000' });
    // A START later than the end is a resumed run: open again.
    await engine.submit([run('resume', 'START', '9000', '0')]);
    expect(await engine.readRun('quick')).toMatchObject({ state: 'START', endedAtNs: '0' });
  });

  it('lists runs newest first (then by id), page by page, and refuses a token it did not make', async () => {
    await engine.submit([runEvent('a', 'run-a', '3000'), runEvent('b', 'run-b', '1000'), runEvent('c', 'run-c', '2000'), runEvent('d', 'run-d', '3000'), runEvent('e', 'other-e', '5000')]);
    const all = await engine.listRuns({ pageSize: 0, pageToken: '', namePrefix: '' });
    expect(all.runs.map((r) => r.runId)).toEqual(['other-e', 'run-a', 'run-d', 'run-c', 'run-b']);
    expect(all.nextPageToken).toBe('');
    const pages: string[][] = [];
    let token = '';
    do {
      const page = await engine.listRuns({ pageSize: 2, pageToken: token, namePrefix: '' });
      pages.push(page.runs.map((r) => r.runId));
      token = page.nextPageToken;
    } while (token !== '');
    expect(pages).toEqual([['other-e', 'run-a'], ['run-d', 'run-c'], ['run-b']]);
    expect((await engine.listRuns({ pageSize: 0, pageToken: '', namePrefix: 'pipeline/run-' })).runs.map((r) => r.runId)).toEqual(['run-a', 'run-d', 'run-c', 'run-b']);
    await expect(engine.listRuns({ pageSize: 2, pageToken: 'cnVuLWE', namePrefix: '' })).rejects.toThrow(/page_token: is not a token from a previous ListRuns response/);
  });

  it('records the output versions a step describes (generated_versions) as object versions, and rejects bad ones', async () => {
    await chain();
    const described = (objectId: string, content: string, attributes: Record<string, string> = {}): ObjectVersion => ({ objectId, contentHash: h(content), size: String(content.length), mediaType: 'text/plain', createdAtNs: '5000', attributes, facets: undefined });
    const size = engine.treeSize;
    const bad: [ReturnType<typeof stepEvent>, RegExp][] = [
      [stepEvent('bad', 'sx', [ref('raw:1', 'r1')], [ref('g:1', 'g1')], { generatedVersions: { versions: [described('g:2', 'g2')] } }), /events\[0\]\.step\.generated_versions\.versions\[0\]: g:2@sha256:\w+ is not among the step's generated references/],
      [stepEvent('bad', 'sx', [ref('raw:1', 'r1')], [ref('g:1', 'g1')], { generatedVersions: { versions: [{ ...described('g:1', 'g1'), size: '-1' }] } }), /events\[0\]\.step\.generated_versions\.versions\[0\]\.size: must be a non-negative integer/],
      [stepEvent('bad', 'sx', [ref('raw:1', 'r1')], [ref('g:1', 'g1'), ref('g:2', 'g2')], { generatedVersions: { versions: [described('g:1', 'g1'), described('g:1', 'g1')] } }), /versions\[1\]: g:1@sha256:\w+ is described twice/],
      [stepEvent('bad', 'sx', [ref('u:1', 'u1')], [ref('g:1', 'g1')], { usedVersions: { versions: [described('u:2', 'u2')] } }), /events\[0\]\.step\.used_versions\.versions\[0\]: u:2@sha256:\w+ is not among the step's used references/],
      // An input described nowhere is still unknown; the step's own outputs cannot stand in for it.
      [stepEvent('bad', 'sx', [ref('u:1', 'u1')], [ref('g:1', 'g1')], { generatedVersions: { versions: [described('g:1', 'g1')] } }), /events\[0\]\.step\.used\[0\]: unknown object version/],
    ];
    for (const [event, message] of bad) {
      const err = await engine.submit([event]).then(() => undefined, (e: unknown) => e);
      expect(err, String(message)).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toMatch(message);
      expect(engine.treeSize).toBe(size);
    }
    // Attributes out of order are sorted, as in an object_version event.
    // u:1 is new: described as used, it is recorded before the step's edges.
    await engine.submit([stepEvent('e4', 's4', [ref('out:1', 'x1'), ref('u:1', 'u1')], [ref('g:1', 'g1'), ref('g:2', 'g2')], { timeNs: '5000', generatedVersions: { versions: [described('g:1', 'g1', { z: '1', a: '2' })] }, usedVersions: { versions: [{ ...described('u:1', 'u1'), createdAtNs: '4500' }] } })]);
    expect(engine.treeSize).toBe(size + 1n);
    const check = async (): Promise<void> => {
      expect(await engine.readVersion('g:1', h('g1'))).toEqual(described('g:1', 'g1', { a: '2', z: '1' }));
      expect(Object.keys((await engine.readVersion('g:1', h('g1')))?.attributes ?? {})).toEqual(['a', 'z']);
      // g:2 is only a generated reference: a bare record, as before.
      expect(await engine.readVersion('g:2', h('g2'))).toMatchObject({ objectId: 'g:2', size: '0', mediaType: '' });
      const node = await engine.getNode({ node: version('g:1', 'g1') });
      expect(node.body?.$case === 'objectVersion' && node.body.value.size).toBe('2');
      expect(node.generatedBy).toBe('step:s4');
      const input = await engine.getNode({ node: version('u:1', 'u1') });
      expect([input.body?.$case === 'objectVersion' && input.body.value.createdAtNs, input.generatedBy, input.relatedSteps]).toEqual(['4500', '', ['step:s4']]);
      // Its own time is its creation, not the step's.
      const early = await engine.trace({ start: version('u:1', 'u1'), direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: '4700', pageSize: 0, pageToken: '', includeEdges: false, objectLevel: false });
      expect(early.totalNodes).toBe('0');
      const path = await engine.getRecordPath({ objectId: 'g:1', contentHash: '', asOfNs: '0' });
      expect([path.record?.mediaType, path.steps.map((s) => s.stepId)]).toEqual(['text/plain', ['s1', 's2', 's4']]);
      // A later object_version event about the same version folds with the step's description.
      expect((await engine.getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT, id: 'g:1', contentHash: '' } })).body).toMatchObject({ value: { versions: [{ size: '2' }] } });
    };
    await check();
    expect(await verifyLedger(store)).toMatchObject({ ok: true });
    await engine.stop();
    engine = new LineageEngine({ store, signer, clock });
    await engine.start();
    await check();
    await engine.submit([{ ...objectEvent('o-g1', 'g:1', 'g1', '6000'), body: { $case: 'objectVersion', value: { ...described('g:1', 'g1', { b: '3' }), size: '0', mediaType: '' } } }]);
    expect(await engine.readVersion('g:1', h('g1'))).toMatchObject({ size: '2', mediaType: 'text/plain', attributes: { a: '2', b: '3', z: '1' } });
  });

  it('returns the processing path of a record in dependency order, with what/where/how', async () => {
    await chain();
    const path = await engine.getRecordPath({ objectId: 'out:1', contentHash: '', asOfNs: '0' });
    expect(path.steps.map((s) => s.stepId)).toEqual(['s1', 's2']);
    expect(path.steps[0]).toMatchObject({ nodeId: 'node-1', host: 'host-1', codeVersion: h('code:upper'), parameters: { factor: 2 } });
    expect(path.steps[0]?.resources?.cpuTimeNs).toBe('1000000');
    await expect(engine.getRecordPath({ objectId: 'nope', contentHash: '', asOfNs: '0' })).rejects.toBeInstanceOf(NotFoundError);
  });

  it('gives inclusion proofs that verify against the signed checkpoint', async () => {
    await chain();
    const p = await engine.getProof('e2');
    const cp = p.checkpoint;
    expect(cp && verifyCheckpoint(cp)).toBe(true);
    expect(leafHash(Buffer.from(p.entryBody, 'base64')).toString('hex')).toBe(p.leafHash);
    expect(verifyInclusion(Buffer.from(p.leafHash, 'hex'), Number(p.seq), Number(cp?.treeSize), p.auditPath.map((x) => Buffer.from(x, 'hex')), Buffer.from(cp?.rootHash ?? '', 'hex'))).toBe(true);
    await expect(engine.getProof('missing')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('rebuilds the same graph from the ledger on restart', async () => {
    await chain();
    const before = await engine.trace({ start: version('raw:1', 'r1'), direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: '0', pageSize: 0, pageToken: '', includeEdges: true, objectLevel: false });
    await engine.stop();
    engine = new LineageEngine({ store, signer, clock });
    await engine.start();
    const after = await engine.trace({ start: version('raw:1', 'r1'), direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: '0', pageSize: 0, pageToken: '', includeEdges: true, objectLevel: false });
    expect(after).toEqual(before);
    expect((await engine.submit([objectEvent('o1', 'raw:1', 'r1')])).duplicates).toBe(1);
  });

  it('takes facets and parameters nested as deep as a Struct decodes, refuses deeper ones, and loads them again after a restart', async () => {
    // `levels` levels of objects and lists: a list innermost, objects around it.
    const nest = (levels: number): Record<string, unknown> => {
      let v: unknown = [1, 'x'];
      for (let i = 1; i < levels; i++) v = { a: v };
      return v as Record<string, unknown>;
    };
    await chain();
    const size = engine.treeSize;
    for (const [field, options] of [['parameters', { parameters: nest(25) }], ['facets', { facets: { deep: nest(24) } }]] as const) {
      const err = await engine.submit([stepEvent('too-deep', 'sd', [ref('raw:1', 'r1')], [ref('deep:1', 'd1')], options)]).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toMatch(new RegExp(`^events\\[0\\]\\.step\\.${field}(\\.(a|deep))+: nested more than 24 levels`));
      expect(engine.treeSize).toBe(size);
    }
    // At the limit: stored, and the ledger still decodes when the engine starts again.
    await engine.submit([stepEvent('deep-ok', 'sd', [ref('raw:1', 'r1')], [ref('deep:1', 'd1')], { parameters: nest(24), facets: { deep: nest(23) } })]);
    await engine.stop();
    engine = new LineageEngine({ store, signer, clock });
    await engine.start();
    const node = await engine.getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: 'sd', contentHash: '' } });
    expect(node.body?.$case === 'step' ? node.body.value.parameters : undefined).toEqual(nest(24));
    expect((await verifyLedger(store)).ok).toBe(true);
  });

  it('writes no event-id rows, removes those an older version wrote, and stays idempotent across restarts', async () => {
    await chain();
    const tables = async (): Promise<Set<string>> => {
      const names = new Set<string>();
      for await (const key of db.keys({ keyEncoding: 'utf8' })) names.add(key.slice(1, key.indexOf('!', 1)));
      return names;
    };
    expect(await tables()).toEqual(new Set(['ledger', 'objects', 'steps', 'adjacency', 'checkpoints']));
    // What an older version left: one row per event, id → seq.
    const legacy = db.sublevel<string, string>('event-ids', {});
    await legacy.batch(['o1', 'o2', 'e1', 'e2', 'e3'].map((id, i) => ({ type: 'put' as const, key: id, value: i.toString(16).padStart(16, '0') })));
    expect(await tables()).toContain('event-ids');
    await engine.stop();
    const logs: string[] = [];
    engine = new LineageEngine({ store, signer, clock, log: (l) => logs.push(l) });
    await engine.start();
    expect(await tables()).not.toContain('event-ids');
    expect(logs.some((l) => l.includes('removed the event-ids index'))).toBe(true);
    expect(await verifyLedger(store)).toMatchObject({ ok: true, entriesChecked: 5n });
    expect(await engine.submit([objectEvent('o2', 'raw:2', 'r2'), stepEvent('e3', 's3', [ref('raw:2', 'r2')], [ref('side:1', 'y1')], { timeNs: '4000' })])).toMatchObject({ accepted: 0, duplicates: 2 });
    expect((await engine.getProof('e2')).seq).toBe('3');
    await engine.stop();
    engine = new LineageEngine({ store, signer, clock, log: (l) => logs.push(l) });
    await engine.start();
    expect(logs.filter((l) => l.includes('removed the event-ids index'))).toHaveLength(1);
  });
});
