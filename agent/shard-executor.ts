import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MessageChannel, Worker } from 'node:worker_threads';
import { InvalidArgumentError } from '../common/errors.js';
import type { ResourceUsage } from '../common/gen/retrace/v1/provenance.js';
import { ShardStatus, type ShardAssignment, type ShardOutcome, type ShardOutput } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf, isContentHash } from '../common/hash.js';
import { ByteLru, CACHED_PAYLOAD_MIN_BYTES } from '../common/payload-locality.js';
import { silentLog, type LogFn } from '../common/log.js';
import type { CachedCode, CodeCache } from './code-cache.js';
import { PHASE_IDLE, PHASE_RUN, PROGRESS_BYTES, SHARD_FIELDS, unpackResults, type FromWorker, type ToWorker, type WorkerResult, type WorkerShards } from './shard-worker-protocol.js';

/**
 * Runs shards (ShardAssignment → ShardOutcome) in worker threads.
 *
 * Isolation: shards run in `worker_threads` Workers with a V8 heap limit
 * (`resourceLimits.maxOldGenerationSizeMb`), an empty environment, no arguments, and only the
 * bundle's code (imported by file URL from the code cache). Not a sandbox: a worker is a thread of
 * this process, with its user's files, network and `/proc/self` (environ, cmdline); and the heap
 * limit leaves ArrayBuffers out. Workers are pooled per (code version,
 * heap limit) and reused; a worker that timed out, ran out of heap, crashed or did not answer a
 * cancellation is terminated and replaced.
 *
 * Batches: shards waiting for a slot that share a code version and heap limit go to one worker in
 * one message (inputs packed into one transferred buffer), and their outcomes come back batched
 * (one message per batch, or per 20 ms of it). A batch takes one slot; with `n` shards waiting
 * and `k` free slots a batch takes ⌈n/k⌉ of them (at most `maxBatch`), so work spreads over the
 * slots. The shards of a batch run one after another; each keeps its own timeout and heap limit:
 * the worker publishes which shard runs and since when in a shared buffer, and one watchdog timer
 * per batch terminates the worker when the running shard passes its timeout (TIMED_OUT) or
 * ignores a cancellation for `cancelGraceMs` (CANCELLED); a worker that dies (heap limit, crash,
 * exit) fails the shard it was running (OUT_OF_MEMORY / FAILED). The other shards of that batch
 * lose nothing: those without an outcome yet are queued again, first in line, and run on a fresh
 * worker (a shard whose outcome was still buffered in the dead worker runs again: outcomes are
 * idempotent by shard id). A shard is queued again at most twice this way.
 *
 * Measurement, per shard:
 * - CPU time: the worker thread's on-CPU nanoseconds from `/proc/self/task/<tid>/schedstat` (field
 *   1; the kernel's per-thread scheduler clock, ns resolution; the file stays open while the
 *   worker lives, so a reading is one pread), read when a batch is posted, when
 *   each message of outcomes arrives and before a worker is terminated, so it needs nothing from
 *   the transform and survives a timeout. The CPU between two readings is shared among the shards
 *   reported in between: each is charged its time inside the transform's `run` calls (capped so
 *   the sum fits the reading), and what is left (messaging, bundle loading, GC) is split evenly.
 *   A terminated shard is charged all CPU since the last reading. Fallbacks: `.../stat`
 *   utime+stime (10 ms ticks), then, off Linux, the worker's event-loop active time
 *   (`worker.performance.eventLoopUtilization()`), which counts time blocked in synchronous calls
 *   too. V8's shared GC helper threads are not attributed to the shard.
 * - Peak memory: sampled inside the worker (`v8.getHeapStatistics()` used heap + external
 *   memory) at the shard's start and end, after every `run` call and every 10 ms when its event
 *   loop gets a turn, so a spike inside one synchronous stretch can be missed. The inputs of a
 *   batch share one buffer, counted in every shard's peak. OUT_OF_MEMORY reports the limit.
 * - Wall time, start and end: the worker's clock around the shard (injected latency and, for the
 *   first shard of a worker, the bundle's loading included).
 * - Bytes in/out: input and output payload sizes (as net_bytes_in / net_bytes_out).
 * - GPU time: the run's wall time when TF.js (`globalThis._tfengine`) ran on a GPU backend
 *   (webgl, webgpu), else 0.
 *
 * CPU cap (`setThrottle({ cpuFraction })`): threads cannot be paused from outside (no SIGSTOP
 * for one thread), so the cap is kept by duty-cycling dispatch. While capped, batches hold one
 * shard and the worker's CPU is also read every 50 ms; every CPU nanosecond measured is charged
 * to a debt clock: `debtUntil = max(debtUntil, t_sample_start) + cpu / (cpuFraction × hostCpus)`;
 * no shard starts before `debtUntil`. Over any window longer than one shard, the CPU used stays
 * within the cap; a single shard is not slowed down while it runs.
 */

/** Options of `createShardExecutor`; validated once. */
export interface ShardExecutorOptions {
  /** Where bundles come from (fetched and verified on first use). */
  codeCache: Pick<CodeCache, 'get' | 'forget'>;
  /** This agent's node id, put on every outcome and given to transforms. */
  nodeId: string;
  /** Workers running shards at once, one batch each (default: available parallelism). The throttle may lower it. */
  maxConcurrent?: number;
  /** Timeout of a shard whose assignment says 0, ms (default 60000). */
  defaultTimeoutMs?: number;
  /** Heap limit of a shard whose assignment says 0, MiB (default 512). */
  defaultMemoryMb?: number;
  /** Wall clock, nanoseconds since the epoch (outcome timestamps). */
  now?: () => bigint;
  /** CPUs of the host, the base of `cpuFraction` (default: available parallelism). */
  hostCpus?: number;
  /** Idle workers are terminated after this long, ms (default 30000). */
  idleWorkerMs?: number;
  /**
   * Idle workers kept in all (default: maxConcurrent, at least 8). Workers are pooled per code
   * version, and a pipeline's steps take turns: a budget below steps × slots ends a worker (and
   * starts another, bundle loaded again: ~8 ms of CPU) for most batches.
   */
  maxIdleWorkers?: number;
  /** How long a cancelled shard may take to stop before its worker is terminated, ms (default 500). */
  cancelGraceMs?: number;
  /** How long a new worker may take to start, ms (default 30000). */
  workerStartTimeoutMs?: number;
  /** Shards given to one worker in one message at most (default 256). */
  maxBatch?: number;
  /**
   * Bytes of payloads kept for shards to use by reference (inputs sent, outputs made, each at
   * least CACHED_PAYLOAD_MIN_BYTES); default DEFAULT_PAYLOAD_CACHE_BYTES, 0: none.
   */
  payloadCacheBytes?: number;
  log?: LogFn;
}

