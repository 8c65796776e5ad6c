import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import type { Server as HttpServer } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import { ServerCredentials } from '@grpc/grpc-js';
import type { Server as GrpcServer } from 'nice-grpc';
import { LineageServiceWireDefinition } from './grpc/lineage-wire.js';
import { FailedPreconditionError, InvalidArgumentError } from '../common/errors.js';
import { createSystemClock, type NanoClock } from './clock.js';
import { compileCoordinatorOptions, type CompiledCoordinatorOptions, type CoordinatorOptions } from './coordinator-options.js';
import { createGrpcServer, type ServiceMount } from './grpc/grpc-server.js';
import { createLineageHandlers } from './grpc/lineage-handlers.js';
import { createHttpServer } from './http/http-server.js';
import type { Route } from './http/router.js';
import { createMarquezRoutes } from './http/marquez-routes.js';
import { createOpenLineageRoutes } from './http/openlineage-routes.js';
import { createCheckpointFileWriter, readCheckpointFile, removeCheckpointFile, writeCheckpointFile } from './ledger/checkpoint-file.js';
import { loadCheckpointSigner } from './ledger/checkpoint-signer.js';
import { LineageEngine } from './lineage/lineage-engine.js';
import { verifyContent } from './store/content-verifier.js';
import { openDatabase, type Database } from './store/database.js';
import { LineageStore } from './store/lineage-store.js';
import { guardStorage, type StorageGuard } from './store/storage-guard.js';
import { createTokenRegistry, type TokenRegistry } from './token-registry.js';
// A Struct key `__proto__` (a step parameter) is kept as an own property, not dropped.
import '../common/struct-own-keys.js';

export type CoordinatorState = 'NEW' | 'STARTING' | 'RUNNING' | 'STOPPING' | 'STOPPED' | 'FAILED';

/** Where a started coordinator listens. */
export interface CoordinatorAddresses {
  grpc: string;
  http: string;
}

/** A feature that adds services, routes and a lifecycle to the coordinator (mesh, replay...). */
export interface CoordinatorExtension {
  name: string;
  services?: ServiceMount[];
  routes?: Route[];
  start?(): Promise<void>;
  stop?(): Promise<void>;
  /**
   * The content hash of the version of `objectId` this extension holds as current (a pipeline's
   * current record), or undefined for an object it keeps none of. GetRecordPath without a hash
   * or a time shows that version rather than the newest one first seen.
   */
  currentVersion?(objectId: string): Promise<string | undefined>;
}

/** What an extension factory gets: the open database and the lineage engine. */
export interface CoordinatorContext {
  db: Database;
  lineage: LineageEngine;
  clock: NanoClock;
  dataDir: string | null;
  log: (line: string) => void;
  /**
   * Whether a named token (tokens.json) called `name` exists now; false for `owner` and for a
   * revoked name. What the mesh asks before it refuses a node bound to another agent token.
   */
  hasTokenNamed(name: string): boolean;
  /**
   * Calls `listener` each time the store takes writes again after a full data dir refused them
   * (never for a data dir that was not full, nor on the in-memory store); returns the unsubscribe.
   * Work a refused write cut off resumes on it rather than on a timer or the next request.
   */
  onStoreWritable(listener: () => void): () => void;
}

export type ExtensionFactory = (ctx: CoordinatorContext) => CoordinatorExtension | Promise<CoordinatorExtension>;

/**
 * The control plane: LevelDB under the data dir, the lineage ledger and index, the gRPC server
 * (lineage + extensions, health, reflection) and the HTTP face (OpenLineage). Explicit
 * lifecycle: start() once, stop() once; illegal transitions throw.
 */
export class Coordinator {
  private state: CoordinatorState = 'NEW';
  private readonly options: CompiledCoordinatorOptions;
  private db: Database | undefined;
  private storageGuard: StorageGuard | undefined;
  private engine: LineageEngine | undefined;
  private grpcServer: GrpcServer | undefined;
  private httpServer: HttpServer | HttpsServer | undefined;
  private extensions: CoordinatorExtension[] = [];
  private token = '';
  private tokens: TokenRegistry | undefined;
  addresses: CoordinatorAddresses | undefined;

  constructor(options: CoordinatorOptions, private readonly extensionFactories: readonly ExtensionFactory[] = []) {
    this.options = compileCoordinatorOptions(options);
  }

  get lineage(): LineageEngine {
    if (!this.engine) throw new FailedPreconditionError(`coordinator is ${this.state}`);
    return this.engine;
  }

  /** The data dir's write guard (see guardStorage); undefined for an in-memory coordinator or before start(). */
  get storage(): StorageGuard | undefined {
    return this.storageGuard;
  }

  get authToken(): string {
    return this.token;
  }

