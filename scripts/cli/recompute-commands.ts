import { readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { RetraceError } from '../../common/errors.js';
import { JobServiceDefinition, TaskState } from '../../common/gen/retrace/v1/job.js';
import {
  ChangeKind,
  ChangePolicy,
  ChangeState,
  RecomputeServiceDefinition,
  Change,
  type ImpactRequest,
  type ImpactResponse,
  type RecomputePolicy,
} from '../../common/gen/retrace/v1/recompute.js';
import { dagToDot, dagToSvg, type DagDrawing, type DagNode } from '../../common/dag-drawing.js';
import { MAX_RECOMPUTE_ATTEMPTS, MAX_RECOMPUTE_CONCURRENCY } from '../../common/recompute-policy.js';
import { nanosToIso, parseDurationMs } from '../../common/time.js';
import { flag, flagAll, hasFlag, intFlag, timeArgNs, noMorePositionals, unreadableFileReason, UsageError, type CliCommand, type CliIo, type ParsedArgs } from './command.js';
import type { Client } from 'nice-grpc';
import { CLIENT_MAX_RECEIVE_BYTES, openClient } from './client.js';
import { jobJson } from './job-commands.js';
import { messageJson, responseJson } from './proto-json.js';
import { DEFAULT_TABLE_LIMIT, limitFooter, limitRows, lineThrottle, nodeLines, progressBar, renderTable, shortHash, toJson } from './format.js';
import { taskStateName, watchJobProgress } from './job-progress.js';

const kindName = (k: ChangeKind): string => (ChangeKind[k] ?? 'UNKNOWN').replace('CHANGE_KIND_', '').toLowerCase();
const policyName = (p: ChangePolicy): string => (ChangePolicy[p] ?? 'UNKNOWN').replace('CHANGE_POLICY_', '').toLowerCase();
const stateName = (s: ChangeState): string => (ChangeState[s] ?? 'UNKNOWN').replace('CHANGE_STATE_', '').toLowerCase();

function parsePolicy(text: string | undefined, what: string): ChangePolicy {
  if (text === 'auto') return ChangePolicy.CHANGE_POLICY_AUTO;
  if (text === 'manual') return ChangePolicy.CHANGE_POLICY_MANUAL;
  throw new UsageError(`${what} must be auto or manual, got ${JSON.stringify(text ?? '')}`);
}

/**
 * The bytes of a FILE argument (notify FILE, --content ID=FILE). A file that cannot be read is a
 * usage error naming the argument, read before any call so that nothing is sent.
 */
function readInputFile(file: string, argument: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new UsageError(`${argument}: ${file}: ${unreadableFileReason(err)}`);
  }
}

/**
 * A line saying that a change with no job has nothing downstream, so that under `auto` it is
 * clear why no recompute started (and under `manual` that none is needed); undefined otherwise.
 */
async function nothingDownstreamNote(client: Client<typeof RecomputeServiceDefinition>, c: Change, signal: AbortSignal): Promise<string | undefined> {
  if (c.state !== ChangeState.CHANGE_STATE_REPORTED || c.jobIds.length > 0) return undefined;
  try {
    // Only the count is read: one row, not the whole answer (over 64 MiB past about 180,000 steps).
    const r = await client.impact({ target: { $case: 'changeId', value: c.changeId }, asOfNs: '0', stepLimit: 1 }, { signal });
    const why = c.objectId ? `no recorded step has read ${c.objectId}` : `step ${what(c)} has no recorded execution`;
    return r.stepCount === 0 ? `  nothing downstream: ${why}, so there is nothing to recompute\n` : undefined;
  } catch {
    // Impact could not tell (a step no longer in its pipeline): say nothing rather than guess.
    return undefined;
  }
}

function what(c: Change): string {
  return c.objectId || `${c.pipeline}/${c.step}`;
}

function printChange(c: Change, io: CliIo): void {
  io.stdout.write(
    [
      `change ${c.changeId}: ${kindName(c.kind)} ${what(c)}`,
      `  old ${c.oldHash}`,
      `  new ${c.newHash}`,
      `  noticed by ${c.noticedBy} at ${nanosToIso(c.detectedAtNs)}`,
      `  policy ${policyName(c.policy)}, ${stateName(c.state)}${c.jobIds.length ? `; jobs ${c.jobIds.join(', ')}` : ''}`,
      ...(c.detail ? [`  ${c.detail}`] : []),
    ].join('\n') + '\n',
  );
}

