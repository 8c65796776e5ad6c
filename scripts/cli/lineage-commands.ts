import { createHash, createPublicKey } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dagToDot, dagToSvg, drawnEdges, type DagDrawing, type DagNode } from '../../common/dag-drawing.js';
import { Direction, LineageServiceDefinition, NodeKind, type NodeRef, type SubmitEventsResponse, type TraceResponse } from '../../common/gen/retrace/v1/lineage.js';
import { LineageEvent } from '../../common/gen/retrace/v1/provenance.js';
import { InvalidArgumentError, isRetraceError, RetraceError } from '../../common/errors.js';
import { nodeKey, parseNodeKey } from '../../common/lineage-keys.js';
import { verifyInclusion } from '../../common/merkle.js';
import { checkProtoJson } from '../../common/proto-json-check.js';
import { nanosToIso } from '../../common/time.js';
import { validateOpenLineageBatch, validateOpenLineageEvent } from '../../common/openlineage/validate.js';
import { fillStepStarts, toLineageEvents } from '../../common/openlineage/to-lineage-events.js';
import { verifyCheckpoint } from '../../coordinator/ledger/checkpoint-signer.js';
import { flag, hasFlag, intFlag, timeArgNs, unreadableFileReason, UsageError, type CliCommand, type CliIo, type ParsedArgs } from './command.js';
import { openClient } from './client.js';
import { messageSchema, responseJson } from './proto-json.js';
import { nodeLines, renderTable, shortHash, toJson } from './format.js';
import { TraceSessionClient } from './trace-session-client.js';

const NODE_HELP = 'NODE is object:<id>, version:<id>@sha256:<hex>, step:<id>, run:<id> or transform:<name>';

function nodeArg(args: ParsedArgs, usage: string): NodeRef {
  const key = args.positionals[0];
  if (!key) throw new UsageError(`a node is required; ${NODE_HELP}\n${usage}`);
  return parseNodeArg(key);
}

function directionArg(args: ParsedArgs, fallback: Direction): Direction {
  const d = flag(args, 'direction');
  if (d === undefined) return fallback;
  const map: Record<string, Direction> = { up: Direction.DIRECTION_UPSTREAM, upstream: Direction.DIRECTION_UPSTREAM, down: Direction.DIRECTION_DOWNSTREAM, downstream: Direction.DIRECTION_DOWNSTREAM, both: Direction.DIRECTION_BOTH, any: Direction.DIRECTION_ANY };
  const v = map[d];
  if (v === undefined) throw new UsageError(`--direction must be up, down, both or any, not ${JSON.stringify(d)}`);
  return v;
}

/** --as-of as ISO-8601 or integer nanoseconds; "0" when absent (now). */
function asOfArg(args: ParsedArgs): string {
  const v = flag(args, 'as-of');
  return v === undefined ? '0' : timeArgNs(v, '--as-of');
}

function timeCell(ns: string): string {
  return ns === '0' || ns === '' ? '' : nanosToIso(ns);
}

async function withLineage<T>(args: ParsedArgs, io: CliIo, fn: (client: ReturnType<typeof openClient<typeof LineageServiceDefinition>>['client']) => Promise<T>): Promise<T> {
  const { client, close } = openClient(LineageServiceDefinition, args);
  try {
    return await fn(client);
  } finally {
    close();
    void io;
  }
}

const KIND_NAMES: Record<number, string> = { 1: 'object', 2: 'version', 3: 'step', 4: 'run', 5: 'transform' };

function parseNodeArg(key: string): NodeRef {
  try {
    return parseNodeKey(key);
  } catch (err) {
    throw new UsageError(`${(err as Error).message}; ${NODE_HELP}`);
  }
}

