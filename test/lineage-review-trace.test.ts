import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Direction, NodeKind, type NodeRef } from '../common/gen/retrace/v1/lineage.js';
import { loadCheckpointSigner } from '../coordinator/ledger/checkpoint-signer.js';
import { LineageEngine } from '../coordinator/lineage/lineage-engine.js';
import { exportProv } from '../coordinator/lineage/prov-export.js';
import { toProvJson } from '../common/prov-json.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { LineageStore } from '../coordinator/store/lineage-store.js';
import { h, objectEvent, ref, runEvent, stepEvent } from './helpers/lineage-events.js';

/**
 * Closures checked against answers worked out by hand, on a graph with a diamond and a cycle
 * across versions (raw@a → … → joined → s4 → raw@b), over LevelDB in a temp dir.
 */

const S = 1_000_000_000n;
const at = (sec: number): string => (BigInt(sec) * S).toString();
let dir: string;
let db: Database;
let engine: LineageEngine;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'retrace-review-trace-'));
  db = await openDatabase(join(dir, 'db'));
  let t = 100n * S;
  engine = new LineageEngine({ store: new LineageStore(db), signer: loadCheckpointSigner(null), clock: () => (t += 1000n), log: () => undefined });
  await engine.start();
  const step = (id: string, used: ReturnType<typeof ref>[], generated: ReturnType<typeof ref>[], sec: number) =>
    stepEvent(`e-${id}`, id, used, generated, { runId: 'r1', transform: `tx-${id}`, timeNs: at(sec), startedAtNs: at(sec), endedAtNs: at(sec) });
  await engine.submit([
    runEvent('run', 'r1', at(1)),
    objectEvent('o-raw-a', 'raw', 'a', at(1)),
    step('s1', [ref('raw', 'a')], [ref('left', 'l')], 2),
    step('s2', [ref('raw', 'a')], [ref('right', 'r')], 3),
    step('s3', [ref('left', 'l'), ref('right', 'r')], [ref('joined', 'j')], 4),
    step('s4', [ref('joined', 'j'), { objectId: 'lookup', contentHash: '', unversioned: true }], [ref('raw', 'b')], 5),
    step('s5', [ref('raw', 'b')], [ref('left', 'l2')], 6),
  ]);
});

afterEach(async () => {
  await engine.stop();
  await db.close();
  rmSync(dir, { recursive: true, force: true });
});

const keys = (r: { nodes: { key: string }[] }): string[] => r.nodes.map((n) => n.key).sort();
const obj = (id: string): NodeRef => ({ kind: NodeKind.NODE_KIND_OBJECT, id, contentHash: '' });
const asOf = (sec: number): string => at(sec);

describe('trace on a graph with a diamond and a cycle across versions', () => {
  it('answers each node once in direction both, even where the object-level cycle puts it upstream and downstream', async () => {
    const r = await engine.trace({ start: obj('joined'), direction: Direction.DIRECTION_BOTH });
    // Downstream: s4 → raw → s1 s2 s5 → left right → s3 (joined itself is the start); upstream adds lookup.
    const expected = ['object:left', 'object:lookup', 'object:raw', 'object:right', 'step:s1', 'step:s2', 'step:s3', 'step:s4', 'step:s5'];
    expect(keys(r)).toEqual(expected);
    expect(r.totalNodes).toBe(String(expected.length));
    // The version graph is acyclic: up and down are disjoint, and both is their union.
    const v = { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'joined', contentHash: h('j') };
    const [down, up, both] = await Promise.all([Direction.DIRECTION_DOWNSTREAM, Direction.DIRECTION_UPSTREAM, Direction.DIRECTION_BOTH].map((direction) => engine.trace({ start: v, direction })));
    expect(keys(both as never)).toEqual([...keys(down as never), ...keys(up as never)].sort());
    expect(keys(down as never)).toEqual([`version:left@${h('l2')}`, `version:raw@${h('b')}`, 'step:s4', 'step:s5'].sort());
  });

  it('a run traced as of a time starts from the steps recorded by then only', async () => {
    const r = await engine.trace({ start: { kind: NodeKind.NODE_KIND_RUN, id: 'r1', contentHash: '' }, asOfNs: asOf(2) });
    expect(keys(r)).toEqual(['step:s1', `version:left@${h('l')}`]);
    // tx-s5 came with its step s5 at 6 s: as of 5 s it is unknown, as an unknown node is.
    await expect(engine.trace({ start: { kind: NodeKind.NODE_KIND_TRANSFORM, id: 'tx-s5', contentHash: '' }, asOfNs: asOf(5) })).rejects.toThrow('start: node transform:tx-s5 not found at as_of_ns 5000000000 (1970-01-01T00:00:05Z)');
    expect(keys(await engine.trace({ start: { kind: NodeKind.NODE_KIND_TRANSFORM, id: 'tx-s5', contentHash: '' }, asOfNs: asOf(6) }))).toContain('step:s5');
  });
});