  async start(): Promise<CoordinatorAddresses> {
    this.transition('NEW', 'STARTING');
    const { dataDir, log, tls } = this.options;
    if (this.options.cleartextRemote) {
      log('coordinator: WARNING: --allow-remote without TLS: bearer tokens and data cross the network in cleartext; use --tls-cert FILE --tls-key FILE');
    }
    try {
      if (dataDir !== null) {
        makeDataDir(dataDir);
        // LevelDB makes its folder with the process umask (0755): in a data dir that others can
        // enter (one an operator made, or ./.retrace made by `retrace agent`) they could read the
        // ledger, every payload and every bundle. Made here first, for this user only; one an
        // earlier version made that way is closed, as PostgreSQL insists on for its data dir.
        const dbDir = join(dataDir, 'db');
        makeDataDir(dbDir);
        if ((statSync(dbDir).mode & 0o077) !== 0) {
          try {
            chmodSync(dbDir, 0o700);
            log(`coordinator: ${dbDir} was readable by other users; it is now mode 0700`);
          } catch (err) {
            // A file system without Unix modes: warn, the data is still there to serve.
            log(`coordinator: WARNING: ${dbDir} is readable by other users and could not be made 0700: ${(err as Error).message}`);
          }
        }
      }
      this.token = this.options.token ?? loadOrCreateToken(dataDir, log);
      // The owner token and the named ones of <data>/tokens.json, watched from here on.
      const tokens = createTokenRegistry({ ownerToken: this.token, dataDir, log });
      this.tokens = tokens;
      const authenticate = tokens.authenticate;
      this.db = await openDatabase(dataDir === null ? null : join(dataDir, 'db'), { writeBufferBytes: this.options.dbWriteBufferBytes });
      if (dataDir !== null) this.storageGuard = guardStorage(this.db, { dir: join(dataDir, 'db'), log, probeIntervalMs: this.options.storageProbeIntervalMs });
      const db = this.db;
      const store = new LineageStore(this.db);
      const signer = loadCheckpointSigner(dataDir);
      const clock = createSystemClock();
      this.engine = new LineageEngine({ store, signer, clock, log, ...(dataDir !== null ? { checkpointFile: createCheckpointFileWriter(dataDir) } : {}) });
      await this.engine.start();
      if (dataDir !== null) await this.checkLedgerLoss(this.engine, dataDir);
      const guard = this.storageGuard;
      const onStoreWritable = (listener: () => void): (() => void) => guard?.onChange((state) => state === 'WRITABLE' && listener()) ?? (() => {});
      const ctx: CoordinatorContext = { db: this.db, lineage: this.engine, clock, dataDir, log, hasTokenNamed: (name) => tokens.hasName(name), onStoreWritable };
      for (const factory of this.extensionFactories) this.extensions.push(await factory(ctx));
      for (const ext of this.extensions) await ext.start?.();

      const { server, health } = createGrpcServer({
        token: authenticate,
        log,
        publishReceiveTimeoutMs: this.options.publishReceiveTimeoutMs,
        services: [
          // The generated definition with SubmitEvents decoded by hand, so the ledger keeps each event's received bytes.
          {
            definition: LineageServiceWireDefinition,
            implementation: createLineageHandlers(this.engine, store, signer.publicKeyBase64, {
              ...(dataDir !== null ? { externalCheckpoint: () => readCheckpointFile(dataDir) } : {}),
              verifyContent: (signal) => verifyContent(db, { signal }),
              currentVersion: async (objectId) => {
                for (const ext of this.extensions) {
                  const hash = await ext.currentVersion?.(objectId);
                  if (hash !== undefined) return hash;
                }
                return undefined;
              },
            }),
          },
          ...this.extensions.flatMap((e) => e.services ?? []),
        ],
      });
      this.grpcServer = server;
      const { grpc, http } = this.options;
      const credentials = tls ? ServerCredentials.createSsl(null, [{ cert_chain: tls.cert, private_key: tls.key }], false) : ServerCredentials.createInsecure();
      const grpcPort = await server.listen(`${grpc.host}:${grpc.port}`, credentials);
      // NOT_SERVING while the data dir is full (every write fails), SERVING again once it is not.
      const storage = this.storageGuard;
      health.setStatus(storage?.state === 'FULL' ? 'unhealthy' : 'healthy');
      storage?.onChange((state) => health.setStatus(state === 'FULL' ? 'unhealthy' : 'healthy'));

      const marquez = createMarquezRoutes(this.engine);
      const routes = [...createOpenLineageRoutes(this.engine, marquez.nodeTimes), ...marquez.routes, ...this.extensions.flatMap((e) => e.routes ?? [])];
      this.httpServer = createHttpServer(routes, { token: authenticate, log, tls });
      const httpServer = this.httpServer;
      await new Promise<void>((resolve, reject) => {
        httpServer.once('error', reject);
        httpServer.listen(http.port, http.host.replace(/^\[|\]$/g, ''), () => resolve());
      });
      const httpPort = (httpServer.address() as AddressInfo).port;
      this.addresses = { grpc: `${grpc.host}:${grpcPort}`, http: `${http.host}:${httpPort}` };
      this.transition('STARTING', 'RUNNING');
      log(`coordinator: listening grpc=${this.addresses.grpc} http=${this.addresses.http}${tls ? ' tls=on' : ''} data=${dataDir ?? '(memory)'}`);
      return this.addresses;
    } catch (err) {
      this.state = 'FAILED';
      await this.release();
      throw err;
    }
  }

