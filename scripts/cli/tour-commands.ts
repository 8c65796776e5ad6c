import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { Coordinator, type CoordinatorAddresses } from '../../coordinator/coordinator.js';
import { openDatabase } from '../../coordinator/store/database.js';
import { LineageStore, seqKey } from '../../coordinator/store/lineage-store.js';
import { LineageServiceDefinition } from '../../common/gen/retrace/v1/lineage.js';
import { flag, type CliCommand, type CliIo } from './command.js';
import { openClient } from './client.js';
import { COORDINATOR_FEATURE_USAGE, coordinatorExtensions, coordinatorFlags, coordinatorOptionFlags } from './coordinator-extensions.js';
import { startCoordinator } from './coordinator-commands.js';
import { buildExampleLineage } from './example-lineage.js';
import { changeExampleRecords, runExamplePipeline } from './example-pipeline.js';
import { parseArgs } from './command.js';
import { startLocalAgents, stopLocalAgents, type LocalAgent } from './local-agents.js';

/** Submits the example pipeline's lineage through the coordinator's own gRPC API. */
async function fillExample(addresses: CoordinatorAddresses, token: string, io: CliIo): Promise<{ stored: number; total: number; report: string; firstOrder: string; secondOrder: string; runEventId: string }> {
  const example = buildExampleLineage();
  // Its own plaintext loopback coordinator: no RETRACE_TLS_CA kept for another one applies.
  const { client, close } = openClient(LineageServiceDefinition, parseArgs(['--coordinator', addresses.grpc, '--token', token]), { env: {} });
  try {
    const r = await client.submitEvents(
      (async function* () {
        yield { events: example.events };
      })(),
      { signal: io.signal },
    );
    return { stored: Number(r.accepted), total: example.events.length, report: example.report, firstOrder: example.firstOrder, secondOrder: example.secondOrder, runEventId: example.runEventId };
  } finally {
    close();
  }
}