describe('PROV-JSON export as of a time', () => {
  it('holds nothing of a start recorded later', async () => {
    const doc = await exportProv(engine, { start: { kind: NodeKind.NODE_KIND_STEP, id: 's5', contentHash: '' }, direction: Direction.DIRECTION_BOTH, depth: 0, asOfNs: asOf(5) });
    expect(doc).toEqual({ prefix: { retrace: expect.any(String) } });
    const now = await exportProv(engine, { start: { kind: NodeKind.NODE_KIND_STEP, id: 's5', contentHash: '' }, direction: Direction.DIRECTION_BOTH, depth: 0, asOfNs: '0' });
    expect(Object.keys(now['activity'] as object)).toContain('retrace:step%2Fs5');
  });

  it("folds a step from its events up to then: an output its COMPLETE added later is not in the document", async () => {
    await engine.submit([
      stepEvent('ol-start', 'ol', [ref('raw', 'a')], [], { transform: 'ol-job', timeNs: at(10), startedAtNs: at(10), endedAtNs: '0' }),
      stepEvent('ol-complete', 'ol', [], [ref('out', 'o')], { transform: 'ol-job', timeNs: at(12), startedAtNs: at(10), endedAtNs: at(12) }),
    ]);
    const start = { kind: NodeKind.NODE_KIND_STEP, id: 'ol', contentHash: '' };
    const then = await exportProv(engine, { start, direction: Direction.DIRECTION_BOTH, depth: 0, asOfNs: asOf(11) });
    expect(Object.values(then['used'] as object)).toEqual([{ 'prov:activity': 'retrace:step%2Fol', 'prov:entity': `retrace:${encodeURIComponent(`version/raw@${h('a')}`)}` }]);
    expect(then['wasGeneratedBy']).toBeUndefined();
    expect((then['activity'] as Record<string, Record<string, unknown>>)['retrace:step%2Fol']?.['prov:endTime']).toBeUndefined();
    const later = await exportProv(engine, { start, direction: Direction.DIRECTION_BOTH, depth: 0, asOfNs: asOf(12) });
    expect(Object.keys(later['wasGeneratedBy'] as object)).toHaveLength(1);
  });

  it('leaves out the size of a version known only as a step output (size unknown), not 0; keeps a real one', async () => {
    const doc = await exportProv(engine, { start: { kind: NodeKind.NODE_KIND_STEP, id: 's1', contentHash: '' }, direction: Direction.DIRECTION_BOTH, depth: 1, asOfNs: '0' });
    const entity = doc['entity'] as Record<string, Record<string, unknown>>;
    const left = entity[`retrace:${encodeURIComponent(`version/left@${h('l')}`)}`];
    expect(left?.['retrace:objectId']).toBe('left');
    expect(left).not.toHaveProperty('retrace:size');
    expect(entity[`retrace:${encodeURIComponent(`version/raw@${h('a')}`)}`]?.['retrace:size']).toBe(1);
    // An empty content (its hash says so) is a known size 0.
    const empty = toProvJson({ versions: [{ objectId: 'e', contentHash: h(''), size: '0', mediaType: '', createdAtNs: '0', attributes: {}, facets: undefined }], objects: [], steps: [] });
    expect((empty['entity'] as Record<string, Record<string, unknown>>)[`retrace:${encodeURIComponent(`version/e@${h('')}`)}`]?.['retrace:size']).toBe(0);
  });

  it('refuses a subgraph larger than one export holds rather than cutting it', async () => {
    // 11 steps of 9,999 outputs each: 110,000 nodes downstream of raw@a, over the 100,000 an export holds.
    for (let k = 0; k < 11; k++) {
      const generated = Array.from({ length: 9_999 }, (_, i) => ({ objectId: `fan/${k}/${i}`, contentHash: h('f'), unversioned: false }));
      await engine.submit([stepEvent(`fan-${k}`, `fan-${k}`, [ref('raw', 'a')], generated, { timeNs: at(20 + k) })]);
    }
    const start = { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'raw', contentHash: h('a') };
    await expect(exportProv(engine, { start, direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: '0' })).rejects.toThrow(/^depth: the subgraph has 110\d{3} nodes, more than the 100000 one export holds/);
    const cut = await exportProv(engine, { start, direction: Direction.DIRECTION_DOWNSTREAM, depth: 0, asOfNs: asOf(24) });
    expect(Object.keys(cut['wasGeneratedBy'] as object).length).toBe(5 * 9_999 + 5);
  }, 20_000);

  it('relates each version to its object (specializationOf) when an object-level subgraph holds both', async () => {
    const doc = await exportProv(engine, { start: obj('joined'), direction: Direction.DIRECTION_UPSTREAM, depth: 0, asOfNs: '0' });
    const entity = (kind: string, id: string) => `retrace:${encodeURIComponent(`${kind}/${id}`)}`;
    const relations = Object.values(doc['specializationOf'] as Record<string, Record<string, string>>);
    // Upstream of joined at object level: s3, left, right, s1, s2, s5, raw, s4, lookup; every version the steps name sits under its object.
    expect(relations).toContainEqual({ 'prov:specificEntity': entity('version', `left@${h('l')}`), 'prov:generalEntity': entity('object', 'left') });
    expect(relations).toContainEqual({ 'prov:specificEntity': entity('version', `left@${h('l2')}`), 'prov:generalEntity': entity('object', 'left') });
    const entities = new Set(Object.keys(doc['entity'] as object));
    for (const r of relations) {
      expect(entities.has(r['prov:specificEntity'] as string)).toBe(true);
      expect(entities.has(r['prov:generalEntity'] as string)).toBe(true);
    }
    // Every object entity but the unversioned lookup has a version in the document.
    const general = new Set(relations.map((r) => r['prov:generalEntity']));
    expect([...entities].filter((e) => e.startsWith('retrace:object') && !general.has(e))).toEqual([entity('object', 'lookup')]);
  });
});
