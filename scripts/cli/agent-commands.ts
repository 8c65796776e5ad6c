import { readFileSync } from 'node:fs';
import { lockDataDir, prepareDataDir } from '../../agent/identity-store.js';
import { runAgent } from '../../agent/run-agent.js';
import { parseAdvertise, parseByteSize, parseLabels } from '../../common/node-resources.js';
import { durationFlagMs, flag, flagAll, hasFlag, noMorePositionals, UsageError, type CliCommand } from './command.js';
import { DEFAULT_TOKEN_FILE, resolveTlsCa, resolveToken } from './client.js';

const USAGE = `retrace agent --coordinator HOST:PORT [--data DIR] [--label k=v ...] [--advertise k=v,...]
              [--report-interval 2s] [--link-probe-interval 2m] [--payload-cache 256MiB]
              [--token T | --token-file F] [--tls-ca FILE] [--exit-with-parent]

Runs this host as a node of the mesh until SIGTERM/SIGINT, then leaves cleanly.
  --coordinator      the coordinator's gRPC address (required)
  --data DIR         keeps the node identity (default ./.retrace/agent): same dir, same node id
  --label k=v        placement labels, repeatable (also k=v,k2=v2)
  --advertise ...    declared capacity, reported as DECLARED next to what is measured:
                     gpu=1,memory=64GiB,cpu=8,disk=500GiB,tpu=4,net=10Gbps,gpu.0.model=A100
  --report-interval  resource report period (default 2s)
  --link-probe-interval  period of the bandwidth/RTT measurement to the coordinator (default 2m, 0 = off)
  --payload-cache    memory for inputs and outputs of 64 KiB or more that later shards here may use
                     by reference, so they cross the network once (default 256MiB, 0 = off)
  --token / --token-file / env RETRACE_TOKEN   bearer token (default: ${DEFAULT_TOKEN_FILE} if present);
                     --token-file - reads it from stdin, which keeps it out of the command line and environment
  --tls-ca FILE / env RETRACE_TLS_CA   PEM CA for a coordinator started with --tls-cert: connect over TLS
  --exit-with-parent leave cleanly, as on SIGTERM, once the process that started this one has exited
                     (what \`retrace start\` and \`retrace demo\` give their local agents)
Prints {"nodeId": ...} on stdout once registered; logs JSON lines on stderr.`;

function agentVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string }).version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/** `retrace agent`. */
export const commands: CliCommand[] = [
  {
    path: ['agent'],
    stopsOnSignal: true,
    booleans: ['exit-with-parent'],
    summary: 'run this host as a node of the mesh (resource reports, identity, link probes)',
    usage: USAGE,
    async run(args, io) {
      const coordinator = flag(args, 'coordinator');
      if (!coordinator || coordinator === 'true') throw new UsageError('--coordinator HOST:PORT is required');
      noMorePositionals(args, 0);
      let labels: Record<string, string>;
      let advertised;
      let payloadCacheBytes: number | undefined;
      try {
        labels = parseLabels(flagAll(args, 'label'), '--label');
        advertised = parseAdvertise(flagAll(args, 'advertise'), '--advertise');
        const cache = flag(args, 'payload-cache');
        if (cache !== undefined) payloadCacheBytes = parseByteSize(cache, '--payload-cache');
      } catch (err) {
        throw new UsageError((err as Error).message);
      }
      const dataDir = flag(args, 'data', './.retrace/agent') as string;
      // Here rather than only in the runtime, so the error names the flag the user typed.
      await prepareDataDir(dataDir, '--data');
      // One agent per data dir: the dir is the node's identity.
      const unlock = await lockDataDir(dataDir, '--data');
      const stop = new AbortController();
      const stopOnSignal = (): void => stop.abort(io.signal.reason);
      io.signal.addEventListener('abort', stopOnSignal, { once: true });
      if (io.signal.aborted) stopOnSignal();
      // A parent killed outright (SIGKILL, a crash) cannot stop its children: without this, the
      // local agents of a killed `retrace start` went on running, retrying a coordinator that was gone.
      // An orphan is adopted by another process, so its parent pid changes.
      const parent = process.ppid;
      const orphanCheck = hasFlag(args, 'exit-with-parent')
        ? setInterval(() => {
            if (process.ppid !== parent) stop.abort(new Error('parent process exited'));
          }, 500)
        : undefined;
      orphanCheck?.unref();
      try {
        return await runAgent(
          {
            coordinator,
            dataDir,
            token: resolveToken(args, { defaultFile: DEFAULT_TOKEN_FILE }),
            tlsCa: resolveTlsCa(args),
            labels,
            advertised,
            reportIntervalMs: durationFlagMs(args, 'report-interval', { minMs: 50 }) ?? 2000,
            linkProbeIntervalMs: durationFlagMs(args, 'link-probe-interval', { minMs: 100, zeroTurnsOff: true }) ?? 120_000,
            agentVersion: agentVersion(),
            ...(payloadCacheBytes === undefined ? {} : { executor: { payloadCacheBytes } }),
          },
          { ...io, signal: stop.signal },
        );
      } finally {
        await unlock();
        clearInterval(orphanCheck);
        io.signal.removeEventListener('abort', stopOnSignal);
      }
    },
  },
];
