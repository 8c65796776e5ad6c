/**
 * `npm run bench -- ingest [--events N] [--streams K] [--batch B] [--rtt-ms R]`
 *
 * Events/s through LineageService.SubmitEvents of a real coordinator (in-process, LevelDB in a
 * temp dir), against raw `level` writes of exactly the keys and values the coordinator stored,
 * in the same run.
 *
 * - The client runs in a worker thread (a producer is another process in practice) and encodes
 *   every SubmitEventsRequest before the clock starts, so the figure is the coordinator's cost:
 *   gRPC receive + decode, validation, hashing, index, LevelDB batch and fsync.
 * - Event mix, per record of a record pipeline: an object-version event for the source record,
 *   a "parse" step using it (1 version) and an "enrich" step using the parsed version and, half
 *   of the time, a recent other record's parsed version (2 versions); each step generates 1.
 * - Batch ack latency is taken in-process at LineageEngine.submit (batch received, still
 *   undecoded → durable; the engine lets at most 8,000 events queue), since a SubmitEvents
 *   stream acknowledges only at its end. Commit group sizes and write times come from wrapping
 *   the store's startBatch (bench-only instrumentation, no source file changed).
 * - CPU is split three ways from per-thread schedstat: the committer (main thread), the client's
 *   thread (left out), and every other thread (LevelDB, V8's GC and compiler helpers); the main
 *   thread's GC pauses come from a PerformanceObserver. Rows are counted per table.
 * - `--rtt-ms R` puts a TCP proxy in the client's thread that holds each chunk R/2 ms each way: a
 *   producer on another host, where HTTP/2 flow-control windows bound a stream to a window per
 *   round trip. Loopback by default.
 * - Raw baseline: with the coordinator stopped, every key/value of the ledger and the
 *   entity/adjacency sublevels is read back, grouped by event (ledger seq), and written into a
 *   fresh `level` DB with chained db.batch() of the same number of events per batch,
 *   { sync: true }, one batch after another. Checkpoint rows (one per commit group) are left out.
 */
