import { BinaryReader } from '@bufbuild/protobuf/wire';
import { LineageServiceDefinition, SubmitEventsRequest } from '../../common/gen/retrace/v1/lineage.js';
import { LineageEvent } from '../../common/gen/retrace/v1/provenance.js';
import { AsciiBinaryReader } from '../../common/ascii-binary-reader.js';
import { InvalidArgumentError } from '../../common/errors.js';
import type { DeferredEvents } from '../lineage/lineage-engine.js';

const EVENTS_TAG = (1 << 3) | 2; // field 1, length-delimited

/**
 * A received SubmitEventsRequest kept as its bytes: the engine decodes it (DeferredEvents) when
 * it prepares the commit group, so the request waits in the call's read buffer and the commit
 * queue as one buffer. `events` decodes for any other reader.
 */
export class LazySubmitEventsRequest implements SubmitEventsRequest, DeferredEvents {
  private decoded: LineageEvent[] | undefined;

  constructor(
    private readonly bytes: Uint8Array,
    readonly count: number,
  ) {}

  get events(): LineageEvent[] {
    return (this.decoded ??= this.decode().events);
  }

  decode(): { events: LineageEvent[]; wire: Uint8Array[] } {
    const wire: Uint8Array[] = [];
    scanEvents(this.bytes, (start, end) => wire.push(this.bytes.subarray(start, end)));
    const events = new Array<LineageEvent>(wire.length);
    for (let i = 0; i < wire.length; i++) {
      try {
        events[i] = LineageEvent.decode(new AsciiBinaryReader(wire[i] as Uint8Array));
      } catch (err) {
        throw new InvalidArgumentError(`events[${i}]`, `does not decode as a LineageEvent: ${err instanceof Error ? err.message : String(err)}`, err);
      }
    }
    return { events, wire };
  }
}

/** Counts the events of an encoded SubmitEventsRequest, handing each one's byte range to `onEvent`. */
function scanEvents(bytes: Uint8Array, onEvent?: (start: number, end: number) => void): number {
  const reader = new BinaryReader(bytes);
  let n = 0;
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag === EVENTS_TAG) {
      const len = reader.uint32();
      const start = reader.pos;
      if (start + len > reader.len) throw new RangeError('premature EOF');
      reader.pos += len;
      onEvent?.(start, reader.pos);
      n++;
      continue;
    }
    if ((tag & 7) === 4 || tag === 0) break;
    reader.skip(tag & 7, tag >>> 3);
  }
  return n;
}

/**
 * SubmitEventsRequest's decoder for the server: the events stay undecoded (LazySubmitEventsRequest)
 * and, once decoded, keep their bytes, so the ledger can store them without encoding each again.
 * A message whose framing is broken throws here, as the generated decoder would.
 */
export function decodeSubmitEventsRequest(input: BinaryReader | Uint8Array, length?: number): SubmitEventsRequest {
  if (!(input instanceof Uint8Array) || length !== undefined) return SubmitEventsRequest.decode(input, length);
  return new LazySubmitEventsRequest(input, scanEvents(input));
}

/**
 * LineageServiceDefinition with SubmitEvents' request decoded by decodeSubmitEventsRequest. The
 * messages on the wire are the same; only the server's in-memory result differs.
 */
export const LineageServiceWireDefinition = {
  ...LineageServiceDefinition,
  methods: {
    ...LineageServiceDefinition.methods,
    submitEvents: {
      ...LineageServiceDefinition.methods.submitEvents,
      requestType: { ...SubmitEventsRequest, decode: decodeSubmitEventsRequest },
    },
  },
} as const;
