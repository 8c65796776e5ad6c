import { execFileSync } from 'node:child_process';
import { constants, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCodeCache } from '../agent/code-cache.js';
import { createShardExecutor, DEFAULT_PAYLOAD_CACHE_BYTES, type ShardExecutor } from '../agent/shard-executor.js';
import { ShardStatus, type ShardAssignment, type ShardInput, type ShardOutcome } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { CACHED_PAYLOAD_MIN_BYTES } from '../common/payload-locality.js';
import { bundleSources } from './helpers/publish-transform.js';
import { until } from './helpers/until.js';

// Small transforms, bundled through the real publish bundler and run in real worker threads.
const SOURCES: Record<string, string> = {
  echo: `
    import { defineTransform } from 'retrace/transform';
    let calls = 0;
    export default defineTransform({
      name: 'echo',
      run(input, params, ctx) {
        calls++;
        ctx.log('echo ' + input.key);
        return [
          { json: { key: input.key, value: input.json(), params, calls, node: ctx.nodeId, shard: ctx.shardId, other: input.inputs.rates?.text() ?? null } },
          { key: input.key + ':raw', payload: input.payload, mediaType: 'application/x-raw' },
        ];
      },
    });`,
  throws: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'throws', run() { throw new TypeError('bad order'); } });`,
  throwsValue: `
    import { defineTransform } from 'retrace/transform';
    const values = {
      undefined: undefined, null: null, string: 'no rates for EUR', empty: '', number: 42,
      object: { code: 7 }, bare: new Error(''), hostile: { toString() { throw new Error('no'); }, toJSON() { throw new Error('no'); } },
    };
    export default defineTransform({ name: 'throwsValue', run(input, params) { throw values[params.kind]; } });`,
  loop: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'loop', run() { for (;;) {} } });`,
  bomb: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'bomb', run() { const a = []; for (;;) a.push({ n: a.length, s: 'x' + a.length }); } });`,
  spin: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({
      name: 'spin',
      run(input, params) {
        // Fixed work (not fixed time), so CPU per shard does not depend on the host's load.
        let x = 0;
        for (let i = 0; i < Number(params.iterations); i++) x = (x + Math.sqrt(i * 1.0001)) % 1e9;
        return { json: x };
      },
    });`,
  probe: `
    import { defineTransform } from 'retrace/transform';
    import { workerData, parentPort } from 'node:worker_threads';
    export default defineTransform({
      name: 'probe',
      run() {
        return { json: { env: Object.keys(process.env), argv: process.argv.slice(1), workerData: Object.keys(workerData ?? {}), token: process.env.RETRACE_TOKEN ?? null } };
      },
    });`,
  exits: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'exits', run() { process.exit(3); } });`,
  badOutput: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({ name: 'bad-output', run() { return [{ json: 1 }, { key: 'k' }]; } });`,
  slowAsync: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({
      name: 'slow-async',
      async run(input, params, ctx) {
        await new Promise((resolve, reject) => {
          const t = setTimeout(resolve, 10_000);
          ctx.signal.addEventListener('abort', () => { clearTimeout(t); reject(new Error('stopped')); });
        });
        return null;
      },
    });`,
  mixed: `
    import { defineTransform } from 'retrace/transform';
    export default defineTransform({
      name: 'mixed',
      async run(input, params, ctx) {
        if (params.mode === 'loop') for (;;) {}
        if (params.mode === 'bomb') { const a = []; for (;;) a.push({ n: a.length, s: 'x' + a.length }); }
        if (params.mode === 'exit') process.exit(3);
        if (params.mode === 'wait') await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
        return { json: { key: input.key, shard: ctx.shardId } };
      },
    });`,
};

/** Open file descriptors of this process on /proc/<pid>/task/<tid>/schedstat for these threads. */
function schedstatFds(tids: readonly string[]): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    let target = '';
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    const m = /\/task\/(\d+)\/schedstat$/.exec(target);
    if (m && tids.includes(m[1] as string)) n++;
  }
  return n;
}

describe('shard executor (real worker threads)', () => {
  let dir: string;
  const versions: Record<string, string> = {};
  const bundles = new Map<string, Uint8Array>();
  let fetches = 0;
  let executor: ShardExecutor;
  const logs: { event: string; fields?: Record<string, unknown> }[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'retrace-exec-'));
    process.env.RETRACE_TOKEN = 'agent-secret-token';
    await bundleSources(dir, SOURCES, versions, bundles);
    const codeCache = createCodeCache({
      dir: join(dir, 'code'),
      fetch: async (v) => {
        fetches++;
        const bytes = bundles.get(v);
        if (!bytes) throw new Error(`${v} not found`);
        return bytes;
      },
    });
    executor = createShardExecutor({
      codeCache,
      nodeId: 'node-test',
      maxConcurrent: 2,
      defaultTimeoutMs: 10_000,
      defaultMemoryMb: 128,
      log: (_level, event, fields) => logs.push(fields ? { event, fields } : { event }),
    });
  });

  afterAll(async () => {
    await executor.stop();
    delete process.env.RETRACE_TOKEN;
    rmSync(dir, { recursive: true, force: true });
  });

  function input(name: string, key: string, body: string, corrupt = false): ShardInput {
    const payload = Buffer.from(body);
    return { name, objectId: `record:${name}:${key}`, key, payload, contentHash: contentHashOf(corrupt ? `${body}!` : body), eventTimeNs: '1700000000000000000', mediaType: 'application/json', cached: false };
  }

  let seq = 0;
  function shard(transform: string, over: Partial<ShardAssignment> = {}): ShardAssignment {
    return {
      shardId: `shard-${++seq}`,
      stepName: 'step',
      transform,
      codeVersion: versions[transform] ?? '',
      parameters: {},
      inputs: [input('orders', 'o1', '{"total":5}')],
      timeoutMs: 0,
      memoryLimitMb: 0,
      jobId: '',
      attempt: 0,
      ...over,
    };
  }

  const ms = (ns: string): number => Number(ns) / 1e6;

  it('runs a transform: outputs with content hashes, params, inputs by name, resources', async () => {
    const a = shard('echo', {
      parameters: { min: 3, tag: 'x' },
      inputs: [input('orders', 'o1', '{"total":5}'), input('orders', 'o2', '{"total":1}'), input('rates', 'r', 'EUR')],
    });
    const out = await executor.execute(a);
    expect(out.error).toBe('');
    expect(out.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    expect(out.shardId).toBe(a.shardId);
    expect(out.nodeId).toBe('node-test');
    expect(out.outputs.map((o) => o.key)).toEqual(['o1', 'o1:raw', 'o2', 'o2:raw']);
    for (const o of out.outputs) expect(o.contentHash).toBe(contentHashOf(o.payload));
    const first = JSON.parse(out.outputs[0]?.payload.toString() ?? '{}') as Record<string, unknown>;
    expect(first).toEqual({ key: 'o1', value: { total: 5 }, params: { min: 3, tag: 'x' }, calls: 1, node: 'node-test', shard: a.shardId, other: 'EUR' });
    expect(out.outputs[0]?.mediaType).toBe('application/json');
    expect(out.outputs[1]?.payload.toString()).toBe('{"total":5}');
    expect(out.outputs[1]?.mediaType).toBe('application/x-raw');
    const r = out.resources;
    expect(Number(r?.netBytesIn)).toBe(11 + 11 + 3);
    expect(Number(r?.netBytesOut)).toBe(out.outputs.reduce((n, o) => n + o.payload.byteLength, 0));
    expect(Number(r?.cpuTimeNs)).toBeGreaterThan(0);
    expect(Number(r?.cpuTimeNs)).toBeLessThanOrEqual(Number(r?.wallTimeNs) * 1.05);
    expect(Number(r?.peakMemoryBytes)).toBeGreaterThan(100_000);
    expect(r?.gpuTimeNs).toBe('0');
    expect(BigInt(out.endedAtNs)).toBeGreaterThanOrEqual(BigInt(out.startedAtNs));
    expect(logs.some((l) => l.event === 'shard:log' && l.fields?.message === 'echo o1')).toBe(true);

    // The worker is reused for the same code version (module state survives), the bundle is not fetched again.
    const fetched = fetches;
    const again = await executor.execute(shard('echo'));
    expect((JSON.parse(again.outputs[0]?.payload.toString() ?? '{}') as { calls: number }).calls).toBe(3);
    expect(fetches).toBe(fetched);
  });

  it('gives the worker no environment, arguments or port of the agent', async () => {
    const out = await executor.execute(shard('probe'));
    expect(out.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    const seen = JSON.parse(out.outputs[0]?.payload.toString() ?? '{}') as { env: string[]; argv: string[]; workerData: string[]; token: string | null };
    expect(seen.token).toBeNull();
    expect(seen.env).toEqual([]);
    expect(seen.argv).toEqual(['[worker eval]']);
    expect(seen.workerData).toEqual(['bundleUrl', 'codeVersion']);
  });

  it('reports a thrown error as FAILED with its message, and a bad output naming it', async () => {
    const out = await executor.execute(shard('throws'));
    expect(out.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
    expect(out.error).toBe('TypeError: bad order');
    expect(out.outputs).toEqual([]);
    const bad = await executor.execute(shard('badOutput'));
    expect(bad.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
    expect(bad.error).toMatch(/outputs\[1\]: needs exactly one of payload and json/);
    const exits = await executor.execute(shard('exits'));
    expect(exits.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
    expect(exits.error).toMatch(/exited \(code 3\)/);
  });

  it('reports a thrown non-Error (throw undefined, a string, a number...) saying what was thrown', async () => {
    const expected: Record<string, string> = {
      undefined: 'transform threw undefined (not an Error)',
      null: 'transform threw null (not an Error)',
      string: 'transform threw a string (not an Error): "no rates for EUR"',
      empty: 'transform threw a string (not an Error): ""',
      number: 'transform threw a number (not an Error): 42',
      object: 'transform threw an object (not an Error): {"code":7}',
      bare: 'transform threw an Error with no message',
      hostile: 'transform threw an object (not an Error): [object Object]',
    };
    for (const [kind, error] of Object.entries(expected)) {
      const out = await executor.execute(shard('throwsValue', { parameters: { kind } }));
      expect(out.status, kind).toBe(ShardStatus.SHARD_STATUS_FAILED);
      expect(out.error, kind).toBe(error);
    }
  });

  it('times out an infinite loop within the timeout, with its CPU time measured', async () => {
    const t0 = performance.now();
    const out = await executor.execute(shard('loop', { timeoutMs: 400 }));
    const took = performance.now() - t0;
    expect(out.status).toBe(ShardStatus.SHARD_STATUS_TIMED_OUT);
    expect(out.error).toBe('timed out after 400 ms');
    expect(ms(out.resources?.wallTimeNs ?? '0')).toBeGreaterThanOrEqual(400);
    expect(took).toBeLessThan(400 + 3000); // worker start-up (not part of the timeout) + slack
    expect(ms(out.resources?.cpuTimeNs ?? '0')).toBeGreaterThan(50);
    // The terminated worker is replaced: the same code runs again.
    const next = await executor.execute(shard('loop', { timeoutMs: 200 }));
    expect(next.status).toBe(ShardStatus.SHARD_STATUS_TIMED_OUT);
  });

  it('stops an allocation bomb at its heap limit: OUT_OF_MEMORY', async () => {
    const out = await executor.execute(shard('bomb', { memoryLimitMb: 32 }));
    expect(out.status).toBe(ShardStatus.SHARD_STATUS_OUT_OF_MEMORY);
    expect(out.error).toMatch(/32 MiB heap/);
    expect(out.resources?.peakMemoryBytes).toBe(String(32 * 1024 * 1024));
  });

  it('refuses corrupted input, naming it, without running the transform', async () => {
    const before = fetches;
    const out = await executor.execute(shard('echo', { inputs: [input('orders', 'o1', '{}'), input('rates', 'r', 'EUR', true)] }));
    expect(out.status).toBe(ShardStatus.SHARD_STATUS_INPUT_CORRUPTED);
    expect(out.error).toMatch(/^inputs\[1\] "rates" \(record:rates:r\): payload hashes to sha256:[0-9a-f]{64}, expected sha256:/);
    expect(fetches).toBe(before);
    const malformed = await executor.execute(shard('echo', { inputs: [{ ...input('orders', 'o1', '{}'), contentHash: 'md5:x' }] }));
    expect(malformed.status).toBe(ShardStatus.SHARD_STATUS_INPUT_CORRUPTED);
  });

  it('applies injected faults: failure, latency, latency past the timeout', async () => {
    const failed = await executor.execute(shard('echo', { faults: { addedLatencyMs: 0, fail: true } }));
    expect(failed.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
    expect(failed.error).toBe('injected failure (faults.fail)');
    const slow = await executor.execute(shard('echo', { faults: { addedLatencyMs: 250, fail: false } }));
    expect(slow.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    expect(ms(slow.resources?.wallTimeNs ?? '0')).toBeGreaterThanOrEqual(250);
    // 40 short latencies at once: a timer armed from the loop's cached clock would end some early.
    const short = await Promise.all(Array.from({ length: 40 }, () => executor.execute(shard('echo', { faults: { addedLatencyMs: 3, fail: false } }))));
    for (const o of short) expect(ms(o.resources?.wallTimeNs ?? '0')).toBeGreaterThanOrEqual(3);
    const late = await executor.execute(shard('echo', { timeoutMs: 100, faults: { addedLatencyMs: 1000, fail: false } }));
    expect(late.status).toBe(ShardStatus.SHARD_STATUS_TIMED_OUT);
    expect(ms(late.resources?.wallTimeNs ?? '0')).toBeLessThan(900);
  });

  it('refuses a bundle that does not hash to its code version: CODE_UNAVAILABLE', async () => {
    const wanted = contentHashOf('some other code');
    bundles.set(wanted, bundles.get(versions.echo ?? '') ?? new Uint8Array());
    const out = await executor.execute(shard('echo', { codeVersion: wanted }));
    expect(out.status).toBe(ShardStatus.SHARD_STATUS_CODE_UNAVAILABLE);
    expect(out.error).toMatch(/hashes to sha256:[0-9a-f]{64}; refused/);
    const unknown = await executor.execute(shard('echo', { codeVersion: contentHashOf('never published') }));
    expect(unknown.status).toBe(ShardStatus.SHARD_STATUS_CODE_UNAVAILABLE);
    expect(unknown.error).toMatch(/not found/);
  });

  it('cancels running and queued shards', async () => {
    const controller = new AbortController();
    const cooperative = executor.execute(shard('slowAsync'), controller.signal);
    const stubborn = executor.execute(shard('loop'), controller.signal);
    const queued = executor.execute(shard('echo'), controller.signal);
    await new Promise((r) => setTimeout(r, 600));
    expect(executor.queued).toBe(1);
    const t0 = performance.now();
    controller.abort();
    const [a, b, c] = await Promise.all([cooperative, stubborn, queued]);
    expect(performance.now() - t0).toBeLessThan(2000);
    for (const o of [a, b, c] as ShardOutcome[]) expect(o.status).toBe(ShardStatus.SHARD_STATUS_CANCELLED);
    expect(c.error).toBe('cancelled before it started');
    expect(executor.running).toBe(0);
  });

  it('keeps measured CPU within a 0.5 cap by duty-cycling a CPU-bound batch', async () => {
    const capped = createShardExecutor({
      codeCache: createCodeCache({ dir: join(dir, 'code'), fetch: async (v) => bundles.get(v) ?? new Uint8Array() }),
      nodeId: 'node-cap',
      maxConcurrent: 1,
      hostCpus: 1,
    });
    try {
      // Calibrate: one shard of ~60 ms of CPU on this host (warms the worker too).
      const probe = await capped.execute(shard('spin', { parameters: { iterations: 2_000_000 } }));
      const perIteration = Number(probe.resources?.cpuTimeNs) / 2_000_000;
      const iterations = Math.max(100_000, Math.round(60e6 / perIteration));
      capped.setThrottle({ cpuFraction: 0.5 });
      // Let the calibration's CPU debt run out, so the window starts clean.
      await new Promise((r) => setTimeout(r, 2 * ms(probe.resources?.cpuTimeNs ?? '0') + 50));
      const outs = await Promise.all(Array.from({ length: 8 }, () => capped.execute(shard('spin', { parameters: { iterations } }))));
      for (const o of outs) expect(o.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      const cpu = outs.reduce((n, o) => n + Number(o.resources?.cpuTimeNs), 0);
      const start = Math.min(...outs.map((o) => Number(BigInt(o.startedAtNs) / 1000n)));
      const end = Math.max(...outs.map((o) => Number(BigInt(o.endedAtNs) / 1000n)));
      const ratio = cpu / 1000 / (end - start);
      expect(ratio).toBeLessThanOrEqual(0.6);
      expect(cpu).toBeGreaterThan(8 * 20e6);
    } finally {
      await capped.stop();
    }
  });

  it('keeps an idle worker per code version when a pipeline\'s steps take turns on fewer slots', async () => {
    const started: unknown[] = [];
    const one = createShardExecutor({
      codeCache: createCodeCache({ dir: join(dir, 'code'), fetch: async (v) => bundles.get(v) ?? new Uint8Array() }),
      nodeId: 'node-steps',
      maxConcurrent: 1,
      log: (_level, event, fields) => {
        if (event === 'shard-worker:started') started.push(fields);
      },
    });
    try {
      // Three steps of a record after another, for three records: three code versions, one slot.
      for (let record = 0; record < 3; record++) {
        for (const step of ['echo', 'spin', 'mixed']) {
          const out = await one.execute(shard(step, { parameters: step === 'spin' ? { iterations: 10 } : {} }));
          expect(out.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
        }
      }
      // One worker per version, reused (an idle budget of one slot ended one per shard).
      expect(started).toHaveLength(3);
      // Each live worker's CPU clock is read through one open schedstat file, closed with it.
      if (process.platform === 'linux') {
        const tids = started.map((f) => String((f as { tid: number }).tid));
        expect(schedstatFds(tids)).toBe(3);
        await one.stop();
        await until('the workers\' schedstat files closed', () => (schedstatFds(tids) === 0 ? true : undefined), 5000, 20);
      }
    } finally {
      await one.stop();
    }
  });

  it('batches shards into one worker; a hung, oversized or exiting shard is reported alone and the rest of its batch still runs', async () => {
    const started: unknown[] = [];
    const one = createShardExecutor({
      codeCache: createCodeCache({ dir: join(dir, 'code'), fetch: async (v) => bundles.get(v) ?? new Uint8Array() }),
      nodeId: 'node-batch',
      maxConcurrent: 1,
      log: (_level, event, fields) => {
        if (event === 'shard-worker:started') started.push(fields);
      },
    });
    try {
      const warm = await one.execute(shard('mixed', { memoryLimitMb: 48 }));
      expect(warm.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      const modes = ['ok', 'ok', 'loop', 'ok', 'bomb', 'ok', 'exit', 'ok', 'ok'];
      const shards = modes.map((mode) => shard('mixed', { parameters: { mode }, memoryLimitMb: 48, timeoutMs: mode === 'loop' ? 300 : 20_000 }));
      // Given in one turn: one batch for the one worker slot.
      const outs = await Promise.all(shards.map((x) => one.execute(x)));
      expect(outs.map((o) => o.shardId)).toEqual(shards.map((x) => x.shardId));
      expect(outs.map((o) => o.status)).toEqual(
        modes.map((m) =>
          m === 'loop' ? ShardStatus.SHARD_STATUS_TIMED_OUT : m === 'bomb' ? ShardStatus.SHARD_STATUS_OUT_OF_MEMORY : m === 'exit' ? ShardStatus.SHARD_STATUS_FAILED : ShardStatus.SHARD_STATUS_SUCCEEDED,
        ),
      );
      expect(outs[2]?.error).toBe('timed out after 300 ms');
      expect(outs[4]?.error).toMatch(/48 MiB heap/);
      expect(outs[6]?.error).toMatch(/exited \(code 3\)/);
      for (const [i, o] of outs.entries()) {
        if (o.status !== ShardStatus.SHARD_STATUS_SUCCEEDED) continue;
        expect(JSON.parse(o.outputs[0]?.payload.toString() ?? '{}')).toEqual({ key: 'o1', shard: shards[i]?.shardId });
        expect(o.outputs[0]?.contentHash).toBe(contentHashOf(o.outputs[0]?.payload ?? ''));
      }
      // The warm-up's worker, then one after each of the three terminations.
      expect(started).toHaveLength(4);
      // A cancelled shard waiting in a batch is skipped; the one running is stopped; the rest run.
      const controller = new AbortController();
      const waiting = [shard('mixed', { parameters: { mode: 'wait' }, memoryLimitMb: 48 }), shard('mixed', { memoryLimitMb: 48 }), shard('mixed', { memoryLimitMb: 48 })];
      const runs = waiting.map((x, i) => one.execute(x, i < 2 ? controller.signal : undefined));
      await new Promise((r) => setTimeout(r, 300));
      expect(one.running).toBe(3);
      controller.abort();
      const [stopped, skipped, ran] = await Promise.all(runs);
      expect(stopped?.status).toBe(ShardStatus.SHARD_STATUS_CANCELLED);
      expect(skipped?.status).toBe(ShardStatus.SHARD_STATUS_CANCELLED);
      expect(ran?.status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      expect(started).toHaveLength(4); // the cooperative stop kept the worker
      expect(one.running).toBe(0);
    } finally {
      await one.stop();
    }
  });

  it('cancel(shardId) cancels like an abort of its signal', async () => {
    const p = executor.execute(shard('slowAsync'));
    await new Promise((r) => setTimeout(r, 200));
    executor.cancel('no-such-shard');
    executor.cancel(`shard-${seq}`, 'the coordinator says so');
    const out = await p;
    expect(out.status).toBe(ShardStatus.SHARD_STATUS_CANCELLED);
  });

  it('checks a cached bundle again before a new worker loads it, and fetches it anew when the file changed', async () => {
    const cacheDir = join(dir, 'code-recheck');
    let fetched = 0;
    const events: string[] = [];
    const ex = createShardExecutor({
      codeCache: createCodeCache({
        dir: cacheDir,
        fetch: async (v) => {
          fetched++;
          return bundles.get(v) ?? new Uint8Array();
        },
      }),
      nodeId: 'node-recheck',
      maxConcurrent: 1,
      idleWorkerMs: 20,
      log: (_level, event) => events.push(event),
    });
    try {
      expect((await ex.execute(shard('echo'))).status).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      expect(fetched).toBe(1);
      // Another transform's bytes under echo's name, as a bad disk or a hand edit would leave them.
      const file = join(cacheDir, `${(versions.echo as string).slice('sha256:'.length)}.mjs`);
      writeFileSync(file, bundles.get(versions.probe as string) as Uint8Array);
      await until('the idle worker ended', () => (events.includes('shard-worker:terminated') ? true : undefined), 5000, 10);
      const out = await ex.execute(shard('echo', { inputs: [input('orders', 'o9', '{"n":9}')] }));
      expect(out.status, out.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      // echo's answer (the probe transform would have listed env and workerData instead).
      expect(JSON.parse(out.outputs[0]?.payload.toString() ?? '{}')).toMatchObject({ key: 'o9', value: { n: 9 } });
      expect(fetched).toBe(2);
      expect(contentHashOf(readFileSync(file))).toBe(versions.echo);
    } finally {
      await ex.stop();
    }
  });

  it('a worker refuses a bundle file that does not hash to its code version', async () => {
    // A cache that hands out a file it never checked: the worker's own check is the last one.
    const file = join(dir, 'unchecked.mjs');
    writeFileSync(file, bundles.get(versions.probe as string) as Uint8Array);
    const lying = { codeVersion: versions.echo as string, path: file, url: pathToFileURL(file).href, sizeBytes: 1 };
    const ex = createShardExecutor({ codeCache: { get: async () => lying, forget: () => {} }, nodeId: 'node-lied-to', maxConcurrent: 1 });
    try {
      const out = await ex.execute(shard('echo'));
      expect(out.status).toBe(ShardStatus.SHARD_STATUS_FAILED);
      expect(out.error).toMatch(new RegExp(`cannot load the bundle: .*hashes to ${versions.probe}, not to its code version ${versions.echo}; refused`));
      expect(out.outputs).toEqual([]);
    } finally {
      await ex.stop();
    }
  });

  it('imports exactly the bytes it checked: a bundle file swapped after the check does not run', async () => {
    // A FIFO stands in for the cache file, so the swap lands exactly between the check and the
    // import: each open reads what the test writes next, echo's bytes first (they pass the check),
    // then another transform's, which an import of the file by its path would read and run.
    const fifo = join(dir, 'swapped.mjs');
    execFileSync('mkfifo', [fifo]);
    const cached = { codeVersion: versions.echo as string, path: fifo, url: pathToFileURL(fifo).href, sizeBytes: 1 };
    const ex = createShardExecutor({ codeCache: { get: async () => cached, forget: () => {} }, nodeId: 'node-swapped', maxConcurrent: 1 });
    const feed = async (bytes: Uint8Array): Promise<void> => {
      const fh = await open(fifo, 'w');
      try {
        await fh.write(bytes);
      } finally {
        await fh.close();
      }
    };
    // Whether a thread of this process (the worker) still has the FIFO open.
    const opened = (): boolean =>
      readdirSync('/proc/self/fd').some((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`) === fifo;
        } catch {
          return false;
        }
      });
    try {
      const done = ex.execute(shard('echo'));
      await feed(bundles.get(versions.echo as string) as Uint8Array);
      // The checked read is over (its end of the FIFO closed) before the swapped bytes are offered.
      await until('the check read the file', () => (opened() ? undefined : true), 5000, 5);
      const swapped = feed(bundles.get(versions.probe as string) as Uint8Array).catch(() => {});
      const out = await done;
      expect(out.status, out.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
      // echo's answer (the probe transform would have listed env and workerData instead).
      expect(JSON.parse(out.outputs[0]?.payload.toString() ?? '{}')).toMatchObject({ key: 'o1', value: { total: 5 } });
      // Nobody read the swapped bytes: take them here, so the writer waiting for a reader ends.
      const reader = await open(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
      await swapped;
      await reader.close();
    } finally {
      await ex.stop();
    }
  });

  it('answers CANCELLED after stop() and never throws', async () => {
    const other = createShardExecutor({ codeCache: { get: () => Promise.reject(new Error('unused')), forget: () => {} }, nodeId: 'n' });
    await other.stop();
    const out = await other.execute(shard('echo'));
    expect(out.status).toBe(ShardStatus.SHARD_STATUS_CANCELLED);
    expect(out.error).toMatch(/executor stopped/);
  });

  // Last: echo counts its calls in module state, which the tests above check.
  it('keeps large inputs and outputs for shards that name them by reference; one it lacks is INPUT_NOT_CACHED', async () => {
    expect(executor.payloadCacheBytes).toBe(DEFAULT_PAYLOAD_CACHE_BYTES);
    const big = input('orders', 'big', JSON.stringify({ total: 5, pad: 'x'.repeat(CACHED_PAYLOAD_MIN_BYTES) }));
    const first = await executor.execute(shard('echo', { inputs: [big] }));
    expect(first.status, first.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    const byRef = (i: ShardInput | { contentHash: string }): ShardInput => ({ ...big, contentHash: i.contentHash, payload: Buffer.alloc(0), cached: true });
    const second = await executor.execute(shard('echo', { inputs: [byRef(big)] }));
    expect(second.status, second.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    // The transform saw the same bytes (its raw copy of the input; the rest counts calls).
    const raw = (o: typeof first): string | undefined => o.outputs.find((x) => x.key === 'big:raw')?.contentHash;
    expect(raw(second)).toBe(big.contentHash);
    // Nothing crossed the network for it.
    expect(second.resources?.netBytesIn).toBe('0');
    // An output it made (over 64 KiB) is there for the next step.
    const made = first.outputs.find((o) => o.payload.byteLength >= CACHED_PAYLOAD_MIN_BYTES && o.contentHash !== big.contentHash);
    expect(made).toBeDefined();
    const third = await executor.execute(shard('echo', { inputs: [byRef(made as { contentHash: string })] }));
    expect(third.status, third.error).toBe(ShardStatus.SHARD_STATUS_SUCCEEDED);
    const unknown = contentHashOf('never sent');
    const missing = await executor.execute(shard('echo', { inputs: [byRef({ contentHash: unknown })] }));
    expect(missing.status).toBe(ShardStatus.SHARD_STATUS_INPUT_NOT_CACHED);
    expect(missing.error).toBe(`not in this agent's payload cache: ${unknown}`);
  });
});