import { randomUUID, createHash } from 'node:crypto';
import { mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance, PerformanceObserver, constants as perfConstants } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { Level } from 'level';
import { createChannel, createClientFactory, Metadata, type MethodDefinition } from 'nice-grpc';
import { Coordinator } from '../coordinator/coordinator.js';
import type { LineageStore, PreparedEntry } from '../coordinator/store/lineage-store.js';
import { SubmitEventsRequest, SubmitEventsResponse } from '../common/gen/retrace/v1/lineage.js';
import { LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { finish, percentile, threadCpuUs } from './report.js';

interface ClientConfig {
  kind: 'retrace-ingest-client';
  address: string;
  token: string;
  events: number;
  streams: number;
  batch: number;
  rttMs: number;
}

type ToMain =
  | { type: 'ready'; batches: number; events: number; eventBytes: number; minEventBytes: number; maxEventBytes: number; mix: Record<string, number>; tid: number | undefined }
  | { type: 'done'; accepted: number; streamMs: number[] }
  | { type: 'error'; message: string };

function flag(argv: string[], name: string, dflt: number): number {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(argv[i + 1]);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} needs a positive number`);
  return Math.floor(v);
}

function fmt(n: number, digits = 0): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export async function main(argv: string[]): Promise<void> {
  const events = flag(argv, 'events', 200_000);
  const streams = flag(argv, 'streams', 4);
  const batch = flag(argv, 'batch', 500);
  const rttMs = argv.includes('--rtt-ms') ? flag(argv, 'rtt-ms', 0) : 0;
  const root = mkdtempSync(join(tmpdir(), 'retrace-bench-ingest-'));
  try {
    await run(root, events, streams, batch, rttMs);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

async function run(root: string, events: number, streams: number, batch: number, rttMs: number): Promise<void> {
  const dataDir = join(root, 'coordinator');
  const coordinator = new Coordinator({ dataDir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} });
  const addresses = await coordinator.start();
  const engine = coordinator.lineage;

  // Instrumentation: ack latency per batch at the engine, size and write time per commit group.
  const ackMs: number[] = [];
  const submit = engine.submit.bind(engine);
  engine.submit = (evs, options) => {
    const t0 = performance.now();
    const p = submit(evs, options);
    p.then(() => ackMs.push(performance.now() - t0), () => {});
    return p;
  };
  const store = (engine as unknown as { store: LineageStore }).store;
  const groupSizes: number[] = [];
  const appendMs: number[] = [];
  // Each commit group fills one store batch (while the previous one is written), then writes it.
  const startBatch = store.startBatch.bind(store);
  store.startBatch = () => {
    const batch = startBatch();
    let size = 0;
    return {
      add: (e: PreparedEntry) => {
        size++;
        batch.add(e);
      },
      write: async (checkpoint) => {
        const t0 = performance.now();
        await batch.write(checkpoint);
        groupSizes.push(size);
        appendMs.push(performance.now() - t0);
      },
      discard: () => batch.discard(),
    };
  };

  console.log(`ingest: ${fmt(events)} events, ${streams} concurrent SubmitEvents streams, ${batch} events per batch; load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  if (rttMs > 0) console.log(`client reaches the coordinator through a proxy adding ${rttMs} ms per round trip`);
  const config: ClientConfig = { kind: 'retrace-ingest-client', address: addresses.grpc, token: coordinator.authToken, events, streams, batch, rttMs };
  const worker = startTsWorker(import.meta.url, config);
  const next = (): Promise<ToMain> =>
    new Promise((resolve, reject) => {
      const onMessage = (m: ToMain): void => {
        worker.off('error', reject);
        if (m.type === 'error') reject(new Error(`client: ${m.message}`));
        else resolve(m);
      };
      worker.once('message', onMessage);
      worker.once('error', reject);
    });
  const ready = await next();
  if (ready.type !== 'ready') throw new Error('client did not get ready');
  console.log(
    `client: ${fmt(ready.events)} events in ${ready.batches} pre-encoded batches; encoded event ${fmt(ready.eventBytes, 1)} B mean (${ready.minEventBytes}–${ready.maxEventBytes}); mix ${JSON.stringify(ready.mix)}`,
  );

  // Garbage collection pauses of the main thread (the committer) during the timed window.
  const gc = { pauseMs: 0, minor: 0, major: 0 };
  const gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gc.pauseMs += e.duration;
      const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind;
      if (kind === perfConstants.NODE_PERFORMANCE_GC_MINOR) gc.minor++;
      else if (kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) gc.major++;
    }
  });
  gcObserver.observe({ entryTypes: ['gc'] });
  const cpu0 = process.cpuUsage();
  // The main thread is the coordinator's committer.
  const threads0 = threadCpuUs(process.pid);
  const main0 = threads0.get(process.pid);
  const hr0 = Number(process.hrtime.bigint());
  const t0 = performance.now();
  worker.postMessage('go');
  const done = await next();
  const retraceMs = performance.now() - t0;
  const threads1 = threadCpuUs(process.pid);
  gcObserver.disconnect();
  // Every thread but the committer and the client's: LevelDB's writer and compaction threads,
  // V8's helpers (parallel scavenging, concurrent marking, compilation), libuv's pool.
  let otherUs = 0;
  for (const [tid, us] of threads1) if (tid !== process.pid && tid !== ready.tid) otherUs += us - (threads0.get(tid) ?? 0);
  // For `node --cpu-prof`: the timed window in the profile's clock (µs, CLOCK_MONOTONIC).
  if (process.env.BENCH_PROFILE_WINDOW) console.error(`profile window µs ${Math.round(hr0 / 1000)} ${Math.round(Number(process.hrtime.bigint()) / 1000)}`);
  const cpu = process.cpuUsage(cpu0);
  const mainMs = main0 === undefined ? undefined : ((threadCpuUs(process.pid).get(process.pid) as number) - main0) / 1000;
  if (done.type !== 'done') throw new Error('client did not finish');
  await worker.terminate();
  if (done.accepted !== events) throw new Error(`coordinator accepted ${done.accepted} of ${events} events`);
  const retraceRate = events / (retraceMs / 1000);
  const rssMiB = process.memoryUsage().rss / 2 ** 20;
  await coordinator.stop();

  // ---- raw level baseline over the same bytes ----
  const rows = await readRows(join(dataDir, 'db'));
  if (rows.perEvent.length !== events) throw new Error(`read back ${rows.perEvent.length} events from the ledger, expected ${events}`);
  const rawDir = join(root, 'raw');
  const raw = await writeRaw(rawDir, rows.perEvent, batch, 1);
  const rawConc = await writeRaw(join(root, 'raw-concurrent'), rows.perEvent, batch, streams);
  const rawRate = events / (raw.ms / 1000);
  const rawConcRate = events / (rawConc.ms / 1000);
  const ratio = retraceRate / rawRate;

  const groups = [...groupSizes].sort((a, b) => a - b);
  const groupMean = groupSizes.reduce((a, b) => a + b, 0) / Math.max(1, groupSizes.length);
  const appendTotal = appendMs.reduce((a, b) => a + b, 0);
  console.log('');
  console.log(`Retrace SubmitEvents : ${fmt(retraceRate)} events/s  (${fmt(retraceMs)} ms wall, coordinator+client process CPU ${fmt((cpu.user + cpu.system) / 1000)} ms = ${fmt((cpu.user + cpu.system) / 1000 / retraceMs, 2)} cores, ${fmt((cpu.user + cpu.system) / events, 1)} µs per event)`);
  if (mainMs !== undefined) console.log(`  committer thread   : ${fmt((mainMs * 1000) / events, 1)} µs CPU per event (gRPC receive, decode, validation, index, rows; the coordinator's main thread), so at most ${fmt(events / (mainMs / 1000))} events/s on one core`);
  console.log(`  batch ack latency  : p50 ${fmt(percentile(ackMs, 50), 1)} ms, p99 ${fmt(percentile(ackMs, 99), 1)} ms, max ${fmt(percentile(ackMs, 100), 1)} ms  (${ackMs.length} batches, engine.submit → durable)`);
  console.log(`  commit groups      : ${groupSizes.length} groups; events per group p50 ${fmt(percentile(groups, 50))}, mean ${fmt(groupMean)}, min ${fmt(groups[0] ?? 0)}, max ${fmt(groups[groups.length - 1] ?? 0)}`);
  console.log(`  batch.write        : ${fmt(appendTotal)} ms total (${fmt((100 * appendTotal) / retraceMs, 1)}% of wall), p50 ${fmt(percentile(appendMs, 50), 1)} ms per group (synced LevelDB write; rows added while the previous group was written)`);
  if (threads1.size > 0) console.log(`  other threads      : ${fmt(otherUs / events, 1)} µs CPU per event (LevelDB's writer and compaction, V8's garbage-collection and compiler helpers; the client's thread excluded)`);
  console.log(`  main-thread GC     : ${fmt(gc.pauseMs)} ms of pauses (${fmt((100 * gc.pauseMs) / retraceMs, 1)}% of wall): ${gc.minor} scavenges, ${gc.major} mark-compacts`);
  console.log(`  stored rows        : ${fmt(rows.rowCount)} rows, ${fmt(rows.bytes / 2 ** 20, 1)} MiB keys+values (${fmt(rows.rowCount / events, 2)} puts per event, ${fmt(rows.bytes / events, 0)} B per event), plus ${rows.checkpoints} checkpoint rows`);
  console.log(`  rows by table      : ${Object.entries(rows.tables).map(([t, v]) => `${t} ${fmt(v.rows / events, 2)} per event × ${fmt(v.bytes / v.rows)} B`).join(', ')}`);
  console.log(`  process RSS        : ${fmt(rssMiB)} MiB`);
  console.log(`raw level, sequential: ${fmt(rawRate)} events/s  (${fmt(raw.ms)} ms, ${raw.batches} chained batches of ${batch} events, sync: true, one at a time; process CPU ${fmt((raw.cpuMs * 1000) / events, 1)} µs per event, LevelDB's write thread included)`);
  console.log(`raw level, ${streams} writers: ${fmt(rawConcRate)} events/s  (same batches, ${streams} concurrent writers; context only, not in the ratio)`);
  console.log(`ratio Retrace / raw sequential = ${fmt(ratio, 3)}   (goal ≥ 0.5 and ≥ 50,000 events/s)`);

  finish({
    bench: 'ingest',
    ratio: round(ratio, 3),
    goal: '>= 0.5 and >= 50000 events/s',
    retraceEventsPerS: Math.round(retraceRate),
    rawEventsPerS: Math.round(rawRate),
    rawConcurrentEventsPerS: Math.round(rawConcRate),
    events,
    streams,
    batch,
    rttMs,
    meanEventBytes: round(ready.eventBytes, 1),
    ackP50Ms: round(percentile(ackMs, 50), 2),
    ackP99Ms: round(percentile(ackMs, 99), 2),
    commitGroups: groupSizes.length,
    groupEventsP50: percentile(groups, 50),
    groupEventsMean: Math.round(groupMean),
    groupEventsMax: groups[groups.length - 1] ?? 0,
    putsPerEvent: round(rows.rowCount / events, 2),
    coordinatorCpuCores: round((cpu.user + cpu.system) / 1000 / retraceMs, 2),
    cpuUsPerEvent: round((cpu.user + cpu.system) / events, 1),
    committerUsPerEvent: mainMs === undefined ? null : round((mainMs * 1000) / events, 1),
    otherThreadsUsPerEvent: threads1.size > 0 ? round(otherUs / events, 1) : null,
    mainGcPauseMs: Math.round(gc.pauseMs),
    rawCpuUsPerEvent: round((raw.cpuMs * 1000) / events, 1),
    rssMiB: Math.round(rssMiB),
    loadAvg1m: round(loadavg()[0] ?? 0, 1),
  });
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

