/**
 * The messages between the shard executor (shard-executor.ts) and its worker threads
 * (shard-worker.ts), and the layout of the progress buffer they share. Nothing here starts a
 * worker: the executor imports it, and the worker's bundle includes it.
 */
import type { MessagePort } from 'node:worker_threads';
import type { TransformParams } from '../common/transform.js';

/** What the executor passes at start (`workerData`). */
export interface WorkerBoot {
  port: MessagePort;
  /** File URL of the cached bundle. */
  bundleUrl: string;
  /** "sha256:<hex>" the file must hash to when the worker loads it. */
  codeVersion: string;
  /** PROGRESS_BYTES shared with the executor. */
  progress: SharedArrayBuffer;
}

/** Layout of the progress buffer: Int32 [index, phase], BigInt64 [1] start (hrtime ns), Float64 [2] heap peak (bytes). */
export const PROGRESS_BYTES = 24;
/** Phase: between shards (or idle). */
export const PHASE_IDLE = 0;
/** Phase: running the transform (the executor's watchdog enforces the timeout). */
export const PHASE_RUN = 1;
/** Phase: sleeping an injected latency (the worker itself enforces the timeout). */
export const PHASE_LATENCY = 2;

/**
 * The shards of one batch, by column: a structured clone of a few arrays of strings and numbers
 * costs a fraction of one of an object per shard and per record (~0.7 against ~4.4 µs a shard).
 * Shard `i` has `SHARD_FIELDS` numbers at `nums[i * SHARD_FIELDS]` (timeout ms, injected latency
 * ms, injected failure 0/1, record count); its records follow the previous shard's in the record
 * columns, record `r`'s payload being `[spans[2r], spans[2r] + spans[2r + 1])` of the batch's buffer.
 */
export interface WorkerShards {
  shardIds: string[];
  /** Per shard, its parameters; null for none (most shards), then the worker gives it `{}`. */
  params: (TransformParams | null)[];
  nums: Float64Array;
  names: string[];
  objectIds: string[];
  keys: string[];
  eventTimeNs: string[];
  mediaTypes: string[];
  spans: Float64Array;
}

export const SHARD_FIELDS = 4;

/** One output: its payload is `[offset, offset + length)` of the results' buffer. */
export interface WorkerOutput {
  key: string;
  mediaType: string;
  contentHash: string;
  offset: number;
  length: number;
}

/**
 * The end of one shard of a batch. Times are `process.hrtime.bigint()` values (one clock for all
 * threads) as numbers: ns precision is kept below 2^53 ns (~104 days of host uptime), and after
 * that it degrades to tens of ns, which no outcome needs; numbers clone and add far cheaper.
 */
export type WorkerResult = {
  index: number;
  peakHeapBytes: number;
  startHr: number;
  endHr: number;
  /** Time in the transform's `run` calls (the weight of the shard's share of the batch's CPU), ns. */
  runNs: number;
} & (
  | { ok: true; outputs: WorkerOutput[]; gpuTimeNs: number }
  | { ok: false; status: 'failed' | 'cancelled' | 'timeout'; phase: 'load' | 'run'; error: string }
);

/**
 * Results as they travel, by column like WorkerShards: RESULT_FIELDS numbers per result in `nums`
 * (index, startHr, endHr, peakHeapBytes, runNs, gpuTimeNs, ok 1/0); what is not a number (a
 * failure, the outputs) only for the results that have it, in `details` with their position.
 */
export interface WorkerResults {
  count: number;
  nums: Float64Array;
  details: ({ at: number; outputs: WorkerOutput[] } | { at: number; status: 'failed' | 'cancelled' | 'timeout'; phase: 'load' | 'run'; error: string })[];
}

export const RESULT_FIELDS = 7;

/** Packs results for the executor (see WorkerResults). */
export function packResults(results: readonly WorkerResult[]): WorkerResults {
  const nums = new Float64Array(results.length * RESULT_FIELDS);
  const details: WorkerResults['details'] = [];
  for (let i = 0; i < results.length; i++) {
    const r = results[i] as WorkerResult;
    const o = i * RESULT_FIELDS;
    nums[o] = r.index;
    nums[o + 1] = r.startHr;
    nums[o + 2] = r.endHr;
    nums[o + 3] = r.peakHeapBytes;
    nums[o + 4] = r.runNs;
    if (r.ok) {
      nums[o + 5] = r.gpuTimeNs;
      nums[o + 6] = 1;
      if (r.outputs.length > 0) details.push({ at: i, outputs: r.outputs });
    } else {
      details.push({ at: i, status: r.status, phase: r.phase, error: r.error });
    }
  }
  return { count: results.length, nums, details };
}

/** The results of a WorkerResults, in order. */
export function unpackResults(packed: WorkerResults): WorkerResult[] {
  const out: WorkerResult[] = new Array<WorkerResult>(packed.count);
  const nums = packed.nums;
  for (let i = 0; i < packed.count; i++) {
    const o = i * RESULT_FIELDS;
    const index = nums[o] as number;
    const startHr = nums[o + 1] as number;
    const endHr = nums[o + 2] as number;
    const peakHeapBytes = nums[o + 3] as number;
    const runNs = nums[o + 4] as number;
    out[i] =
      nums[o + 6] === 1
        ? { index, startHr, endHr, peakHeapBytes, runNs, ok: true, outputs: [], gpuTimeNs: nums[o + 5] as number }
        : { index, startHr, endHr, peakHeapBytes, runNs, ok: false, status: 'failed', phase: 'run', error: '' };
  }
  for (const d of packed.details) {
    const r = out[d.at] as WorkerResult;
    if ('outputs' in d) {
      if (r.ok) r.outputs = d.outputs;
    } else {
      out[d.at] = { index: r.index, startHr: r.startHr, endHr: r.endHr, peakHeapBytes: r.peakHeapBytes, runNs: r.runNs, ok: false, status: d.status, phase: d.phase, error: d.error };
    }
  }
  return out;
}

export type ToWorker =
  | { type: 'batch'; batchId: number; nodeId: string; shards: WorkerShards; buffer: ArrayBuffer }
  | { type: 'cancel'; shardId: string };

export type FromWorker =
  /** `tid`: the worker's OS thread id (Linux), so the executor can read its CPU time from /proc. */
  | { type: 'ready'; tid: number | null }
  | { type: 'log'; shardId: string; message: string }
  /** Outcomes of shards of batch `batchId`, in order; `last` when the batch is done. */
  | { type: 'results'; batchId: number; results: WorkerResults; buffer: ArrayBuffer; last: boolean };

