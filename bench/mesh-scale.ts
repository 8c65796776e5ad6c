/**
 * mesh-scale: how much coordinator the node mesh costs per agent.
 *
 * The coordinator side (the real mesh behind the real gRPC server with auth and error middleware,
 * node records and report history in LevelDB in a temp dir) runs in a child process so that its
 * CPU (process.cpuUsage) and RSS are its own. This process opens N simulated agent connections,
 * one gRPC channel (TCP connection) each, every one registering and then reporting 20 readings
 * every second (and probing its link on the agent's default schedule), for N = 100, 500, 1000.
 *
 * Figures per N, over a measured window after a warm-up: coordinator cores used (CPU seconds per
 * wall second), RSS, reports stored per second, and report-to-stored latency (agent send time to
 * the history append resolving) p50/p99. Goal: 1000 agents within half a core (ratio ≤ 1).
 *
 *   npm run bench -- mesh-scale [--counts 100,500,1000] [--window 15s] [--warmup 5s]
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createChannel, createClient, Metadata, type Channel } from 'nice-grpc';
import { AsyncQueue } from '../common/async-queue.js';
import { NodeServiceDefinition, ReadingSource, type ConnectRequest, type ResourceReading } from '../common/gen/retrace/v1/node.js';
import { millisToNanos, parseDurationMs } from '../common/time.js';
import { finish, percentile } from './report.js';

const TOKEN = 'bench-token';
const REPORT_INTERVAL_MS = 1000;
/** The agent's default link probe: 128 KiB each way every 2 minutes. */
const LINK_PROBE_INTERVAL_MS = 120_000;
const LINK_PROBE_BYTES = 128 * 1024;

type ChildRequest = { type: 'stats'; reset: boolean } | { type: 'stop' };
type ChildMessage =
  | { type: 'ready'; port: number; history: string }
  | { type: 'stats'; cpuMicros: number; wallMs: number; rss: number; latencies: number[]; storeLatencies: number[]; reports: number; nodes: number };

// ---------------------------------------------------------------- coordinator side (child)

async function runChild(dataDir: string): Promise<void> {
  const { openDatabase } = await import('../coordinator/store/database.js');
  const { createGrpcServer } = await import('../coordinator/grpc/grpc-server.js');
  const { createNodeMesh } = await import('../coordinator/mesh/node-mesh.js');
  const db = await openDatabase(join(dataDir, 'db'));
  const { history, name } = await openHistory(db);
  const mesh = createNodeMesh({ db, history, log: () => {} });
  await mesh.start();
  const { server } = createGrpcServer({ token: TOKEN, log: () => {}, services: [{ definition: NodeServiceDefinition, implementation: mesh.implementation }] });
  const port = await server.listen('127.0.0.1:0');
  let latencies: number[] = [];
  let storeLatencies: number[] = [];
  let reports = 0;
  mesh.on('node:reported', (e) => {
    // The agents stamp reports with sub-millisecond wall time; so is "stored" here.
    latencies.push(performance.timeOrigin + performance.now() - e.reportTimeMs);
    storeLatencies.push(e.storedAtMs - e.receivedAtMs);
    reports++;
  });
  let cpu = process.cpuUsage();
  let wall = performance.now();
  const send = (m: ChildMessage): void => {
    process.send?.(m);
  };
  process.on('message', (m: ChildRequest) => {
    if (m.type === 'stats') {
      const d = process.cpuUsage(cpu);
      send({ type: 'stats', cpuMicros: d.user + d.system, wallMs: performance.now() - wall, rss: process.memoryUsage().rss, latencies, storeLatencies, reports, nodes: mesh.nodes().length });
      if (m.reset) {
        cpu = process.cpuUsage();
        wall = performance.now();
        latencies = [];
        storeLatencies = [];
        reports = 0;
      }
    } else if (m.type === 'stop') {
      void (async () => {
        await mesh.stop();
        server.forceShutdown();
        await db.close();
        process.exit(0);
      })();
    }
  });
  send({ type: 'ready', port, history: name });
}

/** The coordinator's history store, or (MESH_SCALE_HISTORY=rows) a minimal one-row-per-sample writer. */
async function openHistory(db: import('../coordinator/store/database.js').Database): Promise<{ history: import('../coordinator/mesh/node-mesh.js').MeshHistoryStore; name: string }> {
  // MESH_SCALE_HISTORY=rows measures the mesh with a minimal writer (one batch of one row per
  // sample), to tell the mesh's own cost from the history store's.
  if (process.env.MESH_SCALE_HISTORY !== 'rows') {
    const { createHistoryStore } = await import('../coordinator/store/history-store.js');
    return { history: createHistoryStore(db.sublevel('history')), name: 'coordinator/store/history-store' };
  }
  const table = db.sublevel<string, string>('bench-history', {});
  return {
    name: 'minimal writer: one LevelDB row per sample',
    history: {
      async append(nodeId, samples) {
        await table.batch(samples.map((s) => ({ type: 'put' as const, key: `${nodeId}\0${s.metric}\0${String(s.t).padStart(15, '0')}`, value: String(s.value) })));
        return samples.length;
      },
      async query() {
        return [];
      },
      async listMetrics() {
        return [];
      },
    },
  };
}