type Row = [Uint8Array, Uint8Array];

/** Every row of the ledger and index sublevels, grouped by the ledger seq of the event that wrote it. */
async function readRows(dir: string): Promise<{ perEvent: Row[][]; rowCount: number; bytes: number; checkpoints: number; tables: Record<string, { rows: number; bytes: number }> }> {
  const db = new Level<Uint8Array, Uint8Array>(dir, { keyEncoding: 'view', valueEncoding: 'view' });
  await db.open();
  const bySeq = new Map<number, Row[]>();
  const dec = new TextDecoder('latin1');
  let rowCount = 0;
  let bytes = 0;
  let checkpoints = 0;
  const tables: Record<string, { rows: number; bytes: number }> = {};
  const add = (seqHex: string, row: Row, table: string): void => {
    const seq = Number.parseInt(seqHex, 16);
    if (!Number.isFinite(seq)) throw new Error(`no seq in row ${dec.decode(row[0])}`);
    let list = bySeq.get(seq);
    if (!list) bySeq.set(seq, (list = []));
    list.push(row);
    rowCount++;
    bytes += row[0].length + row[1].length;
    const t = (tables[table] ??= { rows: 0, bytes: 0 });
    t.rows++;
    t.bytes += row[0].length + row[1].length;
  };
  for await (const [key, value] of db.iterator()) {
    const k = dec.decode(key);
    const end = k.indexOf('!', 1);
    const table = k.slice(1, end);
    const rest = k.slice(end + 1);
    const row: Row = [key.slice(), value.slice()];
    switch (table) {
      case 'ledger':
        add(rest, row, table);
        break;
      case 'objects':
      case 'steps':
      case 'runs':
      case 'adjacency':
        add(rest.slice(-16), row, table);
        break;
      case 'checkpoints':
        checkpoints++;
        break;
      default:
        throw new Error(`unexpected sublevel ${JSON.stringify(table)}`);
    }
  }
  await db.close();
  const perEvent: Row[][] = [];
  for (let seq = 0; seq < bySeq.size; seq++) {
    const list = bySeq.get(seq);
    if (!list) throw new Error(`no rows for seq ${seq}`);
    perEvent.push(list);
  }
  return { perEvent, rowCount, bytes, checkpoints, tables };
}