const changesList: CliCommand = {
  path: ['changes'],
  summary: 'detected changes (records, objects, files, code versions, parameters), newest first',
  usage: `retrace changes [list] [--pipeline P] [--limit N] [--json]
retrace changes show CHANGE_ID [--json]
retrace changes policy [PIPELINE[/SOURCE] auto|manual]   (no arguments: list the policies)`,
  integers: { limit: 'uint32' },
  async run(args, io) {
    const sub = args.positionals[0];
    if (sub !== undefined && sub !== 'list') throw new UsageError(`unknown subcommand ${JSON.stringify(sub)}: list, show or policy`);
    noMorePositionals(args, 1);
    const { client, close } = openClient(RecomputeServiceDefinition, args);
    try {
      const r = await client.listChanges({ pipeline: flag(args, 'pipeline', '') as string, pageSize: intFlag(args, 'limit', 100), pageToken: '' }, { signal: io.signal });
      if (hasFlag(args, 'json')) io.stdout.write(toJson(responseJson(RecomputeServiceDefinition, 'listChanges', r)));
      else
        io.stdout.write(
          renderTable(
            ['change', 'kind', 'what', 'old', 'new', 'noticed by', 'policy', 'state', 'jobs'],
            r.changes.map((c) => [c.changeId, kindName(c.kind), what(c), shortHash(c.oldHash), shortHash(c.newHash), c.noticedBy.slice(0, 40), policyName(c.policy), stateName(c.state), c.jobIds.join(',')]),
          ),
        );
      return 0;
    } finally {
      close();
    }
  },
};

const changesShow: CliCommand = {
  path: ['changes', 'show'],
  summary: 'one change: what changed, old and new hash, who noticed, its recompute jobs',
  usage: 'retrace changes show CHANGE_ID [--json]',
  async run(args, io) {
    const changeId = args.positionals[0];
    if (!changeId) throw new UsageError('CHANGE_ID is required');
    noMorePositionals(args, 1);
    const { client, close } = openClient(RecomputeServiceDefinition, args);
    try {
      const { change } = await client.getChange({ changeId }, { signal: io.signal });
      if (!change) return 1;
      if (hasFlag(args, 'json')) io.stdout.write(toJson(messageJson('retrace.v1.Change', Change, change)));
      else {
        printChange(change, io);
        io.stdout.write((await nothingDownstreamNote(client, change, io.signal)) ?? '');
      }
      return 0;
    } finally {
      close();
    }
  },
};

const changesPolicy: CliCommand = {
  path: ['changes', 'policy'],
  summary: 'set the change policy of a pipeline or one of its sources (auto: recompute at once; manual: report only)',
  usage: 'retrace changes policy [PIPELINE[/SOURCE] auto|manual] [--json]',
  async run(args, io) {
    const [target, policyText] = args.positionals;
    const { client, close } = openClient(RecomputeServiceDefinition, args);
    try {
      if (target === undefined) {
        const r = await client.listChangePolicies({}, { signal: io.signal });
        if (hasFlag(args, 'json')) io.stdout.write(toJson(responseJson(RecomputeServiceDefinition, 'listChangePolicies', r)));
        else {
          io.stdout.write(renderTable(['pipeline', 'source', 'policy'], r.entries.map((e) => [e.pipeline, e.source || '(all)', policyName(e.policy)])));
          io.stdout.write(`default where none is set: ${policyName(r.defaultPolicy)}\n`);
        }
        return 0;
      }
      // PIPELINE or PIPELINE/SOURCE: more parts (orders/raw/x) would set orders/raw and drop the rest.
      const parts = target.split('/');
      const [pipeline = '', source = ''] = parts;
      if (parts.length > 2 || pipeline === '' || (parts.length === 2 && source === '')) throw new UsageError(`expected PIPELINE or PIPELINE/SOURCE, got ${JSON.stringify(target)}`);
      if (policyText === undefined) throw new UsageError(`give the policy for ${target}: auto or manual`);
      noMorePositionals(args, 2);
      const r = await client.setChangePolicy({ pipeline, source, policy: parsePolicy(policyText, 'the policy') }, { signal: io.signal });
      io.stdout.write(hasFlag(args, 'json') ? toJson(responseJson(RecomputeServiceDefinition, 'setChangePolicy', r)) : `${pipeline}${source ? `/${source}` : ''}: ${policyName(r.entry?.policy ?? 0)}\n`);
      return 0;
    } finally {
      close();
    }
  },
};

