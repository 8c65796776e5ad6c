import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createChannel, createClientFactory, Metadata, type Channel, type Client, type CompatServiceDefinition } from 'nice-grpc';
import { stopLocalAgents, type LocalAgent } from '../../scripts/cli/local-agents.js';
import { killChildren } from './coordinator-process.js';

/**
 * What a test with real coordinator and agent processes starts, so that one cleanup ends it all:
 * child processes, local agents, client channels and temp dirs.
 */
export interface ProcessHarness {
  /** Child coordinators (startCoordinatorProcess pushes onto it). */
  readonly children: ChildProcess[];
  /** Local agents (push what startLocalAgents returns). */
  readonly agents: LocalAgent[];
  /** A temp dir, removed by cleanup(). */
  tempDir(prefix: string): string;
  /** A client with the token, on a channel cleanup() (or closeClients()) closes. */
  client<S extends CompatServiceDefinition>(address: string, token: string, definition: S): Client<S>;
  /** Closes every client channel: the coordinator they talk to died. */
  closeClients(): void;
  cleanup(): Promise<void>;
}

export function processHarness(): ProcessHarness {
  const children: ChildProcess[] = [];
  const agents: LocalAgent[] = [];
  const channels: Channel[] = [];
  const dirs: string[] = [];
  const closeClients = (): void => {
    for (const c of channels.splice(0)) c.close();
  };
  return {
    children,
    agents,
    tempDir(prefix) {
      const dir = mkdtempSync(join(tmpdir(), prefix));
      dirs.push(dir);
      return dir;
    },
    client(address, token, definition) {
      const channel = createChannel(address);
      channels.push(channel);
      return createClientFactory().create(definition, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${token}` }) } }) as Client<typeof definition>;
    },
    closeClients,
    async cleanup() {
      await stopLocalAgents(agents.splice(0), 3000);
      closeClients();
      await killChildren(children);
      for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
    },
  };
}
