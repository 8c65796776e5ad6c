import { writeFileSync } from 'node:fs';
import { ReplayServiceDefinition, ReplayState, GpuMode, type RecordSelector, type ReplayPolicy, ReplayReport, type WatchReplayResponse } from '../../common/gen/retrace/v1/replay.js';
import { renderScatterSvg } from '../../common/svg-chart.js';
import { formatSpanMs } from '../../common/time.js';
import { durationArgMs, flag, flagAll, hasFlag, intFlag, timeArgNs, noMorePositionals, UsageError, type CliCommand, type CliIo, type ParsedArgs } from './command.js';
import { openClient } from './client.js';
import { isRetraceError } from '../../common/errors.js';
import { messageJson, responseJson } from './proto-json.js';
import { DEFAULT_TABLE_LIMIT, heldLines, limitRows, progressBar, renderTable, shortHash, toJson } from './format.js';

const START_USAGE = `retrace replay start SELECTOR [POLICY] [--watch] [--json]
  SELECTOR (one of):
    --record OBJECT_ID ...            source records, e.g. record:orders/raw:42 (repeatable)
    --window PIPELINE/SOURCE FROM TO  records whose event time is in [FROM, TO) (ISO-8601 or ns)
    --last DURATION PIPELINE/SOURCE   records of the last 10m, 2h...
    --run RUN_ID                      every source record of a run
  POLICY:
    --speed 0.5x|1x|2x|max            pacing on the recorded inter-arrival times (default max; 0.001x at slowest)
    --target NODE|key=value ...       only these nodes / labels (repeatable)
    --max-cpu 50%                     CPU cap per node;  --max-memory 512 (MiB)
    --gpu only|none                   GPU-only or no-GPU nodes
    --fault outage:NODE:after=1s:for=5s | link:0.1 | corrupt:0.1 | fail:0.2 | latency:50ms   (repeatable)
    --seed N                          fault seed (default 1)
    --set STEP.PARAM=JSON             what-if parameter the step has (repeatable);
                                      STEP.+PARAM adds one it does not have
    --code TRANSFORM=sha256:...       what-if code version (repeatable)
    --principal NAME                  who asked, as recorded (default: a named token's name, or
                                      "replay" for the auth-token; a client token may name only itself)`;

/** The longest fault duration the policy carries (uint32 milliseconds). */
const MAX_FAULT_MS = 2 ** 32 - 1;

const SELECTOR_FLAGS = ['record', 'window', 'last', 'run'] as const;

function parseSelector(args: ParsedArgs): RecordSelector {
  // `--record X --last 10m SRC` was taken as --record alone, and refused SRC as "unexpected argument".
  const given = SELECTOR_FLAGS.filter((f) => hasFlag(args, f));
  if (given.length > 1) throw new UsageError(`give one selector, not ${given.map((f) => `--${f}`).join(' and ')}`);
  const records = flagAll(args, 'record');
  if (records.length > 0) {
    // `--record A B` would replay A alone.
    noMorePositionals(args, 0, ' (give each record its own --record)');
    return { selector: { $case: 'recordIds', value: { objectIds: records } } };
  }
  const run = flag(args, 'run');
  if (run) {
    noMorePositionals(args, 0);
    return { selector: { $case: 'runId', value: run } };
  }
  const split = (ps: string | undefined): { pipeline: string; source: string } => {
    const [pipeline, source] = (ps ?? '').split('/');
    if (!pipeline || !source) throw new UsageError(`expected PIPELINE/SOURCE, got ${JSON.stringify(ps ?? '')}`);
    return { pipeline, source };
  };
  const time = (t: string | undefined): string => {
    if (!t) throw new UsageError('--window needs FROM and TO');
    return timeArgNs(t, '--window');
  };
  const window = flag(args, 'window');
  if (window) {
    const value = { ...split(window), fromNs: time(args.positionals[0]), toNs: time(args.positionals[1]) };
    noMorePositionals(args, 2);
    return { selector: { $case: 'window', value } };
  }
  const last = flag(args, 'last');
  if (last) {
    const value = { ...split(args.positionals[0]), minutes: durationArgMs(last, '--last') / 60_000 };
    noMorePositionals(args, 1);
    return { selector: { $case: 'last', value } };
  }
  throw new UsageError('a selector is required: --record, --window, --last or --run');
}

