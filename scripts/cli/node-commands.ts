import { writeFileSync } from 'node:fs';
import { isAbortError } from 'abort-controller-x';
import { InvalidArgumentError } from '../../common/errors.js';
import {
  NodeEventKind,
  NodeInfo,
  NodeServiceDefinition,
  NodeState,
  ReadingSource,
  nodeStateFromJSON,
  nodeStateToJSON,
  type ResourceReading,
} from '../../common/gen/retrace/v1/node.js';
import { binaryUnit, effectiveReading, formatBytes, parseLabels } from '../../common/node-resources.js';
import { renderForecastSvg } from '../../common/svg-chart.js';
import { millisToNanos, nanosToIso } from '../../common/time.js';
import { durationFlagMs, flag, flagAll, hasFlag, noMorePositionals, UsageError, type CliCommand, type CliIo, type ParsedArgs } from './command.js';
import { openClient } from './client.js';
import { messageJson, responseJson } from './proto-json.js';

const CONNECT_FLAGS = '[--coordinator HOST:PORT] [--token T | --token-file F] [--tls-ca FILE]';

function duration(args: ParsedArgs, name: string, fallback?: string): number | undefined {
  return durationFlagMs(args, name, fallback === undefined ? {} : { fallback });
}

function oneId(args: ParsedArgs): string {
  const id = args.positionals[0];
  if (!id) throw new UsageError('a node id is required');
  noMorePositionals(args, 1);
  return id;
}

function requiredFlag(args: ParsedArgs, name: string): string {
  const v = flag(args, name);
  if (v === undefined || v === 'true') throw new UsageError(`--${name} is required`);
  return v;
}

const stateName = (s: NodeState): string => nodeStateToJSON(s).replace('NODE_STATE_', '');

function mark(r: ResourceReading | undefined): string {
  if (!r) return '';
  if (r.source === ReadingSource.READING_SOURCE_DECLARED) return '*';
  if (r.source === ReadingSource.READING_SOURCE_UNKNOWN) return '?';
  return '';
}

function latest(n: NodeInfo, name: string): number | undefined {
  const r = n.latest.find((x) => x.name === name && x.source === ReadingSource.READING_SOURCE_MEASURED);
  return r?.value;
}

function ago(ns: string, nowMs: number): string {
  if (ns === '0') return '-';
  const s = Math.max(0, (nowMs - Number(BigInt(ns) / 1_000_000n)) / 1000);
  return s < 60 ? `${s.toFixed(1)}s` : s < 3600 ? `${(s / 60).toFixed(0)}m` : `${(s / 3600).toFixed(1)}h`;
}

/** The widest a TOKEN cell gets: longer token names end in "…" (`nodes show` has them whole). */
const TOKEN_CELL = 16;

/**
 * One row per node: id, host, state, cpu, memory, gpu (and declared tpu/accel counts), last report,
 * bound token ("-" when unbound; names over 16 characters cut with "…"), labels. `*` = declared,
 * `?` = unknown; a LOST node's load figures, the last it sent, are in parentheses.
 */