const notify: CliCommand = {
  path: ['notify'],
  summary: 'report new content of an object (a file to send, or only its hash)',
  usage: 'retrace notify OBJECT_ID FILE|--hash sha256:... [--media-type TYPE] [--json]',
  async run(args, io) {
    const [objectId, file] = args.positionals;
    if (!objectId) throw new UsageError('OBJECT_ID is required');
    noMorePositionals(args, 2);
    const hash = flag(args, 'hash', '') as string;
    if (!file && !hash) throw new UsageError('give a FILE with the new content or --hash');
    const payload = file ? readInputFile(file, 'FILE') : Buffer.alloc(0);
    const { client, close } = openClient(RecomputeServiceDefinition, args);
    try {
      const r = await client.notifyChange({ objectId, contentHash: hash, payload, mediaType: flag(args, 'media-type', '') as string, noticedBy: '' }, { signal: io.signal });
      if (hasFlag(args, 'json')) io.stdout.write(toJson(responseJson(RecomputeServiceDefinition, 'notifyChange', r)));
      else if (r.unchanged && r.change) io.stdout.write(`${objectId}: unchanged: that is its latest version, since change ${r.change.changeId} (${stateName(r.change.state)}${r.change.jobIds.length ? `; jobs ${r.change.jobIds.join(', ')}` : ''}; retrace changes show ${r.change.changeId})\n`);
      else if (r.unchanged || !r.change) io.stdout.write(`${objectId}: unchanged (that is its latest version)\n`);
      else {
        printChange(r.change, io);
        io.stdout.write((await nothingDownstreamNote(client, r.change, io.signal)) ?? '');
      }
      return 0;
    } finally {
      close();
    }
  },
};

const watch: CliCommand = {
  path: ['watch'],
  summary: 'watch a file or directory as a pipeline source (each file a record) or as objects',
  usage: `retrace watch PATH (--pipeline P --source S | --prefix OBJECT_ID_PREFIX) [--policy auto|manual] [--rescan 5s] [--debounce 200ms] [--json]
retrace watch list [--json]
retrace watch remove WATCH_ID
The coordinator reads PATH itself: it must lie in a directory the coordinator was started with
--watch-root DIR (and not hold its data dir). Files over 32 MiB are left out; --rescan 100ms..1d,
--debounce at most 1m.`,
  async run(args, io) {
    const path = args.positionals[0];
    if (!path) throw new UsageError('PATH is required');
    noMorePositionals(args, 1);
    const policyText = flag(args, 'policy');
    const { client, close } = openClient(RecomputeServiceDefinition, args);
    try {
      const r = await client.watchPath(
        {
          path: resolve(path),
          pipeline: flag(args, 'pipeline', '') as string,
          source: flag(args, 'source', '') as string,
          objectIdPrefix: flag(args, 'prefix', '') as string,
          policy: policyText === undefined ? ChangePolicy.CHANGE_POLICY_UNSPECIFIED : parsePolicy(policyText, '--policy'),
          rescanIntervalMs: parseDurationMs(flag(args, 'rescan', '5s') as string, '--rescan'),
          debounceMs: parseDurationMs(flag(args, 'debounce', '200ms') as string, '--debounce'),
        },
        { signal: io.signal },
      );
      const w = r.watch;
      io.stdout.write(hasFlag(args, 'json') ? toJson(responseJson(RecomputeServiceDefinition, 'watchPath', r)) : `watching ${w?.path} as ${w?.pipeline ? `${w.pipeline}/${w.source}` : `${w?.objectIdPrefix}*`} (${w?.watchId}; rescan every ${w?.rescanIntervalMs} ms)\n`);
      return 0;
    } finally {
      close();
    }
  },
};

const watchList: CliCommand = {
  path: ['watch', 'list'],
  summary: 'watched paths and their last scan',
  usage: 'retrace watch list [--json]',
  async run(args, io) {
    noMorePositionals(args, 0);
    const { client, close } = openClient(RecomputeServiceDefinition, args);
    try {
      const r = await client.listWatches({}, { signal: io.signal });
      if (hasFlag(args, 'json')) io.stdout.write(toJson(responseJson(RecomputeServiceDefinition, 'listWatches', r)));
      else io.stdout.write(renderTable(['watch', 'path', 'as', 'files', 'last scan', 'error'], r.watches.map((w) => [w.watchId, w.path, w.pipeline ? `${w.pipeline}/${w.source}` : `${w.objectIdPrefix}*`, w.files, w.lastScanNs === '0' ? '-' : nanosToIso(w.lastScanNs), w.lastError])));
      return 0;
    } finally {
      close();
    }
  },
};

