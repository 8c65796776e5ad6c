import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCodeCache } from '../agent/code-cache.js';
import { createShardExecutor, type ShardExecutor } from '../agent/shard-executor.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { normalizeOutputs, TransformError } from '../common/transform.js';
import { bundleTransform } from '../scripts/cli/publish-command.js';

// Outputs that JSON.stringify would write wrongly or could not write inside the worker's heap.
const SOURCES: Record<string, string> = {
  hugeJson: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'huge-json', run() { return { json: { s: 'x'.repeat(200 * 1024 * 1024) } }; } });`,
  hugeText: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'huge-text', run() { return { payload: 'y'.repeat(200 * 1024 * 1024) }; } });`,
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

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'retrace-output-limits-'));
      for (const [name, source] of Object.entries(SOURCES)) {
        const file = join(dir, `${name}.ts`);
        writeFileSync(file, source);
        const b = await bundleTransform(file);
        versions[name] = b.codeVersion;
        bundles.set(b.codeVersion, b.bytes);
      }
      const codeCache = createCodeCache({
        dir: join(dir, 'code'),
        fetch: async (v) => {
          const bytes = bundles.get(v);
          if (!bytes) throw new Error(`${v} not found`);
          return bytes;
        },
      });
      executor = createShardExecutor({ codeCache, nodeId: 'node-test', maxConcurrent: 2, defaultTimeoutMs: 10_000, defaultMemoryMb: 64 });
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
  });
});
