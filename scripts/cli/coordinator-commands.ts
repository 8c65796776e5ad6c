import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Coordinator } from '../../coordinator/coordinator.js';
import { verifyLedger } from '../../coordinator/ledger/ledger-verifier.js';
import { readCheckpointFile } from '../../coordinator/ledger/checkpoint-file.js';
import { readPublicKey } from '../../coordinator/ledger/checkpoint-signer.js';
import { verifyContent } from '../../coordinator/store/content-verifier.js';
import { openDatabase } from '../../coordinator/store/database.js';
import { LineageStore } from '../../coordinator/store/lineage-store.js';
import { LineageServiceDefinition, type ContentCheck } from '../../common/gen/retrace/v1/lineage.js';
import { RetraceError } from '../../common/errors.js';
import { flag, hasFlag, UsageError, type CliCommand } from './command.js';
import { openClient, readNamedFile } from './client.js';
import { COORDINATOR_FEATURE_USAGE, coordinatorExtensions, coordinatorFlags, coordinatorOptionFlags, PUBLISH_RECEIVE_TIMEOUT_USAGE } from './coordinator-extensions.js';
import { progressBar, toJson } from './format.js';

/**
 * Starts `c`, turning a port that is taken into one line naming the flag and the address
 * (`--grpc 127.0.0.1:7700: address already in use ...`) instead of grpc-js's "No address added
 * out of total 1 resolved errors" reported as unexpected: the usual cause is a second
 * `retrace start` or coordinator on the default ports. Other errors pass through unchanged.
 */
export async function startCoordinator(c: Coordinator, listen: { grpc: string; http: string }): Promise<Awaited<ReturnType<Coordinator['start']>>> {
  try {
    return await c.start();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (!/EADDRINUSE/.test(message) && (err as { code?: unknown }).code !== 'EADDRINUSE') throw err;
    // grpc-js says "No address added ..."; the HTTP server's own error is a plain EADDRINUSE.
    const [name, address] = /No address added/.test(message) ? ['--grpc', listen.grpc] : ['--http', listen.http];
    throw new RetraceError(
      'FAILED_PRECONDITION',
      `${name} ${address}: address already in use (another coordinator or retrace start is running?); stop it, or pick another port (0 picks a free one)`,
      { cause: err },
    );
  }
}

const coordinator: CliCommand = {
  path: ['coordinator'],
  stopsOnSignal: true,
  summary: 'start the coordinator (LevelDB store, gRPC and OpenLineage HTTP)',
  usage: `retrace coordinator [--data DIR] [--grpc HOST:PORT] [--http HOST:PORT] [--allow-remote] [--tls-cert FILE --tls-key FILE]
                    [--payload-retention DURATION] [--watch-root DIR ...] [--accept-ledger-loss] [--db-write-buffer-mib N]
                    [--publish-receive-timeout DURATION]
  defaults: --data ./.retrace --grpc 127.0.0.1:7700 --http 127.0.0.1:7780; port 0 picks a free port.
  --tls-cert/--tls-key: PEM certificate (chain) and private key; gRPC and the HTTP API then serve TLS
  (clients pass --tls-ca). --allow-remote without them sends tokens in cleartext (warned on stderr).
  --accept-ledger-loss: start although the ledger is shorter than (or differs from) DIR/checkpoint.jsonl,
  the last signed checkpoint kept outside the database (acknowledged entries were lost); without it
  the coordinator refuses to start on such a data dir.
  --db-write-buffer-mib: LevelDB's memtable, 1 to 1024 MiB (default 64); it may hold twice this in memory.
${PUBLISH_RECEIVE_TIMEOUT_USAGE}
${COORDINATOR_FEATURE_USAGE}
  Prints {"grpc":"HOST:PORT","http":"HOST:PORT"} on stdout once listening; stops on SIGINT/SIGTERM.`,
  booleans: ['allow-remote', 'accept-ledger-loss'],
  integers: { 'db-write-buffer-mib': 'uint32' },
  async run(args, io) {
    const features = coordinatorFlags(args);
    const certFile = flag(args, 'tls-cert');
    const keyFile = flag(args, 'tls-key');
    if ((certFile === undefined) !== (keyFile === undefined)) throw new UsageError(certFile === undefined ? '--tls-key needs --tls-cert' : '--tls-cert needs --tls-key');
    const listen = { grpc: flag(args, 'grpc', '127.0.0.1:7700') as string, http: flag(args, 'http', '127.0.0.1:7780') as string };
    const c = new Coordinator(
      {
        dataDir: flag(args, 'data', './.retrace') as string,
        grpc: listen.grpc,
        http: listen.http,
        allowRemote: hasFlag(args, 'allow-remote'),
        ...coordinatorOptionFlags(args),
        ...(certFile !== undefined && keyFile !== undefined ? { tls: { cert: readNamedFile('--tls-cert', certFile), key: readNamedFile('--tls-key', keyFile) } } : {}),
      },
      coordinatorExtensions({}, features),
    );
    const addresses = await startCoordinator(c, listen);
    io.stdout.write(`${JSON.stringify(addresses)}\n`);
    await new Promise<void>((r) => (io.signal.aborted ? r() : io.signal.addEventListener('abort', () => r(), { once: true })));
    await c.stop();
    return 0;
  },
};

interface VerifyOutput {
  ok: boolean;
  entriesChecked: string;
  firstBadSeq?: string;
  problem?: string;
  treeSize?: string;
  /** One per kind of stored content; absent with --ledger-only. */
  content?: ContentCheck[];
}