/** The payload cache an agent keeps unless told otherwise. */
export const DEFAULT_PAYLOAD_CACHE_BYTES = 256 * 2 ** 20;

interface CompiledOptions {
  readonly codeCache: Pick<CodeCache, 'get' | 'forget'>;
  readonly nodeId: string;
  readonly maxConcurrent: number;
  readonly defaultTimeoutMs: number;
  readonly defaultMemoryMb: number;
  readonly now: () => bigint;
  readonly hostCpus: number;
  readonly idleWorkerMs: number;
  readonly maxIdleWorkers: number;
  readonly cancelGraceMs: number;
  readonly payloadCacheBytes: number;
  readonly workerStartTimeoutMs: number;
  readonly maxBatch: number;
  readonly log: LogFn;
}

/** Limits the coordinator sets (AgentThrottle): 0 (or ≥ 1) cpuFraction = no cap; 0 maxConcurrent = the default. */
export interface ExecutorThrottle {
  cpuFraction?: number;
  maxConcurrent?: number;
}

/** Runs shards; see the module comment for isolation, measurement and the CPU cap. */
export interface ShardExecutor {
  /**
   * Runs one shard and resolves its outcome; never rejects for a shard-level problem. Statuses:
   * SUCCEEDED (outputs with content hashes), FAILED (the transform threw or returned a bad output,
   * an injected failure, a crashed worker), TIMED_OUT, CANCELLED (`signal` or `stop()`),
   * INPUT_CORRUPTED (names the input), OUT_OF_MEMORY, CODE_UNAVAILABLE (fetch or verification
   * failed). Waits for a free slot (and the CPU cap) first; `signal` also cancels that wait.
   */
  execute(assignment: ShardAssignment, signal?: AbortSignal): Promise<ShardOutcome>;
  /** `execute` with a callback instead of a promise (called once, maybe synchronously): no promise per shard. */
  executeThen(assignment: ShardAssignment, onOutcome: (outcome: ShardOutcome) => void, signal?: AbortSignal): void;
  /**
   * Cancels the shard with this id (queued or running), as an abort of its `signal` would: its
   * outcome is CANCELLED. Nothing happens for an id that is not running here.
   */
  cancel(shardId: string, reason?: string): void;
  /** Applies new limits at once to shards not yet started. */
  setThrottle(throttle: ExecutorThrottle): void;
  /** What the payload cache can hold, bytes (0: none); the registration tells the coordinator. */
  readonly payloadCacheBytes: number;
  /** Shards given to a worker and not yet answered / waiting for a slot. */
  readonly running: number;
  readonly queued: number;
  /** Cancels waiting and running shards (CANCELLED), terminates every worker. Idempotent. */
  stop(): Promise<void>;
}

function compile(o: ShardExecutorOptions): CompiledOptions {
  const cpus = availableParallelism();
  const positive = (field: string, v: number | undefined, def: number, integer = true): number => {
    const value = v ?? def;
    if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
      throw new InvalidArgumentError(field, `must be a positive ${integer ? 'integer' : 'number'}, got ${value}`);
    }
    return value;
  };
  if (typeof o.codeCache?.get !== 'function' || typeof o.codeCache.forget !== 'function') throw new InvalidArgumentError('codeCache', 'is required');
  if (typeof o.nodeId !== 'string') throw new InvalidArgumentError('nodeId', 'must be a string');
  const maxConcurrent = positive('maxConcurrent', o.maxConcurrent, cpus);
  const base = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
  return Object.freeze({
    codeCache: o.codeCache,
    nodeId: o.nodeId,
    maxConcurrent,
    defaultTimeoutMs: positive('defaultTimeoutMs', o.defaultTimeoutMs, 60_000),
    defaultMemoryMb: positive('defaultMemoryMb', o.defaultMemoryMb, 512),
    now: o.now ?? (() => base + process.hrtime.bigint()),
    hostCpus: positive('hostCpus', o.hostCpus, cpus, false),
    idleWorkerMs: positive('idleWorkerMs', o.idleWorkerMs, 30_000),
    maxIdleWorkers: o.maxIdleWorkers === 0 ? 0 : positive('maxIdleWorkers', o.maxIdleWorkers, Math.max(maxConcurrent, 8)),
    cancelGraceMs: positive('cancelGraceMs', o.cancelGraceMs, 500),
    workerStartTimeoutMs: positive('workerStartTimeoutMs', o.workerStartTimeoutMs, 30_000),
    maxBatch: positive('maxBatch', o.maxBatch, 256),
    payloadCacheBytes: o.payloadCacheBytes === 0 ? 0 : positive('payloadCacheBytes', o.payloadCacheBytes, DEFAULT_PAYLOAD_CACHE_BYTES),
    log: o.log ?? silentLog,
  });
}

// ---- the worker's script -------------------------------------------------------------------

type WorkerEntry = { kind: 'file'; url: URL } | { kind: 'eval'; source: string };
let entryPromise: Promise<WorkerEntry> | undefined;

/**
 * The worker script: a built `shard-worker.js` beside this file when there is one; otherwise
 * shard-worker.ts bundled once per process with esbuild (the agent runs from TypeScript source,
 * and Node 20 does not carry the main thread's loader hooks into workers).
 */
function workerEntry(): Promise<WorkerEntry> {
  entryPromise ??= (async (): Promise<WorkerEntry> => {
    const built = new URL('./shard-worker.js', import.meta.url);
    if (built.protocol === 'file:' && existsSync(fileURLToPath(built))) return { kind: 'file', url: built };
    const { build } = await import('esbuild');
    const result = await build({
      entryPoints: [fileURLToPath(new URL('./shard-worker.ts', import.meta.url))],
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: 'node20',
      write: false,
      logLevel: 'silent',
    });
    const text = result.outputFiles[0]?.text;
    if (!text) throw new Error('bundling shard-worker.ts produced no output');
    return { kind: 'eval', source: text };
  })();
  entryPromise.catch(() => {
    entryPromise = undefined;
  });
  return entryPromise;
}

// ---- per-thread CPU time -------------------------------------------------------------------

const SCHEDSTAT_BYTES = Buffer.alloc(64);

/**
 * The worker thread's schedstat file, opened once: a reading is then one pread (~3 µs) instead
 * of open, read and close through /proc's path lookup (~17 µs quiet, several times that under
 * load), and the executor reads it twice per batch. -1 when it cannot be opened.
 */
function openThreadCpu(tid: number | null): number {
  if (tid === null) return -1;
  try {
    return openSync(`/proc/self/task/${tid}/schedstat`, 'r');
  } catch {
    return -1;
  }
}