const watchRemove: CliCommand = {
  path: ['watch', 'remove'],
  summary: 'stop watching a path',
  usage: 'retrace watch remove WATCH_ID',
  async run(args, io) {
    const watchId = args.positionals[0];
    if (!watchId) throw new UsageError('WATCH_ID is required');
    noMorePositionals(args, 1);
    const { client, close } = openClient(RecomputeServiceDefinition, args);
    try {
      const r = await client.unwatchPath({ watchId }, { signal: io.signal });
      // An unknown id is an error: on stderr, as every other command's.
      if (!r.removed) {
        io.stderr.write(`error: watch_id: no watch ${JSON.stringify(watchId)} (retrace watch list shows them)\n`);
        return 1;
      }
      io.stdout.write(`removed ${watchId}\n`);
      return 0;
    } finally {
      close();
    }
  },
};

/**
 * The affected subgraph to draw: the changed objects or steps, then the steps to recompute with
 * their recorded wall time and where they would run now; edges from each step's dependencies.
 */
export function impactDrawing(r: ImpactResponse): DagDrawing {
  const nodes: DagNode[] = r.roots.map((root) => ({ id: root, lines: nodeLines(root), tone: 'start' }));
  const edges: { from: string; to: string }[] = [];
  for (const s of r.steps) {
    nodes.push({
      id: s.stepId,
      lines: [`${s.pipeline ? `${s.pipeline}/` : ''}${s.step} ${s.key}`, `${(Number(s.wallTimeNs) / 1e6).toFixed(1)} ms -> ${s.placementNodeId || 'waiting'}`],
      tone: 'step',
    });
    if (s.depth <= 1 && s.dependsOn.length === 0) for (const root of r.roots) edges.push({ from: root, to: s.stepId });
    for (const d of s.dependsOn) edges.push({ from: d, to: s.stepId });
  }
  return { title: `impact of ${r.roots.map((root) => nodeLines(root)[0]).join(', ')}: ${r.stepCount} steps, ${r.objectCount} objects, est. ${(Number(r.estimatedWallTimeNs) / 1e6).toFixed(1)} ms wall`, nodes, edges };
}

/** The impact as text: its totals, then its steps at most `limit` (0: all), with a line saying how many were left out. */
function printImpact(r: ImpactResponse, io: CliIo, limit: number): void {
  io.stdout.write(
    `impact of ${r.roots.join(', ')}${r.asOfNs !== '0' ? ` as of ${nanosToIso(r.asOfNs)}` : ''}: ${r.stepCount} steps, ${r.objectCount} objects\n` +
      `  recorded cost: cpu ${(Number(r.estimatedCpuTimeNs) / 1e6).toFixed(1)} ms, wall ${(Number(r.estimatedWallTimeNs) / 1e6).toFixed(1)} ms (critical path ${(Number(r.criticalPathWallTimeNs) / 1e6).toFixed(1)} ms)\n` +
      `  placement now: ${Object.entries(r.placements).map(([n, c]) => `${n} ${c}`).join(', ') || 'none'}\n`,
  );
  const words = { noun: 'steps', notable: 'waiting for a node', how: '--limit N, 0 for all' };
  // Cut by the coordinator (ImpactRequest.step_limit): the footer counts from its totals.
  const placedCount = Object.values(r.placements).reduce((a, b) => a + b, 0);
  const shown = r.steps.length < r.stepCount ? { rows: r.steps, footer: limitFooter(r.steps.length, r.stepCount, r.stepCount - placedCount, limit, words) } : limitRows(r.steps, limit, (s) => !s.placementNodeId, words);
  io.stdout.write(
    renderTable(
      ['depth', 'step', 'key', 'recorded step', 'ran on', 'wall ms', 'would run on'],
      shown.rows.map((s) => [s.depth, `${s.pipeline ? `${s.pipeline}/` : ''}${s.step}`, s.key, s.stepId.slice(0, 48), s.nodeId, (Number(s.wallTimeNs) / 1e6).toFixed(1), s.placementNodeId || `waiting: ${s.placementWaiting}`]),
    ),
  );
  io.stdout.write(shown.footer);
}