function parsePolicy(args: ParsedArgs): ReplayPolicy {
  const speedText = flag(args, 'speed', 'max') as string;
  // The coordinator validates the factor (0 and negatives are refused there, naming the field).
  const speed = speedText === 'max' ? undefined : Number(speedText.replace(/x$/, ''));
  if (speed !== undefined && Number.isNaN(speed)) throw new UsageError(`--speed must be a factor like 0.5x, 1x, 2x, or max; got ${JSON.stringify(speedText)}`);
  const targetNodeIds: string[] = [];
  const targetLabels: Record<string, string> = {};
  for (const t of flagAll(args, 'target')) {
    const eq = t.indexOf('=');
    if (eq > 0) targetLabels[t.slice(0, eq)] = t.slice(eq + 1);
    else targetNodeIds.push(...t.split(',').filter(Boolean));
  }
  const cpuText = flag(args, 'max-cpu');
  const cpuNumber = cpuText === undefined ? '' : cpuText.endsWith('%') ? cpuText.slice(0, -1) : cpuText;
  const maxCpuFraction = cpuText === undefined ? 0 : cpuNumber.trim() === '' ? Number.NaN : cpuText.endsWith('%') ? Number(cpuNumber) / 100 : Number(cpuNumber);
  if (!Number.isFinite(maxCpuFraction) || maxCpuFraction < 0 || maxCpuFraction > 1) throw new UsageError('--max-cpu must be like 50% or 0.5');
  // 0 means "no cap" on the wire: `--max-cpu 0%` would otherwise run uncapped without a word.
  if (cpuText !== undefined && maxCpuFraction === 0) throw new UsageError(`--max-cpu must be above 0% (leave it out for no cap), got ${JSON.stringify(cpuText)}`);
  const gpuText = flag(args, 'gpu');
  const gpu = gpuText === undefined ? GpuMode.GPU_MODE_ANY : gpuText === 'only' ? GpuMode.GPU_MODE_ONLY : gpuText === 'none' ? GpuMode.GPU_MODE_NONE : undefined;
  if (gpu === undefined) throw new UsageError('--gpu must be only or none');
  const faults = { seed: flag(args, 'seed', '1') as string, outages: [] as { nodeId: string; startAfterMs: number; durationMs: number }[], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 };
  // `--fault fail:0.5 --fault fail:0.1` took the last one without a word; only outages repeat.
  const seenFaults = new Map<string, string>();
  for (const f of flagAll(args, 'fault')) {
    const [kind, ...rest] = f.split(':');
    const earlier = kind === 'outage' || kind === undefined ? undefined : seenFaults.get(kind);
    if (earlier !== undefined) throw new UsageError(`--fault ${kind} is given twice (${JSON.stringify(earlier)} and ${JSON.stringify(f)}); give it once`);
    if (kind !== undefined) seenFaults.set(kind, f);
    const prob = (): number => {
      // Number('') is 0: `link:` would otherwise inject nothing without a word.
      const p = rest.length === 1 && rest[0] !== '' ? Number(rest[0]) : Number.NaN;
      if (!(p >= 0 && p <= 1)) throw new UsageError(`--fault ${kind}: probability between 0 and 1 expected, got ${JSON.stringify(f)}`);
      return p;
    };
    // The policy carries milliseconds as uint32: a longer one would fail in serialization, naming nothing.
    const ms = (text: string, field: string): number => {
      const v = Math.round(durationArgMs(text, field));
      if (v > MAX_FAULT_MS) throw new UsageError(`${field}: at most ${MAX_FAULT_MS} ms (about 49 days), got ${JSON.stringify(text)}`);
      return v;
    };
    if (kind === 'outage') {
      const nodeId = rest[0];
      if (!nodeId) throw new UsageError('--fault outage:NODE:after=1s:for=5s');
      const opts: Record<string, string> = {};
      for (const kv of rest.slice(1)) {
        const m = /^(after|for)=(.+)$/.exec(kv);
        if (!m) throw new UsageError(`--fault outage:NODE:after=1s:for=5s takes after=DURATION and for=DURATION, got ${JSON.stringify(kv)}`);
        opts[m[1] as string] = m[2] as string;
      }
      faults.outages.push({ nodeId, startAfterMs: ms(opts.after ?? '0s', '--fault after'), durationMs: ms(opts.for ?? '5s', '--fault for') });
    } else if (kind === 'link') faults.linkOutageProbability = prob();
    else if (kind === 'corrupt') faults.corruptInputProbability = prob();
    else if (kind === 'fail') faults.stepFailureProbability = prob();
    else if (kind === 'latency') faults.addedLatencyMs = ms(rest.join(':'), '--fault latency');
    else throw new UsageError(`unknown fault ${JSON.stringify(kind)}: outage, link, corrupt, fail or latency`);
  }
  const stepParameters: Record<string, Record<string, unknown>> = {};
  for (const s of flagAll(args, 'set')) {
    const m = /^([^.=]+)\.([^=]+)=(.*)$/.exec(s);
    if (!m) throw new UsageError(`--set STEP.PARAM=VALUE, got ${JSON.stringify(s)}`);
    let value: unknown = m[3];
    try {
      value = JSON.parse(m[3] as string);
    } catch (err) {
      // A bare string (`--set scale.currency=EUR`), unless it was meant as JSON: a broken object,
      // array or string would otherwise run as that text and change every output it reaches.
      if (/^\s*[[{"]/.test(m[3] as string)) throw new UsageError(`--set ${m[1]}.${m[2]}: ${JSON.stringify(m[3])} is not valid JSON (${err instanceof Error ? err.message : String(err)})`);
    }
    (stepParameters[m[1] as string] ??= {})[m[2] as string] = value;
  }
  const codeVersions: Record<string, string> = {};
  for (const c of flagAll(args, 'code')) {
    const eq = c.indexOf('=');
    if (eq <= 0) throw new UsageError('--code TRANSFORM=sha256:...');
    codeVersions[c.slice(0, eq)] = c.slice(eq + 1);
  }
  return {
    speed,
    targetNodeIds,
    targetLabels,
    maxCpuFraction,
    maxMemoryMb: intFlag(args, 'max-memory', 0),
    gpu,
    faults,
    stepParameters,
    codeVersions,
    // Empty: the coordinator records the token's name. $USER was sent before, which a client
    // token (bound to its own name) would have been refused for.
    principal: flag(args, 'principal') ?? '',
  };
}

/**
 * Follows a replay through WatchReplay until it ends, rendering its progress on stderr. On a
 * terminal: one live bar redrawn in place. Elsewhere (pipes, logs): the bar as a line of its own
 * at most every `lineEveryMs` (10 s) while steps finish or its message changes (a paced wait), so
 * a long replay's log shows it advancing, and the bar once more when it ends.
 */
export async function watchReplayProgress(
  client: ReturnType<typeof openClient<typeof ReplayServiceDefinition>>['client'],
  replayId: string,
  io: Pick<CliIo, 'stderr' | 'signal'>,
  options: { lineEveryMs?: number; now?: () => number } = {},
): Promise<WatchReplayResponse | undefined> {
  const { lineEveryMs = 10_000, now = Date.now } = options;
  const tty = (io.stderr as { isTTY?: boolean }).isTTY === true;
  let line = '';
  // Off a terminal: a replay whose shards wait for a node says so once, a second in, and then
  // nothing more comes until it ends, so that line is held, not dropped (heldLines).
  const lines = heldLines(lineEveryMs, (text) => io.stderr.write(`${text}\n`), now);
  let last: WatchReplayResponse | undefined;
  try {
    for await (const p of client.watchReplay({ replayId }, { ...(io.signal ? { signal: io.signal } : {}) })) {
      last = p;
      line = progressBar(p.stepsDone, p.stepsTotal, 30, `${p.stepsDone}/${p.stepsTotal} steps, ${p.recordsDone}/${p.recordsTotal} records, ${p.stepsFailed} failed${p.stepsSkipped > 0 ? `, ${p.stepsSkipped} not run` : ''}  ${p.message}`.slice(0, 110));
      if (tty) io.stderr.write(`\r${line}\x1b[K`);
      else if (p.state === ReplayState.REPLAY_STATE_PENDING || p.state === ReplayState.REPLAY_STATE_RUNNING) lines.offer(`${p.stepsDone} ${p.message}`, line);
    }
  } finally {
    lines.close();
  }
  io.stderr.write(tty ? '\n' : `${line}\n`);
  return last;
}

/**
 * The report of a replay just watched to its end. A coordinator that shut down (ending the
 * replay CANCELLED) may be gone before the report is read: then the state the watch last saw,
 * and how to read the report later, rather than only a connection error.
 */
async function reportAfterWatch(client: ReturnType<typeof openClient<typeof ReplayServiceDefinition>>['client'], replayId: string, last: WatchReplayResponse | undefined, io: CliIo): Promise<ReplayReport | undefined> {
  try {
    const { report } = await client.getReplayReport({ replayId }, { signal: io.signal });
    return report;
  } catch (err) {
    if (last === undefined || !isRetraceError(err) || err.code !== 'UNAVAILABLE') throw err;
    const why = last.message.startsWith('done: ') ? ` (${last.message.slice('done: '.length)})` : '';
    io.stderr.write(`replay ${replayId}: ${stateName(last.state)}${why}; the coordinator went away before its report could be read (${err.message}): retrace replay report ${replayId} once it is back\n`);
    return undefined;
  }
}

/** A replay state as the CLI prints it: `RUNNING`, `SUCCEEDED`. */
function stateName(state: ReplayState): string {
  return ReplayState[state].replace('REPLAY_STATE_', '');
}

/** `replay ID: STATE (error)`: how a report starts, and what `replay watch` ends with. */
function stateLine(r: ReplayReport): string {
  return `replay ${r.replayId}: ${stateName(r.state)}${r.error ? ` (${r.error})` : ''}\n`;
}

/**
 * The report as text: the summary, then a row per step, at most `limit` (0: all; the steps that
 * did not match or did not succeed first), with a line saying how many were left out.
 */
function printReport(r: ReplayReport, io: CliIo, limit: number, how: string): void {
  const s = r.summary;
  io.stdout.write(stateLine(r));
  if (s) {
    // A running replay's summary counts the steps finished so far.
    const toGo = s.steps - s.matched - s.differed - s.failed - s.upstreamFailed - s.cancelled;
    io.stdout.write(
      `  ${s.records} records, ${s.steps} steps: ${s.matched} matched, ${s.differed} differed, ${s.failed} failed${s.upstreamFailed ? `, ${s.upstreamFailed} upstream failed` : ''}${s.cancelled ? `, ${s.cancelled} cancelled` : ''}${toGo > 0 ? `, ${toGo} still to run` : ''}; non-deterministic ${s.nondeterministic}; corrupted inputs detected ${s.corruptedInputsDetected}; reassigned ${s.reassigned}\n` +
        `  wall ${formatSpanMs(s.replayWallMs)} for a recorded span of ${formatSpanMs(s.originalSpanMs)} at speed ${s.speed || 'max'}; placements ${JSON.stringify(s.placements)}\n`,
    );
    if (s.changedRecords > 0) io.stdout.write(`  changed records: ${s.changedRecords} (first: ${s.firstChangedRecords.join(', ')})\n`);
    const lag = s.speed > 0 ? recordTimings(r).map((t) => t.dispatchedMs - t.targetMs).sort((a, b) => a - b) : [];
    if (lag.length > 0) {
      const q = (p: number): string => (lag[Math.min(lag.length - 1, Math.floor(p * lag.length))] as number).toFixed(1);
      io.stdout.write(`  pacing, dispatched - due over ${lag.length} records: p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${(lag[lag.length - 1] as number).toFixed(1)} ms\n`);
    }
  }
  const shown = limitRows(r.steps, limit, (x) => x.status !== 'SUCCEEDED' || !x.matches, { noun: 'steps', notable: 'not matched', how });
  io.stdout.write(
    renderTable(
      ['record', 'step', 'status', 'match', 'original', 'replay', 'orig node', 'node', 'cpu ms o/r', 'diff / error'],
      shown.rows.map((x) => [
        x.record,
        x.step,
        x.status,
        x.status === 'SUCCEEDED' ? (x.matches ? 'yes' : x.overridden ? 'changed' : 'NO') : '',
        shortHash(x.originalOutputHashes[0] ?? ''),
        shortHash(x.replayOutputHashes[0] ?? ''),
        x.originalNode,
        x.replayNode,
        `${ms(x.originalResources?.cpuTimeNs)}/${ms(x.replayResources?.cpuTimeNs)}`,
        [x.error, ...x.valueDiffs, ...faultsBesidesError(x)].filter(Boolean).join('; ').slice(0, 80),
      ]),
    ),
  );
  io.stdout.write(shown.footer);
}

/**
 * A row's injected faults for the table, less the step failure when the error already is that
 * failure (the node's "injected failure (faults.fail)"): the cell says "injected" once. The JSON
 * keeps both fields as they are.
 */
function faultsBesidesError(x: ReplayReport['steps'][number]): string[] {
  return x.error.startsWith('injected failure') ? x.faults.filter((f) => f !== 'injected step failure') : x.faults;
}

type RecordOutcome = 'matched' | 'changed' | 'differed' | 'running' | 'failed';

/**
 * Each dispatched replayed record's dispatch (its first step's) against when the speed policy had
 * it due, both from the replay's start, with what became of the record: failed if a step failed, else
 * running while one is placed and not done (a report read mid-replay), else changed or differed (no
 * overrides: non-determinism) if an output hash did, else matched.
 */
function recordTimings(r: ReplayReport): { record: string; targetMs: number; dispatchedMs: number; outcome: RecordOutcome }[] {
  const byRecord = new Map<string, { record: string; targetMs: number; dispatchedMs: number; outcome: RecordOutcome }>();
  const rank: Record<RecordOutcome, number> = { matched: 0, changed: 1, differed: 2, running: 3, failed: 4 };
  // A record none of whose steps reached a node was never dispatched (cancelled before its due
  // time, or its input payload missing): it has no dispatch time to set against its due time.
  const reached = new Set(r.steps.filter((x) => x.replayNode !== '').map((x) => x.record));
  for (const x of r.steps) {
    if (!reached.has(x.record)) continue;
    // A step placed and running names its node now: it has no outcome yet, not a failure.
    const running = x.status === 'RUNNING' || x.status === 'PENDING';
    const outcome: RecordOutcome = running ? 'running' : x.status !== 'SUCCEEDED' ? 'failed' : x.matches ? 'matched' : x.overridden ? 'changed' : 'differed';
    const t = byRecord.get(x.record);
    if (!t) byRecord.set(x.record, { record: x.record, targetMs: x.targetAtMs, dispatchedMs: x.dispatchedAtMs, outcome });
    else {
      if (x.dispatchedAtMs < t.dispatchedMs) Object.assign(t, { targetMs: x.targetAtMs, dispatchedMs: x.dispatchedAtMs });
      if (rank[outcome] > rank[t.outcome]) t.outcome = outcome;
    }
  }
  return [...byRecord.values()].sort((a, b) => a.targetMs - b.targetMs || a.dispatchedMs - b.dispatchedMs);
}

const OUTCOME_COLORS: Record<RecordOutcome, string> = { matched: '#2ca02c', changed: '#ff7f0e', differed: '#9467bd', running: '#a0a0a0', failed: '#d62728' };
const STEP_COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf', '#d62728'];

/**
 * Two charts, one above the other: when each record was dispatched against when the speed had it
 * due (by record order at max speed), coloured by what became of it; and each step's CPU time in
 * the replay against the original's, one colour per step.
 */
export function replayReportSvg(r: ReplayReport): string {
  const speed = r.summary?.speed ?? 0;
  const timings = recordTimings(r);
  const pacing = renderScatterSvg({
    title: `replay ${r.replayId}: dispatch ${speed > 0 ? `against due time at ${speed}x` : 'order at max speed'}`,
    xLabel: speed > 0 ? 'due (ms after the replay started; recorded offset / speed)' : 'record, in replay order',
    yLabel: 'dispatched (ms after start)',
    diagonal: speed > 0,
    series: (Object.keys(OUTCOME_COLORS) as RecordOutcome[]).map((outcome) => {
      const pts = timings.map((t, i) => ({ ...t, i })).filter((t) => t.outcome === outcome);
      return { name: outcome, color: OUTCOME_COLORS[outcome], x: pts.map((t) => (speed > 0 ? t.targetMs : t.i)), y: pts.map((t) => t.dispatchedMs) };
    }),
  });
  const steps = [...new Set(r.steps.map((x) => x.step))];
  const cpu = (ns: string | undefined): number => (ns ? Number(ns) / 1e6 : Number.NaN);
  const resources = renderScatterSvg({
    title: 'CPU time per step: replay against original',
    xLabel: 'original CPU (ms)',
    yLabel: 'replay CPU (ms)',
    diagonal: true,
    series: steps.map((name, i) => {
      const xs = r.steps.filter((x) => x.step === name);
      return { name, color: STEP_COLORS[i % STEP_COLORS.length] as string, x: xs.map((x) => cpu(x.originalResources?.cpuTimeNs)), y: xs.map((x) => cpu(x.replayResources?.cpuTimeNs)) };
    }),
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="800" height="720" viewBox="0 0 800 720">\n<svg y="0">${pacing}</svg>\n<svg y="360">${resources}</svg>\n</svg>\n`;
}

function ms(ns: string | undefined): string {
  return ns ? (Number(ns) / 1e6).toFixed(1) : '-';
}

const start: CliCommand = {
  path: ['replay', 'start'],
  summary: 'replay records from provenance under a policy (speed, targets, caps, faults, what-if)',
  usage: START_USAGE,
  integers: { seed: 'uint64', 'max-memory': 'uint32' },
  async run(args, io) {
    const selector = parseSelector(args);
    const policy = parsePolicy(args);
    const { client, close } = openClient(ReplayServiceDefinition, args);
    try {
      const r = await client.startReplay({ selector, policy }, { signal: io.signal });
      if (!hasFlag(args, 'watch')) {
        io.stdout.write(hasFlag(args, 'json') ? toJson(responseJson(ReplayServiceDefinition, 'startReplay', r)) : `started ${r.replayId}: ${r.records} records, ${r.steps} steps; retrace replay report ${r.replayId}\n`);
        return 0;
      }
      io.stderr.write(`replay ${r.replayId}: ${r.records} records, ${r.steps} steps\n`);
      const report = await reportAfterWatch(client, r.replayId, await watchReplayProgress(client, r.replayId, io), io);
      if (!report) return 1;
      if (hasFlag(args, 'json')) io.stdout.write(toJson(messageJson('retrace.v1.ReplayReport', ReplayReport, report)));
      else printReport(report, io, DEFAULT_TABLE_LIMIT, `retrace replay report ${report.replayId} --limit N, 0 for all`);
      return report.state === ReplayState.REPLAY_STATE_SUCCEEDED ? 0 : 1;
    } finally {
      close();
    }
  },
};

const report: CliCommand = {
  path: ['replay', 'report'],
  summary: 'how a replay differed from the original: hashes, diffs, placements, resources',
  usage: `retrace replay report REPLAY_ID [--limit N] [--json] [--svg FILE]
  --limit N  steps listed, at most (default ${DEFAULT_TABLE_LIMIT}, 0 for all): those that did not match or failed first; --json lists all
  --svg FILE charts when each record was dispatched against when the speed had it due, and each step's CPU time against the original's`,
  integers: { limit: 'uint32' },
  async run(args, io) {
    const replayId = args.positionals[0];
    if (!replayId) throw new UsageError('REPLAY_ID is required');
    noMorePositionals(args, 1);
    const { client, close } = openClient(ReplayServiceDefinition, args);
    try {
      const { report: r } = await client.getReplayReport({ replayId }, { signal: io.signal });
      if (!r) return 1;
      const svg = flag(args, 'svg');
      if (svg !== undefined) {
        writeFileSync(svg, replayReportSvg(r));
        io.stderr.write(`wrote ${svg}\n`);
      }
      if (hasFlag(args, 'json')) io.stdout.write(toJson(messageJson('retrace.v1.ReplayReport', ReplayReport, r)));
      else printReport(r, io, intFlag(args, 'limit', DEFAULT_TABLE_LIMIT), '--limit N, 0 for all');
      return 0;
    } finally {
      close();
    }
  },
};

/** Replays `replay list` prints by default (`--limit N`, 0 for all), as `retrace jobs` lists 50. */
const REPLAY_LIST_LIMIT = 50;

const list: CliCommand = {
  path: ['replay', 'list'],
  summary: 'replays and their state, newest first',
  usage: `retrace replay list [--limit N] [--json]
  Newest first (by start time). --limit N  replays listed, at most (default ${REPLAY_LIST_LIMIT}, 0 for all), with
  a line saying how many older ones were left out; --json lists all.`,
  integers: { limit: 'uint32' },
  async run(args, io) {
    noMorePositionals(args, 0);
    const limit = intFlag(args, 'limit', REPLAY_LIST_LIMIT);
    const { client, close } = openClient(ReplayServiceDefinition, args);
    try {
      const r = await client.listReplays({}, { signal: io.signal });
      // ListReplays answers in id order, oldest first: after a few hundred replays the ones just
      // started were at the bottom of a long table, and `retrace jobs` lists newest first.
      const replays = [...r.replays].sort((a, b) => (BigInt(b.startedAtNs) > BigInt(a.startedAtNs) ? 1 : BigInt(b.startedAtNs) < BigInt(a.startedAtNs) ? -1 : b.replayId.localeCompare(a.replayId)));
      if (hasFlag(args, 'json')) {
        io.stdout.write(toJson(responseJson(ReplayServiceDefinition, 'listReplays', { replays })));
        return 0;
      }
      if (replays.length === 0) {
        io.stdout.write('no replays\n');
        return 0;
      }
      const shown = limit === 0 ? replays : replays.slice(0, limit);
      io.stdout.write(renderTable(['replay', 'state', 'records', 'steps', 'matched', 'failed', 'cancelled'], shown.map((x) => [x.replayId, stateName(x.state), x.summary?.records ?? '', x.summary?.steps ?? '', x.summary?.matched ?? '', x.summary ? x.summary.failed + x.summary.upstreamFailed : '', x.summary?.cancelled ?? ''])));
      if (shown.length < replays.length) io.stdout.write(`${shown.length} of ${replays.length} replays shown, newest first (${replays.length - shown.length} older left out; --limit N, 0 for all)\n`);
      return 0;
    } finally {
      close();
    }
  },
};

const watchCmd: CliCommand = {
  path: ['replay', 'watch'],
  summary: 'progress bar of a running replay; exits 0 only if it succeeds',
  usage: 'retrace replay watch REPLAY_ID\n  Exits once the replay ends: 0 if it SUCCEEDED, 1 otherwise (as replay start --watch), after a line with its state.',
  async run(args, io) {
    const replayId = args.positionals[0];
    if (!replayId) throw new UsageError('REPLAY_ID is required');
    noMorePositionals(args, 1);
    const { client, close } = openClient(ReplayServiceDefinition, args);
    try {
      const r = await reportAfterWatch(client, replayId, await watchReplayProgress(client, replayId, io), io);
      if (!r) return 1;
      io.stderr.write(stateLine(r));
      return r.state === ReplayState.REPLAY_STATE_SUCCEEDED ? 0 : 1;
    } finally {
      close();
    }
  },
};

const cancel: CliCommand = {
  path: ['replay', 'cancel'],
  summary: 'cancel a running replay (what it finished stays in its report)',
  usage: 'retrace replay cancel REPLAY_ID [--json]\n  Prints the replay\'s state after the cancel (CANCELLED, as for one already cancelled); one that\n  already ended SUCCEEDED or FAILED is refused (FAILED_PRECONDITION naming it and its state, exit 1).',
  async run(args, io) {
    const replayId = args.positionals[0];
    if (!replayId) throw new UsageError('REPLAY_ID is required');
    noMorePositionals(args, 1);
    const { client, close } = openClient(ReplayServiceDefinition, args);
    try {
      const r = await client.cancelReplay({ replayId }, { signal: io.signal });
      io.stdout.write(hasFlag(args, 'json') ? toJson(responseJson(ReplayServiceDefinition, 'cancelReplay', r)) : `${replayId}: ${stateName(r.state)}\n`);
      return 0;
    } finally {
      close();
    }
  },
};

export const commands: CliCommand[] = [start, report, list, watchCmd, cancel];
