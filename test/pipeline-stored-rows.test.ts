import * as nodeCrypto from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { pipelineExtension, type PipelineHandles, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { IngestRecordInput, ShardRunner, ShardRunResult } from '../coordinator/pipeline/pipeline-runner.js';

/**
 * The rows an ingest stores, pinned: the capture path is optimised often, and none of that may
 * change a stored byte. Time, run ids and shard outcomes are fixed and records run one at a time,
 * so two runs store the same rows; checkpoints (signed with a key of each data dir) are left out.
 * A change to what is stored on purpose updates the digests below.
 */
const EXPECTED: Record<string, [rows: number, digest: string]> = {
  '!adjacency!': [1553, 'ea70debee5893a182f429d5fd0f55e36a1b684ecd85ad539f6ba4d2ec1c9847f'],
  '!ledger!': [1719, 'da97223690e90e0389e2929e0ad70cc19c2512447db3530d5bf53a6ffea2b8df'],
  '!objects!': [2171, '35ec723514ed7f889270acf16867cef4f61fb48bf41c6dbb332420ff3ac941ec'],
  '!payloads!!bytes!': [2064, '1b77e65a3827d1a3469b4800776a81889861f96d7bae8cdcd9135bbc116ad7a9'],
  '!pipelines!!current!': [786, 'cdf2afbf54a221759949c1647efaa70a8abeabb4cfb919c501ef225a4b5ecf82'],
  '!pipelines!!latest!': [1, '12e71693dabd48a735bd3d911dcb7365d0bfde4c9750946e9e6a8a99e07e392e'],
  '!pipelines!!versions!': [1, '3fcea7adf4f03f14992c50389f9c6d80f2d92b2d28d52a807cf26d918af1b774'],
  '!runs!': [6, 'f162f5be092d79c5fdb43272c6539c4c8351b581e3d86b3b7e21c168c504e5d2'],
  '!steps!': [1553, '4f78597cb9d88fe9eb92aa6d6d29b5e362657c37ea2a6fe0d5359b512e49870e'],
};

const cjsCrypto = createRequire(import.meta.url)('node:crypto') as typeof nodeCrypto;
const saved = { randomUUID: cjsCrypto.randomUUID, now: Date.now, hrtime: process.hrtime.bigint };

afterEach(() => {
  cjsCrypto.randomUUID = saved.randomUUID;
  syncBuiltinESMExports();
  Date.now = saved.now;
  process.hrtime.bigint = saved.hrtime;
});

const TRANSFORMS: Record<string, (a: ShardAssignment) => unknown> = {
  parse: (a) => {
    const [id, amount, country] = new TextDecoder().decode(a.inputs[0]?.payload).split(',');
    return { id, amount: Number(amount), country };
  },
  enrich: (a) => {
    const o = JSON.parse(new TextDecoder().decode(a.inputs[0]?.payload)) as { amount: number; country: string };
    const rates = (a.parameters as { rates: Record<string, number> }).rates;
    return { ...o, eur: Math.round(o.amount * (rates[o.country] ?? 1) * 100) / 100 };
  },
  summarise: (a) => {
    const o = JSON.parse(new TextDecoder().decode(a.inputs[0]?.payload)) as { eur: number };
    return { bucket: o.eur > 500 ? 'large' : 'small', eur: o.eur };
  },
};

/** Every 11th shard fails; every 7th has a second output under a key of its own. */
function fixedRunner(): ShardRunner {
  let n = 0;
  return {
    async run(a): Promise<ShardRunResult> {
      n++;
      if (n % 11 === 0) {
        return { outcome: { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_FAILED, outputs: [], resources: undefined, error: 'asked to fail', startedAtNs: '5', endedAtNs: '9', nodeId: 'n', attempt: 1 }, nodeId: 'n', attempts: 1, queuedMs: 3 };
      }
      const payload = Buffer.from(JSON.stringify((TRANSFORMS[a.transform] as (a: ShardAssignment) => unknown)(a)));
      const outputs = [{ key: '', contentHash: contentHashOf(payload), payload, mediaType: 'application/json' }];
      if (n % 7 === 0) outputs.push({ key: `extra-${n % 3}`, contentHash: '', payload: Buffer.from('x'), mediaType: 'text/plain' });
      const resources = { cpuTimeNs: String(n), peakMemoryBytes: '7', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: String(2 * n) };
      const startedAtNs = String(1_764_000_000_000_000_000n + BigInt(n));
      const endedAtNs = String(1_764_000_000_000_000_100n + BigInt(n));
      return {
        outcome: { shardId: a.shardId, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs, resources, error: '', attempt: 1, startedAtNs, endedAtNs, nodeId: 'node-1' },
        nodeId: 'node-1',
        attempts: 1,
        queuedMs: n % 5,
        ...(n % 2 ? { host: 'h1' } : {}),
      };
    },
  };
}

const COUNTRIES = ['DE', 'FR', 'US', 'GB', 'JP'];

function records(from: number, to: number, tag: string): IngestRecordInput[][] {
  const batch: IngestRecordInput[] = [];
  for (let j = from; j < to; j++) {
    batch.push({ key: `k-${j % 200}`, eventTimeNs: j % 9 ? String(1_700_000_000_000_000_000n + BigInt(j)) : '0', payload: Buffer.from(`${j},${(j * 37) % 1000}.5,${COUNTRIES[j % 5]}${tag}`) });
  }
  return [batch];
}

describe('stored rows of a pipeline ingest', () => {
  it('are the rows pinned for a fixed input, clock and run ids', async () => {
    let uuid = 0;
    cjsCrypto.randomUUID = (() => `00000000-0000-4000-8000-${String(++uuid).padStart(12, '0')}`) as typeof nodeCrypto.randomUUID;
    syncBuiltinESMExports();
    Date.now = () => 1_764_000_000_000;
    process.hrtime.bigint = () => 1_000_000n;
    const dataDir = mkdtempSync(join(tmpdir(), 'stored-rows-'));
    const shared: PipelineShared = {};
    const coordinator = new Coordinator({ dataDir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} }, [pipelineExtension(shared, { runner: fixedRunner(), concurrency: 1 })]);
    try {
      await coordinator.start();
      const h = shared.pipelines as PipelineHandles;
      const code = contentHashOf('x');
      await h.store.apply(
        Pipeline.fromJSON({
          name: 'orders-pipeline',
          sources: [{ name: 'orders', mediaType: 'text/csv' }],
          steps: [
            { name: 'parsed', transform: 'parse', codeVersion: code, inputs: ['orders'] },
            { name: 'enriched', transform: 'enrich', codeVersion: code, parameters: { rates: { DE: 1, FR: 1, US: 0.92, GB: 1.17, JP: 0.0061 }, b: [1, { z: 1, a: null }] }, inputs: ['parsed'] },
            { name: 'summary', transform: 'summarise', codeVersion: code, inputs: ['enriched'] },
          ],
        }),
      );
      // New records; half of them again (duplicates); all with new content (changes, some outputs reproduced).
      await h.runner.ingest('orders-pipeline', 'orders', records(0, 300, ''));
      await h.runner.ingest('orders-pipeline', 'orders', records(0, 150, ''));
      await h.runner.ingest('orders-pipeline', 'orders', records(0, 300, '!'));
      const db = (coordinator as unknown as { db: { iterator(o: object): AsyncIterable<[Buffer, Buffer]> } }).db;
      const tables = new Map<string, { rows: number; hash: nodeCrypto.Hash }>();
      for await (const [k, v] of db.iterator({ keyEncoding: 'buffer', valueEncoding: 'buffer' })) {
        const key = k.toString('latin1');
        const table = /^(![^!]+!(?:![^!]+!)?)/.exec(key)?.[1] ?? key.slice(0, 6);
        if (table === '!checkpoints!') continue;
        let t = tables.get(table);
        if (!t) tables.set(table, (t = { rows: 0, hash: nodeCrypto.createHash('sha256') }));
        t.rows++;
        t.hash.update(k).update(v);
      }
      const got = Object.fromEntries([...tables].sort(([a], [b]) => (a < b ? -1 : 1)).map(([t, e]) => [t, [e.rows, e.hash.digest('hex')]]));
      expect(got).toStrictEqual(EXPECTED);
    } finally {
      await coordinator.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
