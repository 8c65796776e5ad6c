import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { MemoryLevel } from 'memory-level';
import { createChannel, createClientFactory, Metadata, type Channel, type Client } from 'nice-grpc';
import { AsyncQueue } from '../../common/async-queue.js';
import { NodeServiceDefinition, type ConnectRequest, type ConnectResponse } from '../../common/gen/retrace/v1/node.js';
import type { LogFn } from '../../common/log.js';
import { createGrpcServer } from '../../coordinator/grpc/grpc-server.js';
import { createNodeMesh, type MeshForecaster, type MeshHistoryStore, type NodeMesh, type NodeMeshOptions } from '../../coordinator/mesh/node-mesh.js';
import type { Database } from '../../coordinator/store/database.js';
import { createHistoryStore } from '../../coordinator/store/history-store.js';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** The real history store over `db.sublevel('history')`, plus a sample counter for tests. */
export function createTestHistory(db: Database): MeshHistoryStore & { count(nodeId: string, metric: string): Promise<number> } {
  const store = createHistoryStore(db.sublevel('history'));
  return {
    append: (nodeId, samples) => store.append(nodeId, samples),
    query: (nodeId, metric, fromMs, toMs, options) => store.query(nodeId, metric, fromMs, toMs, options),
    listMetrics: (nodeId) => store.listMetrics(nodeId),
    async count(nodeId, metric) {
      return (await store.query(nodeId, metric, 0, Date.now() + 3_600_000)).length;
    },
  };
}

/** A forecaster that repeats the last value with a ±10% band, for wiring tests. */
export const lastValueForecaster: MeshForecaster<{ last: number; t: number; stepMs: number }> = {
  fit(series, stepMs) {
    return { last: series.v[series.v.length - 1] ?? 0, t: series.t[series.t.length - 1] ?? 0, stepMs };
  },
  forecast(f, steps) {
    const t = Array.from({ length: steps }, (_, i) => f.t + (i + 1) * f.stepMs);
    return { t, mean: t.map(() => f.last), lower: t.map(() => f.last * 0.9), upper: t.map(() => f.last * 1.1), method: 'last-value', coverage: 0.9 };
  },
};

export interface MeshServer {
  address: string;
  token: string;
  mesh: NodeMesh;
  db: Database;
  history: ReturnType<typeof createTestHistory>;
  logs: { level: string; event: string; fields?: Record<string, unknown> }[];
  client(token?: string): Client<typeof NodeServiceDefinition>;
  /** Stops server and mesh; closes the db unless it was passed in. */
  stop(): Promise<void>;
}

/** The mesh behind the coordinator's real gRPC server (auth + error middleware) on 127.0.0.1:0. */
export async function startMeshServer(
  options: { db?: Database; mesh?: NodeMeshOptions; token?: string; now?: () => number; port?: number } = {},
): Promise<MeshServer> {
  const db: Database = options.db ?? new MemoryLevel<string, Uint8Array>({ valueEncoding: 'view' });
  await db.open();
  const history = createTestHistory(db);
  const logs: MeshServer['logs'] = [];
  const log: LogFn = (level, event, fields) => {
    logs.push({ level, event, ...(fields ? { fields } : {}) });
  };
  const mesh = createNodeMesh({
    db,
    history,
    forecaster: lastValueForecaster as MeshForecaster<never>,
    options: { sweepIntervalMs: 25, ...options.mesh },
    log,
    ...(options.now ? { now: options.now } : {}),
  });
  await mesh.start();
  const token = options.token ?? 'test-token';
  const { server } = createGrpcServer({ token, log: () => {}, services: [{ definition: NodeServiceDefinition, implementation: mesh.implementation }] });
  // A fixed port (restart tests) may take a moment to be released by the previous server.
  const port = await waitFor(() => server.listen(`127.0.0.1:${options.port ?? 0}`).catch(() => false), 5000, 'listen');
  const address = `127.0.0.1:${port}`;
  const channels: Channel[] = [];
  return {
    address,
    token,
    mesh,
    db,
    history,
    logs,
    client(t = token) {
      const channel = createChannel(address);
      channels.push(channel);
      return createClientFactory().create(NodeServiceDefinition, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${t}` }) } });
    },
    async stop() {
      for (const c of channels) c.close();
      await mesh.stop();
      const timer = setTimeout(() => server.forceShutdown(), 2000);
      await server.shutdown();
      clearTimeout(timer);
      if (!options.db) await db.close();
    },
  };
}

/** A real agent process (`node scripts/retrace.mjs agent ...`). */
/**
 * A node's Connect stream driven by hand: push ConnectRequests on `out`; what the coordinator
 * sends collects in `received`; `done` settles when the stream ends.
 */
export function rawConnect(s: MeshServer): { out: AsyncQueue<ConnectRequest>; received: ConnectResponse[]; done: Promise<void> } {
  const out = new AsyncQueue<ConnectRequest>();
  const received: ConnectResponse[] = [];
  const done = (async () => {
    for await (const m of s.client().connect(out)) received.push(m);
  })();
  done.catch(() => {});
  return { out, received, done };
}

/** A bare registration of `nodeId` that reports every `reportIntervalNs`. */
export function registerRequest(nodeId: string, reportIntervalNs = '100000000'): ConnectRequest {
  return {
    body: { $case: 'register', value: { nodeId, host: 'h', labels: {}, capabilities: [], codeVersions: [], agentVersion: '', reportIntervalNs, draining: false, processId: '', payloadCacheBytes: '0' } },
  };
}

export interface AgentProcess {
  child: ChildProcess;
  /** The `{"nodeId"...}` line, once registered. */
  registered: Promise<{ nodeId: string; rejoined: boolean }>;
  stderr: string[];
  exited: Promise<number | null>;
}

/** Spawns an agent; kill it in afterEach (`child.kill('SIGKILL')`). */
export function spawnAgent(args: string[], env: NodeJS.ProcessEnv = {}): AgentProcess {
  const child = spawn(process.execPath, ['scripts/retrace.mjs', 'agent', ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, RETRACE_TOKEN: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stderr: string[] = [];
  let errBuf = '';
  child.stderr?.on('data', (d: Buffer) => {
    errBuf += d.toString();
    const lines = errBuf.split('\n');
    errBuf = lines.pop() ?? '';
    stderr.push(...lines);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const registered = new Promise<{ nodeId: string; rejoined: boolean }>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        try {
          resolve(JSON.parse(out.slice(0, nl)) as { nodeId: string; rejoined: boolean });
        } catch (err) {
          reject(err);
        }
      }
    });
    void exited.then((code) => reject(new Error(`agent exited (${code}) before registering:\n${stderr.join('\n')}`)));
  });
  registered.catch(() => {});
  return { child, registered, stderr, exited };
}

/** Polls `check` until it returns a value other than undefined/false, or throws after `timeoutMs`. */
export async function waitFor<T>(check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 15_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