const start: CliCommand = {
  path: ['start'],
  stopsOnSignal: true,
  summary: 'quick start: coordinator on ./.retrace with an example pipeline, until Ctrl-C',
  usage: `retrace start [--data DIR] [--grpc HOST:PORT] [--http HOST:PORT] [--payload-retention DURATION] [--watch-root DIR ...] [--accept-ledger-loss] [--db-write-buffer-mib N] [--publish-receive-timeout DURATION]\n${COORDINATOR_FEATURE_USAGE}\n  --accept-ledger-loss, --db-write-buffer-mib, --publish-receive-timeout: as for retrace coordinator.`,
  booleans: ['accept-ledger-loss'],
  integers: { 'db-write-buffer-mib': 'uint32' },
  async run(args, io) {
    const dataDir = flag(args, 'data', './.retrace') as string;
    const features = coordinatorFlags(args);
    const listen = { grpc: flag(args, 'grpc', '127.0.0.1:7700') as string, http: flag(args, 'http', '127.0.0.1:7780') as string };
    const c = new Coordinator({ dataDir, ...listen, ...coordinatorOptionFlags(args), log: () => {} }, coordinatorExtensions({}, features));
    const addresses = await startCoordinator(c, listen);
    let agents: LocalAgent[] = [];
    try {
      agents = await startLocalAgents(addresses.grpc, c.authToken, dataDir, [
        { name: 'local-1', labels: ['pool=local'] },
        { name: 'local-2', labels: ['pool=local'] },
      ]);
      const ex = await fillExample(addresses, c.authToken, io);
      const live = await runExamplePipeline(addresses.grpc, c.authToken, { signal: io.signal });
      // The Try lines work as printed: client commands find ./.retrace's token and 127.0.0.1:7700
      // by default, so other addresses or data dirs are spelled out on each line.
      const defaults = addresses.grpc === '127.0.0.1:7700' && resolve(dataDir) === resolve('./.retrace');
      const conn = defaults ? '' : ` --coordinator ${addresses.grpc} --token-file ${join(dataDir, 'auth-token')}`;
      // A changed order for the recompute line (the example's o1 had amount 7).
      const orderFile = join(dataDir, 'order-o1.json');
      writeFileSync(orderFile, `${JSON.stringify({ id: 1, amount: 70, currency: 'EUR' })}\n`);
      const tries: [cmd: string, why: string, ownConn?: boolean][] = [
        [`lineage trace object:${ex.firstOrder}`, 'everything one order fed'],
        [`lineage path ${ex.report}`, 'every step behind the report, with resources'],
        [`lineage trace object:${ex.report} --direction up --svg lineage.svg`, 'upstream closure, drawn (--dot for Graphviz)'],
        [`lineage trace object:${ex.firstOrder} object:${ex.secondOrder} --depth 2`, 'several closures, one TraceSession stream'],
        ['lineage runs', ''],
        [`lineage export object:${ex.firstOrder} --out prov.json`, 'W3C PROV-JSON'],
        // Without --coordinator, verify reads a data dir offline (the running coordinator holds it).
        [`token add analyst --role client${defaults ? '' : ` --data ${dataDir}`}`, 'a named token: reads and submits as "analyst", may not publish code (token list, token revoke)', true],
        [`verify --coordinator ${addresses.grpc}${defaults ? '' : ` --token-file ${join(dataDir, 'auth-token')}`}`, 'tamper check', true],
        ['nodes --watch', 'live inventory of the agents'],
        [`nodes history ${agents[0]?.nodeId ?? 'NODE'} --metric cpu --plot history.svg`, 'its stored samples, charted'],
        [`forecast ${agents[0]?.nodeId ?? 'NODE'} --metric cpu --horizon 10m --plot cpu.svg`, 'once the agents have reported for about 30 s (3 points at its 10 s step)'],
        ['lineage path record:orders/classify:o2', 'a live record: code version, node, measured resources'],
        [`replay start --record ${live.firstRecord} --watch`, 'replay one record; hashes compared'],
        ['replay start --window orders/raw 2026-01-01T00:00:00Z 2026-01-01T00:00:02Z --speed 2x --watch', ''],
        ['replay report REPLAY_ID --svg replay.svg', 'REPLAY_ID: the id replay start printed (replay list shows them); pacing and CPU against the original, charted'],
        ['replay start --last 100000d orders/raw --set classify.largeCents=2000 --watch', 'what-if'],
        [`replay start --last 100000d orders/raw --fault outage:${agents[1]?.nodeId ?? 'NODE'}:after=0s:for=10s --watch`, 'one agent\'s link cut: its shards run on the other'],
        ['pipeline list', ''],
        ['code list', ''],
        ['impact record:orders/raw:o1 --svg impact.svg', 'what a change of one order would recompute'],
        ['changes policy orders/raw manual', 'report changes only'],
        [`recompute --content record:orders/raw:o1=${orderFile} --watch`, 'executed / cached / cut off'],
        ['changes', 'detected changes'],
        ['jobs', 'recompute and replay jobs: states, retries, waiting reasons (jobs show JOB_ID)'],
        ...(features.pipelines?.payloadRetentionMs === undefined ? [] : [['payloads sweep --dry-run', 'what the payload retention would delete now'] as [string, string]]),
        ...(features.recompute?.watchRoots ?? []).slice(0, 1).map((root): [string, string] => [`watch ${root} --prefix file:`, 'each file under a --watch-root an object, each edit a change']),
        ['help', 'every command', true],
      ];
      const curl = `curl -s -H "Authorization: Bearer $(cat ${join(dataDir, 'auth-token')})"`;
      io.stdout.write(
        [
          `${JSON.stringify(addresses)}`,
          '',
          'Retrace is running (Ctrl-C stops it).',
          `  gRPC ${addresses.grpc}   HTTP http://${addresses.http}   data ${dataDir}   token ${dataDir}/auth-token`,
          `  agents: ${agents.map((a) => a.nodeId).join(', ')} (this machine, reporting every 2 s)`,
          `  recorded example: orders -> parse-order -> enrich-currency -> aggregate-daily (${ex.total} events, ${ex.stored} new)`,
          `  live pipeline "orders" (raw -> scale -> classify) ran on the agents: ${live.accepted} new records, run ${live.runId || '(already ingested)'}`,
          '',
          'Try, in another terminal here:',
          ...tries.map(([cmd, why, ownConn]) => `  npx retrace ${cmd}${ownConn ? '' : conn}${why ? `   # ${why}` : ''}`),
          `  ${curl} 'http://${addresses.http}/api/v1/lineage?nodeId=dataset:reports:daily-revenue&depth=2'`,
          `  ${curl} 'http://${addresses.http}/api/v1/search?q=revenue'   # Marquez's read API`,
          '',
        ].join('\n'),
      );
      await new Promise<void>((r) => (io.signal.aborted ? r() : io.signal.addEventListener('abort', () => r(), { once: true })));
    } finally {
      await stopLocalAgents(agents);
      await c.stop();
    }
    return 0;
  },
};

const demo: CliCommand = {
  path: ['demo'],
  summary: 'scripted end-to-end tour in a temporary data dir; exits 0 when every stop works',
  usage: 'retrace demo',
  async run(_args, io) {
    const { main } = await import('./main.js');
    const dataDir = mkdtempSync(join(tmpdir(), 'retrace-demo-'));
    const say = (text: string): void => void io.stdout.write(`\n== ${text}\n`);
    // Payloads are kept a second, so the tour can show a sweep; it sweeps only when asked.
    const retentionMs = 1000;
    // The one directory this tour's coordinator may watch (--watch-root).
    const watched = mkdtempSync(join(tmpdir(), 'retrace-demo-watched-'));
    writeFileSync(join(watched, 'rates.csv'), 'EUR,1\nUSD,0.92\n');
    const c = new Coordinator(
      { dataDir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} },
      coordinatorExtensions({}, { pipelines: { payloadRetentionMs: retentionMs, sweepIntervalMs: 3_600_000 }, recompute: { watchRoots: [watched] } }),
    );
    const failures: string[] = [];
    const step = async (title: string, argv: string[], expectCode = 0): Promise<string> => {
      // The token stays out of what the tour prints (terminal scrollback, CI logs).
      say(`${title}\n$ retrace ${argv.map((a, i) => (argv[i - 1] === '--token' ? '<token>' : a)).join(' ')}`);
      const out = new PassThrough();
      const chunks: Buffer[] = [];
      out.on('data', (d: Buffer) => chunks.push(d));
      const code = await main(argv, { stdout: out, stderr: out, signal: io.signal });
      const text = Buffer.concat(chunks).toString();
      io.stdout.write(text.split('\n').slice(0, 40).join('\n') + (text.split('\n').length > 40 ? '\n  …\n' : '\n'));
      if (code !== expectCode) failures.push(`${title}: exit ${code}, expected ${expectCode}`);
      return text;
    };
    // `token add` prints the new token once on stdout: the tour keeps it and shows only stderr.
    const makeToken = async (name: string, role: string, why: string): Promise<string> => {
      say(`${why}\n$ retrace token add ${name} --role ${role} --data ${dataDir}`);
      const out = new PassThrough();
      const err = new PassThrough();
      const printed: Buffer[] = [];
      const told: Buffer[] = [];
      out.on('data', (d: Buffer) => printed.push(d));
      err.on('data', (d: Buffer) => told.push(d));
      const code = await main(['token', 'add', name, '--role', role, '--data', dataDir], { stdout: out, stderr: err, signal: io.signal });
      io.stdout.write(`<token>\n${Buffer.concat(told).toString()}`);
      if (code !== 0) failures.push(`token add ${name}: exit ${code}`);
      return Buffer.concat(printed).toString().trim();
    };
    try {
      const addresses = await c.start();
      const conn = ['--coordinator', addresses.grpc, '--token', c.authToken];
      say(`coordinator on ${addresses.grpc} (gRPC) and http://${addresses.http}, LevelDB in ${dataDir}`);
      const ex = await fillExample(addresses, c.authToken, io);
      io.stdout.write(`submitted the example pipeline: ${ex.stored} events\n`);
      await step('Downstream of one order record', ['lineage', 'trace', `object:${ex.firstOrder}`, ...conn]);
      await step('The report, upstream, as objects, also drawn as an SVG (--dot gives Graphviz)', ['lineage', 'trace', `object:${ex.report}`, '--direction', 'up', '--svg', join(dataDir, 'lineage.svg'), ...conn]);
      if (!existsSync(join(dataDir, 'lineage.svg'))) failures.push('the lineage drawing was not written');
      await step('Two orders, two hops each, over one TraceSession stream', ['lineage', 'trace', `object:${ex.firstOrder}`, `object:${ex.secondOrder}`, '--depth', '2', ...conn]);
      await step('Processing path of the report (every step, code version, params, node, resources)', ['lineage', 'path', ex.report, ...conn]);
      await step('As of before the aggregate ran, the order fed nothing beyond enrichment', ['lineage', 'trace', `object:${ex.firstOrder}`, '--as-of', '2026-01-01T00:00:00.100Z', ...conn]);
      await step('Inclusion proof of one event against the signed checkpoint', ['lineage', 'proof', ex.runEventId, ...conn]);
      await step('Runs', ['lineage', 'runs', ...conn]);
      say('OpenLineage face: Marquez-shaped lineage of the report');
      const http = await fetch(`http://${addresses.http}/api/v1/lineage?nodeId=dataset:reports:daily-revenue&depth=1`, { headers: { authorization: `Bearer ${c.authToken}` } });
      const graph = ((await http.json()) as { graph?: unknown[] }).graph ?? [];
      io.stdout.write(`GET /api/v1/lineage?nodeId=dataset:reports:daily-revenue -> ${http.status}, ${graph.length} nodes\n`);
      if (http.status !== 200 || graph.length === 0) failures.push(`OpenLineage face: ${http.status} with ${graph.length} nodes, expected 200 with the report's graph`);
      say("Marquez's read API: the namespaces, and what one holds");
      const nsRes = await fetch(`http://${addresses.http}/api/v1/namespaces`, { headers: { authorization: `Bearer ${c.authToken}` } });
      const names = (((await nsRes.json()) as { namespaces?: { name: string }[] }).namespaces ?? []).map((n) => n.name);
      const dsRes = await fetch(`http://${addresses.http}/api/v1/namespaces/reports/datasets`, { headers: { authorization: `Bearer ${c.authToken}` } });
      const ds = (await dsRes.json()) as { totalCount?: number; datasets?: { name: string; versions: number }[] };
      io.stdout.write(`GET /api/v1/namespaces -> ${nsRes.status}: ${names.join(', ')}\nGET /api/v1/namespaces/reports/datasets -> ${dsRes.status}: ${(ds.datasets ?? []).map((d) => `${d.name} (${d.versions} version(s))`).join(', ')}\n`);
      if (nsRes.status !== 200 || !names.includes('reports') || dsRes.status !== 200 || !ds.totalCount) failures.push(`Marquez read API: ${nsRes.status} / ${dsRes.status}, expected the reports namespace and its datasets`);
      await step('Verify the ledger online', ['verify', ...conn]);

      const agentToken = await makeToken('demo-agents', 'agent', 'A token for the agents: role agent may only join the mesh and fetch published code');
      say('Two agents join with it: one measured as it is, one declaring a GPU and 64 GiB for tests and simulations');
      const agents = await startLocalAgents(addresses.grpc, agentToken, dataDir, [
        { name: 'demo-cpu', labels: ['pool=demo'], reportInterval: '300ms' },
        { name: 'demo-gpu', labels: ['pool=testing'], advertise: 'gpu=1,memory=64GiB', reportInterval: '300ms' },
      ]);
      try {
        await new Promise((r) => setTimeout(r, 2000));
        await step('Live inventory', ['nodes', ...conn]);
        const shown = await step('Declared values are reported as declared, never as measured', ['nodes', 'show', agents[1]?.nodeId ?? '', ...conn]);
        const boundToken = (JSON.parse(shown) as { boundToken?: string }).boundToken;
        io.stdout.write(`  "boundToken": ${JSON.stringify(boundToken)}: the agent token its node id is bound to (no other agent token may register it)\n`);
        if (boundToken !== 'demo-agents') failures.push(`nodes show: boundToken ${JSON.stringify(boundToken)}, expected "demo-agents"`);
        await step('Resource history kept per node and metric', ['nodes', 'history', agents[0]?.nodeId ?? '', '--metric', 'cpu', '--since', '1m', ...conn]);
        await step('Capacity forecast (short history: the backtest falls back to a baseline)', ['forecast', agents[0]?.nodeId ?? '', '--metric', 'cpu', '--horizon', '30s', ...conn]);
        say('Publish two transforms, apply the "orders" pipeline and ingest 20 orders: the agents run it and the coordinator records provenance');
        const live = await runExamplePipeline(addresses.grpc, c.authToken, { signal: io.signal });
        io.stdout.write(`ingested ${live.accepted} records (run ${live.runId}); code versions ${JSON.stringify(live.codeVersions)}\n`);
        await step('Processing path of one live record: code version, parameters, node and measured resources', ['lineage', 'path', 'record:orders/classify:o2', ...conn]);
        await step('Replay one record from provenance: original and replay hashes compared', ['replay', 'start', '--record', live.firstRecord, '--watch', ...conn]);
        const paced = await step('Replay a 1 s window at 2x on the GPU node only', ['replay', 'start', '--window', 'orders/raw', '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z', '--speed', '2x', '--gpu', 'only', '--watch', ...conn]);
        const pacedId = /^replay (replay-\S+): /m.exec(paced)?.[1] ?? '';
        await step('Its report charted: dispatch against due time, CPU against the original', ['replay', 'report', pacedId, '--svg', join(dataDir, 'replay.svg'), ...conn]);
        if (!existsSync(join(dataDir, 'replay.svg'))) failures.push('the replay chart was not written');
        await step('What-if: a lower "large" threshold; the report shows exactly which records change', ['replay', 'start', '--window', 'orders/raw', '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z', '--set', 'classify.largeCents=2000', '--watch', ...conn], 0);
        await step('Injected faults: corrupted inputs are detected and reported (exit 1 expected)', ['replay', 'start', '--record', live.firstRecord, '--fault', 'corrupt:1', '--seed', '4', '--watch', ...conn], 1);
        const cut = agents[1]?.nodeId ?? '';
        const outage = await step(`Injected faults: the link of ${cut} is cut for the whole replay; every shard runs on the other agent`, ['replay', 'start', '--window', 'orders/raw', '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z', '--fault', `outage:${cut}:after=0s:for=10s`, '--watch', ...conn]);
        const placed = /placements (\{.*\})$/m.exec(outage)?.[1];
        if (placed === undefined || cut in (JSON.parse(placed) as Record<string, number>)) failures.push(`the replay with ${cut}'s link cut: placements ${placed ?? 'not shown'}`);
        await step('Replays so far', ['replay', 'list', ...conn]);
        await step('Recompute: changes to orders/raw are only reported from now on (manual policy)', ['changes', 'policy', 'orders/raw', 'manual', ...conn]);
        say('Re-ingest o2 with a new amount and o3 with only a note the steps ignore');
        const changed = await changeExampleRecords(addresses.grpc, c.authToken, { signal: io.signal });
        io.stdout.write(`2 records re-ingested; ${changed.shardsRun} shards ran (manual: none); changes ${changed.changeIds.join(', ')}\n`);
        if (changed.changeIds.length !== 2 || changed.shardsRun !== 0) failures.push(`re-ingest under manual: ${changed.changeIds.length} changes, ${changed.shardsRun} shards run`);
        await step('Detected changes: what, old and new hash, who noticed', ['changes', ...conn]);
        await step('Impact of the o2 change: affected steps, recorded cost, where they would run now', ['impact', changed.changeIds[0] ?? '', ...conn]);
        const first = await step('Recompute both: only affected steps run; o3\'s scale output is unchanged, so its classify is cut off', ['recompute', ...changed.changeIds, '--watch', ...conn]);
        if (!/2 executed|3 executed/.test(first) || !/1 cut off/.test(first)) failures.push('recompute did not execute the o2 path and cut o3 off');
        const again = await step('The same recompute again is served from the cache', ['recompute', ...changed.changeIds, '--watch', ...conn]);
        if (!/0 executed/.test(again)) failures.push('the repeated recompute executed steps');
        say(`Payload retention: this tour's coordinator keeps payloads ${retentionMs} ms after their last use (retrace coordinator --payload-retention 30d); waiting that long`);
        await new Promise((r) => setTimeout(r, retentionMs + 100));
        await step('What a sweep would delete now', ['payloads', 'sweep', '--dry-run', ...conn]);
        const swept = await step('Sweep: superseded versions (o2 and o3 before the change) and replay outputs go; current records stay, so the pipeline and recompute go on', ['payloads', 'sweep', ...conn]);
        if (!/deleted [1-9]\d* payloads/.test(swept)) failures.push('the payload sweep deleted nothing');
        await step('A replay of a current record still runs after the sweep', ['replay', 'start', '--record', live.firstRecord, '--watch', ...conn]);
        await step(`Watch a directory the coordinator was allowed to read (--watch-root ${watched}): each file an object, each edit a change`, ['watch', watched, '--prefix', 'file:', ...conn]);
        await new Promise((r) => setTimeout(r, 300));
        await step('Watches, with what their last scan saw', ['watch', 'list', ...conn]);
        await step("Watching the coordinator's own data dir (its keys, its database) is refused (exit 1 expected)", ['watch', dataDir, '--prefix', 'x:', ...conn], 1);
        const analyst = ['--coordinator', addresses.grpc, '--token', await makeToken('demo-analyst', 'client', 'A client token: it reads and submits lineage, replays and recomputes as "demo-analyst"; it may not publish code, drain nodes or sweep payloads, and cancels or resumes only its own jobs')];
        await step('The client token reads lineage', ['lineage', 'runs', '--limit', '3', ...analyst]);
        await step('Draining a node is an operator\'s action: refused to a client token (exit 1 expected)', ['nodes', 'drain', agents[1]?.nodeId ?? '', ...analyst], 1);
        await step('A client token cancels only what it started: the owner\'s replay is refused (exit 1 expected)', ['replay', 'cancel', pacedId, ...analyst], 1);
        await step('Named tokens (only their SHA-256 is stored; `retrace token revoke NAME` takes effect from the next call)', ['token', 'list', '--data', dataDir]);
        await step('Drain a node (the owner token)', ['nodes', 'drain', agents[1]?.nodeId ?? '', ...conn]);
      } finally {
        await stopLocalAgents(agents);
      }
      await c.stop();
      say('Tamper with one stored ledger entry while the coordinator is stopped, then verify offline');
      const db = await openDatabase(join(dataDir, 'db'));
      const store = new LineageStore(db);
      const victim = await store.ledger.get(seqKey(5n));
      if (victim) {
        const altered = Uint8Array.from(victim);
        altered[altered.length - 1] = (altered[altered.length - 1] as number) ^ 1;
        await store.ledger.put(seqKey(5n), altered);
      }
      await db.close();
      const tampered = await step('Offline verify names the altered entry (exit 1 expected)', ['verify', '--data', dataDir], 1);
      if (!tampered.includes('first bad entry 5')) failures.push('verify did not name entry 5');
    } finally {
      await c.stop().catch(() => {});
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(watched, { recursive: true, force: true });
    }
    if (failures.length > 0) {
      io.stderr.write(`demo FAILED:\n  ${failures.join('\n  ')}\n`);
      return 1;
    }
    io.stdout.write('\ndemo complete: every stop worked.\n');
    return 0;
  },
};

export const commands: CliCommand[] = [start, demo];
