import type { CallContext } from 'nice-grpc';
import type { TransformRequirements } from '../../common/gen/retrace/v1/code.js';
import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import {
  PipelineServiceDefinition,
  type IngestRequest,
  type IngestWaiting,
  type PipelineServiceImplementation,
  type PipelineVersion,
} from '../../common/gen/retrace/v1/pipeline.js';
import type { CoordinatorExtension, ExtensionFactory } from '../coordinator.js';
import { createPayloadStore, type PayloadStore, type SweepReport } from '../store/payload-store.js';
import { closeInterruptedIngestRuns, PipelineRunner, type IngestRecordInput, type ShardRunner } from './pipeline-runner.js';
import { createPipelineStore, type CodeLookup, type PipelineStore } from './pipeline-store.js';

/** What the pipeline extension publishes for later extensions (replay). */
export interface PipelineHandles {
  /** Definitions and versions: `store.get(name, version?)`, `store.list()`. */
  store: PipelineStore;
  /** Content-addressed payloads: `payloads.get(hash)`, `payloads.find(hash)`, `payloads.has(hash)`. */
  payloads: PayloadStore;
  runner: PipelineRunner;
  /**
   * Told about every new version ApplyPipeline stores (change detection); set by later extensions.
   * The version is stored with a follow-up note (`store.followUps`) that the listener removes once
   * done (`store.followUpDone`): a note left by a crash is the listener's to finish on the next start.
   */
  applyListener?: PipelineApplyListener;
}

/** A pipeline definition stored as a new version; `previous` is undefined for a new pipeline. */
export type PipelineApplyListener = (e: { previous: PipelineVersion | undefined; current: PipelineVersion; principal: string }) => Promise<void>;

/** Services the pipeline extension reads (set by extensions before it) and publishes. */
export interface PipelineShared {
  code?: CodeLookup;
  /** The scheduler's dispatcher: runs shards, and says which wait for a node and why. */
  dispatcher?: ShardRunner & { waiting?(): readonly WaitingShardView[] };
  /** Why no READY node could run a step now (set by the scheduler extension); see ApplyPipeline's warnings. */
  unmetRequirements?: (codeVersion: string, requirements: TransformRequirements | undefined) => Promise<string | undefined>;
  mesh?: { nodes(): readonly { nodeId: string; host: string }[] };
  pipelines?: PipelineHandles;
}

export interface PipelineExtensionOptions {
  /**
   * Payload retention: a payload not stored, reused or found in use for this long is deleted
   * (ms); default keep forever. Current records and objects' newest versions are always kept.
   */
  payloadRetentionMs?: number;
  /** How often to sweep expired payloads when a retention is set (default 1 h, or the retention if shorter). */
  sweepIntervalMs?: number;
  /** Records processed in parallel per Ingest call (PipelineRunnerOptions.concurrency, default 256). */
  concurrency?: number;
  /** Source payload bytes an Ingest call holds at once (PipelineRunnerOptions.maxHeldBytes, default 64 MiB). */
  maxHeldBytes?: number;
  /** Overrides `shared.dispatcher` (tests). */
  runner?: ShardRunner;
  /** How often the coordinator looks for ingest shards that wait for a node, to log why (default 5000 ms). */
  waitingLogIntervalMs?: number;
}

/** A shard the dispatcher cannot place now (its `waiting()`). */
export interface WaitingShardView {
  shardId: string;
  stepName: string;
  reason: string;
  busy: boolean;
}

/** What the extension reads besides the handles: the dispatcher's waiting shards, and the feasibility check. */
interface SchedulerView {
  waiting(): readonly WaitingShardView[];
  unmetRequirements: PipelineShared['unmetRequirements'];
}

/**
 * The waiting shards of the running ingests of `pipeline` (every pipeline when '', `runId` alone
 * when set), grouped by run, step and reason.
 */
