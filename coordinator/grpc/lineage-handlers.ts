import type { CallContext } from 'nice-grpc';
import type { ContentCheck, LineageServiceImplementation, SubmitEventsRequest, SubmitEventsResponse, TraceSessionResponse } from '../../common/gen/retrace/v1/lineage.js';
import { ERROR_TABLE, InvalidArgumentError, isRetraceError, RetraceError } from '../../common/errors.js';
import type { Checkpoint, LineageEvent } from '../../common/gen/retrace/v1/provenance.js';
import type { DeferredEvents, LineageEngine } from '../lineage/lineage-engine.js';
import type { SubmitResult } from '../lineage/lineage-api.js';
import { verifyLedger } from '../ledger/ledger-verifier.js';
import { exportProv } from '../lineage/prov-export.js';
import type { LineageStore } from '../store/lineage-store.js';
import { LazySubmitEventsRequest } from './lineage-wire.js';
import { bindDeferredPrincipals, bindEventPrincipal, boundPrincipal } from './principal.js';

/** How many batches of one SubmitEvents stream may wait for their commit at once. */
const STREAM_PIPELINE_DEPTH = 16;

/** What VerifyLedger checks beside the ledger, where the coordinator has it. */
export interface VerifySources {
  /** The checkpoint kept outside the database (checkpoint-file.ts), or undefined. */
  externalCheckpoint?: () => Checkpoint | undefined;
  /** Checks the stored content (content-verifier.ts); skipped with ledger_only. */
  verifyContent?: (signal: AbortSignal) => Promise<ContentCheck[]>;
  /**
   * The content hash of the version an object's owner holds as current now (a pipeline's current
   * record), or undefined when none does: GetRecordPath without a hash or a time shows that version.
   */
  currentVersion?: (objectId: string) => Promise<string | undefined>;
}

/**
 * LineageService over the engine. Handlers throw RetraceErrors only; the error middleware maps them.
 * A call made with a client or agent token (bound to its name, see principal.ts) records step
 * events as that name: `why.principal` empty is filled in, another name is PERMISSION_DENIED
 * naming the field and nothing of the batch is stored. Owner and admin calls are stored as sent.
 */