/** The NODE arguments; `-` reads more of them from stdin, one per line (blank lines skipped). */
async function nodeArgs(args: ParsedArgs, io: CliIo, usage: string): Promise<string[]> {
  const keys: string[] = [];
  for (const p of args.positionals) {
    if (p !== '-') keys.push(p);
    else for (const line of (await readAll(io.stdin)).split('\n')) if (line.trim() !== '') keys.push(line.trim());
  }
  if (keys.length === 0) throw new UsageError(`a node is required; ${NODE_HELP}\n${usage}`);
  return keys;
}

/**
 * The traced subgraph to draw, several traces merged: the start nodes, steps (transform and id)
 * and objects or versions (id and short hash), with edges turned to the way data flows (the
 * trace's edges point from a step to what it used and from an object to its generator).
 */
function traceDrawing(starts: readonly NodeRef[], results: readonly TraceResponse[], asOfNs: string): DagDrawing {
  const nodes = new Map<string, DagNode>();
  const startKeys = starts.map((ref) => nodeKey(ref));
  for (const key of startKeys) nodes.set(key, { id: key, lines: nodeLines(key), tone: 'start' });
  const edges: { from: string; to: string }[] = [];
  const seen = new Set<string>();
  for (const r of results) {
    for (const n of r.nodes) {
      if (!n.node || nodes.has(n.key)) continue;
      nodes.set(n.key, { id: n.key, lines: nodeLines(n.key, n.label), tone: n.node.kind === NodeKind.NODE_KIND_STEP ? 'step' : 'object' });
    }
    for (const e of r.edges) {
      const k = `${e.to}\u0000${e.from}`;
      if (seen.has(k)) continue;
      seen.add(k);
      edges.push({ from: e.to, to: e.from });
    }
  }
  const title = `lineage of ${startKeys.join(', ')}${asOfNs !== '0' ? ` as of ${nanosToIso(asOfNs)}` : ''}: ${nodes.size} nodes`;
  return { title, nodes: [...nodes.values()], edges };
}

const trace: CliCommand = {
  path: ['lineage', 'trace'],
  summary: 'upstream/downstream closure of one or more nodes (as of a time)',
  usage: `retrace lineage trace NODE [NODE ...|-] [--direction down|up|both|any] [--depth N] [--as-of ISO|ns] [--object-level] [--limit N] [--json] [--dot] [--svg FILE]\n  ${NODE_HELP}\n  Several nodes (or - to read them from stdin, one a line) are traced over one TraceSession stream.\n  --dot prints the subgraph (nodes and their edges) as Graphviz DOT; --svg FILE draws it, data flowing left to right.`,
  integers: { depth: 'uint32', limit: 'uint32' },
  booleans: ['object-level', 'dot'],
  async run(args, io) {
    const keys = await nodeArgs(args, io, this.usage);
    const starts = keys.map(parseNodeArg);
    const limit = intFlag(args, 'limit', 1000);
    const json = hasFlag(args, 'json');
    const svg = flag(args, 'svg');
    const drawn = svg !== undefined || hasFlag(args, 'dot');
    const query = { direction: directionArg(args, Direction.DIRECTION_DOWNSTREAM), depth: intFlag(args, 'depth', 0), asOfNs: asOfArg(args), pageSize: Math.min(limit, 100_000), pageToken: '', includeEdges: json || drawn, objectLevel: hasFlag(args, 'object-level') };
    const results = await withLineage(args, io, async (c) => {
      if (starts.length === 1) return [await c.trace({ ...query, start: starts[0] }, { signal: io.signal })];
      const session = new TraceSessionClient(c, { signal: io.signal });
      try {
        // All queries go out at once; the answers come back in order on the same stream.
        return await Promise.all(starts.map((start) => session.trace({ ...query, start })));
      } finally {
        await session.close().catch(() => {});
      }
    });
    if (drawn) {
      const drawing = traceDrawing(starts, results, query.asOfNs);
      const shown = results.reduce((n, r) => n + r.nodes.length, 0);
      const total = results.reduce((n, r) => n + Number(r.totalNodes), 0);
      if (shown < total) io.stderr.write(`drawing ${shown} of the closure's ${total} nodes (--limit ${limit})\n`);
      if (svg !== undefined) {
        writeFileSync(svg, dagToSvg(drawing));
        io.stderr.write(`wrote ${svg}: ${drawing.nodes.length} nodes, ${drawnEdges(drawing).length} edges\n`);
      }
      if (hasFlag(args, 'dot')) io.stdout.write(dagToDot(drawing));
    }
    if (json) {
      const traced = results.map((r) => responseJson(LineageServiceDefinition, 'trace', r));
      io.stdout.write(toJson(traced.length === 1 ? traced[0] : traced.map((r, i) => ({ node: keys[i], ...(r as object) }))));
      return 0;
    }
    if (hasFlag(args, 'dot')) return 0;
    results.forEach((r, i) => {
      if (results.length > 1) io.stdout.write(`${i > 0 ? '\n' : ''}== ${keys[i]}\n`);
      io.stdout.write(renderTable(['dist', 'kind', 'node', 'transform', 'time'], r.nodes.map((n) => [n.distance, KIND_NAMES[n.node?.kind ?? 0] ?? '?', n.node?.kind === NodeKind.NODE_KIND_OBJECT_VERSION ? `${n.node.id}@${shortHash(n.node.contentHash)}` : n.node?.id, n.label, timeCell(n.timeNs)])));
      io.stdout.write(`${r.totalNodes} node(s) in the closure${r.nextPageToken ? `, first ${r.nodes.length} shown (--limit)` : ''}\n`);
    });
    return 0;
  },
};

