import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeKind } from '../common/gen/retrace/v1/lineage.js';
import type { LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { contentHashOf } from '../common/hash.js';
import { buildExampleLineage } from '../scripts/cli/example-lineage.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * LineageApi.listObjects answers as listNodes(NODE_KIND_OBJECT, '') with the ids made strings,
 * and its comparisons and case-blind matches as those strings' (one-byte, two-byte and mixed-case ids).
 */

const IDS = ['record:Orders:1', 'dataset:retrace:record:Orders:1', '//h:x', 'récord:Élan', '记录:1', 'REC:MiXed', 'a', 'ab', 'B', 'é', 'ÿz'];

let tc: TestCoordinator;

function version(objectId: string, i: number): LineageEvent {
  const ns = `${1_700_000_000_000n + BigInt(i)}000000`;
  return {
    eventId: `v:${i}`,
    eventTimeNs: ns,
    producer: 'test',
    body: { $case: 'objectVersion', value: { objectId, contentHash: contentHashOf(`${objectId} ${i}`), size: '1', mediaType: 'text/plain', createdAtNs: ns, attributes: {} } },
  } as LineageEvent;
}

beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true });
  await tc.coordinator.lineage.submit(buildExampleLineage({ orders: 3 }).events);
  // A second version of the first id moves its last change on.
  await tc.coordinator.lineage.submit([...IDS.map(version), version(IDS[0] as string, 100)]);
});

afterAll(async () => {
  await tc?.stop();
});

describe('LineageApi.listObjects', () => {
  it('answers as listNodes of objects', () => {
    const lineage = tc.coordinator.lineage;
    const listed = lineage.listNodes(NodeKind.NODE_KIND_OBJECT, '');
    const table = lineage.listObjects();
    expect(table.length).toBe(listed.length);
    expect(Array.from({ length: table.length }, (_, i) => ({ id: table.objectId(i), firstSeenMs: table.firstSeenMs(i), lastChangedMs: table.lastChangedMs(i) }))).toEqual(listed);
    for (const [i, n] of listed.entries()) {
      expect(table.indexOf(n.id)).toBe(i);
      expect(table.idStartsWith(i, n.id.slice(0, 3))).toBe(true);
    }
    expect(table.indexOf('record:none')).toBeUndefined();
    expect(table.indexOf('dataset:retrace')).toBeUndefined();
  });

  it('compares and matches ids as their strings', () => {
    const table = tc.coordinator.lineage.listObjects();
    const ids = Array.from({ length: table.length }, (_, i) => table.objectId(i));
    for (let i = 0; i < ids.length; i++) {
      for (let j = 0; j < ids.length; j++) {
        const a = ids[i] as string;
        const b = ids[j] as string;
        expect(Math.sign(table.compareIds(i, j)), `${a} vs ${b}`).toBe(a < b ? -1 : a > b ? 1 : 0);
      }
    }
    for (const needle of ['orders', 'rec', 'élan', 'é', '记', 'mixed', ':', 'x', 'zz', 'ÿ', 'record:orders:1x']) {
      for (let i = 0; i < ids.length; i++) expect(table.idIncludesLowerCase(i, needle), `${ids[i]} ~ ${needle}`).toBe((ids[i] as string).toLowerCase().includes(needle));
    }
  });
});