const verify: CliCommand = {
  path: ['verify'],
  summary: 'recompute the ledger hash chain, Merkle tree and indexes and re-hash stored content; non-zero exit when altered',
  usage: `retrace verify [--data DIR] [--ledger-only]        offline, with the coordinator stopped (default ./.retrace)
       retrace verify --coordinator HOST:PORT [--ledger-only]   online, through VerifyLedger
  Checks the ledger against its signed checkpoints and against DIR/checkpoint.jsonl (the latest one,
  kept outside the database: a ledger shorter than it lost acknowledged entries), then every payload
  block and code bundle (SHA-256 of the bytes = its key), code version records and pipeline versions
  (they parse, and their steps' code versions are stored). Names the first bad entry, and the first
  bad key of each kind. --ledger-only skips the content (payloads can be large).
  --json for the report as JSON`,
  booleans: ['ledger-only'],
  async run(args, io) {
    let report: VerifyOutput;
    const ledgerOnly = hasFlag(args, 'ledger-only');
    if (flag(args, 'coordinator') !== undefined) {
      const { client, close } = openClient(LineageServiceDefinition, args);
      try {
        const r = await client.verifyLedger({ ledgerOnly }, { signal: io.signal });
        const ledgerOk = r.problem === '';
        report = {
          ok: r.ok,
          entriesChecked: r.entriesChecked,
          firstBadSeq: ledgerOk ? undefined : r.firstBadSeq,
          problem: r.problem || undefined,
          treeSize: r.checkpoint?.treeSize,
          ...(ledgerOnly ? {} : { content: r.content }),
        };
      } finally {
        close();
      }
    } else {
      const dataDir = resolve(flag(args, 'data', './.retrace') as string);
      // A mistyped path must not verify as an empty, untampered ledger (nor leave one behind).
      if (!existsSync(join(dataDir, 'db'))) throw new UsageError(`--data: no Retrace data in ${dataDir} (no ${join(dataDir, 'db')})`);
      let db;
      try {
        db = await openDatabase(join(dataDir, 'db'), { createIfMissing: false });
      } catch (err) {
        const inUse = /in use by another process/.test((err as Error).message);
        throw new RetraceError('FAILED_PRECONDITION', `${(err as Error).message}${inUse ? '. Stop it, or verify online with --coordinator HOST:PORT' : ''}`);
      }
      try {
        const publicKey = readPublicKey(dataDir);
        let external;
        let externalProblem: string | undefined;
        try {
          external = readCheckpointFile(dataDir);
        } catch (err) {
          externalProblem = (err as Error).message;
        }
        const store = new LineageStore(db);
        const total = await progressTotal(store);
        const r = await verifyLedger(store, {
          ...(publicKey ? { publicKey } : {}),
          ...(external ? { external } : {}),
          onProgress: (n) => io.stderr.write(`\r${total > 0 ? progressBar(Number(n), total, 30, `${n}/${total} ledger entries`) : `verified ${n} entries`}\u001b[K`),
        });
        io.stderr.write('\r\u001b[K');
        const ledger = externalProblem !== undefined && r.ok ? { ...r, ok: false, firstBadSeq: 0n, problem: externalProblem } : r;
        const content = ledgerOnly
          ? undefined
          : await verifyContent(db, {
              signal: io.signal,
              onProgress: (kind, n, bytes) => io.stderr.write(`\rchecked ${n} ${kind.replace('_', ' ')} (${formatBytes(bytes)})\u001b[K`),
            });
        if (content) io.stderr.write('\r\u001b[K');
        report = {
          ok: ledger.ok && (content ?? []).every((c) => c.problem === ''),
          entriesChecked: ledger.entriesChecked.toString(),
          firstBadSeq: ledger.ok ? undefined : ledger.firstBadSeq?.toString(),
          problem: ledger.problem,
          treeSize: ledger.checkpoint?.treeSize,
          ...(content ? { content } : {}),
        };
      } finally {
        await db.close();
      }
    }
    if (hasFlag(args, 'json')) {
      io.stdout.write(toJson(report));
      return report.ok ? 0 : 1;
    }
    if (report.problem === undefined) io.stdout.write(`ok: ${report.entriesChecked} entries; chain, Merkle root and indexes match the signed checkpoint at tree size ${report.treeSize ?? 0}\n`);
    else io.stdout.write(`TAMPERED: first bad entry ${report.firstBadSeq}: ${report.problem}\n`);
    for (const c of report.content ?? []) {
      const what = `${c.checked} ${c.kind.replace('_', ' ')}${c.bytes !== '0' ? ` (${formatBytes(Number(c.bytes))})` : ''}`;
      if (c.problem === '') io.stdout.write(`ok: ${what}\n`);
      else io.stdout.write(`TAMPERED: ${c.kind.replace('_', ' ')}: first bad key ${c.firstBadKey}: ${c.problem}\n`);
    }
    return report.ok ? 0 : 1;
  },
};

/**
 * The ledger progress bar's total: the latest checkpoint's tree size (each commit group writes
 * one with its entries); 0 (a count, no bar) when there is none or it does not parse, which
 * the verification itself then reports.
 */
async function progressTotal(store: LineageStore): Promise<number> {
  try {
    const size = Number((JSON.parse((await store.latestCheckpoint()) ?? '{}') as { treeSize?: unknown }).treeSize);
    return Number.isSafeInteger(size) && size > 0 ? size : 0;
  } catch {
    return 0;
  }
}

function formatBytes(n: number): string {
  return n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export const commands: CliCommand[] = [coordinator, verify];
