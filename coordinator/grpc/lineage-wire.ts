import { BinaryReader } from '@bufbuild/protobuf/wire';
import { LineageServiceDefinition, SubmitEventsRequest } from '../../common/gen/retrace/v1/lineage.js';
import { LineageEvent } from '../../common/gen/retrace/v1/provenance.js';

/** A SubmitEventsRequest that also carries each event's bytes as received, same order. */
export interface WireSubmitEventsRequest extends SubmitEventsRequest {
  wire?: Uint8Array[];
}

const EVENTS_TAG = (1 << 3) | 2; // field 1, length-delimited

/**
 * Decodes SubmitEventsRequest like the generated decoder and keeps each event's bytes (views of
 * the received message), so the ledger can store them without encoding every event again.
 */
export function decodeSubmitEventsRequest(input: BinaryReader | Uint8Array, length?: number): WireSubmitEventsRequest {
  if (!(input instanceof Uint8Array) || length !== undefined) return SubmitEventsRequest.decode(input, length);
  const reader = new BinaryReader(input);
  const events: LineageEvent[] = [];
  const wire: Uint8Array[] = [];
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag === EVENTS_TAG) {
      const bytes = reader.bytes();
      events.push(LineageEvent.decode(bytes));
      wire.push(bytes);
      continue;
    }
    if ((tag & 7) === 4 || tag === 0) break;
    reader.skip(tag & 7, tag >>> 3);
  }
  return { events, wire };
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
