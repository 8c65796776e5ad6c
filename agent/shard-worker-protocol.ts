/**
 * The messages between the shard executor (shard-executor.ts) and its worker threads
 * (shard-worker.ts), and the layout of the progress buffer they share. No code runs here: the
 * executor imports it without starting a worker.
 */
import type { MessagePort } from 'node:worker_threads';
import type { TransformParams } from '../common/transform.js';

/** What the executor passes at start (`workerData`). */
export interface WorkerBoot {
  port: MessagePort;
  /** File URL of the cached bundle. */
  bundleUrl: string;
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

/** One input record: its payload is `[offset, offset + length)` of the batch's buffer. */
export interface WorkerRecord {
  name: string;
  objectId: string;
  key: string;
  offset: number;
  length: number;
  eventTimeNs: string;
  mediaType: string;
}

/** One shard as the worker receives it. */
export interface WorkerShard {
  shardId: string;
  params: TransformParams;
  records: WorkerRecord[];
  timeoutMs: number;
  /** Injected latency before the run, ms (inside the timeout). */
  latencyMs: number;
  /** Injected failure: FAILED without running (after the latency). */
  fail: boolean;
}

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
  | { ok: true; outputs: WorkerOutput[]; tfBackend: string; gpuTimeNs: number }
  | { ok: false; status: 'failed' | 'cancelled' | 'timeout'; phase: 'load' | 'run'; error: string }
);

export type ToWorker =
  | { type: 'batch'; batchId: number; nodeId: string; shards: WorkerShard[]; buffer: ArrayBuffer }
  | { type: 'cancel'; shardId: string };

export type FromWorker =
  /** `tid`: the worker's OS thread id (Linux), so the executor can read its CPU time from /proc. */
  | { type: 'ready'; tid: number | null }
  | { type: 'log'; shardId: string; message: string }
  /** Outcomes of shards of batch `batchId`, in order; `last` when the batch is done. */
  | { type: 'results'; batchId: number; results: WorkerResult[]; buffer: ArrayBuffer; last: boolean };