// ---------------------------------------------------------------- agents side (this process)

interface SimAgent {
  channel: Channel;
  out: AsyncQueue<ConnectRequest>;
  abort: AbortController;
  timers: NodeJS.Timeout[];
  done: Promise<void>;
}

function readings(i: number): ResourceReading[] {
  const m = (name: string, value: number, unit: string): ResourceReading => ({ name, value, text: '', unit, source: ReadingSource.READING_SOURCE_MEASURED });
  const load = 20 + 30 * Math.sin(Date.now() / 60_000 + i) + Math.random() * 5;
  return [
    m('cpu.load', load, 'percent'),
    ...Array.from({ length: 8 }, (_, c) => m(`cpu.core.${c}.load`, load + Math.random() * 10, 'percent')),
    m('memory.used', 8e9 + Math.random() * 1e8, 'bytes'),
    m('memory.available', 24e9 - Math.random() * 1e8, 'bytes'),
    m('swap.used', 0, 'bytes'),
    m('disk.read', Math.random() * 1e6, 'bytes/s'),
    m('disk.write', Math.random() * 1e6, 'bytes/s'),
    m('disk.free', 4e11, 'bytes'),
    m('net.rx', Math.random() * 1e6, 'bytes/s'),
    m('net.tx', Math.random() * 1e6, 'bytes/s'),
    m('gpu.util', Math.random() * 100, 'percent'),
    m('gpu.0.util', Math.random() * 100, 'percent'),
    m('gpu.0.memory.used', 4e9, 'bytes'),
  ];
}

