import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { InvalidArgumentError } from '../common/errors.js';
import type { ResourceUsage } from '../common/gen/retrace/v1/provenance.js';
import { ShardStatus, type ShardAssignment, type ShardOutcome, type ShardOutput } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf, isContentHash } from '../common/hash.js';
import { silentLog, type LogFn } from '../common/log.js';
import type { ShardRecord, TransformParams } from '../common/transform.js';
import type { CachedCode, CodeCache } from './code-cache.js';
import type { FromWorker, ToWorker, WorkerShard } from './shard-worker.js';
import { sleep } from '../common/abortable-sleep.js';

/**
 * Runs shards (ShardAssignment → ShardOutcome) in worker threads.
 *
 * Isolation: each shard runs in a `worker_threads` Worker with a V8 heap limit
 * (`resourceLimits.maxOldGenerationSizeMb`), an empty environment, no arguments, and only the
 * bundle's code (imported by file URL from the code cache). Workers are pooled per (code version,
 * heap limit) and reused; a worker that timed out, ran out of heap, crashed or did not answer a
 * cancellation is terminated and replaced.
 *
 * Measurement, per shard:
 * - CPU time: the worker thread's on-CPU nanoseconds from `/proc/self/task/<tid>/schedstat` (field
 *   1; the kernel's per-thread scheduler clock, ns resolution), read by the executor before the
 *   shard is posted, every 50 ms while it runs and when it ends, so it needs nothing from the
 *   transform and survives a timeout. Fallbacks: `.../stat` utime+stime (10 ms ticks), then, off
 *   Linux, the worker's event-loop active time (`worker.performance.eventLoopUtilization()`),
 *   which counts time blocked in synchronous calls too. V8's shared GC helper threads are not
 *   attributed to the shard.
 * - Peak memory: sampled inside the worker (`v8.getHeapStatistics()` used heap + external
 *   memory) every 10 ms when its event loop gets a turn, after every `run` call and at the end,
 *   so a spike inside one synchronous stretch can be missed. OUT_OF_MEMORY reports the limit.
 * - Bytes in/out: input and output payload sizes (as net_bytes_in / net_bytes_out).
 * - GPU time: the run's wall time when TF.js (`globalThis._tfengine`) ran on a GPU backend
 *   (webgl, webgpu), else 0.
 *
 * CPU cap (`setThrottle({ cpuFraction })`): threads cannot be paused from outside (no SIGSTOP
 * for one thread), so the cap is kept by duty-cycling dispatch. Every CPU nanosecond measured is
 * charged to a debt clock: `debtUntil = max(debtUntil, t_sample_start) + cpu / (cpuFraction ×
 * hostCpus)`; no shard starts before `debtUntil`. Over any window longer than one shard, the CPU
 * used stays within the cap; a single shard is not slowed down while it runs.
 */

/** Options of `createShardExecutor`; validated once. */
export interface ShardExecutorOptions {
  /** Where bundles come from (fetched and verified on first use). */
  codeCache: Pick<CodeCache, 'get'>;
  /** This agent's node id, put on every outcome and given to transforms. */
  nodeId: string;
  /** Shards running at once (default: available parallelism). The throttle may lower it. */
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
  /** Idle workers kept in all (default: maxConcurrent). */
  maxIdleWorkers?: number;
  /** How long a cancelled shard may take to stop before its worker is terminated, ms (default 500). */
  cancelGraceMs?: number;
  /** How long a new worker may take to start, ms (default 30000). */
  workerStartTimeoutMs?: number;
  log?: LogFn;
}