/** On-CPU nanoseconds of thread `tid` of this process (through `fd` when open), or undefined when /proc cannot tell. */
function threadCpuNs(tid: number, fd = -1): number | undefined {
  if (fd >= 0) {
    try {
      // procfs regenerates the text on a read at offset 0.
      const n = readSync(fd, SCHEDSTAT_BYTES, 0, SCHEDSTAT_BYTES.length, 0);
      let end = SCHEDSTAT_BYTES.indexOf(0x20);
      if (end < 0 || end > n) end = n;
      const ns = Number(SCHEDSTAT_BYTES.toString('latin1', 0, end));
      if (end > 0 && Number.isFinite(ns)) return ns;
    } catch {
      // Fall through to the path.
    }
  }
  try {
    const first = readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0];
    const ns = Number(first);
    if (Number.isFinite(ns)) return ns;
  } catch {
    // Fall through to the tick counters.
  }
  try {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    return Number.isFinite(ticks) ? ticks * 10_000_000 : undefined;
  } catch {
    return undefined;
  }
}

// ---- outcomes ------------------------------------------------------------------------------

/** A measured quantity as the proto's decimal int64: rounded, at least 0. */
function nonNegativeInt(v: number | undefined): string {
  return String(Math.max(0, Math.round(v ?? 0)));
}

/** An outcome's resource usage (disk and GPU utilisation are not measured). */
function usage(cpuTimeNs?: number, peakMemoryBytes?: number, netBytesIn?: number, netBytesOut?: number, gpuTimeNs?: number, wallTimeNs?: number): ResourceUsage {
  return {
    cpuTimeNs: nonNegativeInt(cpuTimeNs),
    peakMemoryBytes: nonNegativeInt(peakMemoryBytes),
    netBytesIn: nonNegativeInt(netBytesIn),
    netBytesOut: nonNegativeInt(netBytesOut),
    diskBytesRead: '0',
    diskBytesWritten: '0',
    gpuTimeNs: nonNegativeInt(gpuTimeNs),
    gpuUtilization: 0,
    wallTimeNs: nonNegativeInt(wallTimeNs),
  };
}

/** An input as an error message names it. */
function inputNamed(input: ShardAssignment['inputs'][number], i: number): string {
  return `inputs[${i}] ${JSON.stringify(input.name)}${input.objectId ? ` (${input.objectId})` : ''}`;
}

// ---- workers -------------------------------------------------------------------------------

type Death = { oom: boolean; message: string };

interface PooledWorker {
  readonly id: number;
  readonly key: string;
  readonly worker: Worker;
  readonly port: MessagePort;
  readonly memoryMb: number;
  /** The worker's progress (shard-worker.ts PROGRESS_*): index, phase, start, heap peak. */
  readonly slot: Int32Array;
  readonly startedAt: BigInt64Array;
  readonly peak: Float64Array;
  tid: number | null;
  /** Its schedstat file (openThreadCpu), closed when it dies; -1 when not open. */
  cpuFd: number;
  state: 'starting' | 'idle' | 'busy' | 'dead';
  death: Death | undefined;
  idleTimer: NodeJS.Timeout | undefined;
  /** Receives the messages and the death of the batch it runs. */
  listener: ((event: FromWorker | { type: 'died'; death: Death }) => void) | undefined;
}

type MessagePort = import('node:worker_threads').MessagePort;

/** One shard inside the executor. */
interface Job {
  readonly a: ShardAssignment;
  /** Pool key: code version and heap limit. */
  readonly key: string;
  readonly timeoutMs: number;
  readonly memoryMb: number;
  readonly bytesIn: number;
  readonly queuedAtNs: bigint;
  readonly resolve: (o: ShardOutcome) => void;
  state: 'queued' | 'batched' | 'done';
  batch: Batch | undefined;
  /** Index in its batch once posted, else -1. */
  index: number;
  /** Times its batch's worker died, with no shard to blame, while it waited in the batch. */
  requeues: number;
  /** A cancellation asked of the worker, waiting for its answer. */
  cancelling: boolean;
  offAbort: (() => void) | undefined;
}

interface Batch {
  readonly id: number;
  readonly key: string;
  jobs: Job[];
  pw: PooledWorker | undefined;
  /** Jobs without an outcome. */
  open: number;
  cpuLast: number | undefined;
  cpuAtMs: number;
  /** CPU read by the cap's sampler and not yet given to a shard, ns. */
  cpuUnclaimed: number;
  elu: ReturnType<Worker['performance']['eventLoopUtilization']> | undefined;
  watchdog: NodeJS.Timeout | undefined;
  sampler: NodeJS.Timeout | undefined;
  over: boolean;
}