export function ingestWaiting(runner: Pick<PipelineRunner, 'running'>, waiting: readonly WaitingShardView[], pipeline: string, runId = ''): { running: string[]; waiting: IngestWaiting[] } {
  const runs = runner.running().filter((r) => (pipeline === '' || r.pipeline === pipeline) && (runId === '' || r.runId === runId));
  const byShard = new Map(waiting.map((w) => [w.shardId, w]));
  const groups = new Map<string, IngestWaiting>();
  for (const run of runs) {
    for (const [shardId, step] of run.shards) {
      const w = byShard.get(shardId);
      if (!w) continue;
      const key = JSON.stringify([run.runId, step, w.reason]);
      const g = groups.get(key);
      if (g) g.shards++;
      else groups.set(key, { runId: run.runId, step, shards: 1, reason: w.reason, busy: w.busy });
    }
  }
  return { running: runs.map((r) => r.runId), waiting: [...groups.values()] };
}

/** The caller as the request names it (`x-retrace-principal`), or 'ingest'. */
function principalOf(context: CallContext, fallback = 'ingest'): string {
  const p = context.metadata.get('x-retrace-principal');
  return typeof p === 'string' && p.trim() !== '' ? p.trim() : fallback;
}

/** PipelineService over the store and the runner; errors are the stores' typed errors. */
export function createPipelineHandlers(
  h: PipelineHandles,
  sweepPayloads: (dryRun: boolean, signal: AbortSignal) => Promise<SweepReport>,
  scheduler: () => Partial<SchedulerView> = () => ({}),
  log: (line: string) => void = () => {},
): PipelineServiceImplementation {
  return {
    async applyPipeline(request, context) {
      if (!request.pipeline) throw new InvalidArgumentError('pipeline', 'is required');
      const listener = h.applyListener;
      const previous = listener ? await h.store.get(request.pipeline.name).catch((err: unknown) => (err instanceof NotFoundError ? undefined : Promise.reject(err))) : undefined;
      const principal = principalOf(context, 'apply');
      const result = await h.store.apply(request.pipeline, listener ? { followUp: principal } : {});
      // The listener records the change; it never fails the apply, which is already stored.
      if (listener && result.created) await listener({ previous, current: result.pipeline, principal });
      // Stored all the same: nodes that meet the requirements may join later.
      const warnings: string[] = [];
      const unmet = scheduler().unmetRequirements;
      if (unmet) {
        for (const [i, step] of (result.pipeline.pipeline?.steps ?? []).entries()) {
          const why = await unmet(step.codeVersion, step.requirements);
          if (why !== undefined) warnings.push(`steps[${i}] (${step.name}): ${why}; its shards will wait until such a node joins`);
        }
      }
      for (const w of warnings) log(`pipelines: ${result.pipeline.pipeline?.name} version ${result.pipeline.version}: ${w}`);
      return { ...result, warnings };
    },
    async getPipeline(request) {
      const pipeline = await h.store.get(request.name, request.version);
      return { pipeline, versions: await h.store.versions(request.name) };
    },
    async listPipelines() {
      return { pipelines: await h.store.list() };
    },
    async ingest(requests, context) {
      const iterator = requests[Symbol.asyncIterator]();
      const first = await iterator.next();
      if (first.done) throw new InvalidArgumentError('requests', 'the stream sent no message');
      const head: IngestRequest = first.value;
      if (head.pipeline === '') throw new InvalidArgumentError('requests[0].pipeline', 'is required');
      if (head.source === '') throw new InvalidArgumentError('requests[0].source', 'is required');
      const convert = (r: IngestRequest): IngestRecordInput[] =>
        r.records.map((rec) => ({ key: rec.key, eventTimeNs: rec.eventTimeNs, payload: rec.payload, mediaType: rec.mediaType }));
      let i = 0;
      const nextMessage = async (): Promise<IngestRequest | undefined> => {
        const next = await iterator.next();
        if (next.done) return undefined;
        const r = next.value;
        i++;
        if (r.pipeline !== '' && r.pipeline !== head.pipeline) throw new InvalidArgumentError(`requests[${i}].pipeline`, `every message must name pipeline ${JSON.stringify(head.pipeline)}`);
        if (r.source !== '' && r.source !== head.source) throw new InvalidArgumentError(`requests[${i}].source`, `every message must name source ${JSON.stringify(head.source)}`);
        return r;
      };
      // A run is recorded only for a stream that brings records: the messages up to the first
      // record are read before the runner starts one, and a stream without any is refused.
      const before: IngestRequest[] = [head];
      while ((before.at(-1) as IngestRequest).records.length === 0) {
        const r = await nextMessage();
        if (r === undefined) throw new InvalidArgumentError('requests', `the stream sent no records for pipeline ${JSON.stringify(head.pipeline)} source ${JSON.stringify(head.source)}: nothing was ingested or recorded`);
        before.push(r);
      }
      async function* batches(): AsyncGenerator<IngestRecordInput[]> {
        for (const r of before) yield convert(r);
        for (let r = await nextMessage(); r !== undefined; r = await nextMessage()) yield convert(r);
      }
      const s = await h.runner.ingest(head.pipeline, head.source, batches(), {
        principal: principalOf(context),
        signal: context.signal,
        // Sent before the response so that the caller can ask GetIngestStatus about the run.
        onRunStarted(runId) {
          context.header.set('x-retrace-run-id', runId);
          context.sendHeader();
        },
      });
      return {
        accepted: String(s.accepted),
        duplicates: String(s.duplicates),
        runId: s.runId,
        shardsRun: String(s.shardsRun),
        shardsFailed: String(s.shardsFailed),
        firstError: s.firstError,
        pipelineVersion: s.pipelineVersion,
      };
    },
    async getIngestStatus(request) {
      if (request.pipeline === '') throw new InvalidArgumentError('pipeline', 'is required');
      const r = ingestWaiting(h.runner, scheduler().waiting?.() ?? [], request.pipeline, request.runId);
      return { runningRuns: r.running, waiting: r.waiting };
    },
    async getPayload(request) {
      const bytes = await h.payloads.get(request.contentHash);
      return { contentHash: request.contentHash, payload: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
    },
    async sweepPayloads(request, context) {
      const r = await sweepPayloads(request.dryRun, context.signal);
      return {
        retentionMs: String(r.retentionMs),
        scanned: String(r.scanned),
        expired: String(r.expired),
        kept: String(r.kept),
        deleted: String(r.deleted),
        bytesDeleted: String(r.bytesDeleted),
        stamped: String(r.stamped),
        dryRun: r.dryRun,
      };
    },
  };
}

/**
 * Pipelines as a coordinator extension: mounts PipelineService over the `pipelines` and
 * `payloads` sublevels, runs shards through `shared.dispatcher` (read when each shard runs),
 * validates code versions against `shared.code` when set, and publishes its handles on
 * `shared.pipelines`. Put it after the code and scheduler extensions.
 */
export function pipelineExtension(shared: PipelineShared = {}, options: PipelineExtensionOptions = {}): ExtensionFactory {
  return (ctx): CoordinatorExtension => {
    const payloadOptions: { retentionMs?: number } = {};
    if (options.payloadRetentionMs !== undefined) payloadOptions.retentionMs = options.payloadRetentionMs;
    const payloads = createPayloadStore(ctx.db, payloadOptions);
    const code: CodeLookup = { describe: async (v) => (shared.code ? shared.code.describe(v) : undefined) };
    const store = createPipelineStore(ctx.db, ctx.clock, shared.code ? code : undefined);
    const dispatch = (): ShardRunner | undefined => {
      const d = options.runner ?? shared.dispatcher;
      if (!d) return undefined;
      return {
        async run(assignment, runOptions) {
          const result = await d.run(assignment, runOptions);
          if (result.host !== undefined || !shared.mesh || result.nodeId === '') return result;
          const host = shared.mesh.nodes().find((n) => n.nodeId === result.nodeId)?.host;
          return host === undefined ? result : { ...result, host };
        },
      };
    };
    const runnerOptions: ConstructorParameters<typeof PipelineRunner>[0] = { lineage: ctx.lineage, pipelines: store, payloads, runner: dispatch, clock: ctx.clock };
    if (options.concurrency !== undefined) runnerOptions.concurrency = options.concurrency;
    if (options.maxHeldBytes !== undefined) runnerOptions.maxHeldBytes = options.maxHeldBytes;
    const runner = new PipelineRunner(runnerOptions);
    const handles: PipelineHandles = { store, payloads, runner };
    shared.pipelines = handles;
    // What a record or object is now stays, however old: recompute and the next ingest read it.
    // Replay outputs are not kept for that (their namespace is `replay:<id>/`).
    const stopping = new AbortController();
    const sweepPayloads = (dryRun: boolean, signal?: AbortSignal): Promise<SweepReport> =>
      payloads.sweep({
        dryRun,
        signal: signal ? AbortSignal.any([signal, stopping.signal]) : stopping.signal,
        async *inUse() {
          yield* store.currentHashes();
          yield* ctx.lineage.index.newestVersionHashes('object:replay:');
        },
      });
    const scheduler = (): Partial<SchedulerView> => ({ waiting: () => shared.dispatcher?.waiting?.() ?? [], unmetRequirements: shared.unmetRequirements });
    // An ingest whose shards wait for a node that may never come says so in the log, once per
    // change of what it waits for.
    const waitingLogged = new Map<string, string>();
    const logWaiting = (): void => {
      const d = shared.dispatcher;
      const running = runner.running();
      for (const runId of waitingLogged.keys()) if (!running.some((r) => r.runId === runId)) waitingLogged.delete(runId);
      if (running.length === 0 || !d?.waiting) return;
      // One grouping for every running ingest, then a line per run.
      const groups = ingestWaiting(runner, d.waiting(), '').waiting.filter((w) => !w.busy);
      for (const run of running) {
        const text = groups
          .filter((g) => g.runId === run.runId)
          .map((g) => `${g.shards} shard(s) of step ${g.step} wait: ${g.reason}`)
          .join('; ');
        if (text === (waitingLogged.get(run.runId) ?? '')) continue;
        waitingLogged.set(run.runId, text);
        if (text !== '') ctx.log(`pipelines: ingest ${run.runId}: ${text}`);
      }
    };
    let waitingTimer: NodeJS.Timeout | undefined;
    let timer: NodeJS.Timeout | undefined;
    let sweepRunning: Promise<unknown> | undefined;
    let unsubscribeWritable: () => void = () => {};
    return {
      name: 'pipelines',
      services: [{ definition: PipelineServiceDefinition, implementation: createPipelineHandlers(handles, sweepPayloads, scheduler, ctx.log) }],
      // A record's object id is record:PIPELINE/DATASET:KEY (recordObjectId).
      async currentVersion(objectId) {
        const m = /^record:([^/]+)\/([^:]+):(.*)$/s.exec(objectId);
        return m ? (await store.getCurrent(m[1] as string, m[2] as string, m[3] as string))?.contentHash : undefined;
      },
      async start() {
        unsubscribeWritable = ctx.onStoreWritable(() => void runner.recordUnrecordedEnds());
        waitingTimer = setInterval(logWaiting, options.waitingLogIntervalMs ?? 5000);
        waitingTimer.unref();
        // Runs left open are a wrong answer in lineage, not a reason to refuse to start.
        const closed = await closeInterruptedIngestRuns(store, ctx.lineage, ctx.clock).catch((err: unknown) => {
          ctx.log(`pipelines: closing the ingest runs a stopped coordinator left open failed: ${String(err)}`);
          return [];
        });
        if (closed.length > 0) ctx.log(`pipelines: closed ${closed.length} ingest run(s) a stopped coordinator left open as FAIL (interrupted): ${closed.slice(0, 5).join(', ')}`);
        const retention = payloads.retentionMs;
        if (retention !== undefined) {
          timer = setInterval(() => {
            // A slow sweep is not stacked behind another.
            if (sweepRunning) return;
            sweepRunning = sweepPayloads(false)
              .then(
                (r) => r.deleted > 0 && ctx.log(`pipelines: swept ${r.deleted} payloads (${r.bytesDeleted} bytes) not referenced for ${retention} ms; kept ${r.kept} expired ones still in use`),
                (err: unknown) => stopping.signal.aborted || ctx.log(`pipelines: payload sweep failed: ${String(err)}`),
              )
              .finally(() => (sweepRunning = undefined));
          }, options.sweepIntervalMs ?? Math.min(3_600_000, retention));
          timer.unref();
        }
      },
      async stop() {
        unsubscribeWritable();
        if (timer) clearInterval(timer);
        if (waitingTimer) clearInterval(waitingTimer);
        stopping.abort();
        await sweepRunning;
        if (shared.pipelines === handles) delete shared.pipelines;
      },
    };
  };
}