/** Writes the rows in batches of `batch` events with chained db.batch() and sync, `writers` at a time. */
async function writeRaw(dir: string, perEvent: Row[][], batch: number, writers: number): Promise<{ ms: number; batches: number; cpuMs: number }> {
  const db = new Level<Uint8Array, Uint8Array>(dir, { keyEncoding: 'view', valueEncoding: 'view' });
  await db.open();
  const chunks: Row[][][] = [];
  for (let i = 0; i < perEvent.length; i += batch) chunks.push(perEvent.slice(i, i + batch));
  let nextChunk = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: writers }, async () => {
      for (let c = nextChunk++; c < chunks.length; c = nextChunk++) {
        const b = db.batch();
        for (const ev of chunks[c] as Row[][]) for (const [k, v] of ev) b.put(k, v);
        await b.write({ sync: true });
      }
    }),
  );
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await db.close();
  return { ms, batches: chunks.length, cpuMs: (cpu.user + cpu.system) / 1000 };
}

// ---- client (worker thread) ----

/** A worker thread running this .ts module: tsx's loader hooks do not reach workers, so register them there first. */
function startTsWorker(moduleUrl: string, data: ClientConfig): Worker {
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const code = `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(moduleUrl)}); });`;
  return new Worker(code, { eval: true, workerData: data });
}

