import type { Client } from 'nice-grpc';
import { errorCodeOfStatus, RetraceError } from '../../common/errors.js';
import { AsyncQueue } from '../../common/async-queue.js';
import type { LineageServiceDefinition, TraceRequest, TraceResponse, TraceSessionRequest, TraceSessionResponse } from '../../common/gen/retrace/v1/lineage.js';

interface Waiter {
  resolve(r: TraceResponse): void;
  reject(err: unknown): void;
}

/**
 * Trace queries over one LineageService.TraceSession stream. `trace()` may be called again before
 * earlier calls have settled (the queries are pipelined on the stream); each settles with its own
 * answer, or rejects with the RetraceError Trace would have failed with. When the stream itself
 * ends (coordinator gone, `signal` aborted, `close()`), every unanswered query rejects.
 */
export class TraceSessionClient {
  private readonly outgoing = new AsyncQueue<TraceSessionRequest>();
  private readonly waiting = new Map<number, Waiter>();
  private nextId = 0;
  private ended: unknown;
  private readonly reading: Promise<void>;

  constructor(client: Client<typeof LineageServiceDefinition>, options: { signal?: AbortSignal } = {}) {
    const responses = client.traceSession(this.outgoing, options.signal ? { signal: options.signal } : {});
    this.reading = this.read(responses);
  }

  trace(request: Partial<TraceRequest>): Promise<TraceResponse> {
    if (this.ended !== undefined) return Promise.reject(this.ended);
    // Ids wrap at 2^32; far more queries than could ever be in flight at once.
    const requestId = this.nextId;
    this.nextId = (this.nextId + 1) >>> 0;
    return new Promise<TraceResponse>((resolve, reject) => {
      this.waiting.set(requestId, { resolve, reject });
      this.outgoing.push({ requestId, trace: request as TraceRequest });
    });
  }

  /** Ends the session once the queries sent so far are answered. */
  async close(): Promise<void> {
    this.outgoing.close();
    await this.reading;
  }

  private async read(responses: AsyncIterable<TraceSessionResponse>): Promise<void> {
    let failure: unknown = new RetraceError('UNAVAILABLE', 'trace session ended before answering');
    try {
      for await (const { requestId, result } of responses) {
        const waiter = this.waiting.get(requestId);
        if (!waiter) continue;
        this.waiting.delete(requestId);
        if (result?.$case === 'trace') waiter.resolve(result.value);
        else if (result?.$case === 'error') {
          const { code, message, field } = result.value;
          // The message leads with the field, as Trace's status message does; RetraceError adds it back.
          const prefix = `${field}: `;
          const bare = field && message.startsWith(prefix) ? message.slice(prefix.length) : message;
          waiter.reject(new RetraceError(errorCodeOfStatus(code), bare, field ? { field } : {}));
        } else waiter.reject(new RetraceError('INTERNAL', 'trace session answered with neither a result nor an error'));
      }
    } catch (err) {
      failure = err;
    }
    this.ended = failure;
    this.outgoing.close();
    for (const waiter of this.waiting.values()) waiter.reject(failure);
    this.waiting.clear();
  }
}
