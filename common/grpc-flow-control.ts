/**
 * HTTP/2 flow-control window for every Retrace channel and server, per stream and per connection.
 *
 * HTTP/2 starts both at 64 KiB, and a sender may have no more than the window unacknowledged: a
 * stream then moves at most window / round-trip time. Producers and agents on other hosts stream
 * lineage in 100–300 KiB batches, so with 64 KiB a `SubmitEvents` stream crawled:
 * `npm run bench -- ingest --rtt-ms 5` gave 23.6k events/s, and 84.4k with 4 MiB; at 20 ms,
 * 6.3k against 76.1k. 1 MiB reached 73k at 5 ms but 45k at 20 ms. grpc-java's server default is
 * 1 MiB; grpc-go grows its window up to 16 MiB from the bandwidth-delay product it measures,
 * which grpc-js does not do.
 *
 * What a window costs is memory: a connection can have this much unread at the receiver.
 */
export const FLOW_CONTROL_WINDOW_BYTES = 4 * 1024 * 1024;

/** grpc-js's channel option for it (the client honours it; see coordinator/grpc/server-flow-control.ts for the server). */
export const FLOW_CONTROL_WINDOW_OPTION = 'grpc-node.flow_control_window';