const path: CliCommand = {
  path: ['lineage', 'path'],
  summary: "a record's full processing path: every step with code version, params, node and resources",
  usage: `retrace lineage path OBJECT_ID [--hash sha256:...] [--as-of ISO|ns] [--json]
  The path of version --hash; without it, of the newest version as of --as-of; without either, of
  the version the pipeline holds as current for a pipeline record (record:PIPELINE/DATASET:KEY; a
  step that reproduced an older content makes that one current again), else of the newest version.`,
  async run(args, io) {
    const objectId = args.positionals[0];
    if (!objectId) throw new UsageError('OBJECT_ID is required');
    const r = await withLineage(args, io, (c) => c.getRecordPath({ objectId, contentHash: flag(args, 'hash', '') as string, asOfNs: asOfArg(args) }, { signal: io.signal }));
    if (hasFlag(args, 'json')) {
      io.stdout.write(toJson(responseJson(LineageServiceDefinition, 'getRecordPath', r)));
      return 0;
    }
    io.stdout.write(`record ${r.record?.objectId} ${r.record?.contentHash}\n`);
    io.stdout.write(
      renderTable(
        ['#', 'step', 'transform', 'code', 'node', 'started', 'cpu ms', 'peak MiB', 'params'],
        r.steps.map((s, i) => [
          i + 1,
          s.stepId,
          s.transform,
          shortHash(s.codeVersion),
          s.nodeId || s.host,
          timeCell(s.startedAtNs),
          s.resources ? (Number(s.resources.cpuTimeNs) / 1e6).toFixed(1) : '',
          s.resources ? (Number(s.resources.peakMemoryBytes) / 2 ** 20).toFixed(1) : '',
          s.parameters ? JSON.stringify(s.parameters) : '',
        ]),
      ),
    );
    return 0;
  },
};

const node: CliCommand = {
  path: ['lineage', 'node'],
  summary: 'one node: object, version, step, run or transform',
  usage: `retrace lineage node NODE [--json]\n  ${NODE_HELP}`,
  async run(args, io) {
    const ref = nodeArg(args, this.usage);
    const r = await withLineage(args, io, (c) => c.getNode({ node: ref }, { signal: io.signal }));
    io.stdout.write(toJson(responseJson(LineageServiceDefinition, 'getNode', r)));
    return 0;
  },
};