/** Milliseconds without an answer before `impact` (or `recompute --watch`'s planning) says on stderr that it is still working. */
const IMPACT_NOTE_AFTER_MS = 2000;

/**
 * `work`, saying on `err` while it lasts past IMPACT_NOTE_AFTER_MS that `what` is still being
 * computed (Impact is one unary call: the elapsed time is all there is to show). On a terminal
 * one line counts the seconds and is cleared at the end; elsewhere a line every 10 s at most.
 */
async function withWaitNote<T>(work: Promise<T>, err: NodeJS.WritableStream, what: string): Promise<T> {
  const tty = (err as { isTTY?: boolean }).isTTY === true;
  const started = Date.now();
  const note = (): string => `${what}: still working (${Math.round((Date.now() - started) / 1000)} s)`;
  const throttle = lineThrottle(10_000);
  let shown = false;
  let ticker: NodeJS.Timeout | undefined;
  const first = setTimeout(() => {
    shown = true;
    err.write(tty ? `\r${note()}\u001b[K` : `${note()}\n`);
    ticker = setInterval(() => {
      if (tty) err.write(`\r${note()}\u001b[K`);
      else if (throttle(note())) err.write(`${note()}\n`);
    }, 1000);
  }, IMPACT_NOTE_AFTER_MS);
  try {
    return await work;
  } finally {
    clearTimeout(first);
    if (ticker) clearInterval(ticker);
    if (shown && tty) err.write('\r\u001b[K');
  }
}

/** Rows (steps and objects) a page of `impact --json` asks for; about 10 MB. Tests set it lower. */
export const impactJsonPaging = { pageSize: 25_000 };

/** Times `impact --json` starts over when the answer changed between its pages. */
const IMPACT_PAGE_ATTEMPTS = 3;

type ImpactTarget = NonNullable<ImpactRequest['target']>;
type RecomputeClient = Client<typeof RecomputeServiceDefinition>;

/**
 * Every row of an impact, page by page (ImpactRequest.page_size): one answer as big as the whole
 * is over the CLI's 64 MiB receive limit past about 180,000 steps. The pages are cut from one
 * answer; when the coordinator says it changed between pages (FAILED_PRECONDITION page_token),
 * it starts over, at most IMPACT_PAGE_ATTEMPTS times. Past the first page, progress on `err`.
 */
async function wholeImpact(client: RecomputeClient, target: ImpactTarget, asOfNs: string, io: CliIo, what: string): Promise<ImpactResponse> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await impactPages(client, target, asOfNs, io, what);
    } catch (err) {
      const changed = err instanceof RetraceError && err.code === 'FAILED_PRECONDITION' && err.message.startsWith('page_token:');
      if (!changed || attempt >= IMPACT_PAGE_ATTEMPTS) throw err;
      io.stderr.write(`${what}: the answer changed between its pages (steps recorded meanwhile); starting over\n`);
    }
  }
}

async function impactPages(client: RecomputeClient, target: ImpactTarget, asOfNs: string, io: CliIo, what: string): Promise<ImpactResponse> {
  const pageSize = impactJsonPaging.pageSize;
  const first = await withWaitNote(client.impact({ target, asOfNs, pageSize }, { signal: io.signal }), io.stderr, `computing the impact of ${what}`);
  if (first.nextPageToken === '') return first;
  const tty = (io.stderr as { isTTY?: boolean }).isTTY === true;
  const throttle = lineThrottle(10_000);
  const rows = Math.max(first.stepCount, first.objectCount);
  const steps = [...first.steps];
  const objects = [...first.objects];
  const progress = (): string => progressBar(Math.max(steps.length, objects.length), rows, 30, `${what}: ${steps.length}/${first.stepCount} steps, ${objects.length}/${first.objectCount} objects`);
  let token = first.nextPageToken;
  try {
    while (token !== '') {
      if (tty) io.stderr.write(`\r${progress()}\u001b[K`);
      else if (throttle(progress())) io.stderr.write(`${progress()}\n`);
      const page = await client.impact({ target, asOfNs, pageSize, pageToken: token }, { signal: io.signal });
      steps.push(...page.steps);
      objects.push(...page.objects);
      token = page.nextPageToken;
    }
  } finally {
    if (tty) io.stderr.write('\r\u001b[K');
  }
  if (!tty) io.stderr.write(`${progress()}\n`);
  return { ...first, steps, objects, nextPageToken: '' };
}

