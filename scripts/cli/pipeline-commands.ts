import { createReadStream, readFileSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { isRetraceError, RetraceError, UnavailableError } from '../../common/errors.js';
import {
  IngestResponse,
  Pipeline,
  PipelineServiceDefinition,
  type IngestRecord,
  type IngestRequest,
  type PipelineVersion,
} from '../../common/gen/retrace/v1/pipeline.js';
import { formatBytes } from '../../common/node-resources.js';
import { formatDurationMs, isoToNanos, nanosToIso } from '../../common/time.js';
import { durationFlagMs, flag, hasFlag, intFlag, noMorePositionals, UsageError, type CliCommand, type CliIo } from './command.js';
import { openClient } from './client.js';
import { messageSchema, responseJson } from './proto-json.js';
import { checkProtoJson } from '../../common/proto-json-check.js';
import { gpuCount } from '../../common/requirements.js';
import { progressBar, renderTable, shortHash } from './format.js';

const CONNECT_FLAGS = '[--coordinator HOST:PORT] [--token T | --token-file F] [--tls-ca FILE]';
/** Records per IngestRequest message. */
const BATCH = 500;
/** Files larger than this get a progress bar on stderr. */
const PROGRESS_MIN_BYTES = 1 << 20;
/** How often `retrace ingest` asks what its run waits for. */
const STATUS_POLL_MS = 1000;
/** How often `retrace ingest` on a terminal redraws how many records it sent and how long it has waited. */
const PENDING_TICK_MS = 1000;

/** Reads a pipeline definition file (proto JSON, camelCase or snake_case fields). */
export function readPipelineFile(file: string): Pipeline {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`${file}: cannot read: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new RetraceError('INVALID_ARGUMENT', `not JSON: ${(err as Error).message}`, { field: file });
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new RetraceError('INVALID_ARGUMENT', 'expected a JSON object', { field: file });
  // Pipeline.fromJSON coerces what it gets: an unknown member ("retry": 2) or parameters that are
  // not an object were dropped without a word, and "retries": -1 failed only in the encoder
  // ("invalid uint32: -1", naming no field). Each member is checked first, named by its path.
  gpuFlagsAsCounts(json);
  try {
    checkProtoJson(messageSchema('retrace.v1.Pipeline'), json, '');
  } catch (err) {
    // Paths below '' start with '.': `steps[0].retries`, as the coordinator names them.
    if (!(err instanceof RetraceError) || err.field === undefined) throw err;
    const field = err.field.replace(/^\./, '');
    throw new RetraceError('INVALID_ARGUMENT', err.message.slice(err.field.length + 2), { field: field === 'name' ? 'pipeline.name' : field });
  }
  return Pipeline.fromJSON(json);
}

/**
 * A step's `requirements.gpu: true` (or false) as the count 1 (or 0) the proto field holds: a
 * transform's own requirements take `gpu: true` (defineTransform), so requirements copied from
 * one into a pipeline file mean the same there.
 */
function gpuFlagsAsCounts(json: object): void {
  const steps = (json as { steps?: unknown }).steps;
  if (!Array.isArray(steps)) return;
  for (const step of steps) {
    const r = (step as { requirements?: unknown } | null)?.requirements as { gpu?: unknown } | null | undefined;
    if (r !== null && typeof r === 'object' && typeof r.gpu === 'boolean') r.gpu = gpuCount({ gpu: r.gpu });
  }
}

const RECORD_FIELDS = ['key', 'eventTime', 'payload', 'mediaType'];
/** event_time_ns is an int64. */
const MAX_EVENT_TIME_NS = 2n ** 63n - 1n;

/** One JSONL line → an IngestRecord. `line` is 1-based, for messages. */
export function parseRecordLine(text: string, line: number): IngestRecord {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (err) {
    throw new RetraceError('INVALID_ARGUMENT', `not JSON: ${(err as Error).message}`, { field: `line ${line}` });
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new RetraceError('INVALID_ARGUMENT', 'expected a JSON object {key, eventTime?, payload}', { field: `line ${line}` });
  const o = obj as { key?: unknown; eventTime?: unknown; payload?: unknown; mediaType?: unknown };
  // A misspelt member ("evenTime") was ignored and the record ingested without it.
  for (const name of Object.keys(o)) if (!RECORD_FIELDS.includes(name)) throw new RetraceError('INVALID_ARGUMENT', `unknown field; a record has ${RECORD_FIELDS.join(', ')}`, { field: `line ${line}.${name}` });
  if ((typeof o.key !== 'string' && typeof o.key !== 'number') || o.key === '') throw new RetraceError('INVALID_ARGUMENT', 'key (string) is required', { field: `line ${line}.key` });
  if (o.payload === undefined) throw new RetraceError('INVALID_ARGUMENT', 'payload is required', { field: `line ${line}.payload` });
  let eventTimeNs = '0';
  // JSON.parse reads a number past 2^53 rounded (1763000000123456789 ns as 1763000000123456768):
  // the record was stored at another time, silently. Nanoseconds since 1970 are all past 2^53;
  // only a string keeps their digits. Past int64 it is refused below.
  if (typeof o.eventTime === 'number' && Number.isInteger(o.eventTime) && o.eventTime > Number.MAX_SAFE_INTEGER && BigInt(o.eventTime) <= MAX_EVENT_TIME_NS) {
    throw new RetraceError('INVALID_ARGUMENT', `a JSON number past 2^53 (${Number.MAX_SAFE_INTEGER}) cannot be read exactly (any time after April 1970 in nanoseconds is one); give it as a string ("eventTime": "1700000000000000000") or an ISO-8601 time`, { field: `line ${line}.eventTime` });
  }
  if (typeof o.eventTime === 'number' && Number.isInteger(o.eventTime) && o.eventTime >= 0) eventTimeNs = BigInt(o.eventTime).toString();
  else if (typeof o.eventTime === 'string') eventTimeNs = /^\d+$/.test(o.eventTime) ? o.eventTime : isoToNanos(o.eventTime, `line ${line}.eventTime`).toString();
  else if (o.eventTime !== undefined) throw new RetraceError('INVALID_ARGUMENT', 'expected ISO-8601 text or integer nanoseconds', { field: `line ${line}.eventTime` });
  // Past int64 ("99999999999999999999999", 1e30, a date after 2262) it failed in the encoder as
  // "Request message serialization failure: invalid int64: ...", naming no line.
  if (BigInt(eventTimeNs) > MAX_EVENT_TIME_NS) throw new RetraceError('INVALID_ARGUMENT', `past the latest event time (${MAX_EVENT_TIME_NS} ns, 2262-04-11T23:47:16Z)`, { field: `line ${line}.eventTime` });
  // A mediaType of another type was dropped for the default: the payload would be typed wrongly.
  if (o.mediaType !== undefined && typeof o.mediaType !== 'string') throw new RetraceError('INVALID_ARGUMENT', `expected text such as "application/json", got ${JSON.stringify(o.mediaType)}`, { field: `line ${line}.mediaType` });
  const isText = typeof o.payload === 'string';
  const payload = Buffer.from(isText ? (o.payload as string) : JSON.stringify(o.payload), 'utf8');
  const mediaType = typeof o.mediaType === 'string' ? o.mediaType : isText ? 'text/plain; charset=utf-8' : 'application/json';
  return { key: String(o.key), eventTimeNs, payload, mediaType };
}

function describeSteps(pv: PipelineVersion): string[][] {
  return (pv.pipeline?.steps ?? []).map((s) => [s.name, s.transform, shortHash(s.codeVersion), s.inputs.join(','), s.output || s.name, JSON.stringify(s.parameters ?? {}), stepOptions(s)]);
}

/** The step's own requirements, timeout and retries; `pipeline show` printed none of them, so an apply could not be checked. */
function stepOptions(s: NonNullable<PipelineVersion['pipeline']>['steps'][number]): string {
  const r = s.requirements;
  const parts = [
    r?.cpu ? `cpu=${r.cpu}` : '',
    r?.memoryMb ? `mem=${r.memoryMb}MiB` : '',
    r?.gpu ? `gpu=${r.gpu}` : '',
    r?.networkMbps ? `net=${r.networkMbps}Mbps` : '',
    r?.instructionSets.length ? `isa=${r.instructionSets.join('+')}` : '',
    s.timeoutMs ? `timeout=${s.timeoutMs}ms` : '',
    s.retries ? `retries=${s.retries}` : '',
    s.retries && s.retryBackoffMs ? `backoff=${s.retryBackoffMs}ms` : '',
  ].filter(Boolean);
  return parts.join(' ') || '-';
}

/**
 * Which line of the file each record sent came from, so that an error the coordinator names by
 * the record's place in the call (`records[600].key`) names the line instead (`line 602.key`):
 * blank lines are skipped, so the two differ. Kept as the points where the offset changes (one
 * per run of blank lines), not one number per record.
 */
export class RecordLines {
  /** [record index, line - index] from that record on, ascending. */
  private readonly offsets: [number, number][] = [[0, 1]];

  /** Record `index` (0-based, in the call) was read from `line` (1-based). */
  note(index: number, line: number): void {
    const last = this.offsets[this.offsets.length - 1] as [number, number];
    if (line - index !== last[1]) this.offsets.push([index, line - index]);
  }

  /** The 1-based line of record `index`. */
  lineOf(index: number): number {
    let offset = 1;
    for (const [from, off] of this.offsets) {
      if (from > index) break;
      offset = off;
    }
    return index + offset;
  }

  /** An error naming `records[i]` (the coordinator's field) as the same error naming the record's line. */
  relocate(err: unknown): unknown {
    if (!isRetraceError(err) || err.code !== 'INVALID_ARGUMENT') return err;
    const m = /^records\[(\d+)\]((?:\.\w+)*): ([\s\S]*)$/.exec(err.message);
    if (!m) return err;
    return new RetraceError('INVALID_ARGUMENT', m[3] ?? '', { field: `line ${this.lineOf(Number(m[1]))}${m[2] ?? ''}`, cause: err });
  }
}

async function* readBatches(file: string, io: CliIo, progress: (bytes: number) => void, recordLines: RecordLines): AsyncGenerator<IngestRequest['records']> {
  const input: NodeJS.ReadableStream = file === '-' ? io.stdin : createReadStream(file);
  let bytes = 0;
  (input as NodeJS.EventEmitter).on('data', (chunk: Buffer | string) => {
    bytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.byteLength;
  });
  const lines = createInterface({ input, crlfDelay: Infinity });
  let batch: IngestRecord[] = [];
  let n = 0;
  let records = 0;
  for await (const text of lines) {
    n++;
    if (text.trim() === '') continue;
    batch.push(parseRecordLine(text, n));
    recordLines.note(records++, n);
    if (batch.length >= BATCH) {
      progress(bytes);
      yield batch;
      batch = [];
    }
  }
  progress(bytes);
  if (batch.length > 0) yield batch;
}

/**
 * Polls `poll` every `intervalMs` until stopped, printing to stderr what the run waits for
 * whenever it changes; when something has been waiting without a break for `timeoutMs`, calls
 * `giveUp` with it. A failed poll is skipped (the ingest call reports its own errors).
 */
function watchWaiting(io: CliIo, tty: boolean, intervalMs: number, poll: () => Promise<string[]>, timeoutMs: number | undefined, giveUp: (why: string) => void): { stop(): void } {
  let last = '';
  let since: number | undefined;
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    poll()
      .then((lines) => {
        const text = lines.join('\n');
        // On a terminal, over the progress line rather than after it.
        if (text !== last && text !== '') io.stderr.write(`${tty ? '\r\x1b[K' : ''}waiting: ${lines.join('\nwaiting: ')}\n`);
        if (text === '') since = undefined;
        else since ??= Date.now();
        last = text;
        if (timeoutMs !== undefined && since !== undefined && Date.now() - since >= timeoutMs) giveUp(lines.join('; '));
      })
      .catch(() => {})
      .finally(() => (busy = false));
  }, intervalMs);
  return { stop: () => clearInterval(timer) };
}

/** `retrace pipeline apply|list|show` and `retrace ingest`. */
export const commands: CliCommand[] = [
  {
    path: ['pipeline', 'apply'],
    summary: 'store a pipeline definition (JSON); a changed one becomes a new version',
    usage: `retrace pipeline apply FILE.json [--json] ${CONNECT_FLAGS}
FILE is a Pipeline as JSON: {"name", "sources": [{"name", "mediaType"}], "steps": [{"name",
"transform", "codeVersion": "sha256:...", "parameters": {...}, "inputs": [...], "output",
"requirements": {"gpu", "memoryMb", ...}, "timeoutMs", "retries", "retryBackoffMs"}]}. At least
one step; each step's "output" (default: its name) is its own. A step that fails is run again up to "retries" times (default 0) after a jittered backoff. A step that
no READY node meets now is stored all the same, with a warning on stderr.`,
    async run(args, io) {
      const [file] = args.positionals;
      if (!file) throw new UsageError('a pipeline file is required');
      noMorePositionals(args, 1);
      const pipeline = readPipelineFile(file);
      const { client, close } = openClient(PipelineServiceDefinition, args);
      try {
        const res = await client.applyPipeline({ pipeline }, { signal: io.signal });
        if (hasFlag(args, 'json')) io.stdout.write(`${JSON.stringify(responseJson(PipelineServiceDefinition, 'applyPipeline', res))}\n`);
        else io.stdout.write(`${res.pipeline?.pipeline?.name ?? pipeline.name} version ${res.pipeline?.version ?? '?'}  ${res.created ? 'created' : 'unchanged'}  ${res.pipeline?.definitionHash ?? ''}\n`);
        for (const w of res.warnings) io.stderr.write(`warning: ${w}\n`);
        return 0;
      } finally {
        close();
      }
    },
  },
  {
    path: ['pipeline', 'list'],
    summary: 'pipelines (latest version of each)',
    usage: `retrace pipeline list [--json] ${CONNECT_FLAGS}`,
    async run(args, io) {
      noMorePositionals(args, 0);
      const { client, close } = openClient(PipelineServiceDefinition, args);
      try {
        const res = await client.listPipelines({}, { signal: io.signal });
        if (hasFlag(args, 'json')) {
          io.stdout.write(`${JSON.stringify(responseJson(PipelineServiceDefinition, 'listPipelines', res))}\n`);
          return 0;
        }
        io.stdout.write(
          renderTable(
            ['NAME', 'VERSION', 'SOURCES', 'STEPS', 'CREATED'],
            res.pipelines.map((p) => [p.pipeline?.name, p.version, (p.pipeline?.sources ?? []).map((s) => s.name).join(','), (p.pipeline?.steps ?? []).map((s) => s.name).join(','), nanosToIso(p.createdAtNs)]),
          ),
        );
        return 0;
      } finally {
        close();
      }
    },
  },
  {
    path: ['pipeline', 'show'],
    summary: 'one pipeline: sources and steps (latest version unless --version N)',
    usage: `retrace pipeline show NAME [--version N] [--json] ${CONNECT_FLAGS}`,
    integers: { version: 'uint32' },
    async run(args, io) {
      const [name] = args.positionals;
      if (!name) throw new UsageError('a pipeline name is required');
      noMorePositionals(args, 1);
      const { client, close } = openClient(PipelineServiceDefinition, args);
      try {
        const res = await client.getPipeline({ name, version: intFlag(args, 'version', 0) }, { signal: io.signal });
        if (hasFlag(args, 'json')) {
          io.stdout.write(`${JSON.stringify(responseJson(PipelineServiceDefinition, 'getPipeline', res))}\n`);
          return 0;
        }
        const pv = res.pipeline as PipelineVersion;
        io.stdout.write(`pipeline ${pv.pipeline?.name} version ${pv.version} of [${res.versions.join(', ')}]  created ${nanosToIso(pv.createdAtNs)}  ${pv.definitionHash}\n`);
        io.stdout.write(`sources: ${(pv.pipeline?.sources ?? []).map((s) => `${s.name}${s.mediaType ? ` (${s.mediaType})` : ''}`).join(', ')}\n`);
        io.stdout.write(renderTable(['STEP', 'TRANSFORM', 'CODE', 'INPUTS', 'OUTPUT', 'PARAMETERS', 'OPTIONS'], describeSteps(pv)));
        return 0;
      } finally {
        close();
      }
    },
  },
  {
    path: ['ingest'],
    summary: 'stream JSONL records into a pipeline source; runs its steps and records provenance',
    usage: `retrace ingest PIPELINE SOURCE FILE.jsonl|- [--wait-timeout DURATION] [--json] ${CONNECT_FLAGS}
One JSON object per line: {"key": "...", "eventTime": ISO-8601 or integer ns (optional; ns as a
string, "1700000000000000000": a JSON number past 2^53 is refused, it cannot be read exactly),
"payload": text or any JSON value, "mediaType" (optional)}. "-" reads stdin. Prints accepted and
duplicate records, the run id and failed shards; a progress bar goes to stderr for large files,
and on a terminal a line counting the records sent and the seconds their steps have run.
Shards that no READY node can run (a step needing a gpu or more memory than any node has) wait
for one to join: what they wait for goes to stderr while they do. --wait-timeout 5m gives up
when shards have waited that long for a node that meets them: the ingest is cancelled (records
already processed stay recorded) and the command exits 1 naming the reason. Losing the coordinator
mid-run (killed, restarted) names the run cut short: send the same file again to finish it
(records already ingested come back as duplicates).`,
    async run(args, io) {
      const [pipeline, source, file] = args.positionals;
      if (!pipeline || !source || !file) throw new UsageError('PIPELINE, SOURCE and FILE (or -) are required');
      noMorePositionals(args, 3);
      const waitTimeoutMs = durationFlagMs(args, 'wait-timeout', { minMs: 1 });
      let total = 0;
      if (file !== '-') {
        try {
          total = statSync(file).size;
        } catch {
          throw new UsageError(`${file}: no such file`);
        }
      }
      const showBar = total >= PROGRESS_MIN_BYTES && !hasFlag(args, 'json');
      const progress = (bytes: number): void => {
        if (showBar) io.stderr.write(`\r${progressBar(bytes, total, 30, `${(bytes / 2 ** 20).toFixed(1)} MiB`)}`);
      };
      // The first batch is read before the call: a file without records would open and close an
      // empty run in the ledger.
      const recordLines = new RecordLines();
      const batches = readBatches(file, io, progress, recordLines);
      const head = await batches.next();
      if (head.done) throw new UsageError(`${file === '-' ? 'stdin' : file} holds no records: expected one JSON object per line`);
      // What goes on after the bytes are read: a small file of slow records (200 records of a
      // 300 ms step took 18 s) printed nothing until the summary, and a large one's bar stood at
      // 100% while its last records ran. On a terminal, a line counts the records sent and the
      // seconds waited, redrawn each second once the ingest has taken one.
      let sent = 0;
      let sentAll = false;
      async function* requests(): AsyncGenerator<IngestRequest> {
        sent += (head.value as IngestRequest['records']).length;
        yield { pipeline: pipeline as string, source: source as string, records: head.value as IngestRequest['records'] };
        for await (const records of batches) {
          sent += records.length;
          yield { pipeline: '', source: '', records };
        }
        sentAll = true;
      }
      const tty = !hasFlag(args, 'json') && (io.stderr as { isTTY?: boolean }).isTTY === true;
      const startedAt = Date.now();
      let ticking = false;
      const ticker = tty
        ? setInterval(() => {
            if (showBar && !sentAll) return;
            ticking = true;
            const secs = Math.round((Date.now() - startedAt) / 1000);
            io.stderr.write(`\r\x1b[K${sentAll ? `${sent} record(s) sent; waiting for their steps to finish (${secs} s)` : `${sent} record(s) sent (${secs} s)`}`);
          }, PENDING_TICK_MS)
        : undefined;
      const stopTicker = (): void => {
        if (ticker) clearInterval(ticker);
        if (ticking && !showBar) io.stderr.write('\r\x1b[K');
        ticking = false;
      };
      const { client, close } = openClient(PipelineServiceDefinition, args);
      const call = new AbortController();
      const signal = io.signal ? AbortSignal.any([io.signal, call.signal]) : call.signal;
      let runId = '';
      let gaveUp = '';
      const watch = watchWaiting(io, tty, STATUS_POLL_MS, async () => {
        if (runId === '') return [];
        const s = await client.getIngestStatus({ pipeline: pipeline as string, runId }, { signal });
        return s.waiting.filter((w) => !w.busy).map((w) => `${w.shards} shard(s) of step ${w.step} wait: ${w.reason}`);
      }, waitTimeoutMs, (why) => {
        gaveUp = why;
        call.abort();
      });
      try {
        let res: IngestResponse;
        try {
          res = await client.ingest(requests(), {
            signal,
            onHeader(header) {
              runId = header.get('x-retrace-run-id') ?? '';
            },
          });
        } catch (err) {
          stopTicker();
          if (gaveUp === '' && !io.signal?.aborted && isRetraceError(err) && err.code === 'UNAVAILABLE' && runId !== '') {
            if (showBar) io.stderr.write('\n');
            // Lost the coordinator mid-run (killed, restarted): "Connection dropped" alone named
            // neither the run cut short nor how to finish it. Records are idempotent by key and
            // content, so sending them all again ingests only what was not stored.
            const again = file === '-' ? `the same records again (retrace ingest ${pipeline} ${source} -)` : `the same file again: retrace ingest ${pipeline} ${source} ${file}`;
            throw new UnavailableError(
              `lost the coordinator during ingest run ${runId} (${err.message}); the coordinator closes the run as FAIL (interrupted) when it starts again (retrace lineage node run:${runId}). To finish, send ${again}: records already ingested come back as duplicates, the rest are ingested`,
              err,
            );
          }
          if (gaveUp === '') throw recordLines.relocate(err);
          if (showBar) io.stderr.write('\n');
          io.stderr.write(`ingest cancelled after --wait-timeout ${flag(args, 'wait-timeout') ?? ''}: ${gaveUp}\n`);
          return 1;
        }
        stopTicker();
        if (showBar) io.stderr.write('\n');
        if (hasFlag(args, 'json')) {
          io.stdout.write(`${JSON.stringify(responseJson(PipelineServiceDefinition, 'ingest', res))}\n`);
        } else {
          io.stdout.write(`accepted ${res.accepted}  duplicates ${res.duplicates}  shards ${res.shardsRun} run, ${res.shardsFailed} failed  run ${res.runId}  (pipeline version ${res.pipelineVersion})\n`);
          if (res.firstError) io.stdout.write(`first failure: ${res.firstError}\n`);
          if (Number(res.shardsFailed) > 1) io.stdout.write(`every failure (the first 100): retrace lineage node run:${res.runId}   # facet retrace.failures\n`);
        }
        return Number(res.shardsFailed) > 0 ? 1 : 0;
      } finally {
        stopTicker();
        watch.stop();
        close();
      }
    },
  },
  {
    path: ['payloads', 'sweep'],
    summary: 'delete payloads not referenced within the coordinator\'s --payload-retention (current ones are kept)',
    usage: `retrace payloads sweep [--dry-run] [--json] ${CONNECT_FLAGS}
Deletes stored payloads (source records, step outputs) that were not stored, reused or found in
use within the retention the coordinator was started with (retrace coordinator
--payload-retention 30d); the coordinator also sweeps on its own. Every pipeline's current
records and every object's newest version are kept however old. --dry-run only counts.`,
    booleans: ['dry-run'],
    async run(args, io) {
      noMorePositionals(args, 0);
      const { client, close } = openClient(PipelineServiceDefinition, args);
      try {
        const r = await client.sweepPayloads({ dryRun: hasFlag(args, 'dry-run') }, { signal: io.signal });
        if (hasFlag(args, 'json')) {
          io.stdout.write(`${JSON.stringify(responseJson(PipelineServiceDefinition, 'sweepPayloads', r))}\n`);
          return 0;
        }
        const retention = formatDurationMs(Number(r.retentionMs));
        io.stdout.write(`${r.dryRun ? 'would delete' : 'deleted'} ${r.deleted} payloads (${formatBytes(Number(r.bytesDeleted))}) unused for ${retention}\n`);
        io.stdout.write(`kept ${r.kept} as old but still in use (current records, newest versions); looked at ${r.scanned}\n`);
        if (r.stamped !== '0') io.stdout.write(`${r.stamped} stored while payloads were kept forever ${r.dryRun ? 'would start' : 'start'} their ${retention} now\n`);
        return 0;
      } finally {
        close();
      }
    },
  },
];
