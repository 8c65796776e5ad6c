import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createChannel, createClientFactory, Metadata, type Channel, type Client, type CompatServiceDefinition } from 'nice-grpc';
import { CodeServiceDefinition } from '../../common/gen/retrace/v1/code.js';
import { codeExtension, type CodeExtensionOptions } from '../../coordinator/code/code-extension.js';
import { Coordinator, type ExtensionFactory } from '../../coordinator/coordinator.js';
import type { CoordinatorOptions } from '../../coordinator/coordinator-options.js';
import { meshExtension } from '../../coordinator/mesh/mesh-extension.js';
import type { NodeMeshOptions } from '../../coordinator/mesh/node-mesh.js';
import type { CoordinatorServices } from '../../scripts/cli/coordinator-extensions.js';
import { startLocalAgents, stopLocalAgents, type LocalAgent } from '../../scripts/cli/local-agents.js';
import { publishTransform } from './publish-transform.js';

export interface TestCoordinator {
  coordinator: Coordinator;
  grpcAddress: string;
  httpUrl: string;
  /** Headers every HTTP request needs: `Authorization: Bearer <token>`. */
  httpAuth: Record<string, string>;
  dataDir: string;
  token: string;
  /** A client with the auth token for any service; closed by stop(). */
  client<S extends CompatServiceDefinition>(definition: S): Client<S>;
  /** Stops the coordinator, closes clients, removes the data dir (unless keepData). */
  stop(options?: { keepData?: boolean }): Promise<void>;
}

/** A real coordinator on 127.0.0.1 port 0 with LevelDB in a temp dir (or `dataDir`). */
export async function startTestCoordinator(
  options: { dataDir?: string; extensions?: ExtensionFactory[]; quiet?: boolean; coordinatorOptions?: Partial<CoordinatorOptions> } = {},
): Promise<TestCoordinator> {
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'retrace-test-'));
  const logs: string[] = [];
  const coordinator = new Coordinator(
    { dataDir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: (l) => logs.push(l), ...options.coordinatorOptions },
    options.extensions ?? [],
  );
  const addresses = await coordinator.start();
  const channels: Channel[] = [];
  return {
    coordinator,
    grpcAddress: addresses.grpc,
    httpUrl: `http://${addresses.http}`,
    httpAuth: { authorization: `Bearer ${coordinator.authToken}` },
    dataDir,
    token: coordinator.authToken,
    client<S extends CompatServiceDefinition>(definition: S): Client<S> {
      const channel = createChannel(addresses.grpc);
      channels.push(channel);
      const metadata = Metadata({ authorization: `Bearer ${coordinator.authToken}` });
      return createClientFactory().create(definition, channel, { '*': { metadata } }) as Client<S>;
    },
    async stop(stopOptions = {}) {
      for (const c of channels) c.close();
      await coordinator.stop();
      if (!stopOptions.keepData && !options.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A data dir a real coordinator wrote: starts one (quiet), runs `fill` against it and stops it,
 * keeping the dir for the caller to copy and remove. When `fill` throws, the dir is removed too.
 */
export async function filledDataDir(fill: (tc: TestCoordinator) => Promise<void>): Promise<string> {
  const tc = await startTestCoordinator({ quiet: true });
  let filled = false;
  try {
    await fill(tc);
    filled = true;
  } finally {
    await tc.stop({ keepData: filled });
  }
  return tc.dataDir;
}

/** One `retrace agent` process to start: its name (its data dir under `<dir>/agents`), labels, advertised resources, report interval (default 200ms). */
export type AgentSpec = Parameters<typeof startLocalAgents>[3][number];

/** A transform to publish: its source text (written to `<dir>/src/<file>`, default `<name>.ts`) or the path of its file. */
export type TransformSpec = { name: string; source: string; file?: string } | { name: string; path: string };

/**
 * The mesh options of startAgentCoordinator unless given: agents report every 200 ms at the
 * soonest; SUSPECT after 5 silent intervals, LOST after 12 (a killed agent's shards move within
 * about 3 s, while a loaded machine does not make live agents flap).
 */
export const DEFAULT_TEST_MESH_OPTIONS: Readonly<NodeMeshOptions> = { minReportIntervalMs: 50, suspectAfterIntervals: 5, lostAfterIntervals: 12 };

/** A test coordinator with published transforms and real agent processes registered to it. */
export interface AgentCoordinator extends TestCoordinator {
  /** A temp dir: the transforms' sources (`src/`) and the agents' data dirs (`agents/<name>`); removed by stop(). */
  dir: string;
  /** The code version of each transform in `transforms`, by name. */
  codeVersions: Record<string, string>;
  /** The agents started (in the order of their specs, then the ones startAgents added); stop() stops those still here. */
  agents: LocalAgent[];
  /** Starts more agents with their data dirs in `dir`, adds them to `agents` and resolves with them. */
  startAgents(specs: readonly AgentSpec[]): Promise<LocalAgent[]>;
}

/**
 * A real coordinator (startTestCoordinator) running the mesh and code extensions, which hand their
 * mesh and code store to `shared`, then `extensions(dir)`; publishes `transforms` one after the
 * other, then starts `agents` (each reporting as its spec says) and resolves once all registered.
 * stop() stops the agents (SIGTERM, SIGKILL after 3 s), then the coordinator, and removes `dir`.
 */
export async function startAgentCoordinator(options: {
  /** The prefix of the temp dir's name. */
  tmpPrefix: string;
  shared: CoordinatorServices;
  /** Default DEFAULT_TEST_MESH_OPTIONS; given, it replaces them whole. */
  mesh?: NodeMeshOptions;
  code?: Omit<CodeExtensionOptions, 'onCodeStore'>;
  /** The extensions after mesh and code, given the temp dir. */
  extensions?: (dir: string) => ExtensionFactory[];
  transforms?: readonly TransformSpec[];
  agents: readonly AgentSpec[];
}): Promise<AgentCoordinator> {
  const { shared } = options;
  const dir = mkdtempSync(join(tmpdir(), options.tmpPrefix));
  const tc = await startTestCoordinator({
    extensions: [
      meshExtension({ onMesh: (m) => (shared.mesh = m), options: options.mesh ?? DEFAULT_TEST_MESH_OPTIONS }),
      codeExtension({ onCodeStore: (s) => (shared.code = s), ...options.code }),
      ...(options.extensions?.(dir) ?? []),
    ],
  });
  const agents: LocalAgent[] = [];
  const startAgents = async (specs: readonly AgentSpec[]): Promise<LocalAgent[]> => {
    const started = await startLocalAgents(tc.grpcAddress, tc.token, dir, specs.map((spec) => ({ reportInterval: '200ms', ...spec })));
    agents.push(...started);
    return started;
  };
  const stop = async (stopOptions?: { keepData?: boolean }): Promise<void> => {
    await stopLocalAgents(agents, 3000);
    await tc.stop(stopOptions);
    rmSync(dir, { recursive: true, force: true });
  };
  const codeVersions: Record<string, string> = {};
  try {
    mkdirSync(join(dir, 'src'));
    for (const t of options.transforms ?? []) {
      let file: string;
      if ('path' in t) file = t.path;
      else {
        file = join(dir, 'src', t.file ?? `${t.name}.ts`);
        writeFileSync(file, t.source);
      }
      codeVersions[t.name] = await publishTransform(tc.client(CodeServiceDefinition), file, t.name);
    }
    await startAgents(options.agents);
  } catch (err) {
    await stop(); // what started so far: the caller gets no handle to stop it
    throw err;
  }
  return { ...tc, dir, codeVersions, agents, startAgents, stop };
}