interface CompiledOptions {
  readonly codeCache: Pick<CodeCache, 'get'>;
  readonly nodeId: string;
  readonly maxConcurrent: number;
  readonly defaultTimeoutMs: number;
  readonly defaultMemoryMb: number;
  readonly now: () => bigint;
  readonly hostCpus: number;
  readonly idleWorkerMs: number;
  readonly maxIdleWorkers: number;
  readonly cancelGraceMs: number;
  readonly workerStartTimeoutMs: number;
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
  /** Applies new limits at once to shards not yet started. */
  setThrottle(throttle: ExecutorThrottle): void;
  /** Shards running now / waiting for a slot. */
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
  if (typeof o.codeCache?.get !== 'function') throw new InvalidArgumentError('codeCache', 'is required');
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
    maxIdleWorkers: o.maxIdleWorkers === 0 ? 0 : positive('maxIdleWorkers', o.maxIdleWorkers, maxConcurrent),
    cancelGraceMs: positive('cancelGraceMs', o.cancelGraceMs, 500),
    workerStartTimeoutMs: positive('workerStartTimeoutMs', o.workerStartTimeoutMs, 30_000),
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

/** On-CPU nanoseconds of thread `tid` of this process, or undefined when /proc cannot tell. */
function threadCpuNs(tid: number): number | undefined {
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

// ---- workers -------------------------------------------------------------------------------

type Death = { oom: boolean; message: string };

interface PooledWorker {
  readonly id: number;
  readonly key: string;
  readonly worker: Worker;
  readonly port: MessagePort;
  readonly memoryMb: number;
  tid: number | null;
  state: 'starting' | 'idle' | 'busy' | 'dead';
  death: Death | undefined;
  idleTimer: NodeJS.Timeout | undefined;
  /** Receives the messages and the death of the shard it runs. */
  listener: ((event: FromWorker | { type: 'died'; death: Death }) => void) | undefined;
}

type RunEnd =
  | { kind: 'done'; msg: Extract<FromWorker, { type: 'done' }> }
  | { kind: 'died'; death: Death }
  | { kind: 'timeout' }
  | { kind: 'cancelled' };

/** Creates an executor; workers start on demand. Throws InvalidArgumentError for bad options. */
export function createShardExecutor(options: ShardExecutorOptions): ShardExecutor {
  const opts = compile(options);
  const log = opts.log;
  const idle = new Map<string, PooledWorker[]>();
  const all = new Set<PooledWorker>();
  const waiters: { resolve: (ok: boolean) => void; signal: AbortSignal | undefined; onAbort: () => void }[] = [];
  const stopController = new AbortController();
  const inFlight = new Set<Promise<ShardOutcome>>();
  let nextWorkerId = 0;
  let active = 0;
  let stopped = false;
  let cpuFraction = 0;
  let throttleMax = 0;
  /** performance.now() ms before which no shard may start (the CPU cap's debt clock). */
  let debtUntil = 0;
  let gateTimer: NodeJS.Timeout | undefined;

  const limit = (): number => (throttleMax > 0 ? throttleMax : opts.maxConcurrent);
  const capped = (): boolean => cpuFraction > 0 && cpuFraction < 1;

  /** Charges CPU used since `fromMs` to the cap's debt clock. */
  function charge(cpuNs: number, fromMs: number): void {
    if (!capped() || cpuNs <= 0) return;
    debtUntil = Math.max(debtUntil, fromMs) + cpuNs / 1e6 / (cpuFraction * opts.hostCpus);
  }

  function pump(): void {
    if (gateTimer) {
      clearTimeout(gateTimer);
      gateTimer = undefined;
    }
    while (waiters.length > 0 && active < limit()) {
      const wait = capped() ? debtUntil - performance.now() : 0;
      if (wait > 0) {
        gateTimer = setTimeout(pump, Math.ceil(wait));
        return;
      }
      const w = waiters.shift();
      if (!w) return;
      w.signal?.removeEventListener('abort', w.onAbort);
      active++;
      w.resolve(true);
    }
  }

  /** Resolves true with a slot taken, false when cancelled first. */
  function acquire(signal: AbortSignal | undefined): Promise<boolean> {
    if (signal?.aborted || stopped) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const entry = {
        resolve,
        signal,
        onAbort: () => {
          const i = waiters.indexOf(entry);
          if (i >= 0) waiters.splice(i, 1);
          resolve(false);
        },
      };
      signal?.addEventListener('abort', entry.onAbort, { once: true });
      waiters.push(entry);
      pump();
    });
  }