/** SubmitEvents with pre-encoded request bytes, so the producer's protobuf encoding is not timed. */
const RawSubmitEvents = {
  submitEvents: {
    path: '/retrace.v1.LineageService/SubmitEvents',
    requestStream: true,
    responseStream: false,
    requestSerialize: (bytes: Uint8Array): Uint8Array => bytes,
    requestDeserialize: (bytes: Uint8Array): Uint8Array => bytes,
    responseSerialize: (r: SubmitEventsResponse): Uint8Array => SubmitEventsResponse.encode(r).finish(),
    responseDeserialize: (bytes: Uint8Array): SubmitEventsResponse => SubmitEventsResponse.decode(bytes),
    options: { idempotencyLevel: 'IDEMPOTENT' },
  } satisfies MethodDefinition<Uint8Array, Uint8Array, SubmitEventsResponse, SubmitEventsResponse, true, false>,
};

const hex = (s: string): string => `sha256:${createHash('sha256').update(s).digest('hex')}`;

/** The events of one stream: a run, then records through source → parse → enrich. */
function streamEvents(stream: number, count: number, mix: Record<string, number>): LineageEvent[] {
  const out: LineageEvent[] = [];
  const base = 1_700_000_000_000_000_000n + BigInt(stream) * 1_000_000_000_000n;
  let tick = 0n;
  const time = (): string => (base + 1000n * tick++).toString();
  const runId = `run-${stream}`;
  const producer = 'retrace-bench';
  out.push(LineageEvent.fromPartial({ eventId: randomUUID(), eventTimeNs: time(), producer, body: { $case: 'run', value: { runId, name: `orders pipeline ${stream}`, state: 'RUNNING', startedAtNs: time() } } }));
  mix.run = (mix.run ?? 0) + 1;
  const parsed: { objectId: string; contentHash: string }[] = [];
  for (let r = 0; out.length < count; r++) {
    const id = `${stream}-${r.toString().padStart(7, '0')}`;
    const source = { objectId: `orders:${id}`, contentHash: hex(`src:${id}`) };
    const t = time();
    out.push(
      LineageEvent.fromPartial({
        eventId: randomUUID(),
        eventTimeNs: t,
        producer,
        body: { $case: 'objectVersion', value: { ...source, size: String(180 + (r % 300)), mediaType: 'application/json', createdAtNs: t, attributes: { partition: String(r % 12) } } },
      }),
    );
    mix.objectVersion = (mix.objectVersion ?? 0) + 1;
    if (out.length >= count) break;
    const parsedRef = { objectId: `parsed:${id}`, contentHash: hex(`parsed:${id}`) };
    out.push(stepEvent(`p-${id}`, 'parse', runId, [source], parsedRef, time, producer));
    mix.step1 = (mix.step1 ?? 0) + 1;
    parsed.push(parsedRef);
    if (out.length >= count) break;
    const used = [parsedRef];
    if (r % 2 === 1) used.push(parsed[Math.max(0, parsed.length - 2 - (r % 17))] as { objectId: string; contentHash: string });
    out.push(stepEvent(`e-${id}`, 'enrich', runId, used, { objectId: `enriched:${id}`, contentHash: hex(`enriched:${id}`) }, time, producer));
    mix[`step${used.length}`] = (mix[`step${used.length}`] ?? 0) + 1;
    if (parsed.length > 64) parsed.splice(0, 32);
  }
  return out;
}

