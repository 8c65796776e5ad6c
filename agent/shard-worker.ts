/**
 * Entry of a shard worker thread (see shard-executor.ts). One worker serves one code version: on
 * its first shard it reads the bundle file, checks its hash and imports a private copy of the bytes
 * it checked (see loadVerified), and it runs shards one at a time, taking them in batches (one
 * message in, outcomes back in one message per batch or per 20 ms, whichever comes first). It talks
 * to the executor only over the private MessagePort it gets at start, which it removes from
 * `workerData` before any bundle code runs, so the transform cannot forge results on it. The worker has an empty `process.env` and no arguments,
 * but it is a thread of the agent's process, not a sandbox: the transform can read what the
 * agent's user can and reach the network. The agent's token among it: `/proc/self/environ` when
 * the agent was started with RETRACE_TOKEN, the file of --token-file (or ./.retrace/auth-token, the
 * owner's token when the agent runs in a coordinator's directory), and in any case the agent's
 * memory through `/proc/self/mem` (a thread may read its own process's; Node 20 has no per-thread
 * permission model). A --token value is masked in `/proc/self/cmdline` once parsed, and local
 * agents get theirs on stdin. Only a separate process under another user would close this.
 *
 * Progress goes to a small SharedArrayBuffer (`WorkerBoot.progress`, see `PROGRESS_*`): the index
 * of the shard running, its phase, when it started and its heap peak so far. The executor's one
 * watchdog per batch reads it to enforce each shard's timeout and to tell which shard a dead worker
 * was running, without a message or a timer per shard.
 *
 * Bundled into one script by the executor (esbuild) at first use; keep its imports to Node
 * built-ins and common/.
 */
import { mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { getHeapStatistics } from 'node:v8';
import { workerData } from 'node:worker_threads';
import { contentHashOf } from '../common/hash.js';
import { PHASE_IDLE, PHASE_LATENCY, PHASE_RUN, SHARD_FIELDS, packResults, type FromWorker, type ToWorker, type WorkerBoot, type WorkerResult } from './shard-worker-protocol.js';
import {
  normalizeOutputs,
  toTransformInputs,
  transformOfModule,
  type NormalizedOutput,
  type NormalizeLimits,
  type ShardRecord,
  type TransformDefinition,
} from '../common/transform.js';

/** TF.js backends that run kernels on a GPU. */
const GPU_BACKENDS = new Set(['webgl', 'webgpu']);
const MAX_LOG_CHARS = 4096;
/**
 * Bytes of stdout, stderr and `ctx.log` together one shard may print; the rest is dropped, and one line on
 * stderr says how much. A worker's prints wait in its own heap until the agent reads them: a
 * transform printing hundreds of MiB in a loop ran its worker out of heap after the shard ended,
 * and everything it printed but the first line was lost without a word.
 */
const MAX_PRINT_BYTES = 1024 * 1024;
/** Finished outcomes wait at most this long for the rest of their batch, ms. */
const FLUSH_MS = 20;

/** Longest text of a thrown value an error message quotes, characters. */
const MAX_THROWN_CHARS = 2000;

/**
 * What `who` (the transform, the bundle) threw, as the shard's error says it. An Error by its
 * name and message; anything else (`throw undefined`, a string, a number, a plain object) saying
 * what it was, since `String(value)` read as just "undefined" or "" in the outcome, and an object
 * whose `toString` throws must not throw again here.
 */
function describeThrown(err: unknown, who: string): string {
  const quote = (text: string): string => (text.length > MAX_THROWN_CHARS ? `${text.slice(0, MAX_THROWN_CHARS)}...` : text);
  if (err instanceof Error) {
    const name = err.name && err.name !== 'Error' ? err.name : '';
    const message = typeof err.message === 'string' ? err.message : '';
    if (message === '') return `${who} threw ${name || 'an Error'} with no message`;
    return quote(name ? `${name}: ${message}` : message);
  }
  if (err === undefined || err === null) return `${who} threw ${String(err)} (not an Error)`;
  switch (typeof err) {
    case 'string':
      return `${who} threw a string (not an Error): ${quote(JSON.stringify(err))}`;
    case 'number':
    case 'boolean':
    case 'bigint':
      return `${who} threw a ${typeof err} (not an Error): ${String(err)}${typeof err === 'bigint' ? 'n' : ''}`;
    case 'symbol':
      return `${who} threw a symbol (not an Error): ${err.toString()}`;
    case 'function':
      return `${who} threw a function (not an Error)`;
    default: {
      let text: string;
      try {
        text = JSON.stringify(err) ?? Object.prototype.toString.call(err);
      } catch {
        text = Object.prototype.toString.call(err);
      }
      return `${who} threw an object (not an Error): ${quote(text)}`;
    }
  }
}

function threadId(): number | null {
  try {
    // "/proc/thread-self" resolves, in the calling thread, to "<pid>/task/<tid>".
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    return Number.isInteger(tid) && tid > 0 ? tid : null;
  } catch {
    return null;
  }
}

type HeapStats = ReturnType<typeof getHeapStatistics> & { external_memory?: number };

/** Heap in use by this isolate: V8 heap plus external memory (ArrayBuffers) V8 knows of. */
function heapInUse(h: HeapStats): number {
  return h.used_heap_size + (h.external_memory ?? 0);
}

/**
 * What the outputs of one run call may come to: a third of the heap left (serialising JSON holds
 * its text and the pieces it was built from). Past the heap limit inside `JSON.stringify` or a
 * string's flattening, V8 aborts the whole agent process, not only this worker.
 */
function outputLimits(h: HeapStats): NormalizeLimits {
  return { maxChars: Math.max(0, Math.floor((h.heap_size_limit - h.used_heap_size) / 3)), heapLimitMb: Math.round(h.heap_size_limit / (1024 * 1024)) };
}

function tfBackend(): string {
  const engine = (globalThis as { _tfengine?: { backendName?: unknown } })._tfengine;
  return typeof engine?.backendName === 'string' ? engine.backendName : '';
}

/**
 * Imports exactly the bytes of the bundle that hash to the code version. The code cache checked
 * the file when it was fetched or first read, but every new worker loads it again, maybe much
 * later: a file changed since then (a bad disk, a hand edit) would run under a code version that
 * provenance records for other bytes. So the file is read once and checked, and those bytes are
 * written to a new file (O_EXCL, 0600) in a new private folder (mkdtemp, 0700) under the system
 * temporary folder, which is what is imported; the folder is removed once the module is loaded.
 * Importing the cached file itself, by its path, read it a second time: a local user who can
 * write the cache folder could swap it between the check and the import. A `data:` URL of the
 * bytes would need no file, but bundles call `createRequire(import.meta.url)`, which takes only
 * a file URL or path.
 */
async function loadVerified(bundleUrl: string, codeVersion: string): Promise<TransformDefinition> {
  const bytes = readFileSync(fileURLToPath(bundleUrl));
  const actual = contentHashOf(bytes);
  if (actual !== codeVersion) throw new Error(`the cached bundle hashes to ${actual}, not to its code version ${codeVersion}; refused`);
  const dir = mkdtempSync(join(tmpdir(), 'retrace-bundle-'));
  try {
    const file = join(dir, `${codeVersion.slice('sha256:'.length)}.mjs`);
    writeFileSync(file, bytes, { flag: 'wx', mode: 0o600 });
    return transformOfModule((await import(pathToFileURL(file).href)) as Record<string, unknown>);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Caps what a shard prints and logs through `ctx.log` (`MAX_PRINT_BYTES` in all); `allow(n)` says
 * whether `n` more bytes fit (counting them), `reset` starts a shard's count and reports what the
 * last one dropped.
 */
function capPrints(): { allow: (bytes: number) => boolean; reset: () => void } {
  let printed = 0;
  let dropped = 0;
  const allow = (n: number): boolean => {
    if (printed + n <= MAX_PRINT_BYTES) {
      printed += n;
      return true;
    }
    dropped += n;
    return false;
  };
  const streams = [process.stdout, process.stderr];
  const writes = streams.map((stream) => stream.write.bind(stream) as (chunk: unknown, ...rest: unknown[]) => boolean);
  streams.forEach((stream, i) => {
    const write = writes[i] as (chunk: unknown, ...rest: unknown[]) => boolean;
    stream.write = ((chunk: unknown, ...rest: unknown[]): boolean => {
      const n = typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk instanceof Uint8Array ? chunk.byteLength : 0;
      if (allow(n)) return write(chunk, ...rest);
      const callback = rest.find((r): r is () => void => typeof r === 'function');
      if (callback) process.nextTick(callback);
      return true;
    }) as typeof stream.write;
  });
  return {
    allow,
    reset() {
      if (dropped > 0) (writes[1] as (chunk: string) => boolean)(`[retrace] ${dropped} bytes the shard printed or logged were dropped: a shard prints ${MAX_PRINT_BYTES} bytes at most\n`);
      printed = 0;
      dropped = 0;
    },
  };
}

function start(): void {
  const boot = workerData as Partial<WorkerBoot>;
  const port = boot.port;
  const url = boot.bundleUrl;
  const version = boot.codeVersion;
  const progress = boot.progress;
  delete boot.port;
  delete boot.progress;
  if (!port || typeof url !== 'string' || typeof version !== 'string' || !progress) throw new Error('shard worker started without its port, bundle, code version and progress buffer');
  const bundleUrl: string = url;
  const codeVersion: string = version;
  const slot = new Int32Array(progress, 0, 2);
  const startedAt = new BigInt64Array(progress, 8, 1);
  const peakOut = new Float64Array(progress, 16, 1);
  const prints = capPrints();
  let definition: Promise<TransformDefinition> | undefined;
  /** The loaded transform, once `definition` resolved: later shards take it without an await. */
  let loaded: TransformDefinition | undefined;
  /** Shards asked to stop: skipped when not started, their signal aborted when running. */
  const cancelled = new Set<string>();
  let current: { shardId: string; controller: AbortController | undefined } | undefined;
  const batches: Extract<ToWorker, { type: 'batch' }>[] = [];
  let busy = false;
  const post = (msg: FromWorker, transfer: ArrayBuffer[] = []): void => port.postMessage(msg, transfer);

  let peak = 0;
  /** Updates the heap peak; returns the statistics it read. */
  const observe = (): HeapStats => {
    const stats = getHeapStatistics() as HeapStats;
    const h = heapInUse(stats);
    if (h > peak) {
      peak = h;
      peakOut[0] = h;
    }
    return stats;
  };

  /** Packs the outputs of `pending` into one buffer (one transfer instead of one per output). */
  function flush(batchId: number, pending: { result: WorkerResult; outputs: NormalizedOutput[] }[], last: boolean): void {
    let bytes = 0;
    for (const p of pending) for (const o of p.outputs) bytes += o.payload.byteLength;
    const buffer = new ArrayBuffer(bytes);
    const view = new Uint8Array(buffer);
    let offset = 0;
    const results: WorkerResult[] = new Array<WorkerResult>(pending.length);
    let n = 0;
    for (const p of pending) {
      if (p.result.ok) {
        for (const o of p.outputs) {
          view.set(o.payload, offset);
          p.result.outputs.push({ key: o.key, mediaType: o.mediaType, contentHash: contentHashOf(o.payload), offset, length: o.payload.byteLength });
          offset += o.payload.byteLength;
        }
      }
      results[n++] = p.result;
    }
    const packed = packResults(results);
    post({ type: 'results', batchId, results: packed, buffer, last }, [buffer, packed.nums.buffer as ArrayBuffer]);
  }

  /** Sleeps `ms`, woken early by a cancel of `shardId`; true when it slept the whole time. */
  function latency(ms: number, shardId: string): Promise<boolean> {
    return new Promise((resolve) => {
      // libuv arms timers from the loop's cached clock, which can lag the shard's start by up to a
      // millisecond, so a bare setTimeout may fire early: re-arm until the hrtime deadline passes.
      const deadline = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
      const fire = (): void => {
        const left = Number(deadline - process.hrtime.bigint()) / 1e6;
        if (left > 0) {
          timer = setTimeout(fire, Math.ceil(left));
          return;
        }
        current = { shardId, controller: undefined };
        resolve(true);
      };
      let timer = setTimeout(fire, ms);
      current = {
        shardId,
        controller: {
          abort: () => {
            clearTimeout(timer);
            resolve(false);
          },
        } as unknown as AbortController,
      };
    });
  }

  async function runBatch(batch: Extract<ToWorker, { type: 'batch' }>): Promise<void> {
    const bytes = new Uint8Array(batch.buffer);
    let pending: { result: WorkerResult; outputs: NormalizedOutput[] }[] = [];
    let lastFlush = process.hrtime.bigint();
    // Heap peaks between run calls (an async transform yields); a synchronous stretch is not sampled.
    const sampler = setInterval(observe, 10);
    const cols = batch.shards;
    const count = cols.shardIds.length;
    /** The first record of the shard at hand (the record columns run shard after shard). */
    let nextRecord = 0;
    /**
     * Queues the result of shard `index`, which started at `startHr`. `sampled`: the heap was just
     * observed (after the last run call), nothing ran since. One function for the batch, not a
     * closure per shard.
     */
    const end = (index: number, startHr: number, r: Omit<WorkerResult, 'index' | 'startHr' | 'endHr' | 'peakHeapBytes'> & Partial<WorkerResult>, outputs: NormalizedOutput[] = [], sampled = false): void => {
      if (!sampled) observe();
      prints.reset();
      // Filled in place (`r` is always a fresh literal): a spread here was the worker's top cost.
      const result = r as WorkerResult;
      result.index = index;
      result.startHr = startHr;
      result.endHr = Number(process.hrtime.bigint());
      result.peakHeapBytes = peak;
      pending.push({ result, outputs });
    };
    try {
      for (let index = 0; index < count; index++) {
        const o = index * SHARD_FIELDS;
        const shardId = cols.shardIds[index] as string;
        const timeoutMs = cols.nums[o] as number;
        const latencyMs = cols.nums[o + 1] as number;
        const firstRecord = nextRecord;
        nextRecord += cols.nums[o + 3] as number;
        const startBig = process.hrtime.bigint();
        const startHr = Number(startBig);
        peak = 0;
        observe();
        Atomics.store(startedAt, 0, startBig);
        Atomics.store(slot, 0, index);
        if (cancelled.size > 0 && cancelled.delete(shardId)) {
          end(index, startHr, { ok: false, status: 'cancelled', phase: 'run', error: 'cancelled', runNs: 0 });
          continue;
        }
        if (latencyMs > 0) {
          Atomics.store(slot, 1, PHASE_LATENCY);
          const slept = await latency(Math.min(latencyMs, timeoutMs), shardId);
          current = undefined;
          if (!slept || cancelled.delete(shardId)) {
            Atomics.store(slot, 1, PHASE_IDLE);
            end(index, startHr, { ok: false, status: 'cancelled', phase: 'run', error: 'cancelled', runNs: 0 });
            continue;
          }
          if (latencyMs >= timeoutMs) {
            Atomics.store(slot, 1, PHASE_IDLE);
            end(index, startHr, { ok: false, status: 'timeout', phase: 'run', error: `timed out after ${timeoutMs} ms (injected latency ${latencyMs} ms)`, runNs: 0 });
            continue;
          }
        }
        if (cols.nums[o + 2] === 1) {
          Atomics.store(slot, 1, PHASE_IDLE);
          end(index, startHr, { ok: false, status: 'failed', phase: 'run', error: 'injected failure (faults.fail)', runNs: 0 });
          continue;
        }
        Atomics.store(slot, 1, PHASE_RUN);
        let def: TransformDefinition;
        try {
          if (loaded) def = loaded;
          else {
            definition ??= loadVerified(bundleUrl, codeVersion);
            def = loaded = await definition;
          }
        } catch (err) {
          Atomics.store(slot, 1, PHASE_IDLE);
          // Every shard of the batch gets the same answer; the executor retires this worker.
          const error = `cannot load the bundle: ${describeThrown(err, 'the bundle')}`;
          end(index, startHr, { ok: false, status: 'failed', phase: 'load', error, runNs: 0 });
          for (let i = index + 1; i < count; i++) {
            const t = Number(process.hrtime.bigint());
            pending.push({ result: { index: i, ok: false, status: 'failed', phase: 'load', error, runNs: 0, startHr: t, endHr: t, peakHeapBytes: peak }, outputs: [] });
          }
          break;
        }
        // The shard's signal is made only when the transform asks for it: most never do.
        const cur: { shardId: string; controller: AbortController | undefined } = { shardId: shardId, controller: undefined };
        current = cur;
        const ctx = {
          shardId: shardId,
          nodeId: batch.nodeId,
          get signal(): AbortSignal {
            cur.controller ??= new AbortController();
            return cur.controller.signal;
          },
          log: (message: string) => {
            // Each message is queued in the agent's own memory, outside the worker's heap limit.
            const text = String(message).slice(0, MAX_LOG_CHARS);
            if (prints.allow(text.length)) post({ type: 'log', shardId: shardId, message: text });
          },
        };
        let runNs = 0;
        let sampled = false;
        try {
          const records: ShardRecord[] = [];
          for (let r = firstRecord; r < nextRecord; r++) {
            const at = cols.spans[2 * r] as number;
            records.push({
              name: cols.names[r] as string,
              objectId: cols.objectIds[r] as string,
              key: cols.keys[r] as string,
              payload: bytes.subarray(at, at + (cols.spans[2 * r + 1] as number)),
              eventTimeNs: cols.eventTimeNs[r] as string,
              mediaType: cols.mediaTypes[r] as string,
            });
          }
          const outputs: NormalizedOutput[] = [];
          for (const input of toTransformInputs(records)) {
            if (cur.controller?.signal.aborted || (cancelled.size > 0 && cancelled.has(shardId))) throw new Error('cancelled');
            const t0 = process.hrtime.bigint();
            let result = def.run(input, cols.params[index] ?? {}, ctx);
            // A synchronous transform's result needs no trip through the microtask queue.
            if (result !== null && typeof result === 'object' && typeof (result as { then?: unknown }).then === 'function') result = await result;
            runNs += Number(process.hrtime.bigint() - t0);
            const heap = observe();
            sampled = true;
            for (const o of normalizeOutputs(result, input.key, 'outputs', outputLimits(heap))) {
              outputs.push(o);
              sampled = false;
            }
          }
          const backend = tfBackend();
          // TF.js exposes no per-kernel GPU clock here: with a GPU backend the run's wall time is
          // reported as GPU time (an upper bound).
          const gpuTimeNs = GPU_BACKENDS.has(backend) ? runNs : 0;
          if (cancelled.size > 0 && cancelled.delete(shardId)) end(index, startHr, { ok: false, status: 'cancelled', phase: 'run', error: 'cancelled', runNs });
          else end(index, startHr, { ok: true, outputs: [], gpuTimeNs, runNs }, outputs, sampled);
        } catch (err) {
          if (cancelled.delete(shardId)) end(index, startHr, { ok: false, status: 'cancelled', phase: 'run', error: 'cancelled', runNs });
          else end(index, startHr, { ok: false, status: 'failed', phase: 'run', error: describeThrown(err, 'transform'), runNs });
        } finally {
          current = undefined;
          Atomics.store(slot, 1, PHASE_IDLE);
        }
        const now = process.hrtime.bigint();
        if (now - lastFlush >= FLUSH_MS * 1e6 && index < count - 1) {
          flush(batch.batchId, pending, false);
          pending = [];
          lastFlush = now;
        }
      }
    } finally {
      clearInterval(sampler);
      Atomics.store(slot, 0, -1);
      // A cancel that arrived after its shard ended must not linger.
      if (cancelled.size > 0) for (const id of cols.shardIds) cancelled.delete(id);
      flush(batch.batchId, pending, true);
    }
  }

  async function drain(): Promise<void> {
    if (busy) return;
    busy = true;
    try {
      for (let b = batches.shift(); b; b = batches.shift()) await runBatch(b);
    } finally {
      busy = false;
    }
  }

  port.on('message', (msg: ToWorker) => {
    if (msg.type === 'batch') {
      batches.push(msg);
      void drain();
    } else if (msg.type === 'cancel') {
      if (current?.shardId === msg.shardId && current.controller) current.controller.abort(new Error('cancelled'));
      cancelled.add(msg.shardId);
    }
  });
  Atomics.store(slot, 0, -1);
  post({ type: 'ready', tid: threadId() });
}

start();