/** Creates an executor; workers start on demand. Throws InvalidArgumentError for bad options. */
export function createShardExecutor(options: ShardExecutorOptions): ShardExecutor {
  const opts = compile(options);
  const log = opts.log;
  const idle = new Map<string, PooledWorker[]>();
  const all = new Set<PooledWorker>();
  const byId = new Map<string, Job>();
  const batches = new Set<Batch>();
  /** Waiting jobs, FIFO with a moving head; cancelled ones are skipped lazily. */
  let queue: Job[] = [];
  let head = 0;
  let queuedCount = 0;
  let batchedCount = 0;
  let nextWorkerId = 0;
  let nextBatchId = 0;
  let active = 0;
  let stopped = false;
  let cpuFraction = 0;
  let throttleMax = 0;
  /** performance.now() ms before which no shard may start (the CPU cap's debt clock). */
  let debtUntil = 0;
  let gateTimer: NodeJS.Timeout | undefined;
  let pumpScheduled = false;
  /** Inputs sent and outputs made, by content hash, for shards that name them by reference. */
  const payloads = new ByteLru<Uint8Array>(opts.payloadCacheBytes);

  const limit = (): number => (throttleMax > 0 ? throttleMax : opts.maxConcurrent);
  const capped = (): boolean => cpuFraction > 0 && cpuFraction < 1;

  /** Charges CPU used since `fromMs` to the cap's debt clock. */
  function charge(cpuNs: number, fromMs: number): void {
    if (!capped() || cpuNs <= 0) return;
    debtUntil = Math.max(debtUntil, fromMs) + cpuNs / 1e6 / (cpuFraction * opts.hostCpus);
  }

  // ---- outcomes ----

  /** Nanoseconds as the proto's decimal int64 (numbers below 1e21 print without an exponent). */
  const ns = (v: bigint | number): string => (typeof v === 'bigint' ? v.toString() : String(Math.round(v)));

  function outcomeOf(
    a: ShardAssignment,
    status: ShardStatus,
    startedAtNs: bigint | number,
    fields: { error?: string; outputs?: ShardOutput[]; resources?: Partial<Record<keyof ResourceUsage, number>>; endedAtNs?: bigint | number } = {},
  ): ShardOutcome {
    const r = fields.resources ?? {};
    return {
      shardId: a.shardId,
      status,
      outputs: fields.outputs ?? [],
      resources: usage(r.cpuTimeNs, r.peakMemoryBytes, r.netBytesIn, r.netBytesOut, r.gpuTimeNs, r.wallTimeNs),
      error: fields.error ?? '',
      startedAtNs: ns(startedAtNs),
      endedAtNs: ns(fields.endedAtNs ?? opts.now()),
      nodeId: opts.nodeId,
      attempt: a.attempt,
    };
  }

  /** The first input whose payload does not hash to its content_hash, as a message. */
  function corruptInput(a: ShardAssignment): string | undefined {
    for (let i = 0; i < a.inputs.length; i++) {
      const input = a.inputs[i] as ShardAssignment['inputs'][number];
      if (!isContentHash(input.contentHash)) return `${inputNamed(input, i)}: content_hash ${JSON.stringify(input.contentHash)} is not "sha256:<hex>"`;
      const actual = contentHashOf(input.payload);
      if (actual !== input.contentHash) return `${inputNamed(input, i)}: payload hashes to ${actual}, expected ${input.contentHash}`;
    }
    return undefined;
  }

  /** Gives the job its outcome (once). */
  function settle(job: Job, outcome: ShardOutcome): void {
    if (job.state === 'done') return;
    if (job.state === 'queued') queuedCount--;
    else batchedCount--;
    job.state = 'done';
    if (job.batch && job.index >= 0) job.batch.open--;
    if (byId.get(job.a.shardId) === job) byId.delete(job.a.shardId);
    job.offAbort?.();
    job.resolve(outcome);
  }

  // ---- slots and the queue ----

  function pump(): void {
    if (gateTimer) {
      clearTimeout(gateTimer);
      gateTimer = undefined;
    }
    while (queuedCount > 0 && active < limit() && !stopped) {
      const wait = capped() ? debtUntil - performance.now() : 0;
      if (wait > 0) {
        gateTimer = setTimeout(pump, Math.ceil(wait));
        return;
      }
      while (head < queue.length && (queue[head] as Job).state !== 'queued') head++;
      const first = queue[head];
      if (!first) return;
      // Spread what waits over the free slots; one shard at a time while capped, so the debt
      // clock can space them.
      const want = capped() ? 1 : Math.min(opts.maxBatch, Math.ceil(queuedCount / Math.max(1, limit() - active)));
      const jobs: Job[] = [];
      const skipped: Job[] = [];
      let i = head;
      // Same-key shards further back join the batch; the scan is bounded so a mix of keys stays cheap.
      const scanEnd = Math.min(queue.length, head + want * 4 + 64);
      for (; i < scanEnd && jobs.length < want; i++) {
        const j = queue[i] as Job;
        if (j.state !== 'queued') continue;
        if (j.key === first.key) jobs.push(j);
        else skipped.push(j);
      }
      queue = skipped.length === 0 ? queue.slice(i) : [...skipped, ...queue.slice(i)];
      head = 0;
      const batch: Batch = { id: ++nextBatchId, key: first.key, jobs, pw: undefined, open: 0, cpuLast: undefined, cpuAtMs: 0, cpuUnclaimed: 0, elu: undefined, watchdog: undefined, sampler: undefined, over: false };
      for (const j of jobs) {
        j.state = 'batched';
        j.batch = batch;
        j.index = -1;
      }
      queuedCount -= jobs.length;
      batchedCount += jobs.length;
      active++;
      batches.add(batch);
      void startBatch(batch).catch((err: unknown) => {
        // A bug of the executor, not of a shard: still outcomes, and loud in the log.
        log('error', 'shard:executor-error', { error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
        endBatch(batch, 'executor error');
        for (const j of batch.jobs) settle(j, outcomeOf(j.a, ShardStatus.SHARD_STATUS_FAILED, j.queuedAtNs, { error: `agent error: ${err instanceof Error ? err.message : String(err)}` }));
      });
    }
  }

  /** Frees the batch's slot (its worker parked or killed by the caller). Idempotent. */
  function endBatch(batch: Batch, why: string): void {
    if (batch.over) return;
    batch.over = true;
    if (batch.watchdog) clearTimeout(batch.watchdog);
    if (batch.sampler) clearInterval(batch.sampler);
    if (batch.pw && batch.pw.state !== 'dead') batch.pw.listener = undefined;
    batches.delete(batch);
    active--;
    if (batch.open > 0) log('debug', 'shard-batch:ended', { batch: batch.id, open: batch.open, reason: why });
    pump();
  }

  /**
   * Puts the batch's unanswered shards back at the head of the queue (their worker is gone).
   * `unexplained`: no shard was running when the worker died, so none can be blamed; each shard
   * takes that at most twice before it fails, so a worker that keeps dying cannot loop forever.
   */
  function requeueRest(batch: Batch, death: string, unexplained: boolean): void {
    const back: Job[] = [];
    for (const j of batch.jobs) {
      if (j.state !== 'batched') continue;
      if (unexplained && j.requeues >= 2) {
        settle(j, outcomeOf(j.a, ShardStatus.SHARD_STATUS_FAILED, j.queuedAtNs, { error: `its worker died ${j.requeues + 1} times before it ran: ${death}` }));
        continue;
      }
      if (j.index >= 0) batch.open--;
      if (unexplained) j.requeues++;
      j.state = 'queued';
      j.batch = undefined;
      j.index = -1;
      j.cancelling = false;
      batchedCount--;
      queuedCount++;
      back.push(j);
    }
    if (back.length === 0) return;
    queue = [...back, ...queue.slice(head)];
    head = 0;
  }

  // ---- worker pool ----

  function kill(pw: PooledWorker, why: string): void {
    if (pw.state === 'dead') return;
    pw.state = 'dead';
    if (pw.idleTimer) clearTimeout(pw.idleTimer);
    removeIdle(pw);
    all.delete(pw);
    log('debug', 'shard-worker:terminated', { worker: pw.id, reason: why });
    void pw.worker.terminate().catch(() => {});
  }

  function removeIdle(pw: PooledWorker): void {
    const list = idle.get(pw.key);
    if (!list) return;
    const i = list.indexOf(pw);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) idle.delete(pw.key);
  }

  function park(pw: PooledWorker): void {
    pw.listener = undefined;
    if (pw.state === 'dead') return;
    if (stopped || opts.maxIdleWorkers === 0) return kill(pw, stopped ? 'executor stopped' : 'no idle workers kept');
    pw.state = 'idle';
    const list = idle.get(pw.key) ?? [];
    list.push(pw);
    idle.set(pw.key, list);
    pw.idleTimer = setTimeout(() => kill(pw, 'idle'), opts.idleWorkerMs);
    pw.idleTimer.unref();
    // Over the idle budget: the longest-idle worker of any version goes.
    let idleCount = 0;
    for (const l of idle.values()) idleCount += l.length;
    if (idleCount > opts.maxIdleWorkers) {
      const oldest = [...idle.values()].map((l) => l[0]).filter((w): w is PooledWorker => w !== undefined).sort((a, b) => a.id - b.id)[0];
      if (oldest) kill(oldest, 'idle budget');
    }
  }

  async function spawn(code: CachedCode, memoryMb: number, key: string): Promise<PooledWorker> {
    const entry = await workerEntry();
    const { port1, port2 } = new MessageChannel();
    const progress = new SharedArrayBuffer(PROGRESS_BYTES);
    const worker = new Worker(entry.kind === 'eval' ? entry.source : entry.url, {
      eval: entry.kind === 'eval',
      env: {},
      argv: [],
      execArgv: [],
      stdout: true,
      stderr: true,
      resourceLimits: { maxOldGenerationSizeMb: memoryMb },
      workerData: { port: port2, bundleUrl: code.url, codeVersion: code.codeVersion, progress },
      transferList: [port2],
    });
    const pw: PooledWorker = {
      id: ++nextWorkerId,
      key,
      worker,
      port: port1,
      memoryMb,
      slot: new Int32Array(progress, 0, 2),
      startedAt: new BigInt64Array(progress, 8, 1),
      peak: new Float64Array(progress, 16, 1),
      tid: null,
      cpuFd: -1,
      state: 'starting',
      death: undefined,
      idleTimer: undefined,
      listener: undefined,
    };
    all.add(pw);
    for (const [stream, name] of [[worker.stdout, 'shard:stdout'], [worker.stderr, 'shard:stderr']] as const) {
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) =>
        log('info', name, { worker: pw.id, codeVersion: code.codeVersion, line: line.slice(0, 4096) }),
      );
    }
    const died = (death: Death): void => {
      if (pw.death) return;
      pw.death = death;
      const listener = pw.listener;
      pw.listener = undefined;
      if (pw.state !== 'dead') {
        pw.state = 'dead';
        if (pw.idleTimer) clearTimeout(pw.idleTimer);
        removeIdle(pw);
        all.delete(pw);
      }
      listener?.({ type: 'died', death });
      if (pw.cpuFd >= 0) {
        try {
          closeSync(pw.cpuFd);
        } catch {
          // Already gone: nothing to release.
        }
        pw.cpuFd = -1;
      }
    };
    worker.on('error', (err: Error & { code?: string }) => {
      const oom = err.code === 'ERR_WORKER_OUT_OF_MEMORY';
      died({ oom, message: oom ? `the worker ran out of its ${memoryMb} MiB heap` : `the worker crashed: ${err.message}` });
    });
    worker.on('exit', (exitCode) => died({ oom: false, message: `the worker exited (code ${exitCode})` }));
    port1.on('message', (msg: FromWorker) => pw.listener?.(msg));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        pw.listener = undefined;
        kill(pw, 'start timeout');
        reject(new Error(`the worker did not start within ${opts.workerStartTimeoutMs} ms`));
      }, opts.workerStartTimeoutMs);
      pw.listener = (event) => {
        if (event.type === 'ready') {
          clearTimeout(timer);
          pw.tid = event.tid;
          pw.cpuFd = openThreadCpu(event.tid);
          pw.listener = undefined;
          resolve();
        } else if (event.type === 'died') {
          clearTimeout(timer);
          reject(new Error(event.death.message));
        }
      };
    });
    log('debug', 'shard-worker:started', { worker: pw.id, codeVersion: code.codeVersion, memoryMb, tid: pw.tid });
    return pw;
  }

  async function workerFor(code: CachedCode, memoryMb: number, key: string): Promise<PooledWorker> {
    const list = idle.get(key);
    while (list && list.length > 0) {
      const pw = list.pop() as PooledWorker;
      if (list.length === 0) idle.delete(key);
      if (pw.idleTimer) clearTimeout(pw.idleTimer);
      if (pw.state === 'idle') {
        pw.state = 'busy';
        return pw;
      }
    }
    // A new worker loads the file again, maybe long after the cache checked it: the cache checks
    // it once more first (a read and a hash, small beside a worker's start) and fetches the
    // bundle anew if it changed. The worker checks it too, right before its import.
    opts.codeCache.forget(code.codeVersion);
    const checked = await opts.codeCache.get(code.codeVersion, stopSignal);
    const pw = await spawn(checked, memoryMb, key);
    pw.state = 'busy';
    return pw;
  }

  // ---- one batch ----

  /** Reads the worker's CPU (charged to the cap, kept as unclaimed); false without counters. */
  function readCpu(batch: Batch): boolean {
    const pw = batch.pw;
    if (!pw || batch.cpuLast === undefined || pw.tid === null) return false;
    const c = threadCpuNs(pw.tid, pw.cpuFd);
    const now = performance.now();
    if (c === undefined) return false;
    const delta = Math.max(0, c - batch.cpuLast);
    charge(delta, batch.cpuAtMs);
    batch.cpuLast = c;
    batch.cpuAtMs = now;
    batch.cpuUnclaimed += delta;
    return true;
  }

  /** CPU not yet given to a shard, ns (and now given): the thread clock, else event-loop active time. */
  function cpuSince(batch: Batch): number {
    if (readCpu(batch)) {
      const d = batch.cpuUnclaimed;
      batch.cpuUnclaimed = 0;
      return d;
    }
    const pw = batch.pw;
    if (!pw || !batch.elu) return 0;
    const now = pw.worker.performance.eventLoopUtilization();
    const used = pw.worker.performance.eventLoopUtilization(now, batch.elu).active * 1e6;
    batch.elu = now;
    // Without per-thread counters the cap is charged once per reading, from event-loop time.
    charge(used, batch.cpuAtMs);
    batch.cpuAtMs = performance.now();
    return used;
  }

  async function startBatch(batch: Batch): Promise<void> {
    const first = batch.jobs[0] as Job;
    const live = (): Job[] => batch.jobs.filter((j) => j.state === 'batched');
    let code: CachedCode;
    try {
      code = await opts.codeCache.get(first.a.codeVersion, stopSignal);
    } catch (err) {
      endBatch(batch, 'code unavailable');
      const message = err instanceof Error ? err.message : String(err);
      for (const j of live()) {
        settle(
          j,
          stopped
            ? outcomeOf(j.a, ShardStatus.SHARD_STATUS_CANCELLED, j.queuedAtNs, { error: 'cancelled: the executor stopped' })
            : outcomeOf(j.a, ShardStatus.SHARD_STATUS_CODE_UNAVAILABLE, j.queuedAtNs, { error: `code ${j.a.codeVersion}: ${message}`, resources: { netBytesIn: j.bytesIn } }),
        );
      }
      return;
    }
    let pw: PooledWorker;
    try {
      pw = await workerFor(code, first.memoryMb, batch.key);
    } catch (err) {
      endBatch(batch, 'no worker');
      for (const j of live()) settle(j, outcomeOf(j.a, ShardStatus.SHARD_STATUS_FAILED, j.queuedAtNs, { error: `agent: ${(err as Error).message}`, resources: { netBytesIn: j.bytesIn } }));
      return;
    }
    batch.jobs = live();
    if (batch.jobs.length === 0 || stopped) {
      endBatch(batch, 'nothing left to run');
      park(pw);
      for (const j of batch.jobs) settle(j, outcomeOf(j.a, ShardStatus.SHARD_STATUS_CANCELLED, j.queuedAtNs, { error: 'cancelled: the executor stopped' }));
      return;
    }
    batch.pw = pw;
    // Inputs packed into one buffer: one copy, one transfer (a payload decoded from the stream is
    // a view into a larger buffer, which must not be cloned whole or taken from its owner).
    let bytes = 0;
    let recordCount = 0;
    for (const j of batch.jobs) {
      for (const i of j.a.inputs) bytes += i.payload.byteLength;
      recordCount += j.a.inputs.length;
    }
    const buffer = new ArrayBuffer(bytes);
    const view = new Uint8Array(buffer);
    let offset = 0;
    const n = batch.jobs.length;
    const shards: WorkerShards = {
      shardIds: new Array<string>(n),
      params: new Array<WorkerShards['params'][number]>(n),
      nums: new Float64Array(n * SHARD_FIELDS),
      names: new Array<string>(recordCount),
      objectIds: new Array<string>(recordCount),
      keys: new Array<string>(recordCount),
      eventTimeNs: new Array<string>(recordCount),
      mediaTypes: new Array<string>(recordCount),
      spans: new Float64Array(recordCount * 2),
    };
    let r = 0;
    for (let index = 0; index < n; index++) {
      const j = batch.jobs[index] as Job;
      j.index = index;
      const a = j.a;
      shards.shardIds[index] = a.shardId;
      const params = a.parameters;
      let empty = true;
      for (const _ in params) {
        empty = false;
        break;
      }
      shards.params[index] = empty ? null : (params as WorkerShards['params'][number]);
      const o = index * SHARD_FIELDS;
      shards.nums[o] = j.timeoutMs;
      shards.nums[o + 1] = a.faults?.addedLatencyMs ?? 0;
      shards.nums[o + 2] = a.faults?.fail ? 1 : 0;
      shards.nums[o + 3] = a.inputs.length;
      for (const i of a.inputs) {
        view.set(i.payload, offset);
        shards.names[r] = i.name;
        shards.objectIds[r] = i.objectId;
        shards.keys[r] = i.key;
        shards.eventTimeNs[r] = i.eventTimeNs;
        shards.mediaTypes[r] = i.mediaType;
        shards.spans[2 * r] = offset;
        shards.spans[2 * r + 1] = i.payload.byteLength;
        offset += i.payload.byteLength;
        r++;
      }
    }
    batch.open = batch.jobs.length;
    pw.listener = (event) => onWorkerEvent(batch, event);
    batch.cpuAtMs = performance.now();
    batch.cpuLast = pw.tid === null ? undefined : threadCpuNs(pw.tid, pw.cpuFd);
    if (batch.cpuLast === undefined) batch.elu = pw.worker.performance.eventLoopUtilization();
    if (capped()) batch.sampler = setInterval(() => void readCpu(batch), 50);
    const msg: ToWorker = { type: 'batch', batchId: batch.id, nodeId: opts.nodeId, shards, buffer };
    pw.port.postMessage(msg, [buffer]);
    // Cancellations that came while the code or the worker was being fetched.
    for (const j of batch.jobs) if (j.cancelling) pw.port.postMessage({ type: 'cancel', shardId: j.a.shardId } satisfies ToWorker);
    arm(batch, Math.min(...batch.jobs.map((j) => j.timeoutMs)));
  }

  function arm(batch: Batch, ms: number): void {
    if (batch.over) return;
    batch.watchdog = setTimeout(() => watch(batch), Math.max(1, Math.ceil(ms)));
  }

  /** The batch's watchdog: times out the running shard, else sleeps until it could time out. */
  function watch(batch: Batch): void {
    const pw = batch.pw;
    if (batch.over || !pw) return;
    const index = Atomics.load(pw.slot, 0);
    const phase = Atomics.load(pw.slot, 1);
    const job = batch.jobs[index];
    if (index >= 0 && job && phase === PHASE_RUN && job.state === 'batched') {
      const elapsedMs = Number(process.hrtime.bigint() - Atomics.load(pw.startedAt, 0)) / 1e6;
      if (elapsedMs >= job.timeoutMs) {
        abort(batch, job, 'timed out', (cpu, wallNs, peak, endedAtNs, startedAtNs) =>
          outcomeOf(job.a, ShardStatus.SHARD_STATUS_TIMED_OUT, startedAtNs, { error: `timed out after ${job.timeoutMs} ms`, endedAtNs, resources: { cpuTimeNs: cpu, wallTimeNs: wallNs, peakMemoryBytes: peak, netBytesIn: job.bytesIn } }),
        );
        return;
      }
      return arm(batch, job.timeoutMs - elapsedMs);
    }
    // Between shards or in an injected latency (which the worker bounds itself): the next shard
    // to run cannot time out sooner than the shortest timeout left.
    let next = Number.POSITIVE_INFINITY;
    for (const j of batch.jobs) if (j.state === 'batched' && j.timeoutMs < next) next = j.timeoutMs;
    if (Number.isFinite(next)) arm(batch, next);
  }

  /**
   * Terminates the batch's worker while it runs `job`: `job` gets the outcome `make` builds (with
   * all CPU since the last reading, its wall time and heap peak), the shards without an outcome
   * are queued again.
   */
  function abort(
    batch: Batch,
    job: Job,
    why: string,
    make: (cpuNs: number, wallNs: number, peakBytes: number, endedAtNs: bigint | number, startedAtNs: bigint | number) => ShardOutcome,
    deadAlready = false,
  ): void {
    const pw = batch.pw as PooledWorker;
    const cpu = deadAlready ? 0 : cpuSince(batch);
    const hrNow = process.hrtime.bigint();
    const running = Atomics.load(pw.slot, 0) === job.index && Atomics.load(pw.slot, 1) !== PHASE_IDLE;
    const startHr = running ? Atomics.load(pw.startedAt, 0) : hrNow;
    const toEpoch = opts.now() - hrNow;
    const peak = Atomics.load(pw.slot, 0) === job.index ? pw.peak[0] ?? 0 : 0;
    kill(pw, why);
    settle(job, make(cpu, Number(hrNow - startHr), peak, hrNow + toEpoch, startHr + toEpoch));
    requeueRest(batch, why, false);
    endBatch(batch, why);
  }

  function onWorkerEvent(batch: Batch, event: FromWorker | { type: 'died'; death: Death }): void {
    if (batch.over) return;
    if (event.type === 'log') {
      log('info', 'shard:log', { shardId: event.shardId, message: event.message });
      return;
    }
    if (event.type === 'died') {
      const pw = batch.pw as PooledWorker;
      const index = Atomics.load(pw.slot, 0);
      const job = Atomics.load(pw.slot, 1) !== PHASE_IDLE ? batch.jobs[index] : undefined;
      const death = event.death;
      if (!job || job.state !== 'batched') {
        requeueRest(batch, death.message, true);
        endBatch(batch, death.message);
        return;
      }
      abort(
        batch,
        job,
        death.message,
        (cpu, wallNs, peak, endedAtNs, startedAtNs) => {
          const resources = { cpuTimeNs: cpu, wallTimeNs: wallNs, netBytesIn: job.bytesIn };
          if (death.oom) return outcomeOf(job.a, ShardStatus.SHARD_STATUS_OUT_OF_MEMORY, startedAtNs, { error: death.message, endedAtNs, resources: { ...resources, peakMemoryBytes: job.memoryMb * 1024 * 1024 } });
          const status = job.cancelling ? ShardStatus.SHARD_STATUS_CANCELLED : ShardStatus.SHARD_STATUS_FAILED;
          return outcomeOf(job.a, status, startedAtNs, { error: death.message, endedAtNs, resources: { ...resources, peakMemoryBytes: peak } });
        },
        true,
      );
      return;
    }
    if (event.type !== 'results' || event.batchId !== batch.id) return;
    const results = unpackResults(event.results);
    const cpu = cpuSince(batch);
    // Each shard is charged its time in `run` (scaled down when the thread used less CPU than
    // that, e.g. an async transform that waited); the rest of the reading is split evenly.
    let runSum = 0;
    for (const r of results) runSum += r.runNs;
    const scale = runSum > cpu && runSum > 0 ? cpu / runSum : 1;
    const overhead = results.length > 0 ? Math.max(0, cpu - runSum * scale) / results.length : 0;
    const hrNow = process.hrtime.bigint();
    const toEpoch = Number(opts.now() - hrNow);
    const bytes = event.buffer.byteLength > 0 ? Buffer.from(event.buffer) : Buffer.alloc(0);
    let loadFailed = false;
    for (const r of results) {
      const job = batch.jobs[r.index];
      if (!job || job.state !== 'batched' || job.batch !== batch) continue;
      settle(job, outcomeFromWorker(job, r, r.runNs * scale + overhead, toEpoch, bytes));
      if (!r.ok && r.phase === 'load') loadFailed = true;
    }
    if (event.last) {
      const pw = batch.pw as PooledWorker;
      endBatch(batch, 'done');
      if (loadFailed) kill(pw, 'bundle did not load');
      else park(pw);
      // Every shard has an outcome by now; one without is a bug, still answered.
      for (const j of batch.jobs) {
        if (j.state === 'batched' && j.batch === batch) settle(j, outcomeOf(j.a, ShardStatus.SHARD_STATUS_FAILED, j.queuedAtNs, { error: 'agent error: the worker gave no outcome' }));
      }
    }
  }

  function outcomeFromWorker(job: Job, r: WorkerResult, cpuNs: number, toEpoch: number, bytes: Buffer): ShardOutcome {
    const startedAtNs = r.startHr + toEpoch;
    const endedAtNs = r.endHr + toEpoch;
    const wallNs = r.endHr - r.startHr;
    // One thread cannot give a shard more CPU than the shard's wall time; what the reading holds
    // beyond that (messaging outside any shard) is the batch's, not the shard's.
    const cpuTimeNs = Math.min(cpuNs, wallNs);
    if (r.ok) {
      let netBytesOut = 0;
      const outputs: ShardOutput[] = [];
      for (const o of r.outputs) {
        netBytesOut += o.length;
        outputs.push({ key: o.key, contentHash: o.contentHash, payload: bytes.subarray(o.offset, o.offset + o.length), mediaType: o.mediaType });
      }
      keep(outputs);
      // Built here, not by outcomeOf: no options object and partial usage per shard.
      return {
        shardId: job.a.shardId,
        status: ShardStatus.SHARD_STATUS_SUCCEEDED,
        outputs,
        resources: usage(cpuTimeNs, r.peakHeapBytes, job.bytesIn, netBytesOut, r.gpuTimeNs, wallNs),
        error: '',
        startedAtNs: ns(startedAtNs),
        endedAtNs: ns(endedAtNs),
        nodeId: opts.nodeId,
        attempt: job.a.attempt,
      };
    }
    const base = { cpuTimeNs, wallTimeNs: wallNs, netBytesIn: job.bytesIn, peakMemoryBytes: r.peakHeapBytes };
    const status =
      r.status === 'cancelled' || job.cancelling
        ? ShardStatus.SHARD_STATUS_CANCELLED
        : r.status === 'timeout'
          ? ShardStatus.SHARD_STATUS_TIMED_OUT
          : ShardStatus.SHARD_STATUS_FAILED;
    return outcomeOf(job.a, status, startedAtNs, { error: status === ShardStatus.SHARD_STATUS_CANCELLED ? 'cancelled' : r.error, endedAtNs, resources: base });
  }

  // ---- cancellation ----

  function cancelJob(job: Job, why: string): void {
    if (job.state === 'done') return;
    if (job.state === 'queued') {
      settle(job, outcomeOf(job.a, ShardStatus.SHARD_STATUS_CANCELLED, job.queuedAtNs, { error: why }));
      return;
    }
    const batch = job.batch as Batch;
    const pw = batch.pw;
    if (!pw) {
      // Its batch is still fetching code or a worker: it is left out when the batch is posted.
      settle(job, outcomeOf(job.a, ShardStatus.SHARD_STATUS_CANCELLED, job.queuedAtNs, { error: 'cancelled' }));
      return;
    }
    if (job.cancelling) return;
    job.cancelling = true;
    pw.port.postMessage({ type: 'cancel', shardId: job.a.shardId } satisfies ToWorker);
    const running = Atomics.load(pw.slot, 0) === job.index;
    if (!running && Atomics.load(pw.slot, 0) < job.index) {
      // Not started: the worker will skip it; nothing to wait for.
      settle(job, outcomeOf(job.a, ShardStatus.SHARD_STATUS_CANCELLED, job.queuedAtNs, { error: 'cancelled' }));
      return;
    }
    // Running: the transform is asked to stop (ctx.signal); its worker is terminated if it does not in time.
    const grace = setTimeout(() => {
      if (job.state !== 'batched' || job.batch !== batch || batch.over) return;
      if (Atomics.load(pw.slot, 0) !== job.index) return;
      abort(batch, job, 'did not stop when cancelled', (cpu, wallNs, peak, endedAtNs, startedAtNs) =>
        outcomeOf(job.a, ShardStatus.SHARD_STATUS_CANCELLED, startedAtNs, { error: 'cancelled', endedAtNs, resources: { cpuTimeNs: cpu, wallTimeNs: wallNs, peakMemoryBytes: peak, netBytesIn: job.bytesIn } }),
      );
    }, opts.cancelGraceMs);
    grace.unref();
  }

  const stopController = new AbortController();
  const stopSignal = stopController.signal;

  /** Keeps payloads worth sending by reference, as the coordinator's mirror of this cache expects. */
  function keep(items: readonly { contentHash: string; payload: Uint8Array }[]): void {
    if (opts.payloadCacheBytes === 0) return;
    for (const i of items) {
      const n = i.payload.byteLength;
      if (n < CACHED_PAYLOAD_MIN_BYTES) continue;
      // Held already: used again, so the newest, as the coordinator's mirror makes it too.
      if (payloads.get(i.contentHash) !== undefined) continue;
      // A copy: the bytes may be a view of a whole frame or of a worker's batch buffer.
      payloads.set(i.contentHash, Buffer.from(i.payload), n);
    }
  }

  function executeThen(a: ShardAssignment, resolve: (o: ShardOutcome) => void, signal?: AbortSignal): void {
    const queuedAtNs = opts.now();
    if (stopped) return resolve(outcomeOf(a, ShardStatus.SHARD_STATUS_CANCELLED, queuedAtNs, { error: 'cancelled: the executor stopped' }));
    if (signal?.aborted) return resolve(outcomeOf(a, ShardStatus.SHARD_STATUS_CANCELLED, queuedAtNs, { error: 'cancelled before it started' }));
    // Bytes that crossed the network for this shard: a cached input's did not.
    let bytesIn = 0;
    let cached = false;
    for (const i of a.inputs) {
      bytesIn += i.payload.byteLength;
      if (i.cached) cached = true;
    }
    if (cached) {
      const missing = a.inputs.filter((i) => i.cached && !payloads.has(i.contentHash));
      if (missing.length > 0) return resolve(outcomeOf(a, ShardStatus.SHARD_STATUS_INPUT_NOT_CACHED, queuedAtNs, { error: `not in this agent's payload cache: ${missing.map((i) => i.contentHash).join(', ')}` }));
      a = { ...a, inputs: a.inputs.map((i) => (i.cached ? { ...i, payload: payloads.get(i.contentHash) as Buffer, cached: false } : i)) };
    }
    const corrupt = corruptInput(a);
    if (corrupt) return resolve(outcomeOf(a, ShardStatus.SHARD_STATUS_INPUT_CORRUPTED, queuedAtNs, { error: corrupt }));
    keep(a.inputs);
    const memoryMb = a.memoryLimitMb > 0 ? a.memoryLimitMb : opts.defaultMemoryMb;
    {
      const job: Job = {
        a,
        key: `${a.codeVersion}|${memoryMb}`,
        timeoutMs: a.timeoutMs > 0 ? a.timeoutMs : opts.defaultTimeoutMs,
        memoryMb,
        bytesIn,
        queuedAtNs,
        resolve,
        state: 'queued',
        batch: undefined,
        index: -1,
        requeues: 0,
        cancelling: false,
        offAbort: undefined,
      };
      if (signal) {
        const onAbort = (): void => cancelJob(job, job.state === 'queued' ? 'cancelled before it started' : 'cancelled');
        signal.addEventListener('abort', onAbort, { once: true });
        job.offAbort = () => signal.removeEventListener('abort', onAbort);
      }
      // A second run of a shard id answers both; the later one is the one cancel() reaches.
      byId.set(a.shardId, job);
      queue.push(job);
      queuedCount++;
      // Shards given in the same turn (one assignment frame) are batched together.
      if (!pumpScheduled) {
        pumpScheduled = true;
        queueMicrotask(() => {
          pumpScheduled = false;
          pump();
        });
      }
    }
  }

  function execute(a: ShardAssignment, signal?: AbortSignal): Promise<ShardOutcome> {
    return new Promise<ShardOutcome>((resolve) => executeThen(a, resolve, signal));
  }

  return {
    execute,
    executeThen,
    cancel(shardId, reason) {
      const job = byId.get(shardId);
      if (job) cancelJob(job, job.state === 'queued' ? 'cancelled before it started' : (reason ?? 'cancelled'));
    },
    setThrottle(t) {
      const fraction = t.cpuFraction ?? 0;
      const max = t.maxConcurrent ?? 0;
      if (!Number.isFinite(fraction) || fraction < 0) throw new InvalidArgumentError('cpuFraction', `must be >= 0, got ${fraction}`);
      if (!Number.isInteger(max) || max < 0) throw new InvalidArgumentError('maxConcurrent', `must be a whole number >= 0, got ${max}`);
      cpuFraction = fraction;
      throttleMax = max;
      if (!capped()) debtUntil = 0;
      log('info', 'shard-executor:throttle', { cpuFraction, maxConcurrent: limit() });
      pump();
    },
    payloadCacheBytes: opts.payloadCacheBytes,
    get running() {
      return batchedCount;
    },
    get queued() {
      return queuedCount;
    },
    async stop() {
      if (!stopped) {
        stopped = true;
        stopController.abort(new Error('executor stopped'));
        if (gateTimer) clearTimeout(gateTimer);
        for (const j of queue.slice(head)) settle(j, outcomeOf(j.a, ShardStatus.SHARD_STATUS_CANCELLED, j.queuedAtNs, { error: 'cancelled: the executor stopped' }));
        queue = [];
        head = 0;
        for (const b of [...batches]) {
          if (b.pw) kill(b.pw, 'executor stopped');
          endBatch(b, 'executor stopped');
          for (const j of b.jobs) settle(j, outcomeOf(j.a, ShardStatus.SHARD_STATUS_CANCELLED, j.queuedAtNs, { error: 'cancelled: the executor stopped' }));
        }
      }
      await Promise.allSettled(
        [...all].map((pw) => {
          kill(pw, 'executor stopped');
          return pw.worker.terminate();
        }),
      );
    },
  };
}