function startAgent(address: string, i: number, runId: string): SimAgent {
  const channel = createChannel(address);
  const client = createClient(NodeServiceDefinition, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${TOKEN}` }) } });
  const out = new AsyncQueue<ConnectRequest>(1000);
  const abort = new AbortController();
  const timers: NodeJS.Timeout[] = [];
  const nodeId = `sim-${runId}-${i}`;
  out.push({
    body: {
      $case: 'register',
      value: {
        nodeId,
        host: `sim-host-${i}`,
        labels: { bench: 'mesh-scale', rack: `r${i % 20}` },
        capabilities: [{ name: 'cpu.threads', value: 8, text: '', unit: 'count', source: ReadingSource.READING_SOURCE_MEASURED }],
        codeVersions: [],
        agentVersion: 'bench',
        reportIntervalNs: millisToNanos(REPORT_INTERVAL_MS).toString(),
        draining: false,
        processId: `sim-process-${i}`,
        payloadCacheBytes: '0',
      },
    },
  });
  let seq = 0;
  const done = (async () => {
    try {
      for await (const msg of client.connect(out, { signal: abort.signal })) {
        const body = msg.body;
        if (body?.$case === 'registered') {
          // Random phase, as independent agents have.
          timers.push(
            setTimeout(() => {
              timers.push(
                setInterval(() => {
                  out.push({ body: { $case: 'report', value: { timeNs: millisToNanos(performance.timeOrigin + performance.now()).toString(), readings: readings(i), seq: String(++seq) } } });
                }, REPORT_INTERVAL_MS),
              );
            }, Math.random() * REPORT_INTERVAL_MS),
          );
          timers.push(
            setTimeout(() => {
              const probe = (): void => {
                out.push({ body: { $case: 'probe', value: { probeId: 'up', payload: Buffer.alloc(LINK_PROBE_BYTES), echoBytes: 0 } } });
                out.push({ body: { $case: 'probe', value: { probeId: 'down', payload: Buffer.alloc(0), echoBytes: LINK_PROBE_BYTES } } });
              };
              probe();
              timers.push(setInterval(probe, LINK_PROBE_INTERVAL_MS));
            }, Math.random() * LINK_PROBE_INTERVAL_MS),
          );
        } else if (body?.$case === 'ping') {
          out.push({ body: { $case: 'pong', value: { nonce: body.value.nonce, pingSentNs: body.value.sentNs } } });
        }
      }
    } catch (err) {
      if (!abort.signal.aborted) console.error(`agent ${i}: ${String(err)}`);
    }
  })();
  return { channel, out, abort, timers, done };
}

async function stopAgent(a: SimAgent): Promise<void> {
  for (const t of a.timers) clearTimeout(t);
  a.abort.abort();
  await a.done;
  a.channel.close();
}

function flagValue(argv: readonly string[], name: string, fallback: string): string {
  const i = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  if (i < 0) return fallback;
  const a = argv[i] as string;
  return a.includes('=') ? a.slice(a.indexOf('=') + 1) : (argv[i + 1] ?? fallback);
}

/** Runs the benchmark; prints one line per N and the final JSON line. */
export async function main(argv: string[]): Promise<void> {
  const counts = flagValue(argv, 'counts', '100,500,1000').split(',').map(Number);
  if (counts.some((n) => !Number.isInteger(n) || n <= 0)) throw new Error('--counts: expected positive integers, e.g. 100,500,1000');
  const windowMs = parseDurationMs(flagValue(argv, 'window', '15s'), '--window');
  const warmupMs = parseDurationMs(flagValue(argv, 'warmup', '5s'), '--warmup');
  const dataDir = mkdtempSync(join(tmpdir(), 'retrace-mesh-scale-'));
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['--mesh-scale-child', dataDir], {
    // MESH_SCALE_PROFILE=DIR writes a V8 CPU profile of the coordinator side there.
    execArgv: ['--import', 'tsx', ...(process.env.MESH_SCALE_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.MESH_SCALE_PROFILE}`] : [])],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const messages = new AsyncQueue<ChildMessage>();
  child.on('message', (m: ChildMessage) => messages.push(m));
  child.once('exit', () => messages.close());
  const next = async (): Promise<ChildMessage> => {
    const it = await messages[Symbol.asyncIterator]().next();
    if (it.done) throw new Error('coordinator child exited');
    return it.value;
  };
  const stats = async (reset: boolean): Promise<Extract<ChildMessage, { type: 'stats' }>> => {
    child.send({ type: 'stats', reset } satisfies ChildRequest);
    const m = await next();
    if (m.type !== 'stats') throw new Error(`unexpected ${m.type}`);
    return m;
  };
  const agents: SimAgent[] = [];
  const results: Record<string, number>[] = [];
  try {
    const ready = await next();
    if (ready.type !== 'ready') throw new Error('child did not start');
    const address = `127.0.0.1:${ready.port}`;
    console.log(`mesh-scale: coordinator pid ${child.pid} on ${address}; history: ${ready.history}; window ${windowMs} ms after ${warmupMs} ms warm-up`);
    const runId = Date.now().toString(36);
    for (const n of counts) {
      // Grow to n connections, spread over a second so registrations do not arrive as one burst.
      const add = n - agents.length;
      for (let i = 0; i < add; i++) {
        agents.push(startAgent(address, agents.length, runId));
        if (i % Math.max(1, Math.floor(add / 20)) === 0) await new Promise((r) => setTimeout(r, 50));
      }
      const deadline = Date.now() + 30_000;
      while ((await stats(false)).nodes < n) {
        if (Date.now() > deadline) throw new Error(`only some of ${n} agents registered`);
        await new Promise((r) => setTimeout(r, 200));
      }
      await new Promise((r) => setTimeout(r, warmupMs));
      await stats(true);
      // The simulator shares the machine: its own event-loop lag delays reports before they are
      // sent, which shows up in the end-to-end latency; it is reported so the two can be told apart.
      const lags: number[] = [];
      let tick = performance.now();
      const lagTimer = setInterval(() => {
        const t = performance.now();
        lags.push(Math.max(0, t - tick - 100));
        tick = t;
      }, 100);
      await new Promise((r) => setTimeout(r, windowMs));
      clearInterval(lagTimer);
      const s = await stats(true);
      const cores = s.cpuMicros / 1000 / s.wallMs;
      const row = {
        agents: n,
        coordinatorCores: round(cores, 3),
        rssMiB: round(s.rss / 2 ** 20, 1),
        reportsPerSec: round((s.reports / s.wallMs) * 1000, 1),
        latencyP50Ms: round(percentile(s.latencies, 50), 2),
        latencyP99Ms: round(percentile(s.latencies, 99), 2),
        storeP99Ms: round(percentile(s.storeLatencies, 99), 2),
        agentsLagP99Ms: round(percentile(lags, 99), 1),
      };
      results.push(row);
      console.log(
        `N=${n}: coordinator ${row.coordinatorCores} cores, RSS ${row.rssMiB} MiB, ${row.reportsPerSec} reports/s stored, ` +
          `report→stored p50 ${row.latencyP50Ms} ms p99 ${row.latencyP99Ms} ms (append alone p99 ${row.storeP99Ms} ms; ` +
          `simulator event-loop lag p99 ${row.agentsLagP99Ms} ms)`,
      );
    }
  } finally {
    await Promise.all(agents.map(stopAgent));
    if (child.exitCode === null) {
      child.send({ type: 'stop' } satisfies ChildRequest);
      await new Promise((r) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          r(undefined);
        }, 5000);
        child.once('exit', () => {
          clearTimeout(t);
          r(undefined);
        });
      });
    }
    rmSync(dataDir, { recursive: true, force: true });
  }
  const at1000 = results.find((r) => r.agents === 1000) ?? results[results.length - 1];
  const cores = at1000?.coordinatorCores ?? Number.NaN;
  finish({
    bench: 'mesh-scale',
    ratio: round(cores / 0.5, 3),
    goal: 1,
    unit: 'coordinator cores at 1000 agents / 0.5 core',
    reportIntervalMs: REPORT_INTERVAL_MS,
    readingsPerReport: readings(0).length,
    results,
  });
}

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

if (process.argv.includes('--mesh-scale-child')) {
  const dir = process.argv[process.argv.indexOf('--mesh-scale-child') + 1];
  if (!dir) throw new Error('--mesh-scale-child DIR');
  await runChild(dir);
}