const exportCmd: CliCommand = {
  path: ['lineage', 'export'],
  summary: 'export the subgraph around a node as W3C PROV-JSON',
  usage: `retrace lineage export NODE [--direction both|up|down|any] [--depth N] [--as-of ISO|ns] [--out FILE] [--json]\n  Writes PROV-JSON (with or without --json).\n  ${NODE_HELP}`,
  integers: { depth: 'uint32' },
  async run(args, io) {
    const start = nodeArg(args, this.usage);
    const r = await withLineage(args, io, (c) => c.exportProv({ start, direction: directionArg(args, Direction.DIRECTION_BOTH), depth: intFlag(args, 'depth', 0), asOfNs: asOfArg(args) }, { signal: io.signal }));
    const text = `${JSON.stringify(JSON.parse(r.provJson), null, 2)}\n`;
    const out = flag(args, 'out');
    if (out) {
      writeFileSync(out, text);
      io.stderr.write(`wrote PROV-JSON to ${out}\n`);
    } else io.stdout.write(text);
    return 0;
  },
};

const runs: CliCommand = {
  path: ['lineage', 'runs'],
  summary: 'list runs, newest first',
  usage: 'retrace lineage runs [--prefix NAME] [--limit N] [--json]',
  integers: { limit: 'uint32' },
  async run(args, io) {
    const r = await withLineage(args, io, (c) => c.listRuns({ pageSize: intFlag(args, 'limit', 100), pageToken: '', namePrefix: flag(args, 'prefix', '') as string }, { signal: io.signal }));
    if (hasFlag(args, 'json')) io.stdout.write(toJson(responseJson(LineageServiceDefinition, 'listRuns', r)));
    else io.stdout.write(renderTable(['run', 'name', 'state', 'started', 'ended', 'parent'], r.runs.map((x) => [x.runId, x.name, x.state, timeCell(x.startedAtNs), timeCell(x.endedAtNs), x.parentRunId])));
    return 0;
  },
};

const proof: CliCommand = {
  path: ['lineage', 'proof'],
  summary: "an event's Merkle inclusion proof, checked here against the signed checkpoint",
  usage:
    'retrace lineage proof EVENT_ID [--public-key FILE|BASE64] [--json]\n  --public-key: the coordinator key to check the checkpoint signature with (a PEM file, such as DATA/signing-key.pem, or base64 SPKI DER);\n  without it the signature is checked under the key the checkpoint itself names, which proves nothing about who signed it.',
  async run(args, io) {
    const eventId = args.positionals[0];
    if (!eventId) throw new UsageError('EVENT_ID is required');
    const keyArg = flag(args, 'public-key');
    const pinned = keyArg === undefined ? undefined : publicKeyArg(keyArg);
    const r = await withLineage(args, io, (c) => c.getProof({ eventId }, { signal: io.signal }));
    const cp = r.checkpoint;
    const included = cp !== undefined && verifyInclusion(Buffer.from(r.leafHash, 'hex'), Number(r.seq), Number(cp.treeSize), r.auditPath.map((h) => Buffer.from(h, 'hex')), Buffer.from(cp.rootHash, 'hex'));
    const signed = cp !== undefined && verifyCheckpoint(cp, pinned ?? cp.publicKey);
    if (hasFlag(args, 'json')) io.stdout.write(toJson({ ...(responseJson(LineageServiceDefinition, 'getProof', r) as object), verified: { included, signed, keyPinned: pinned !== undefined } }));
    else {
      io.stdout.write(`event ${eventId} is entry ${r.seq}; leaf ${r.leafHash}\n`);
      io.stdout.write(`checkpoint: tree size ${cp?.treeSize}, root ${cp?.rootHash}\n`);
      const key = pinned === undefined ? `the key it names (${keyFingerprint(cp?.publicKey ?? '')}; --public-key to check it against the coordinator's)` : `the given key (${keyFingerprint(pinned)})`;
      io.stdout.write(`audit path (${r.auditPath.length} hashes): ${included ? 'verifies' : 'DOES NOT VERIFY'}; checkpoint signature: ${signed ? 'valid' : 'INVALID'} under ${key}\n`);
    }
    return included && signed ? 0 : 1;
  },
};

