import { isIPv4 } from 'node:net';
import { resolve } from 'node:path';
import { createSecureContext } from 'node:tls';
import { InvalidArgumentError } from '../common/errors.js';
import { PUBLISH_RECEIVE_TIMEOUT_MS } from './grpc/publish-budget.js';

/** What an operator may set (CLI flags map onto these). */
export interface CoordinatorOptions {
  /** Data directory; null keeps everything in memory (tests). Default "./.retrace". */
  dataDir?: string | null;
  /** gRPC listen address, default "127.0.0.1:7700"; port 0 picks a free port. */
  grpc?: string;
  /** HTTP listen address, default "127.0.0.1:7780"; port 0 picks a free port. */
  http?: string;
  /** Allow listening beyond loopback. Default false. */
  allowRemote?: boolean;
  /** Auth token; default: read or create `<dataDir>/auth-token`. */
  token?: string;
  /**
   * TLS for both listeners (gRPC and HTTPS): a PEM certificate (chain) and its PEM private key,
   * as bytes (the caller reads the files). Default: plaintext.
   */
  tls?: { cert: Buffer; key: Buffer };
  /** How often a data dir that ran out of space is checked for room again, in ms. Default 1000. */
  storageProbeIntervalMs?: number;
  /** How long a PublishCode call let into the publish budget may take to deliver its bundle, in ms. Default 5 min (publish-budget.ts). */
  publishReceiveTimeoutMs?: number;
  /**
   * Start even though the ledger is shorter than (or differs from) the checkpoint kept in
   * `<dataDir>/checkpoint.jsonl`: acknowledged entries were lost. Default false: start refuses.
   * The file is then reset to the ledger's own latest checkpoint, so it takes effect once.
   */
  acceptLedgerLoss?: boolean;
  /**
   * LevelDB's memtable, in MiB: writes gather there before they are flushed into a level-0 table.
   * Default 64 (RocksDB's default; LevelDB's own is 4). The database may hold up to twice this in
   * memory, and replays a log of up to this size when it opens after a crash.
   */
  dbWriteBufferMiB?: number;
  log?: (line: string) => void;
}

export interface CompiledCoordinatorOptions {
  readonly dataDir: string | null;
  readonly grpc: { readonly host: string; readonly port: number };
  readonly http: { readonly host: string; readonly port: number };
  readonly token: string | undefined;
  readonly tls: { readonly cert: Buffer; readonly key: Buffer } | undefined;
  /** Listening beyond loopback was allowed without TLS: tokens would cross the network in cleartext. */
  readonly cleartextRemote: boolean;
  readonly storageProbeIntervalMs: number;
  readonly publishReceiveTimeoutMs: number;
  readonly acceptLedgerLoss: boolean;
  readonly dbWriteBufferBytes: number;
  readonly log: (line: string) => void;
}

const LOOPBACK = new Set(['localhost', '::1', '[::1]']);

/** Whether a listen host is this machine only: localhost, ::1, or any IPv4 address of 127.0.0.0/8. */
function isLoopback(host: string): boolean {
  return LOOPBACK.has(host) || (isIPv4(host) && host.startsWith('127.'));
}

/** Validates and defaults once; the rest of the coordinator never re-checks. */
export function compileCoordinatorOptions(o: CoordinatorOptions): CompiledCoordinatorOptions {
  const grpc = parseAddress(o.grpc ?? '127.0.0.1:7700', 'grpc');
  const http = parseAddress(o.http ?? '127.0.0.1:7780', 'http');
  for (const [field, a] of [['grpc', grpc], ['http', http]] as const) {
    if (!o.allowRemote && !isLoopback(a.host)) {
      throw new InvalidArgumentError(field, `${a.host} is not a loopback address; pass --allow-remote to listen beyond this machine`);
    }
  }
  if (o.token !== undefined && o.token.length < 16) throw new InvalidArgumentError('token', 'must be at least 16 characters');
  if (o.tls) checkKeyPair(o.tls.cert, o.tls.key);
  const probeMs = o.storageProbeIntervalMs ?? 1000;
  if (!Number.isInteger(probeMs) || probeMs < 1) throw new InvalidArgumentError('storageProbeIntervalMs', `expected a whole number of ms, at least 1, got ${probeMs}`);
  const publishMs = o.publishReceiveTimeoutMs ?? PUBLISH_RECEIVE_TIMEOUT_MS;
  if (!Number.isInteger(publishMs) || publishMs < 1) throw new InvalidArgumentError('publishReceiveTimeoutMs', `expected a whole number of ms, at least 1, got ${publishMs}`);
  // Capture writes ~6 KB of rows per pipeline record, spread over the whole key space, so each
  // small level-0 table overlaps all of level 1 and its compaction rewrites that: with LevelDB's
  // 4 MiB, its compaction thread used more CPU than capture's whole path on the main thread
  // (bench capture-overhead).
  const bufferMiB = o.dbWriteBufferMiB ?? 64;
  if (!Number.isInteger(bufferMiB) || bufferMiB < 1 || bufferMiB > 1024) throw new InvalidArgumentError('dbWriteBufferMiB', `expected a whole number of MiB from 1 to 1024, got ${bufferMiB}`);
  return Object.freeze({
    dataDir: o.dataDir === null ? null : resolve(o.dataDir ?? './.retrace'),
    grpc: Object.freeze(grpc),
    http: Object.freeze(http),
    token: o.token,
    tls: o.tls ? Object.freeze({ cert: o.tls.cert, key: o.tls.key }) : undefined,
    cleartextRemote: o.allowRemote === true && !o.tls,
    storageProbeIntervalMs: probeMs,
    publishReceiveTimeoutMs: publishMs,
    acceptLedgerLoss: o.acceptLedgerLoss === true,
    dbWriteBufferBytes: bufferMiB * 2 ** 20,
    log: o.log ?? ((line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`)),
  });
}

/**
 * Refuses a certificate or key that does not parse, or a key that is not the certificate's, here
 * rather than at the first handshake: grpc-js and node:https would start listening with them.
 */
function checkKeyPair(cert: Buffer, key: Buffer): void {
  const attempt = (field: string, what: string, options: { cert?: Buffer; key?: Buffer }): void => {
    try {
      createSecureContext(options);
    } catch (err) {
      throw new InvalidArgumentError(field, `${what}: ${(err as Error).message}`, err);
    }
  };
  attempt('tls-cert', 'not a PEM certificate', { cert });
  attempt('tls-key', 'not a PEM private key', { key });
  attempt('tls-key', 'does not match the certificate of --tls-cert', { cert, key });
}

/** "HOST:PORT" (IPv6 in brackets) to parts. */
export function parseAddress(text: string, field: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:]+\]|[^:]+):(\d{1,5})$/.exec(text);
  if (!m) throw new InvalidArgumentError(field, `expected HOST:PORT, got ${JSON.stringify(text)}`);
  const port = Number(m[2]);
  if (port > 65535) throw new InvalidArgumentError(field, `port ${port} out of range`);
  return { host: m[1] as string, port };
}