  function release(): void {
    active--;
    pump();
  }

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
    const worker = new Worker(entry.kind === 'eval' ? entry.source : entry.url, {
      eval: entry.kind === 'eval',
      env: {},
      argv: [],
      execArgv: [],
      stdout: true,
      stderr: true,
      resourceLimits: { maxOldGenerationSizeMb: memoryMb },
      workerData: { port: port2, bundleUrl: code.url },
      transferList: [port2],
    });
    const pw: PooledWorker = {
      id: ++nextWorkerId,
      key,
      worker,
      port: port1,
      memoryMb,
      tid: null,
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

  async function workerFor(code: CachedCode, memoryMb: number): Promise<PooledWorker> {
    const key = `${code.codeVersion}|${memoryMb}`;
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
    const pw = await spawn(code, memoryMb, key);
    pw.state = 'busy';
    return pw;
  }

  // ---- one shard ----

  function outcomeOf(a: ShardAssignment, status: ShardStatus, startedAtNs: bigint, fields: { error?: string; outputs?: ShardOutput[]; resources?: Partial<Record<keyof ResourceUsage, number>> } = {}): ShardOutcome {
    const r = fields.resources ?? {};
    const int = (v: number | undefined): string => String(Math.max(0, Math.round(v ?? 0)));
    return {
      shardId: a.shardId,
      status,
      outputs: fields.outputs ?? [],
      resources: {
        cpuTimeNs: int(r.cpuTimeNs),
        peakMemoryBytes: int(r.peakMemoryBytes),
        netBytesIn: int(r.netBytesIn),
        netBytesOut: int(r.netBytesOut),
        diskBytesRead: '0',
        diskBytesWritten: '0',
        gpuTimeNs: int(r.gpuTimeNs),
        gpuUtilization: 0,
        wallTimeNs: int(r.wallTimeNs),
      },
      error: fields.error ?? '',
      startedAtNs: startedAtNs.toString(),
      endedAtNs: opts.now().toString(),
      nodeId: opts.nodeId,
    };
  }

  /** The first input whose payload does not hash to its content_hash, as a message. */
  function corruptInput(a: ShardAssignment): string | undefined {
    for (const [i, input] of a.inputs.entries()) {
      const where = `inputs[${i}] ${JSON.stringify(input.name)}${input.objectId ? ` (${input.objectId})` : ''}`;
      if (!isContentHash(input.contentHash)) return `${where}: content_hash ${JSON.stringify(input.contentHash)} is not "sha256:<hex>"`;
      const actual = contentHashOf(input.payload);
      if (actual !== input.contentHash) return `${where}: payload hashes to ${actual}, expected ${input.contentHash}`;
    }
    return undefined;
  }

  async function runShard(a: ShardAssignment, signal: AbortSignal): Promise<ShardOutcome> {
    const startedAtNs = opts.now();
    const t0 = performance.now();
    const wall = (): number => (performance.now() - t0) * 1e6;
    const bytesIn = a.inputs.reduce((n, i) => n + i.payload.byteLength, 0);
    const corrupt = corruptInput(a);
    if (corrupt) return outcomeOf(a, ShardStatus.SHARD_STATUS_INPUT_CORRUPTED, startedAtNs, { error: corrupt, resources: { wallTimeNs: wall() } });

    let code: CachedCode;
    try {
      code = await opts.codeCache.get(a.codeVersion, signal);
    } catch (err) {
      if (signal.aborted) return outcomeOf(a, ShardStatus.SHARD_STATUS_CANCELLED, startedAtNs, { error: 'cancelled', resources: { wallTimeNs: wall() } });
      const message = err instanceof Error ? err.message : String(err);
      return outcomeOf(a, ShardStatus.SHARD_STATUS_CODE_UNAVAILABLE, startedAtNs, { error: `code ${a.codeVersion}: ${message}`, resources: { wallTimeNs: wall(), netBytesIn: bytesIn } });
    }

    const timeoutMs = a.timeoutMs > 0 ? a.timeoutMs : opts.defaultTimeoutMs;
    const memoryMb = a.memoryLimitMb > 0 ? a.memoryLimitMb : opts.defaultMemoryMb;
    // The timeout covers the injected latency and the run (bundle load included), not the
    // worker's start-up, which depends on the host rather than the shard.
    let pw: PooledWorker;
    try {
      pw = await workerFor(code, memoryMb);
    } catch (err) {
      return outcomeOf(a, ShardStatus.SHARD_STATUS_FAILED, startedAtNs, { error: `agent: ${(err as Error).message}`, resources: { wallTimeNs: wall(), netBytesIn: bytesIn } });
    }
    if (signal.aborted) {
      park(pw);
      return outcomeOf(a, ShardStatus.SHARD_STATUS_CANCELLED, startedAtNs, { error: 'cancelled', resources: { wallTimeNs: wall() } });
    }

    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), timeoutMs);
    const either = AbortSignal.any([deadline.signal, signal]);
    const faults = a.faults;
    try {
      if (faults && faults.addedLatencyMs > 0) await sleep(faults.addedLatencyMs, either);
      if (!either.aborted && faults?.fail) {
        park(pw);
        return outcomeOf(a, ShardStatus.SHARD_STATUS_FAILED, startedAtNs, { error: 'injected failure (faults.fail)', resources: { wallTimeNs: wall(), netBytesIn: bytesIn } });
      }
      if (either.aborted) {
        park(pw);
        return signal.aborted
          ? outcomeOf(a, ShardStatus.SHARD_STATUS_CANCELLED, startedAtNs, { error: 'cancelled', resources: { wallTimeNs: wall() } })
          : outcomeOf(a, ShardStatus.SHARD_STATUS_TIMED_OUT, startedAtNs, { error: `timed out after ${timeoutMs} ms (injected latency ${faults?.addedLatencyMs ?? 0} ms)`, resources: { wallTimeNs: wall(), netBytesIn: bytesIn } });
      }
      return await runInWorker(a, pw, signal, deadline.signal, { startedAtNs, t0, timeoutMs, memoryMb, bytesIn });
    } finally {
      clearTimeout(timer);
    }
  }

  async function runInWorker(
    a: ShardAssignment,
    pw: PooledWorker,
    signal: AbortSignal,
    deadline: AbortSignal,
    m: { startedAtNs: bigint; t0: number; timeoutMs: number; memoryMb: number; bytesIn: number },
  ): Promise<ShardOutcome> {
    // CPU of the worker thread: read from /proc by thread id, sampled while the shard runs.
    const elu0 = pw.worker.performance.eventLoopUtilization();
    const cpu0 = pw.tid === null ? undefined : threadCpuNs(pw.tid);
    let cpuLast = cpu0;
    const dispatchedAt = performance.now();
    let sampledAt = dispatchedAt;
    const sampleCpu = (): void => {
      const now = performance.now();
      if (pw.tid !== null && cpuLast !== undefined) {
        const c = threadCpuNs(pw.tid);
        if (c !== undefined) {
          charge(c - cpuLast, sampledAt);
          cpuLast = c;
        }
      }
      sampledAt = now;
    };
    const cpuUsed = (): number => {
      if (cpu0 !== undefined && cpuLast !== undefined) return cpuLast - cpu0;
      const elu = pw.worker.performance.eventLoopUtilization(elu0);
      return elu.active * 1e6;
    };
    const sampler = setInterval(sampleCpu, 50);
    let peakHeap = 0;

    const records: ShardRecord[] = a.inputs.map((i) => ({
      name: i.name,
      objectId: i.objectId,
      key: i.key,
      // A copy that owns its buffer: it moves to the worker without cloning the whole message.
      payload: new Uint8Array(i.payload),
      eventTimeNs: i.eventTimeNs,
      mediaType: i.mediaType,
    }));
    const shard: WorkerShard = { shardId: a.shardId, nodeId: opts.nodeId, params: (a.parameters ?? {}) as TransformParams, records };

    const end = await new Promise<RunEnd>((resolve) => {
      let settled = false;
      const finish = (e: RunEnd): void => {
        if (settled) return;
        settled = true;
        deadline.removeEventListener('abort', onTimeout);
        signal.removeEventListener('abort', onCancel);
        resolve(e);
      };
      pw.listener = (event) => {
        if (event.type === 'died') finish({ kind: 'died', death: event.death });
        else if (event.type === 'log' && event.shardId === a.shardId) log('info', 'shard:log', { shardId: a.shardId, message: event.message });
        else if (event.type === 'heap' && event.shardId === a.shardId) peakHeap = Math.max(peakHeap, event.peakHeapBytes);
        else if (event.type === 'done' && event.shardId === a.shardId) finish({ kind: 'done', msg: event });
      };
      const onTimeout = (): void => finish({ kind: 'timeout' });
      const onCancel = (): void => {
        // Ask the transform to stop (ctx.signal); terminate the worker if it does not in time.
        const msg: ToWorker = { type: 'cancel', shardId: a.shardId };
        pw.port.postMessage(msg);
        const grace = setTimeout(() => finish({ kind: 'cancelled' }), opts.cancelGraceMs);
        const previous = pw.listener;
        pw.listener = (event) => {
          if (event.type === 'done' || event.type === 'died') clearTimeout(grace);
          previous?.(event);
        };
      };
      if (deadline.aborted) return finish({ kind: 'timeout' });
      if (signal.aborted) return onCancel();
      deadline.addEventListener('abort', onTimeout, { once: true });
      signal.addEventListener('abort', onCancel, { once: true });
      const msg: ToWorker = { type: 'run', shard };
      pw.port.postMessage(msg, [...new Set(records.map((r) => r.payload.buffer as ArrayBuffer))]);
    });
    clearInterval(sampler);
    sampleCpu();
    // Without per-thread counters the cap is charged once, at the end, from event-loop time.
    if (cpu0 === undefined) charge(cpuUsed(), dispatchedAt);
    const cancelled = signal.aborted;
    const wallTimeNs = (performance.now() - m.t0) * 1e6;
    const base = { cpuTimeNs: cpuUsed(), wallTimeNs, netBytesIn: m.bytesIn };

    switch (end.kind) {
      case 'timeout':
        kill(pw, 'timed out');
        return outcomeOf(a, ShardStatus.SHARD_STATUS_TIMED_OUT, m.startedAtNs, { error: `timed out after ${m.timeoutMs} ms`, resources: { ...base, peakMemoryBytes: peakHeap } });
      case 'cancelled':
        kill(pw, 'did not stop when cancelled');
        return outcomeOf(a, ShardStatus.SHARD_STATUS_CANCELLED, m.startedAtNs, { error: 'cancelled', resources: { ...base, peakMemoryBytes: peakHeap } });
      case 'died':
        kill(pw, end.death.message);
        if (end.death.oom) {
          return outcomeOf(a, ShardStatus.SHARD_STATUS_OUT_OF_MEMORY, m.startedAtNs, { error: end.death.message, resources: { ...base, peakMemoryBytes: m.memoryMb * 1024 * 1024 } });
        }
        return outcomeOf(a, cancelled ? ShardStatus.SHARD_STATUS_CANCELLED : ShardStatus.SHARD_STATUS_FAILED, m.startedAtNs, { error: end.death.message, resources: { ...base, peakMemoryBytes: peakHeap } });
      case 'done': {
        const msg = end.msg;
        const peakMemoryBytes = Math.max(peakHeap, msg.peakHeapBytes);
        if (msg.ok === false && msg.phase === 'load') kill(pw, 'bundle did not load');
        else park(pw);
        if (cancelled) return outcomeOf(a, ShardStatus.SHARD_STATUS_CANCELLED, m.startedAtNs, { error: 'cancelled', resources: { ...base, peakMemoryBytes } });
        if (msg.ok === false) return outcomeOf(a, ShardStatus.SHARD_STATUS_FAILED, m.startedAtNs, { error: msg.error, resources: { ...base, peakMemoryBytes } });
        const outputs: ShardOutput[] = msg.outputs.map((o) => ({
          key: o.key,
          contentHash: contentHashOf(o.payload),
          payload: Buffer.from(o.payload.buffer, o.payload.byteOffset, o.payload.byteLength),
          mediaType: o.mediaType,
        }));
        const netBytesOut = outputs.reduce((n, o) => n + o.payload.byteLength, 0);
        return outcomeOf(a, ShardStatus.SHARD_STATUS_SUCCEEDED, m.startedAtNs, { outputs, resources: { ...base, peakMemoryBytes, netBytesOut, gpuTimeNs: msg.gpuTimeNs } });
      }
    }
  }

  async function execute(a: ShardAssignment, signal?: AbortSignal): Promise<ShardOutcome> {
    const queuedAtNs = opts.now();
    const cancel = signal ? AbortSignal.any([signal, stopController.signal]) : stopController.signal;
    const got = await acquire(cancel);
    if (!got) return outcomeOf(a, ShardStatus.SHARD_STATUS_CANCELLED, queuedAtNs, { error: stopped ? 'cancelled: the executor stopped' : 'cancelled before it started' });
    try {
      return await runShard(a, cancel);
    } catch (err) {
      // A bug of the executor, not of the shard: still an outcome, and loud in the log.
      log('error', 'shard:executor-error', { shardId: a.shardId, error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
      return outcomeOf(a, ShardStatus.SHARD_STATUS_FAILED, queuedAtNs, { error: `agent error: ${err instanceof Error ? err.message : String(err)}` });
    } finally {
      release();
    }
  }

  return {
    execute(a, signal) {
      const p = execute(a, signal);
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
      return p;
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
    get running() {
      return active;
    },
    get queued() {
      return waiters.length;
    },
    async stop() {
      if (stopped) {
        await Promise.allSettled([...inFlight]);
        return;
      }
      stopped = true;
      stopController.abort(new Error('executor stopped'));
      if (gateTimer) clearTimeout(gateTimer);
      await Promise.allSettled([...inFlight]);
      await Promise.allSettled([...all].map((pw) => {
        kill(pw, 'executor stopped');
        return pw.worker.terminate();
      }));
    },
  };
}