/**
 * `r` as `--json` prints it (protobuf JSON of ImpactResponse, as toJson formats it, without
 * next_page_token, which the pages it was fetched in used), written a chunk of rows at a time:
 * the whole text of a million steps is past the longest string V8 makes.
 */
async function writeImpactJson(out: NodeJS.WritableStream, r: ImpactResponse): Promise<void> {
  const CHUNK = 10_000;
  const head = responseJson(RecomputeServiceDefinition, 'impact', { ...r, steps: [], objects: [] }) as Record<string, unknown>;
  delete head.nextPageToken;
  const text = toJson({ ...head, steps: '\u0000steps', objects: '\u0000objects' });
  const write = (chunk: string): Promise<void> | undefined => (out.write(chunk) ? undefined : new Promise((done) => out.once('drain', done)));
  const rowsOf = async (list: 'steps' | 'objects'): Promise<void> => {
    const all = r[list];
    if (all.length === 0) return void (await write('[]'));
    await write('[\n');
    for (let i = 0; i < all.length; i += CHUNK) {
      const part = responseJson(RecomputeServiceDefinition, 'impact', { ...r, roots: [], placements: {}, steps: list === 'steps' ? r.steps.slice(i, i + CHUNK) : [], objects: list === 'objects' ? r.objects.slice(i, i + CHUNK) : [] }) as Record<string, unknown[]>;
      const lines = (part[list] ?? []).map((row) => JSON.stringify(row, null, 2).replace(/^/gm, '    '));
      await write(`${i > 0 ? ',\n' : ''}${lines.join(',\n')}`);
    }
    await write('\n  ]');
  };
  const [beforeSteps, rest] = text.split('"\\u0000steps"') as [string, string];
  const [between, afterObjects] = rest.split('"\\u0000objects"') as [string, string];
  await write(beforeSteps);
  await rowsOf('steps');
  await write(between);
  await rowsOf('objects');
  await write(afterObjects);
}

const impact: CliCommand = {
  path: ['impact'],
  summary: 'every step and object downstream of a change, an object or a step, with cost and placement',
  usage: `retrace impact ID [--as-of TIME] [--limit N] [--json] [--dot] [--svg FILE]
  ID: a change id (chg-...), an object id (record:orders/raw:o1) or a step id; --object/--step force the kind
  TIME: ISO-8601 or nanoseconds since the epoch
  --limit N  steps listed, at most (default ${DEFAULT_TABLE_LIMIT}, 0 for all): those waiting for a node first; --json lists all (fetched in pages)`,
  booleans: ['dot', 'object', 'step'],
  integers: { limit: 'uint32' },
  async run(args, io) {
    const idArg = args.positionals[0];
    if (!idArg) throw new UsageError('ID is required');
    noMorePositionals(args, 1);
    const asOfText = flag(args, 'as-of');
    const asOfNs = asOfText === undefined ? '0' : timeArgNs(asOfText, '--as-of');
    // The table needs only the rows it shows (the coordinator picks them as limitRows would);
    // --json takes every step in pages, the drawings in one answer.
    const limit = intFlag(args, 'limit', DEFAULT_TABLE_LIMIT);
    const json = hasFlag(args, 'json');
    const svg = flag(args, 'svg');
    const drawing = hasFlag(args, 'dot') || svg !== undefined;
    const stepLimit = json || drawing ? 0 : limit;
    const { client, close } = openClient(RecomputeServiceDefinition, args);
    const ask = async (target: ImpactTarget): Promise<ImpactResponse> => {
      if (json) return wholeImpact(client, target, asOfNs, io, idArg);
      try {
        return await withWaitNote(client.impact({ target, asOfNs, stepLimit }, { signal: io.signal }), io.stderr, `computing the impact of ${idArg}`);
      } catch (err) {
        // Drawings ask for the whole answer in one message (a drawing of 180,000 steps shows
        // nothing anyway): say so rather than grpc-js's "Received message larger than max".
        if (drawing && err instanceof RetraceError && err.code === 'RESOURCE_EXHAUSTED' && /larger than max/i.test(err.message)) {
          throw new RetraceError('RESOURCE_EXHAUSTED', `the impact of ${idArg} is too large to draw (over the ${CLIENT_MAX_RECEIVE_BYTES / (1024 * 1024)} MiB one answer may have): --json fetches it in pages, the table shows --limit N of its steps`, { cause: err });
        }
        throw err;
      }
    };
    try {
      let r: ImpactResponse;
      if (idArg.startsWith('chg-') && !hasFlag(args, 'object') && !hasFlag(args, 'step')) r = await ask({ $case: 'changeId', value: idArg });
      else if (hasFlag(args, 'step')) r = await ask({ $case: 'stepId', value: idArg });
      else {
        try {
          r = await ask({ $case: 'objectId', value: idArg });
        } catch (err) {
          // Not an object: maybe a step id. When it is no step either, the object's error is the
          // one to show: it says whether no object or step has the id, or the object had no
          // version as of --as-of.
          if (hasFlag(args, 'object') || !(err instanceof RetraceError) || err.code !== 'NOT_FOUND' || !err.message.startsWith('object_id:')) throw err;
          try {
            r = await ask({ $case: 'stepId', value: idArg });
          } catch (stepErr) {
            if (stepErr instanceof RetraceError && stepErr.code === 'NOT_FOUND' && stepErr.message.startsWith('step_id:')) throw err;
            throw stepErr;
          }
        }
      }
      if (svg) {
        writeFileSync(svg, dagToSvg(impactDrawing(r)));
        io.stderr.write(`wrote ${svg}\n`);
      }
      if (json) await writeImpactJson(io.stdout, r);
      else if (hasFlag(args, 'dot')) io.stdout.write(dagToDot(impactDrawing(r), 'impact'));
      else printImpact(r, io, limit);
      return 0;
    } finally {
      close();
    }
  },
};