export function createLineageHandlers(engine: LineageEngine, store: LineageStore, publicKey: string, sources: VerifySources = {}): LineageServiceImplementation {
  return {
    async submitEvent(request, context: CallContext) {
      if (!request.event) throw new InvalidArgumentError('event', 'is required');
      const bound = boundPrincipal(context);
      const event = bound === undefined ? request.event : bindEventPrincipal(request.event, bound, 'event');
      const r = await engine.submit([event], { signal: context.signal });
      return { seq: (r.seqs[0] ?? 0n).toString(), duplicate: r.duplicates > 0 };
    },

    // Batches are committed in order and pipelined; a rejected batch fails the stream, naming it.
    // Batches after it may already be stored: clients resend them, and duplicates are acknowledged.
    async submitEvents(requests: AsyncIterable<SubmitEventsRequest>, context: CallContext): Promise<SubmitEventsResponse> {
      const totals = { batches: 0, accepted: 0, duplicates: 0, treeSize: 0n };
      let index = 0;
      const settle = async (p: Promise<SubmitResult>, batch: number): Promise<void> => {
        try {
          const r = await p;
          totals.batches++;
          totals.accepted += r.accepted;
          totals.duplicates += r.duplicates;
          if (r.treeSize > totals.treeSize) totals.treeSize = r.treeSize;
        } catch (err) {
          if (isRetraceError(err)) {
            const field = err.field ? `batches[${batch}].${err.field}` : `batches[${batch}]`;
            throw new RetraceError(err.code, err.message.slice(err.field ? err.field.length + 2 : 0), { field, cause: err });
          }
          throw err;
        }
      };
      const pending: { p: Promise<SubmitResult>; batch: number }[] = [];
      const bound = boundPrincipal(context);
      for await (const req of requests) {
        const room = engine.room();
        if (room) await room;
        // The server decodes this method with decodeSubmitEventsRequest (lineage-wire.ts): the
        // engine decodes the events when it prepares their commit group, and a bound call's
        // principals are checked then, before any of the batch is validated or stored.
        const p = engine.submit(bound === undefined ? eventsOf(req) : bindAll(eventsOf(req), bound), { signal: context.signal });
        p.catch(() => {}); // observed in settle(), in order
        pending.push({ p, batch: index++ });
        if (pending.length >= STREAM_PIPELINE_DEPTH) {
          const first = pending.shift() as { p: Promise<SubmitResult>; batch: number };
          await settle(first.p, first.batch);
        }
      }
      for (const { p, batch } of pending) await settle(p, batch);
      return { batches: String(totals.batches), accepted: String(totals.accepted), duplicates: String(totals.duplicates), treeSize: totals.treeSize.toString() };
    },

    getNode: (request) => engine.getNode(request),
    trace: (request) => engine.trace(request),

    // One query at a time, answered in order. A query Trace would reject is answered with its
    // error and the session goes on; anything else ends the stream through the error middleware.
    async *traceSession(requests, context: CallContext) {
      for await (const { requestId, trace } of requests) {
        if (context.signal.aborted) return;
        let answer: TraceSessionResponse;
        try {
          if (!trace) throw new InvalidArgumentError('trace', 'is required');
          answer = { requestId, result: { $case: 'trace', value: await engine.trace(trace) } };
        } catch (err) {
          if (!isRetraceError(err)) throw err;
          answer = { requestId, result: { $case: 'error', value: { code: ERROR_TABLE[err.code].grpc, message: err.message, field: err.field ?? '' } } };
        }
        yield answer;
      }
    },
    // Without a hash or a time: the version the pipeline holds as current, where the ledger has
    // it. The newest version first seen is not always that one: a step that reproduces an older
    // content (a recompute, a re-ingest) makes it current again, and the path showed the one it replaced.
    async getRecordPath(request) {
      const asOf = request.asOfNs !== '' && request.asOfNs !== '0';
      const current = request.contentHash === '' && !asOf && request.objectId !== '' ? await sources.currentVersion?.(request.objectId) : undefined;
      if (current !== undefined && engine.hasVersion(request.objectId, current)) return engine.getRecordPath({ ...request, contentHash: current });
      return engine.getRecordPath(request);
    },
    listRuns: (request) => engine.listRuns(request),
    getProof: (request) => engine.getProof(request.eventId),
    resolveNodes: async (request) => ({ keys: engine.resolveNodes(request.nodeIds) }),

    async verifyLedger(request, context: CallContext) {
      // The file is read before the engine's checkpoint: it is written after the engine takes a
      // checkpoint, so its tree size is never beyond the size verified.
      const external = sources.externalCheckpoint?.();
      const checkpoint = engine.latestCheckpoint;
      const report = await verifyLedger(store, { publicKey, treeSize: checkpoint ? BigInt(checkpoint.treeSize) : 0n, ...(external ? { external } : {}) });
      const content = request.ledgerOnly || !sources.verifyContent ? [] : await sources.verifyContent(context.signal);
      return {
        ok: report.ok && content.every((c) => c.problem === ''),
        entriesChecked: report.entriesChecked.toString(),
        firstBadSeq: (report.firstBadSeq ?? 0n).toString(),
        problem: report.problem ?? '',
        checkpoint: report.checkpoint,
        content,
      };
    },

    async exportProv(request) {
      return { provJson: JSON.stringify(await exportProv(engine, request)) };
    },
  };
}

function eventsOf(req: SubmitEventsRequest): LineageEvent[] | DeferredEvents {
  return req instanceof LazySubmitEventsRequest ? req : req.events;
}

/**
 * A bound call's batch with bindEventPrincipal applied to each event. Still in wire form, when
 * the engine decodes it; already decoded (no wire bytes), as a DeferredEvents too, so a refusal
 * reaches the caller named under its batch (`batches[b].events[i]...`) as the engine's errors do.
 */
function bindAll(events: LineageEvent[] | DeferredEvents, bound: string): DeferredEvents {
  if (!Array.isArray(events)) return bindDeferredPrincipals(events, bound);
  return bindDeferredPrincipals({ count: events.length, decode: () => ({ events: events.slice(), wire: new Array<undefined>(events.length) }) }, bound);
}