function stepEvent(
  stepId: string,
  transform: string,
  runId: string,
  used: { objectId: string; contentHash: string }[],
  generated: { objectId: string; contentHash: string },
  time: () => string,
  producer: string,
): LineageEvent {
  const started = time();
  const ended = time();
  return LineageEvent.fromPartial({
    eventId: randomUUID(),
    eventTimeNs: ended,
    producer,
    body: { $case: 'step', value: { stepId, runId, transform, startedAtNs: started, endedAtNs: ended, used, generated: [generated] } },
  });
}

/** This thread's Linux thread id, so the main thread can leave its CPU out; undefined elsewhere. */
function clientThreadId(): number | undefined {
  try {
    return Number(readlinkSync('/proc/thread-self').split('/').pop());
  } catch {
    return undefined;
  }
}

/** A TCP proxy to `target` on 127.0.0.1 that holds every chunk `delayMs` each way; answers its address. */
async function delayingProxy(target: string, delayMs: number): Promise<string> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const relay = (from: Socket, to: Socket): void => {
    from.on('data', (chunk) => setTimeout(() => to.write(chunk), delayMs));
    from.on('end', () => setTimeout(() => to.end(), delayMs));
    from.on('error', () => to.destroy());
  };
  const server = createServer((client) => {
    const upstream = connect(port, host);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    relay(client, upstream);
    relay(upstream, client);
  });
  server.unref();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function runClient(config: ClientConfig): Promise<void> {
  const port = parentPort;
  if (!port) return;
  try {
    const perStream = Math.floor(config.events / config.streams);
    const mix: Record<string, number> = {};
    const batches: Uint8Array[][] = [];
    let eventBytes = 0;
    let minEventBytes = Number.POSITIVE_INFINITY;
    let maxEventBytes = 0;
    let total = 0;
    for (let s = 0; s < config.streams; s++) {
      const count = s === config.streams - 1 ? config.events - perStream * (config.streams - 1) : perStream;
      const evs = streamEvents(s, count, mix);
      total += evs.length;
      for (const e of evs) {
        const n = LineageEvent.encode(e).finish().length;
        eventBytes += n;
        minEventBytes = Math.min(minEventBytes, n);
        maxEventBytes = Math.max(maxEventBytes, n);
      }
      const list: Uint8Array[] = [];
      for (let i = 0; i < evs.length; i += config.batch) list.push(SubmitEventsRequest.encode({ events: evs.slice(i, i + config.batch) }).finish());
      batches.push(list);
    }
    const address = config.rttMs > 0 ? await delayingProxy(config.address, config.rttMs / 2) : config.address;
    const channel = createChannel(address, undefined, { 'grpc.max_send_message_length': 64 << 20 });
    const client = createClientFactory().create(RawSubmitEvents, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${config.token}` }) } });
    port.postMessage({
      type: 'ready',
      tid: clientThreadId(),
      batches: batches.reduce((n, l) => n + l.length, 0),
      events: total,
      eventBytes: eventBytes / total,
      minEventBytes,
      maxEventBytes,
      mix,
    } satisfies ToMain);
    await new Promise<void>((resolve) => port.once('message', () => resolve()));
    const t0 = performance.now();
    const results = await Promise.all(
      batches.map(async (list) => {
        async function* requests(): AsyncGenerator<Uint8Array> {
          yield* list;
        }
        const r = await client.submitEvents(requests());
        return { accepted: Number(r.accepted), ms: performance.now() - t0 };
      }),
    );
    channel.close();
    port.postMessage({ type: 'done', accepted: results.reduce((n, r) => n + r.accepted, 0), streamMs: results.map((r) => r.ms) } satisfies ToMain);
  } catch (err) {
    port.postMessage({ type: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) } satisfies ToMain);
  }
}

if (!isMainThread && (workerData as Partial<ClientConfig> | undefined)?.kind === 'retrace-ingest-client') void runClient(workerData as ClientConfig);
