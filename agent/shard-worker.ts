/**
 * Entry of a shard worker thread (see shard-executor.ts). One worker serves one code version: it
 * imports the bundle by file URL on its first shard and runs shards one at a time. It talks to
 * the executor only over the private MessagePort it gets at start, which it removes from
 * `workerData` before any bundle code runs, so the transform cannot forge results on it. The
 * worker has an empty environment and no arguments; the agent's token never reaches it.
 *
 * Bundled into one script by the executor (esbuild) at first use; keep its imports to Node
 * built-ins and common/.
 */
import { readlinkSync } from 'node:fs';
import { getHeapStatistics } from 'node:v8';
import { workerData, type MessagePort } from 'node:worker_threads';
import {
  normalizeOutputs,
  toTransformInputs,
  transformOfModule,
  type NormalizedOutput,
  type ShardRecord,
  type TransformDefinition,
  type TransformParams,
} from '../common/transform.js';

/** What the executor passes at start (`workerData`). */
export interface WorkerBoot {
  port: MessagePort;
  /** File URL of the cached bundle. */
  bundleUrl: string;
}

/** One shard as the worker receives it. */
export interface WorkerShard {
  shardId: string;
  nodeId: string;
  params: TransformParams;
  records: ShardRecord[];
}

export type ToWorker = { type: 'run'; shard: WorkerShard } | { type: 'cancel'; shardId: string };

export type FromWorker =
  /** `tid`: the worker's OS thread id (Linux), so the executor can read its CPU time from /proc. */
  | { type: 'ready'; tid: number | null }
  | { type: 'log'; shardId: string; message: string }
  /** A new heap peak, sent when the event loop gets a turn (so not during synchronous loops). */
  | { type: 'heap'; shardId: string; peakHeapBytes: number }
  | {
      type: 'done';
      shardId: string;
      ok: true;
      outputs: NormalizedOutput[];
      peakHeapBytes: number;
      /** The TF.js backend in use at the end, or '' without TF.js. */
      tfBackend: string;
      gpuTimeNs: number;
    }
  | { type: 'done'; shardId: string; ok: false; error: string; phase: 'load' | 'run'; peakHeapBytes: number };

/** TF.js backends that run kernels on a GPU. */
const GPU_BACKENDS = new Set(['webgl', 'webgpu']);
const MAX_LOG_CHARS = 4096;

function describeError(err: unknown): string {
  if (err instanceof Error) return err.name && err.name !== 'Error' ? `${err.name}: ${err.message}` : err.message;
  return String(err);
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

/** Heap in use by this isolate: V8 heap plus external memory (ArrayBuffers) V8 knows of. */
function heapInUse(): number {
  const h = getHeapStatistics() as ReturnType<typeof getHeapStatistics> & { external_memory?: number };
  return h.used_heap_size + (h.external_memory ?? 0);
}

function tfBackend(): string {
  const engine = (globalThis as { _tfengine?: { backendName?: unknown } })._tfengine;
  return typeof engine?.backendName === 'string' ? engine.backendName : '';
}

function start(): void {
  const boot = workerData as Partial<WorkerBoot>;
  const port = boot.port;
  const url = boot.bundleUrl;
  delete boot.port;
  if (!port || typeof url !== 'string') throw new Error('shard worker started without its port and bundle');
  const bundleUrl: string = url;
  let definition: Promise<TransformDefinition> | undefined;
  const running = new Map<string, AbortController>();
  const post = (msg: FromWorker, transfer: ArrayBuffer[] = []): void => port.postMessage(msg, transfer);

  async function run(shard: WorkerShard): Promise<void> {
    const controller = new AbortController();
    running.set(shard.shardId, controller);
    let peak = heapInUse();
    let reported = peak;
    const observe = (): void => {
      peak = Math.max(peak, heapInUse());
    };
    const sampler = setInterval(() => {
      observe();
      if (peak > reported + 1024 * 1024) {
        reported = peak;
        post({ type: 'heap', shardId: shard.shardId, peakHeapBytes: peak });
      }
    }, 10);
    let def: TransformDefinition;
    try {
      definition ??= import(bundleUrl).then((m: Record<string, unknown>) => transformOfModule(m));
      def = await definition;
    } catch (err) {
      clearInterval(sampler);
      running.delete(shard.shardId);
      post({ type: 'done', shardId: shard.shardId, ok: false, phase: 'load', error: `cannot load the bundle: ${describeError(err)}`, peakHeapBytes: peak });
      return;
    }
    try {
      const ctx = {
        shardId: shard.shardId,
        nodeId: shard.nodeId,
        signal: controller.signal,
        log: (message: string) => post({ type: 'log', shardId: shard.shardId, message: String(message).slice(0, MAX_LOG_CHARS) }),
      };
      const outputs: NormalizedOutput[] = [];
      let runNs = 0n;
      for (const input of toTransformInputs(shard.records)) {
        if (controller.signal.aborted) throw new Error('cancelled');
        const t0 = process.hrtime.bigint();
        const result = await def.run(input, shard.params, ctx);
        runNs += process.hrtime.bigint() - t0;
        observe();
        outputs.push(...normalizeOutputs(result, input.key));
      }
      observe();
      const backend = tfBackend();
      // TF.js exposes no per-kernel GPU clock here: with a GPU backend the run's wall time is
      // reported as GPU time (an upper bound).
      const gpuTimeNs = GPU_BACKENDS.has(backend) ? Number(runNs) : 0;
      // Output payloads own their buffers (normalizeOutputs copies), so they move without a copy.
      const transfer = [...new Set(outputs.map((o) => o.payload.buffer as ArrayBuffer))];
      post({ type: 'done', shardId: shard.shardId, ok: true, outputs, peakHeapBytes: peak, tfBackend: backend, gpuTimeNs }, transfer);
    } catch (err) {
      observe();
      post({ type: 'done', shardId: shard.shardId, ok: false, phase: 'run', error: describeError(err), peakHeapBytes: peak });
    } finally {
      clearInterval(sampler);
      running.delete(shard.shardId);
    }
  }

  port.on('message', (msg: ToWorker) => {
    if (msg.type === 'run') void run(msg.shard);
    else if (msg.type === 'cancel') running.get(msg.shardId)?.abort(new Error('cancelled'));
  });
  post({ type: 'ready', tid: threadId() });
}

start();