/** --public-key as base64 SPKI DER: a PEM file (public key, or the private signing-key.pem) or base64 SPKI DER itself. */
function publicKeyArg(value: string): string {
  try {
    const text = existsSync(value) ? readFileSync(value, 'utf8') : undefined;
    const key = text !== undefined ? createPublicKey(text) : createPublicKey({ key: Buffer.from(value, 'base64'), format: 'der', type: 'spki' });
    if (key.asymmetricKeyType !== 'ed25519') throw new Error(`an ${key.asymmetricKeyType ?? 'unknown'} key, not ed25519`);
    return key.export({ format: 'der', type: 'spki' }).toString('base64');
  } catch (err) {
    throw new UsageError(`--public-key: not a PEM file or base64 SPKI ed25519 key: ${JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value)} (${(err as Error).message.split('\n')[0]})`);
  }
}

/** A short name for a key: sha256 of its SPKI DER bytes. */
function keyFingerprint(publicKeyBase64: string): string {
  return `key sha256:${createHash('sha256').update(Buffer.from(publicKeyBase64, 'base64')).digest('hex').slice(0, 16)}`;
}

const submit: CliCommand = {
  path: ['submit'],
  summary: 'submit lineage: OpenLineage events or native events (JSON file or - for stdin)',
  usage: 'retrace submit FILE|- [--json]\n  FILE holds one OpenLineage event, an array of them, or native events ({"events":[...]} or an array in proto JSON form).\n  The whole file is one atomic batch.',
  async run(args, io) {
    const file = args.positionals[0];
    if (!file) throw new UsageError('FILE (or - for stdin) is required');
    const text = file === '-' ? await readAll(io.stdin) : readSubmitFile(file);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new UsageError(`${file} is not JSON: ${(err as Error).message}`);
    }
    const input = toNativeEvents(json);
    if (input.events.length === 0) throw new UsageError(`${file === '-' ? 'stdin' : file} holds no events`);
    const submit = (events: LineageEvent[]): Promise<SubmitEventsResponse> =>
      withLineage(args, io, (c) =>
        c.submitEvents(
          (async function* () {
            yield { events };
          })(),
          { signal: io.signal },
        ),
      );
    let r: SubmitEventsResponse;
    try {
      r = await submit(input.events);
    } catch (err) {
      // A client token records its runs as its own name, as the HTTP API does for it: the
      // ownership owner (or producer) converted here is refused then, with nothing stored, and the
      // runs go again without a principal, which the coordinator fills in with the token's name.
      const refusedPrincipal = isRetraceError(err) && err.code === 'PERMISSION_DENIED' && /^\S*\.step\.why\.principal: /.test(err.message);
      if (!refusedPrincipal || !input.withoutPrincipal) throw inFileTerms(err, input.locate);
      try {
        r = await submit(input.withoutPrincipal());
      } catch (again) {
        throw inFileTerms(again, input.locate);
      }
    }
    if (hasFlag(args, 'json')) io.stdout.write(toJson(responseJson(LineageServiceDefinition, 'submitEvents', r)));
    else io.stdout.write(`stored ${r.accepted} event(s), ${r.duplicates} already present; ledger size ${r.treeSize}\n`);
    return 0;
  },
};

/**
 * The text of `submit FILE`. A file that cannot be read is the command's error in words
 * (`submit: cannot read FILE: no such file`, exit 1), not Node's raw `ENOENT: ..., open '...'`.
 */
function readSubmitFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError('submit', `cannot read ${file}: ${unreadableFileReason(err)}`, err);
  }
}

/**
 * OpenLineage (one or an array) or native events, as native events. For OpenLineage also
 * `withoutPrincipal`: the same events with their runs' principal left empty (for a token bound to
 * its name, which the coordinator records instead).
 */
export function toNativeEvents(json: unknown): { events: LineageEvent[]; withoutPrincipal?: () => LineageEvent[]; locate: (index: number) => string | undefined } {
  const looksOpenLineage = (v: unknown): boolean => typeof v === 'object' && v !== null && ('eventType' in v || ('schemaURL' in v && 'producer' in v && !('body' in v)));
  const openLineage = Array.isArray(json) && json.length > 0 && looksOpenLineage(json[0]) ? validateOpenLineageBatch(json) : looksOpenLineage(json) ? [validateOpenLineageEvent(json)] : undefined;
  if (openLineage) {
    const converted = openLineage.map((e) => toLineageEvents(e));
    // One OpenLineage event becomes several native ones: the k-th native event, as the file's event it came from.
    const source: number[] = converted.flatMap((events, i) => events.map(() => i));
    const locate = (index: number): string | undefined => {
      const i = source[index];
      if (i === undefined) return undefined;
      const e = (openLineage[i] as { event: unknown }).event as { eventType?: string; run?: { runId?: string }; job?: { namespace?: string; name?: string } };
      const what = [e.eventType, e.run?.runId === undefined ? '' : `run ${e.run.runId}`, e.job?.name === undefined ? '' : `job ${e.job.namespace ?? ''}:${e.job.name}`].filter((x) => x);
      return `${Array.isArray(json) ? `[${i}]` : 'event'}${what.length > 0 ? ` (OpenLineage ${what.join(', ')})` : ''}`;
    };
    // A START naming no datasets makes no step: the step a later event of the file makes starts with it.
    return { events: fillStepStarts(converted.flat()), withoutPrincipal: () => fillStepStarts(openLineage.flatMap((e) => toLineageEvents(e, { principal: '' }))), locate };
  }
  const list = Array.isArray(json) ? json : typeof json === 'object' && json !== null && Array.isArray((json as { events?: unknown }).events) ? (json as { events: unknown[] }).events : undefined;
  if (!list) throw new UsageError('expected an OpenLineage event, an array of them, {"events":[...]} or an array of native events');
  const desc = messageSchema('retrace.v1.LineageEvent');
  const prefix = Array.isArray(json) ? '' : 'events';
  // fromJSON coerces any value to its field's type ("eventId": 12 would be stored as "12"): the
  // file is checked against the message's descriptor first, so nothing is sent unless all of it is right.
  list.forEach((e, i) => checkProtoJson(desc, e, `${prefix}[${i}]`));
  return { events: list.map((e) => LineageEvent.fromJSON(e)), locate: (index) => (index < list.length ? `${prefix}[${index}]` : undefined) };
}

/**
 * A refusal of the submitted batch, its field path (`batches[0].events[5].step...`, the
 * converted events the coordinator saw) turned into the file's own: an OpenLineage file's
 * `[1] (OpenLineage COMPLETE, run ..., job ...)`, a native file's `events[2]`.
 */
function inFileTerms(err: unknown, locate: (index: number) => string | undefined): unknown {
  if (!isRetraceError(err)) return err;
  const m = /^batches\[0\]\.events\[(\d+)\](\.?)/.exec(err.message);
  const where = m ? locate(Number(m[1])) : undefined;
  if (!m || where === undefined) return err;
  const rest = err.message.slice(m[0].length);
  return new RetraceError(err.code, `${where}${m[2] === '.' ? ': ' : ''}${rest}`);
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer));
  return Buffer.concat(chunks).toString('utf8');
}

export const commands: CliCommand[] = [trace, path, node, exportCmd, runs, proof, submit];