function parseRecomputePolicy(args: ParsedArgs): RecomputePolicy {
  const targetNodeIds: string[] = [];
  const targetLabels: Record<string, string> = {};
  for (const t of flagAll(args, 'target')) {
    const eq = t.indexOf('=');
    if (eq > 0) targetLabels[t.slice(0, eq)] = t.slice(eq + 1);
    else targetNodeIds.push(...t.split(',').filter(Boolean));
  }
  // 0 is the proto's "the default": typed out, it reads as "none at once" or "no retries", and
  // was taken silently as 16 steps at once and 3 attempts.
  for (const [name, what] of [['concurrency', 'step at once (default 16)'], ['max-attempts', 'attempt per step (default 3)']] as const) {
    if (flag(args, name) !== undefined && intFlag(args, name, 0) === 0) throw new UsageError(`--${name}: at least 1 ${what}, got 0`);
  }
  const concurrency = intFlag(args, 'concurrency', 0);
  if (concurrency > MAX_RECOMPUTE_CONCURRENCY) throw new UsageError(`--concurrency: at most ${MAX_RECOMPUTE_CONCURRENCY} steps at once, got ${concurrency}`);
  const maxAttempts = intFlag(args, 'max-attempts', 0);
  if (maxAttempts > MAX_RECOMPUTE_ATTEMPTS) throw new UsageError(`--max-attempts: at most ${MAX_RECOMPUTE_ATTEMPTS} attempts per step, got ${maxAttempts}`);
  return { maxAttempts, concurrency, targetNodeIds, targetLabels, dryRun: hasFlag(args, 'dry-run') };
}