export function nodeTable(nodes: readonly NodeInfo[], nowMs = Date.now()): string {
  const header = ['ID', 'HOST', 'STATE', 'CPU', 'MEMORY', 'GPU', 'REPORT', 'TOKEN', 'LABELS'];
  // The footer explains '*' only where a cell shows one (a declared net.speed is not in the table).
  let declaredShown = false;
  const rows = nodes.map((n) => {
    const threads = effectiveReading(n.capabilities, 'cpu.threads');
    const load = latest(n, 'cpu.load');
    const total = effectiveReading(n.capabilities, 'memory.total');
    const used = latest(n, 'memory.used');
    const gpus = effectiveReading(n.capabilities, 'gpu.count');
    const gpuUtil = latest(n, 'gpu.util');
    // A lost node's last readings may be from long ago: shown, but not as if they were now.
    const live = (text: string): string => (n.state === NodeState.NODE_STATE_LOST ? `(${text})` : text);
    const cpu = `${threads ? `${threads.value}${mark(threads)}` : '?'}${load === undefined ? '' : ` ${live(`${load.toFixed(0)}%`)}`}`;
    const mem = `${used === undefined ? '' : `${live(formatBytes(used))} / `}${total ? `${formatBytes(total.value)}${mark(total)}` : '?'}`;
    const gpuText = !gpus || (gpus.value === 0 && gpus.source !== ReadingSource.READING_SOURCE_DECLARED) ? '' : `${gpus.value}${mark(gpus)}${gpuUtil === undefined ? '' : ` ${live(`${gpuUtil.toFixed(0)}%`)}`}`;
    // TPUs and other accelerators (`--advertise tpu=4`) had no column: a node declared with 4
    // TPUs showed "-" and only `nodes show` told them apart.
    const accels = (['tpu', 'accel'] as const).flatMap((kind) => {
      const r = effectiveReading(n.capabilities, `${kind}.count`);
      return r && r.value > 0 ? [`${kind} ${r.value}${mark(r)}`] : [];
    });
    const gpu = [gpuText, ...accels].filter((x) => x !== '').join(', ') || '-';
    if ([cpu, mem, gpu].some((cell) => cell.includes('*'))) declaredShown = true;
    const state = `${stateName(n.state)}${n.connected ? '' : n.state === NodeState.NODE_STATE_READY || n.state === NodeState.NODE_STATE_DRAINING ? ' (disconnected)' : ''}`;
    const labels = Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(',');
    const token = n.boundToken.length > TOKEN_CELL ? `${n.boundToken.slice(0, TOKEN_CELL - 1)}…` : n.boundToken || '-';
    return [n.nodeId, n.host, state, cpu, mem, gpu, ago(n.lastReportNs, nowMs), token, labels || '-'];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ');
  let footer = declaredShown ? '\n* declared by the operator, not measured' : '';
  if (nodes.some((n) => n.state === NodeState.NODE_STATE_LOST)) footer += '\n(…) the last reading of a node that stopped reporting (see REPORT)';
  return `${[line(header), ...rows.map(line)].join('\n')}${footer}\n`;
}

async function listNodes(args: ParsedArgs, io: CliIo): Promise<number> {
  if (args.positionals.length > 0) throw new UsageError(`unknown nodes subcommand ${JSON.stringify(args.positionals[0])}`);
  const states = flagAll(args, 'state').flatMap((s) => s.split(',')).map((s) => {
    const v = nodeStateFromJSON(`NODE_STATE_${s.trim().toUpperCase()}`);
    if (v === NodeState.UNRECOGNIZED || v === NodeState.NODE_STATE_UNSPECIFIED) throw new UsageError(`--state: unknown state ${JSON.stringify(s)}`);
    return v;
  });
  let labels: Record<string, string>;
  try {
    labels = parseLabels(flagAll(args, 'label'), '--label');
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const json = hasFlag(args, 'json');
  const { client, close } = openClient(NodeServiceDefinition, args);
  try {
    if (!hasFlag(args, 'watch')) {
      const res = await client.listNodes({ states, labels }, { signal: io.signal });
      io.stdout.write(json ? `${JSON.stringify(responseJson(NodeServiceDefinition, 'listNodes', res))}\n` : nodeTable(res.nodes));
      return 0;
    }
    return await watch(client, io, json, states, labels);
  } finally {
    close();
  }
}

async function watch(
  client: ReturnType<typeof openClient<typeof NodeServiceDefinition>>['client'],
  io: CliIo,
  json: boolean,
  states: NodeState[],
  labels: Record<string, string>,
): Promise<number> {
  const nodes = new Map<string, NodeInfo>();
  const shown = new Set<string>();
  let synced = false;
  let lastRender = 0;
  let pending: NodeJS.Timeout | undefined;
  const tty = (io.stdout as NodeJS.WriteStream).isTTY === true;
  const visible = (n: NodeInfo): boolean =>
    (states.length === 0 || states.includes(n.state)) && Object.entries(labels).every(([k, v]) => n.labels[k] === v);
  const render = (): void => {
    pending = undefined;
    lastRender = Date.now();
    const table = nodeTable([...nodes.values()].filter(visible).sort((a, b) => a.nodeId.localeCompare(b.nodeId)));
    io.stdout.write(tty ? `\x1b[H\x1b[2J${table}` : `${table}\n`);
  };
  try {
    for await (const event of client.watchNodes({ nodeId: '', includeReports: !json }, { signal: io.signal })) {
      if (json) {
        // --state and --label hold here too (they printed every node's events): an event is
        // printed while its node matches, and once more when it stops matching (the transition
        // that takes it out of the selection).
        const node = event.node;
        if (node) {
          const was = shown.has(node.nodeId);
          if (visible(node)) shown.add(node.nodeId);
          else shown.delete(node.nodeId);
          if (!was && !shown.has(node.nodeId)) continue;
        }
        io.stdout.write(`${JSON.stringify(responseJson(NodeServiceDefinition, 'watchNodes', event))}\n`);
        continue;
      }
      if (event.node) nodes.set(event.node.nodeId, event.node);
      if (event.kind === NodeEventKind.NODE_EVENT_KIND_SYNCED) synced = true;
      if (!synced || pending) continue;
      // At most two repaints a second, however many reports arrive.
      pending = setTimeout(render, Math.max(0, 500 - (Date.now() - lastRender)));
    }
  } catch (err) {
    if (!(io.signal.aborted || isAbortError(err))) throw err;
  } finally {
    if (pending) clearTimeout(pending);
  }
  if (io.signal.aborted) return 0;
  // The coordinator ended the stream (it stopped): exiting 0 in silence left its last table on
  // screen as if it were still live.
  io.stderr.write('error: the coordinator ended the watch (it stopped or restarted); the table above is its last state\n');
  return 1;
}

/** The unit of a usage metric by its reading name (common/node-resources.ts lists them). */
function metricUnit(metric: string): 'bytes' | 'bytes/s' | 'percent' | 'ms' | undefined {
  if (/^(memory|swap)\.|^disk\.(free|total)$|^gpu\.\d+\.memory(\.used)?$/.test(metric)) return 'bytes';
  if (/^disk\.(read|write)$|^net\.(rx|tx|up|down)$/.test(metric)) return 'bytes/s';
  if (/^cpu\.(core\.\d+\.)?load$|^gpu\.(\d+\.)?util$/.test(metric)) return 'percent';
  if (metric === 'net.rtt') return 'ms';
  return undefined;
}

/**
 * A metric's value as a person reads it: bytes as KiB/MiB/GiB (per second for rates), percent
 * and ms with one or two decimals, anything else with at most three significant decimals.
 */
export function formatMetricValue(metric: string, value: number): string {
  if (!Number.isFinite(value)) return String(value);
  switch (metricUnit(metric)) {
    case 'bytes':
      return formatBytes(value);
    case 'bytes/s':
      return `${formatBytes(value)}/s`;
    case 'percent':
      return `${value.toFixed(1)}%`;
    case 'ms':
      return `${value.toFixed(2)} ms`;
    default:
      return String(Number(value.toFixed(3)));
  }
}

/**
 * The value axis of a metric's chart, named with its unit: bytes (and bytes/s) in the binary unit
 * of the largest value, as the text output reads them (the chart's decimal "2.1G" read
 * "2.0 GiB" there), divided by `divisor`; percent and ms named.
 */
export function metricAxis(metric: string, values: readonly number[]): { divisor: number; label: string } {
  const unit = metricUnit(metric);
  if (unit === 'bytes' || unit === 'bytes/s') {
    let max = 0;
    for (const v of values) if (Number.isFinite(v)) max = Math.max(max, Math.abs(v));
    // 1000, not 1024: 1010 MiB is 0.99 GiB, where "1.01k MiB" would be the tick.
    const { name, divisor } = binaryUnit(max, 1000);
    return { divisor, label: `${metric} (${name}${unit === 'bytes/s' ? '/s' : ''})` };
  }
  if (unit === 'percent') return { divisor: 1, label: `${metric} (%)` };
  if (unit === 'ms') return { divisor: 1, label: `${metric} (ms)` };
  return { divisor: 1, label: metric };
}

/**
 * The start of a history range, ns: a start before the epoch (`--since 100000d`, meaning all of
 * it) is the epoch's first nanosecond; 0 would mean "the default hour" to GetHistory.
 */
function startNs(ms: number): string {
  return ms >= 1e-6 ? millisToNanos(ms).toString() : '1';
}

/** `retrace nodes ...` and `retrace forecast`. */
export const commands: CliCommand[] = [
  {
    path: ['nodes'],
    summary: 'list the nodes of the mesh (--watch keeps it live)',
    usage: `retrace nodes [--json] [--watch] [--state READY,SUSPECT] [--label k=v] ${CONNECT_FLAGS}
Columns: id, host, state, cpu (threads, load), memory (used / total), gpu (count, load; then tpu
and accelerator counts), age of the
last report, labels. "*" marks operator-declared capacity, "?" capacity the agent could not measure.`,
    run: listNodes,
  },
  {
    path: ['nodes', 'show'],
    summary: 'one node as JSON: capabilities, latest readings, transitions, bound token',
    usage: `retrace nodes show ID [--json] ${CONNECT_FLAGS}
Prints the node's NodeInfo as protobuf JSON (with or without --json), every field present: "boundToken" is the name of the
agent token the node id is bound to ("" while unbound; never the token itself).`,
    async run(args, io) {
      const nodeId = oneId(args);
      const { client, close } = openClient(NodeServiceDefinition, args);
      try {
        const res = await client.getNode({ nodeId }, { signal: io.signal });
        io.stdout.write(`${JSON.stringify(res.node ? messageJson('retrace.v1.NodeInfo', NodeInfo, res.node) : {}, null, 2)}\n`);
        return 0;
      } finally {
        close();
      }
    },
  },
  {
    path: ['nodes', 'drain'],
    summary: 'stop placing work on a node (DRAINING); the agent keeps reporting',
    usage: `retrace nodes drain ID [--reason TEXT] [--json] ${CONNECT_FLAGS}`,
    async run(args, io) {
      const nodeId = oneId(args);
      const { client, close } = openClient(NodeServiceDefinition, args);
      try {
        const res = await client.drainNode({ nodeId, reason: flag(args, 'reason', '') as string }, { signal: io.signal });
        const node = res.node;
        if (hasFlag(args, 'json')) io.stdout.write(`${JSON.stringify(node ? messageJson('retrace.v1.NodeInfo', NodeInfo, node) : {})}\n`);
        // A SUSPECT node keeps its state until it reports again (node-registry.ts drain): saying
        // "SUSPECT (drained by operator)" read as if the drain had not been taken.
        else if (node?.state === NodeState.NODE_STATE_SUSPECT) io.stdout.write(`${nodeId}: SUSPECT, drain pending (${node.drainReason}): it becomes DRAINING when it reports again\n`);
        else io.stdout.write(`${nodeId}: ${node ? stateName(node.state) : '?'} (${node?.drainReason ?? ''})\n`);
        return 0;
      } finally {
        close();
      }
    },
  },
  {
    path: ['nodes', 'history'],
    summary: 'stored samples of one metric of a node',
    usage: `retrace nodes history ID --metric cpu [--since 1h] [--step 1m] [--plot out.svg] [--json] ${CONNECT_FLAGS}
Metrics: cpu, memory, swap, gpu, disk, disk-read, disk-write, rx, tx, rtt, bandwidth, or a
reading name such as cpu.core.0.load or gpu.0.util.
--plot FILE charts the samples over time (SVG, UTC, the metric's unit on the value axis).`,
    async run(args, io) {
      const nodeId = oneId(args);
      const metric = requiredFlag(args, 'metric');
      const sinceMs = duration(args, 'since', '1h') as number;
      const stepMs = duration(args, 'step') ?? 0;
      const now = Date.now();
      const { client, close } = openClient(NodeServiceDefinition, args);
      try {
        const res = await client.getHistory(
          {
            nodeId,
            metric,
            fromNs: startNs(now - sinceMs),
            toNs: millisToNanos(now).toString(),
            stepNs: millisToNanos(stepMs).toString(),
          },
          { signal: io.signal },
        );
        // An hour of 2 s reports is 1,800 lines of table; the chart shows its shape at a glance.
        const plot = flag(args, 'plot');
        if (plot !== undefined) {
          const axis = metricAxis(res.metric, res.points.map((p) => p.value));
          writeFileSync(
            plot,
            renderForecastSvg({
              title: `${res.nodeId} ${res.metric}`,
              yLabel: axis.label,
              history: { t: res.points.map((p) => Number(BigInt(p.timeNs) / 1_000_000n)), v: res.points.map((p) => p.value / axis.divisor) },
            }),
          );
        }
        if (hasFlag(args, 'json')) {
          io.stdout.write(`${JSON.stringify(responseJson(NodeServiceDefinition, 'getHistory', res))}\n`);
        } else {
          io.stdout.write(`# ${res.nodeId} ${res.metric} (${res.points.length} points)\n`);
          for (const p of res.points) io.stdout.write(`${nanosToIso(p.timeNs)}  ${formatMetricValue(res.metric, p.value)}\n`);
          if (plot !== undefined) io.stdout.write(`plot written to ${plot}\n`);
        }
        return 0;
      } finally {
        close();
      }
    },
  },
  {
    path: ['forecast'],
    summary: 'forecast a metric of a node with a prediction interval (--plot out.svg)',
    usage: `retrace forecast ID --metric cpu --horizon 2h [--step 1m] [--lookback 8h] [--plot out.svg] [--json] ${CONNECT_FLAGS}`,
    async run(args, io) {
      const nodeId = oneId(args);
      const metric = requiredFlag(args, 'metric');
      const horizonMs = duration(args, 'horizon') ?? Number.NaN;
      if (!Number.isFinite(horizonMs)) throw new UsageError('--horizon is required, e.g. 2h');
      const stepMs = duration(args, 'step') ?? 0;
      const lookbackMs = duration(args, 'lookback') ?? 0;
      const { client, close } = openClient(NodeServiceDefinition, args);
      try {
        const res = await client.forecast(
          {
            nodeId,
            metric,
            horizonNs: millisToNanos(horizonMs).toString(),
            stepNs: millisToNanos(stepMs).toString(),
            lookbackNs: millisToNanos(lookbackMs).toString(),
          },
          { signal: io.signal },
        );
        const plot = flag(args, 'plot');
        if (plot !== undefined && plot !== 'true') {
          const now = Date.now();
          const historyMs = lookbackMs || Math.max(2 * horizonMs, 60 * Number(BigInt(res.stepNs) / 1_000_000n));
          const hist = await client.getHistory(
            { nodeId, metric, fromNs: startNs(now - historyMs), toNs: millisToNanos(now).toString(), stepNs: res.stepNs },
            { signal: io.signal },
          );
          const ms = (ns: string): number => Number(BigInt(ns) / 1_000_000n);
          const axis = metricAxis(res.metric, [...hist.points.map((p) => p.value), ...res.points.map((p) => p.upper)]);
          const scaled = (v: number): number => v / axis.divisor;
          const chart = renderForecastSvg({
            title: `${nodeId} ${res.metric}: ${res.method}`,
            yLabel: axis.label,
            history: { t: hist.points.map((p) => ms(p.timeNs)), v: hist.points.map((p) => scaled(p.value)) },
            forecast: { t: res.points.map((p) => ms(p.timeNs)), mean: res.points.map((p) => scaled(p.mean)), lower: res.points.map((p) => scaled(p.lower)), upper: res.points.map((p) => scaled(p.upper)), coverage: res.coverage },
          });
          try {
            writeFileSync(plot, chart);
          } catch (err) {
            // It printed "error: ENOENT: no such file or directory, open 'x.svg'", naming no flag.
            throw new InvalidArgumentError('--plot', `${plot}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such directory' : (err as Error).message}`);
          }
        }
        if (hasFlag(args, 'json')) {
          io.stdout.write(`${JSON.stringify(responseJson(NodeServiceDefinition, 'forecast', res))}\n`);
        } else {
          const v = (x: number): string => formatMetricValue(res.metric, x);
          io.stdout.write(`# ${res.nodeId} ${res.metric}: ${res.method}, ${Math.round(res.coverage * 100)}% interval, fitted on ${res.fittedPoints} points${Number.isFinite(res.capacity) ? `; free = capacity ${v(res.capacity)} - usage - reserved by assigned shards` : ''}\n`);
          for (const p of res.points) {
            const free = Number.isFinite(p.free) ? `  free ${v(p.free)} [${v(p.freeLower)}, ${v(p.freeUpper)}] reserved ${v(p.reserved)}` : '';
            io.stdout.write(`${nanosToIso(p.timeNs)}  ${v(p.mean)}  [${v(p.lower)}, ${v(p.upper)}]${free}\n`);
          }
          if (plot !== undefined && plot !== 'true') io.stdout.write(`plot written to ${plot}\n`);
        }
        return 0;
      } finally {
        close();
      }
    },
  },
];
