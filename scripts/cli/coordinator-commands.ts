import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Coordinator } from '../../coordinator/coordinator.js';
import { verifyLedger } from '../../coordinator/ledger/ledger-verifier.js';
import { readPublicKey } from '../../coordinator/ledger/checkpoint-signer.js';
import { openDatabase } from '../../coordinator/store/database.js';
import { LineageStore } from '../../coordinator/store/lineage-store.js';
import { LineageServiceDefinition } from '../../common/gen/retrace/v1/lineage.js';
import { RetraceError } from '../../common/errors.js';
import { flag, hasFlag, UsageError, type CliCommand } from './command.js';
import { openClient, readNamedFile } from './client.js';
import { COORDINATOR_FEATURE_USAGE, coordinatorExtensions, coordinatorFlags } from './coordinator-extensions.js';
import { toJson } from './format.js';

const coordinator: CliCommand = {
  path: ['coordinator'],
  stopsOnSignal: true,
  summary: 'start the coordinator (LevelDB store, gRPC and OpenLineage HTTP)',
  usage: `retrace coordinator [--data DIR] [--grpc HOST:PORT] [--http HOST:PORT] [--allow-remote] [--tls-cert FILE --tls-key FILE]
                    [--payload-retention DURATION] [--watch-root DIR ...]
  defaults: --data ./.retrace --grpc 127.0.0.1:7700 --http 127.0.0.1:7780; port 0 picks a free port.
  --tls-cert/--tls-key: PEM certificate (chain) and private key; gRPC and the HTTP API then serve TLS
  (clients pass --tls-ca). --allow-remote without them sends tokens in cleartext (warned on stderr).
${COORDINATOR_FEATURE_USAGE}
  Prints {"grpc":"HOST:PORT","http":"HOST:PORT"} on stdout once listening; stops on SIGINT/SIGTERM.`,
  booleans: ['allow-remote'],
  async run(args, io) {
    const features = coordinatorFlags(args);
    const certFile = flag(args, 'tls-cert');
    const keyFile = flag(args, 'tls-key');
    if ((certFile === undefined) !== (keyFile === undefined)) throw new UsageError(certFile === undefined ? '--tls-key needs --tls-cert' : '--tls-cert needs --tls-key');
    const c = new Coordinator(
      {
        dataDir: flag(args, 'data', './.retrace') as string,
        grpc: flag(args, 'grpc', '127.0.0.1:7700') as string,
        http: flag(args, 'http', '127.0.0.1:7780') as string,
        allowRemote: hasFlag(args, 'allow-remote'),
        ...(certFile !== undefined && keyFile !== undefined ? { tls: { cert: readNamedFile('--tls-cert', certFile), key: readNamedFile('--tls-key', keyFile) } } : {}),
      },
      coordinatorExtensions({}, features),
    );
    const addresses = await c.start();
    io.stdout.write(`${JSON.stringify(addresses)}\n`);
    await new Promise<void>((r) => (io.signal.aborted ? r() : io.signal.addEventListener('abort', () => r(), { once: true })));
    await c.stop();
    return 0;
  },
};

const verify: CliCommand = {
  path: ['verify'],
  summary: 'recompute the ledger hash chain, Merkle tree and indexes; non-zero exit when altered',
  usage: 'retrace verify [--data DIR]        offline, with the coordinator stopped (default ./.retrace)\n       retrace verify --coordinator HOST:PORT   online, through VerifyLedger\n  --json for the report as JSON',
  async run(args, io) {
    let report: { ok: boolean; entriesChecked: string; firstBadSeq?: string; problem?: string; treeSize?: string };
    if (flag(args, 'coordinator') !== undefined) {
      const { client, close } = openClient(LineageServiceDefinition, args);
      try {
        const r = await client.verifyLedger({}, { signal: io.signal });
        report = { ok: r.ok, entriesChecked: r.entriesChecked, firstBadSeq: r.ok ? undefined : r.firstBadSeq, problem: r.problem || undefined, treeSize: r.checkpoint?.treeSize };
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
        const r = await verifyLedger(new LineageStore(db), {
          ...(publicKey ? { publicKey } : {}),
          onProgress: (n) => io.stderr.write(`\rverified ${n} entries`),
        });
        io.stderr.write('\r');
        report = { ok: r.ok, entriesChecked: r.entriesChecked.toString(), firstBadSeq: r.firstBadSeq?.toString(), problem: r.problem, treeSize: r.checkpoint?.treeSize };
      } finally {
        await db.close();
      }
    }
    if (hasFlag(args, 'json')) io.stdout.write(toJson(report));
    else if (report.ok) io.stdout.write(`ok: ${report.entriesChecked} entries; chain, Merkle root and indexes match the signed checkpoint at tree size ${report.treeSize ?? 0}\n`);
    else io.stdout.write(`TAMPERED: first bad entry ${report.firstBadSeq}: ${report.problem}\n`);
    return report.ok ? 0 : 1;
  },
};

export const commands: CliCommand[] = [coordinator, verify];