const recomputeCmd: CliCommand = {
  path: ['recompute'],
  summary: 'recompute what changes affect: only affected steps, memoized, with early cutoff (a job)',
  usage: `retrace recompute (CHANGE_ID|OBJECT_ID)... [--content OBJECT_ID=FILE ...] [--watch] [--dry-run] [--limit N] [--json]
    [--max-attempts N (1..100, default 3)] [--concurrency N (1..1024, default 16)] [--target NODE|key=value ...]
  CHANGE_ID: chg-... (retrace changes); OBJECT_ID: an object whose latest version its consumers have not used
  --content: new content for an object (reported as a change first)
  --watch: stderr says at once that the job is being planned (with the seconds once past 2 s), then shows its progress
  --limit N: tasks listed by --watch and --dry-run, at most (default ${DEFAULT_TABLE_LIMIT}, 0 for all; --watch: those not SUCCEEDED first)`,
  booleans: ['dry-run'],
  integers: { 'max-attempts': 'uint32', concurrency: 'uint32', limit: 'uint32' },
  async run(args, io) {
    const changeIds = args.positionals.filter((p) => p.startsWith('chg-'));
    const objectIds = args.positionals.filter((p) => !p.startsWith('chg-'));
    const newContents = flagAll(args, 'content').map((c) => {
      const eq = c.lastIndexOf('=');
      if (eq <= 0) throw new UsageError(`--content OBJECT_ID=FILE, got ${JSON.stringify(c)}`);
      return { objectId: c.slice(0, eq), payload: readInputFile(c.slice(eq + 1), `--content ${c.slice(0, eq)}`), mediaType: '' };
    });
    if (changeIds.length + objectIds.length + newContents.length === 0) throw new UsageError('name at least one CHANGE_ID, OBJECT_ID or --content');
    const policy = parseRecomputePolicy(args);
    const limit = intFlag(args, 'limit', DEFAULT_TABLE_LIMIT);
    const { client, close } = openClient(RecomputeServiceDefinition, args);
    try {
      const watching = hasFlag(args, 'watch') && !policy.dryRun;
      // Planning (finding the affected steps) took ~10 s at 60k records, and --watch printed
      // nothing before its job line: it says at once that it works, then counts the seconds.
      const named = [...changeIds, ...objectIds, ...newContents.map((c) => c.objectId)].join(', ');
      if (watching) io.stderr.write(`planning the recompute of ${named}: finding the steps it affects...\n`);
      const call = client.recompute({ changeIds, objectIds, newContents, policy }, { signal: io.signal });
      const r = watching ? await withWaitNote(call, io.stderr, 'planning') : await call;
      if (policy.dryRun) {
        if (hasFlag(args, 'json')) io.stdout.write(toJson(responseJson(RecomputeServiceDefinition, 'recompute', r)));
        else {
          const shown = limitRows(r.tasks, limit, () => false, { noun: 'tasks', notable: '', how: '--limit N, 0 for all' });
          io.stdout.write(`dry run: ${r.tasks.length} tasks for ${r.changeIds.join(', ')}\n${renderTable(['task', 'step', 'recorded step', 'after'], shown.rows.map((t) => [t.taskId, t.label, t.originalStepId.slice(0, 48), t.dependsOn.join(',')]))}${shown.footer}`);
        }
        return 0;
      }
      if (!hasFlag(args, 'watch')) {
        io.stdout.write(hasFlag(args, 'json') ? toJson(responseJson(RecomputeServiceDefinition, 'recompute', r)) : `started ${r.jobId}: ${r.tasks.length} tasks for ${r.changeIds.join(', ')}; retrace jobs watch ${r.jobId}\n`);
        return 0;
      }
      io.stderr.write(`job ${r.jobId}: ${r.tasks.length} tasks for ${r.changeIds.join(', ')}\n`);
      const jobs = openClient(JobServiceDefinition, args);
      try {
        const final = await watchJobProgress(jobs.client, r.jobId, { out: io.stderr, signal: io.signal });
        // Ctrl-C stops the watch, not the job: say so, and how to stop it, before "interrupted".
        if (io.signal.aborted && !final.done) {
          io.stderr.write(`job ${r.jobId} goes on (${final.stateName}): Ctrl-C stopped the watch, not the job; retrace jobs watch ${r.jobId} follows it, retrace jobs cancel ${r.jobId} stops it\n`);
        }
        const tasks = final.job.tasks;
        const count = (o: string): number => tasks.filter((t) => t.state === TaskState.TASK_STATE_SUCCEEDED && t.outcome === o).length;
        if (hasFlag(args, 'json')) io.stdout.write(toJson(jobJson(final.job)));
        else {
          io.stdout.write(`${r.jobId}: ${final.stateName}: ${count('executed')} executed, ${count('cached')} cached, ${count('cutoff')} cut off, ${tasks.filter((t) => t.state !== TaskState.TASK_STATE_SUCCEEDED).length} not done\n`);
          const shown = limitRows(tasks, limit, (t) => t.state !== TaskState.TASK_STATE_SUCCEEDED, { noun: 'tasks', notable: 'not succeeded', how: `retrace jobs show ${r.jobId} --limit N, 0 for all` });
          io.stdout.write(renderTable(['task', 'step', 'state', 'outcome', 'attempts', 'error'], shown.rows.map((t) => [t.id, t.label, taskStateName(t.state), t.outcome, t.attempts, t.error.slice(0, 80)])));
          io.stdout.write(shown.footer);
        }
        return final.stateName === 'SUCCEEDED' ? 0 : 1;
      } finally {
        jobs.close();
      }
    } finally {
      close();
    }
  },
};

export const commands: CliCommand[] = [changesList, changesShow, changesPolicy, notify, watch, watchList, watchRemove, impact, recomputeCmd];
