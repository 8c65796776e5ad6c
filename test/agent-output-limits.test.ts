import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCodeCache } from '../agent/code-cache.js';
import { createShardExecutor, type ShardExecutor } from '../agent/shard-executor.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { normalizeOutputs, TransformError } from '../common/transform.js';
import { bundleSources } from './helpers/publish-transform.js';

// Outputs that JSON.stringify would write wrongly or could not write inside the worker's heap.
const SOURCES: Record<string, string> = {
  hugeJson: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'huge-json', run() { return { json: { s: 'x'.repeat(200 * 1024 * 1024) } }; } });`,
  hugeText: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'huge-text', run() { return { payload: 'y'.repeat(200 * 1024 * 1024) }; } });`,
  flood: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({
      name: 'flood',
      run(input, params, ctx) {
        const line = 'z'.repeat(1000);
        for (let i = 0; i < 300000; i++) console.log(line);
        for (let i = 0; i < 100000; i++) ctx.log('c'.repeat(1000));
        return { json: input.key };
      },
    });`,
  dated: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'dated', run() { return { json: { at: new Date(0), list: [new Date(1000)] } }; } });`,
};

describe('agent: outputs JSON cannot hold, or the worker cannot serialise', () => {
  it('names a NaN, a BigInt, a Map and a cycle; writes a Date as JSON.stringify does; keeps other values as they were', () => {
    const refused = (json: unknown): string => {
      try {
        normalizeOutputs({ json }, 'k');
      } catch (err) {
        expect(err).toBeInstanceOf(TransformError);
        return (err as Error).message;
      }
      return 'accepted';
    };
    expect(refused({ a: [1, NaN] })).toBe('outputs.json.a[1]: NaN is not a JSON number (JSON would write it as null)');
    expect(refused({ a: Infinity })).toMatch(/^outputs\.json\.a: Infinity is not a JSON number/);
    expect(refused({ n: 10n })).toMatch(/^outputs\.json\.n: a BigInt is not JSON/);
    expect(refused({ m: new Map([[1, 2]]) })).toMatch(/^outputs\.json\.m: a Map is not JSON/);
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = { back: cyclic };
    expect(refused(cyclic)).toBe('outputs.json.self.back: refers back to itself (a cycle): JSON cannot hold it');
    // A value reached twice without a cycle is fine.
    const shared = { x: 1 };
    expect(refused({ a: shared, b: [shared] })).toBe('accepted');
    const text = (json: unknown): string => new TextDecoder().decode(normalizeOutputs({ json }, 'k')[0]?.payload);
    expect(text({ b: new Date(0), a: [new Date(1000), undefined], c: undefined, f: () => 1 })).toBe('{"a":["1970-01-01T00:00:01.000Z",null],"b":"1970-01-01T00:00:00.000Z"}');
    expect(text({ z: 1, a: { y: 'é', b: null, u: new Uint8Array([1, 2]) } })).toBe('{"a":{"b":null,"u":{"0":1,"1":2},"y":"é"},"z":1}');
    expect(() => normalizeOutputs([{ json: 'a'.repeat(60) }, { payload: 'b'.repeat(60) }], 'k', 'outputs', { maxChars: 100, heapLimitMb: 64 })).toThrow(
      /^outputs\[1\]\.payload: too large: more than 0\.0 MiB of text, what the worker can still hold while serialising it of its 64 MiB heap/,
    );
  });

  describe('in real worker threads', () => {
    let dir: string;
    const versions: Record<string, string> = {};
    const bundles = new Map<string, Uint8Array>();
    let executor: ShardExecutor;
    const logs: { event: string; fields?: Record<string, unknown> }[] = [];

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'retrace-output-limits-'));
      await bundleSources(dir, SOURCES, versions, bundles);
      const codeCache = createCodeCache({
        dir: join(dir, 'code'),
        fetch: async (v) => {
          const bytes = bundles.get(v);
          if (!bytes) throw new Error(`${v} not found`);
          return bytes;
        },
      });
      executor = createShardExecutor({ codeCache, nodeId: 'node-test', maxConcurrent: 2, defaultTimeoutMs: 10_000, defaultMemoryMb: 64, log: (_level, event, fields) => logs.push(fields ? { event, fields } : { event }) });
    });

    afterAll(async () => {
      await executor?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    let seq = 0;
    function shard(transform: string): ShardAssignment {
      const payload = Buffer.from('{}');
      return {
        shardId: `limits-${++seq}`,
        stepName: 'step',
        transform,
        codeVersion: versions[transform] ?? '',
        parameters: {},
        inputs: [{ name: 'in', objectId: 'record:in:k', key: 'k', payload, contentHash: contentHashOf(payload), eventTimeNs: '0', mediaType: 'application/json', cached: false }],
        timeoutMs: 0,
        memoryLimitMb: 64,
        jobId: '',
        attempt: 0,
      };
    }

    it('fails a 200 MiB JSON or text output in a 64 MiB worker, naming it, instead of aborting the whole process', async () => {
      // Before, V8 ran out of heap inside JSON.stringify and aborted the agent process (this test's).
      const json = await executor.execute(shard('hugeJson'));
      expect(json.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
      expect(json.error).toMatch(/^TransformError: outputs\.json\.s: too large: more than [\d.]+ MiB of text, what the worker can still hold while serialising it of its \d+ MiB heap; return a Uint8Array payload or raise the step's memoryMb$/);
      const text = await executor.execute(shard('hugeText'));
      expect(text.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
      expect(text.error).toMatch(/^TransformError: outputs\.payload: too large/);
      const dated = await executor.execute(shard('dated'));
      expect(dated.status, dated.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      expect(dated.outputs[0]?.payload.toString()).toBe('{"at":"1970-01-01T00:00:00.000Z","list":["1970-01-01T00:00:01.000Z"]}');
    }, 20_000);

    it('keeps the first MiB a shard prints and says how much it dropped; the worker survives 300 MiB of prints', async () => {
      // Before, the prints waited in the worker's 64 MiB heap: it died after the shard, and all but the first line was lost.
      const first = await executor.execute(shard('flood'));
      expect(first.status, first.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      const second = await executor.execute(shard('flood'));
      expect(second.status, second.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      const lines = (): string[] => logs.filter((l) => l.event === 'shard:stdout' || l.event === 'shard:stderr').map((l) => String(l.fields?.line));
      const notes = (): string[] => lines().filter((l) => l.startsWith('[retrace]'));
      const deadline = Date.now() + 10_000;
      const zs = (): number => lines().filter((l) => l.startsWith('zzz')).length;
      // The notes go to stderr, the lines to stdout: either may come in first.
      while ((notes().length < 2 || zs() < 2 * 1047) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(notes()).toEqual(Array.from({ length: 2 }, () => `[retrace] ${300000 * 1001 - 1047 * 1001 + 100000 * 1000} bytes the shard printed or logged were dropped: a shard prints 1048576 bytes at most`));
      expect(zs()).toBe(2 * 1047);
      expect(logs.some((l) => l.event === 'shard-worker:terminated')).toBe(false);
      expect(logs.filter((l) => l.event === 'shard:log')).toEqual([]);
    }, 30_000);
  });
});
