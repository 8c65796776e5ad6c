import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createChannel, createClientFactory, Metadata, type Channel, type Client, type CompatServiceDefinition } from 'nice-grpc';
import { Coordinator, type ExtensionFactory } from '../../coordinator/coordinator.js';
import type { CoordinatorOptions } from '../../coordinator/coordinator-options.js';

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