  /** Stops accepting work, lets running calls finish (streams are cancelled), flushes and closes the store. */
  async stop(): Promise<void> {
    if (this.state === 'STOPPED' || this.state === 'STOPPING') return;
    this.transition(this.state === 'FAILED' ? 'FAILED' : 'RUNNING', 'STOPPING');
    await this.release();
    this.transition('STOPPING', 'STOPPED');
  }

  private async release(): Promise<void> {
    this.tokens?.close();
    const http = this.httpServer;
    if (http) {
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      });
    }
    // Extensions first: they end their long-lived streams (agents, watches), which would
    // otherwise hold the gRPC server's graceful shutdown.
    for (const ext of [...this.extensions].reverse()) await ext.stop?.().catch((err: unknown) => this.options.log(`coordinator: stopping ${ext.name} failed: ${String(err)}`));
    if (this.grpcServer) {
      const grpc = this.grpcServer;
      // Not only forced after 2 s but no longer waited for: grpc-js never settles a graceful
      // shutdown that meets a connection its client is dropping (a client whose TLS handshake
      // with this plaintext server just failed), and forceShutdown does not settle it either.
      let timer: NodeJS.Timeout | undefined;
      const forced = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          grpc.forceShutdown();
          resolve();
        }, 2000);
      });
      await Promise.race([grpc.shutdown(), forced]);
      clearTimeout(timer);
    }
    await this.engine?.stop();
    await this.storageGuard?.stop();
    await this.db?.close();
  }

  /**
   * Compares the recovered ledger with the checkpoint kept outside the database: a ledger that
   * lost or rewrote acknowledged entries refuses the start (FailedPreconditionError), unless
   * acceptLedgerLoss, which resets the file to the ledger's own latest checkpoint. A data dir
   * without the file (an older version's) gets it now.
   */
  private async checkLedgerLoss(engine: LineageEngine, dataDir: string): Promise<void> {
    const { log } = this.options;
    const external = readCheckpointFile(dataDir);
    const loss = external && (await engine.ledgerLoss(external));
    if (loss) {
      if (!this.options.acceptLedgerLoss) {
        throw new FailedPreconditionError(`${loss}. Refusing to start: restore the data dir from a backup, or start with --accept-ledger-loss to go on with the ledger as it is (the lost entries stay lost)`);
      }
      log(`coordinator: WARNING: ${loss}; going on as --accept-ledger-loss says: checkpoint.jsonl is reset to the ledger's own latest checkpoint`);
    }
    if (!external || loss) {
      const own = engine.latestCheckpoint;
      if (own) await writeCheckpointFile(dataDir, own);
      else await removeCheckpointFile(dataDir);
    }
  }

  private transition(from: CoordinatorState, to: CoordinatorState): void {
    if (this.state !== from) throw new FailedPreconditionError(`coordinator cannot go ${from} -> ${to}: it is ${this.state}`);
    this.options.log(`coordinator: ${from} -> ${to}`);
    this.state = to;
  }
}

/**
 * Creates the data directory and its missing parents, the new levels readable by this user only.
 * Not mkdirSync's `recursive`: in Node 20 it never returns for a path the kernel refuses with
 * ENOENT under a parent that exists (`--data /proc/nope`), so the coordinator hung at start.
 */
function makeDataDir(dir: string): void {
  const missing: string[] = [];
  for (let p = resolve(dir); !existsSync(p) && dirname(p) !== p; p = dirname(p)) missing.push(p);
  try {
    for (const p of missing.reverse()) {
      try {
        mkdirSync(p, { mode: 0o700 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
  } catch (err) {
    throw new InvalidArgumentError('data', `cannot create the directory ${JSON.stringify(dir)}: ${(err as Error).message}`);
  }
}

/** The token clients and agents present; created on first start, readable by the owner only. */
export function loadOrCreateToken(dataDir: string | null, log: (line: string) => void = () => {}): string {
  if (dataDir === null) return randomBytes(24).toString('hex');
  const file = join(dataDir, 'auth-token');
  if (existsSync(file)) {
    // An operator may have written the file: it is held to the rule a --token option is.
    const token = readFileSync(file, 'utf8').trim();
    if (token.length < 16) throw new InvalidArgumentError('token', `${file} holds ${token.length === 0 ? 'no token' : 'a token shorter than 16 characters'}; put one of at least 16 in it, or delete it to have one made`);
    if ((statSync(file).mode & 0o077) !== 0) log(`coordinator: ${file} can be read by other users (mode ${(statSync(file).mode & 0o777).toString(8)}); chmod 600 it`);
    return token;
  }
  const token = randomBytes(24).toString('hex');
  writeFileSync(file, `${token}\n`, { mode: 0o600, flag: 'wx' });
  return token;
}
