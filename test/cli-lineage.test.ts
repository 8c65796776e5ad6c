import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EdgeKind, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { contentHashOf } from '../common/hash.js';
import { runOutputHash } from '../common/openlineage/to-lineage-events.js';
import { main } from '../scripts/cli/main.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * The `retrace lineage` and `retrace submit` commands, run in-process through main() against a
 * real coordinator (LevelDB in a temp dir, real sockets), with explicit --coordinator/--token.
 */

const T0 = 1_720_000_000_000_000_000n;
const S = 1_000_000_000n;
const PRODUCER = 'test://cli-lineage';
const h = (content: string): string => contentHashOf(content);

const RAW = { objectId: 'orders/raw', contentHash: h('orders raw v1') };
const CLEAN = { objectId: 'orders/clean', contentHash: h('orders clean v1') };
const SUMMARY = { objectId: 'orders/summary', contentHash: h('orders summary v1') };
const CODE = h('def clean(): ...');
const key = (v: { objectId: string; contentHash: string }): string => `version:${v.objectId}@${v.contentHash}`;

const NATIVE: LineageEvent[] = [
  LineageEvent.fromPartial({
    eventId: 'ev-run-nightly-1',
    eventTimeNs: T0.toString(),
    producer: PRODUCER,
    body: { $case: 'run', value: { runId: 'nightly-1', name: 'nightly-orders', state: 'COMPLETE', startedAtNs: T0.toString(), endedAtNs: (T0 + 10n * S).toString() } },
  }),
  LineageEvent.fromPartial({
    eventId: 'ev-raw',
    eventTimeNs: (T0 + S).toString(),
    producer: PRODUCER,
    body: { $case: 'objectVersion', value: { ...RAW, size: '1234', mediaType: 'text/csv' } },
  }),
  LineageEvent.fromPartial({
    eventId: 'ev-clean',
    eventTimeNs: (T0 + 2n * S).toString(),
    producer: PRODUCER,
    body: {
      $case: 'step',
      value: {
        stepId: 'clean-orders-1',
        runId: 'nightly-1',
        transform: 'clean-orders',
        codeVersion: CODE,
        parameters: { threshold: 3 },
        nodeId: 'node-a',
        startedAtNs: (T0 + 2n * S).toString(),
        endedAtNs: (T0 + 3n * S).toString(),
        resources: { cpuTimeNs: '250000000', peakMemoryBytes: String(64 * 2 ** 20) },
        used: [RAW],
        generated: [CLEAN],
      },
    },
  }),
  LineageEvent.fromPartial({
    eventId: 'ev-aggregate',
    eventTimeNs: (T0 + 4n * S).toString(),
    producer: PRODUCER,
    body: {
      $case: 'step',
      value: {
        stepId: 'aggregate-orders-1',
        runId: 'nightly-1',
        transform: 'aggregate-orders',
        nodeId: 'node-b',
        startedAtNs: (T0 + 4n * S).toString(),
        endedAtNs: (T0 + 5n * S).toString(),
        used: [CLEAN],
        generated: [SUMMARY],
      },
    },
  }),
  LineageEvent.fromPartial({
    eventId: 'ev-summary',
    eventTimeNs: (T0 + 5n * S).toString(),
    producer: PRODUCER,
    body: { $case: 'objectVersion', value: { ...SUMMARY, size: '42', mediaType: 'application/json' } },
  }),
];

const OL_RUN_ID = '0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b';
const OL_PRODUCER = 'https://github.com/OpenLineage/OpenLineage/tree/1.23.0/integration/airflow';
const OL_EVENT = {
  eventTime: '2024-07-03T10:00:00.000Z',
  producer: OL_PRODUCER,
  schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent',
  eventType: 'COMPLETE',
  run: { runId: OL_RUN_ID, facets: {} },
  job: { namespace: 'warehouse', name: 'load_orders', facets: {} },
  inputs: [{ namespace: 'warehouse', name: 'public.orders_src' }],
  outputs: [{ namespace: 'warehouse', name: 'public.orders' }],
};
const OL_OUTPUT = { objectId: 'dataset:warehouse:public.orders', contentHash: runOutputHash('warehouse', 'public.orders', OL_RUN_ID) };

let tc: TestCoordinator;
let dir: string;
let nativeFile: string;
let olFile: string;
const outFiles: string[] = [];

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Bytes of stdin the command left unread. */
  unread: number;
}

/**
 * Runs `retrace ...args --coordinator ADDR --token TOKEN` in-process, or with `--token-file -`
 * (`tokenFromStdin`) for the token to come from `stdin`.
 */
async function cli(args: string[], options: { token?: string; stdin?: string; tokenFromStdin?: boolean } = {}): Promise<CliResult> {
  const stdin = new PassThrough().end(options.stdin ?? '');
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out: string[] = [];
  const err: string[] = [];
  stdout.setEncoding('utf8').on('data', (d: string) => out.push(d));
  stderr.setEncoding('utf8').on('data', (d: string) => err.push(d));
  const auth = options.tokenFromStdin ? ['--token-file', '-'] : ['--token', options.token ?? tc.token];
  const code = await main([...args, '--coordinator', tc.grpcAddress, ...auth], { stdout, stderr, stdin });
  stdout.end();
  stderr.end();
  await Promise.all([once(stdout, 'end'), once(stderr, 'end')]);
  return { code, stdout: out.join(''), stderr: err.join(''), unread: stdin.readableLength };
}

beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true });
  dir = mkdtempSync(join(tmpdir(), 'retrace-cli-'));
  nativeFile = join(dir, 'native-events.json');
  writeFileSync(nativeFile, JSON.stringify({ events: NATIVE.map((e) => LineageEvent.toJSON(e)) }, null, 2));
  olFile = join(dir, 'openlineage-run.json');
  writeFileSync(olFile, JSON.stringify(OL_EVENT, null, 2));
  const native = await cli(['submit', nativeFile]);
  expect(native, native.stderr).toMatchObject({ code: 0, stdout: `stored ${NATIVE.length} event(s), 0 already present; ledger size ${NATIVE.length}\n` });
  const ol = await cli(['submit', olFile]);
  expect(ol.code, ol.stderr).toBe(0);
  expect(ol.stdout).toMatch(/^stored [1-9]\d* event\(s\), 0 already present/);
});

afterAll(async () => {
  await tc?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

afterEach(() => {
  for (const f of outFiles.splice(0)) rmSync(f, { force: true });
});

describe('retrace submit', () => {
  it('resubmitting the same files stores nothing new', async () => {
    const again = await cli(['submit', nativeFile, '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ batches: '1', accepted: '0', duplicates: String(NATIVE.length) });
    const ol = await cli(['submit', olFile]);
    expect(ol.code, ol.stderr).toBe(0);
    expect(ol.stdout).toMatch(/^stored 0 event\(s\), [1-9]\d* already present/);
  });

  it('a file that is not JSON is a usage error (exit 2)', async () => {
    const bad = join(dir, 'not-json.json');
    outFiles.push(bad);
    writeFileSync(bad, '{ nope');
    const r = await cli(['submit', bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('is not JSON');
    expect(r.stderr).toContain('usage: retrace submit');
  });

  it('a file without events ([], {"events": []}) is a usage error naming it; nothing is stored', async () => {
    const before = tc.coordinator.lineage.treeSize;
    for (const [name, text] of [['empty-array.json', '[]'], ['empty-events.json', '{"events": []}']]) {
      const file = join(dir, name as string);
      outFiles.push(file);
      writeFileSync(file, text as string);
      const r = await cli(['submit', file]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`error: ${file} holds no events`);
    }
    expect(tc.coordinator.lineage.treeSize).toBe(before);
  });

  it('an OpenLineage facet key named __proto__ is refused naming its path, as the HTTP API refuses it, not dropped', async () => {
    const file = join(dir, 'proto-key.json');
    outFiles.push(file);
    // As text: an object literal's __proto__ would set its prototype, not a key.
    writeFileSync(file, JSON.stringify({ ...OL_EVENT, run: { runId: '01929a00-0000-7000-8000-00000000beef', facets: {} } }).replace('"facets":{}', '"facets":{"__proto__":{"_producer":"p","_schemaURL":"s","x":1}}'));
    const before = tc.coordinator.lineage.treeSize;
    const r = await cli(['submit', file]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain('run.facets.__proto__: a key named "__proto__" cannot be stored');
    expect(tc.coordinator.lineage.treeSize).toBe(before);
  });

  it('native events with a value of the wrong type are refused naming the field, and nothing of the file is stored', async () => {
    const good = LineageEvent.toJSON(LineageEvent.fromPartial({ eventId: 'ev-typed-ok', eventTimeNs: (T0 + 20n * S).toString(), producer: PRODUCER, body: { $case: 'objectVersion', value: { objectId: 'typed/ok', contentHash: h('typed ok') } } })) as Record<string, unknown>;
    const cases: [unknown, string][] = [
      [{ events: [good, { ...good, eventId: 12 }] }, 'events[1].eventId: expected a string, got 12'],
      [[good, { ...good, eventId: 'ev-typed-2', producer: { name: 'x' } }], '[1].producer: expected a string, got an object'],
      [{ events: [{ ...good, objectVersion: { objectId: 'typed/ok', contentHash: h('typed ok'), size: 'big' } }] }, 'events[0].objectVersion.size: expected an integer from -9223372036854775808 to 9223372036854775807 (int64), got "big"'],
    ];
    for (const [json, message] of cases) {
      const file = join(dir, 'typed.json');
      outFiles.push(file);
      writeFileSync(file, JSON.stringify(json));
      const r = await cli(['submit', file]);
      expect(r, message).toMatchObject({ code: 1, stdout: '', stderr: `error: ${message}\n` });
    }
    for (const id of ['ev-typed-ok', '12', 'ev-typed-2']) expect((await cli(['lineage', 'proof', id])).stderr, id).toContain('not found');
  });

  it('a missing file, or an unwritable --out, is one line of error without a stack trace (exit 1)', async () => {
    const missing = await cli(['submit', join(dir, 'no-such-file.json')]);
    expect(missing.code).toBe(1);
    // In words, naming the command, not Node's raw "ENOENT: no such file or directory, open '...'".
    expect(missing.stderr).toBe(`error: submit: cannot read ${join(dir, 'no-such-file.json')}: no such file\n`);
    const asDir = await cli(['submit', dir]);
    expect(asDir.code).toBe(1);
    expect(asDir.stderr).toBe(`error: submit: cannot read ${dir}: is a directory, not a file\n`);
    const out = await cli(['lineage', 'export', key(RAW), '--out', join(dir, 'no-such-dir', 'prov.json')]);
    expect(out.code).toBe(1);
    // The file first, in words, not Node's "ENOENT: no such file or directory, open '...'".
    expect(out.stderr).toBe(`error: cannot open ${join(dir, 'no-such-dir', 'prov.json')}: no such file or directory (ENOENT)\n`);
  });
});

describe('retrace lineage trace', () => {
  it('refuses a flag it does not take, suggesting the nearest (exit 2)', async () => {
    const r = await cli(['lineage', 'trace', key(RAW), '--dept', '1']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^error: unknown flag --dept \(did you mean --depth\?\)\n\nusage: retrace lineage trace/);
    expect((await cli(['lineage', 'trace', key(RAW), '--no-such-thing'])).stderr).toMatch(/^error: unknown flag --no-such-thing\n/);
  });

  it('refuses --watch, which only the watching commands take, instead of printing once as if live (exit 2)', async () => {
    const r = await cli(['lineage', 'runs', '--watch']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^error: unknown flag --watch\n\nusage: retrace lineage runs/);
    expect((await cli(['lineage', 'trace', key(RAW), '--watch'])).code).toBe(2);
  });

  it('refuses --json where a command has no JSON output, instead of printing text to a script that asked for JSON (exit 2)', async () => {
    const r = await cli(['watch', 'remove', 'w-1', '--json']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^error: unknown flag --json\n\nusage: retrace watch remove/);
    expect((await cli(['replay', 'watch', 'replay-1', '--json'])).stderr).toMatch(/^error: unknown flag --json/);
    // Commands that print JSON anyway, or have a JSON form, take it.
    const shown = await cli(['nodes', 'show', 'no-such-node', '--json']);
    expect(shown.stderr).not.toMatch(/unknown flag/);
    expect((await cli(['jobs', 'cancel', 'job-none', '--json'])).stderr).not.toMatch(/unknown flag/);
    expect((await cli(['lineage', 'export', key(RAW), '--json'])).code).toBe(0);
  });

  it('prints the downstream closure as a table', async () => {
    const r = await cli(['lineage', 'trace', key(RAW)]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^dist\s+kind\s+node\s+transform\s+time$/);
    expect(r.stdout).toMatch(/^1\s+step\s+clean-orders-1\s+clean-orders\s+\d{4}-\d{2}-\d{2}T/m);
    expect(r.stdout).toMatch(/^2\s+version\s+orders\/clean@sha256:[0-9a-f]{12}…/m);
    expect(r.stdout).toMatch(/^3\s+step\s+aggregate-orders-1\s+aggregate-orders/m);
    expect(r.stdout).toMatch(/^4\s+version\s+orders\/summary@sha256:/m);
    expect(lines[lines.length - 1]).toBe('4 node(s) in the closure');
  });

  it('--json gives nodes and the edges among them', async () => {
    const r = await cli(['lineage', 'trace', key(RAW), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const json = JSON.parse(r.stdout) as { nodes: { key: string; distance: number }[]; edges: { from: string; to: string; kind: string }[]; totalNodes: string; nextPageToken: string };
    expect(json.totalNodes).toBe('4');
    expect(json.nextPageToken).toBe('');
    expect(json.nodes.map((n) => [n.key, n.distance])).toEqual([
      ['step:clean-orders-1', 1],
      [key(CLEAN), 2],
      ['step:aggregate-orders-1', 3],
      [key(SUMMARY), 4],
    ]);
    expect(json.edges).toEqual(
      expect.arrayContaining([
        { from: 'step:clean-orders-1', to: key(RAW), kind: EdgeKind[EdgeKind.EDGE_KIND_USED] },
        { from: key(CLEAN), to: 'step:clean-orders-1', kind: EdgeKind[EdgeKind.EDGE_KIND_GENERATED_BY] },
        { from: 'step:aggregate-orders-1', to: key(CLEAN), kind: EdgeKind[EdgeKind.EDGE_KIND_USED] },
        { from: key(SUMMARY), to: 'step:aggregate-orders-1', kind: EdgeKind[EdgeKind.EDGE_KIND_GENERATED_BY] },
      ]),
    );
    expect(json.edges).toHaveLength(4);
  });

  it('--dot prints the subgraph as Graphviz DOT, data flowing from inputs to outputs', async () => {
    const r = await cli(['lineage', 'trace', key(RAW), '--dot']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^digraph "lineage" \{\n  label="lineage of version:orders\/raw@sha256:[0-9a-f]{64}: 5 nodes"; labelloc=t; rankdir=LR;\n/);
    const edges = [...r.stdout.matchAll(/^ {2}"([^"]+)" -> "([^"]+)";$/gm)].map((m) => [m[1], m[2]]);
    expect(edges).toEqual(
      expect.arrayContaining([
        [key(RAW), 'step:clean-orders-1'],
        ['step:clean-orders-1', key(CLEAN)],
        [key(CLEAN), 'step:aggregate-orders-1'],
        ['step:aggregate-orders-1', key(SUMMARY)],
      ]),
    );
    expect(edges).toHaveLength(4);
    expect(r.stdout).toContain('"step:clean-orders-1" [label="clean-orders\\nclean-orders-1", shape=box, style=filled');
    expect(r.stdout).not.toMatch(/^dist/m);
  });

  it('--svg FILE draws the subgraph: every edge goes right, from an input to what used it', async () => {
    const file = join(dir, 'trace.svg');
    outFiles.push(file);
    const r = await cli(['lineage', 'trace', key(SUMMARY), '--direction', 'up', '--svg', file]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe(`wrote ${file}: 5 nodes, 4 edges\n`);
    // The table still prints.
    expect(r.stdout.trimEnd().split('\n').pop()).toBe('4 node(s) in the closure');
    const svg = readFileSync(file, 'utf8');
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"[\s\S]*<\/svg>\n$/);
    // Each node is a group titled with its key; its box's left edge says its column.
    const x = new Map([...svg.matchAll(/<g><title>([^<]+)<\/title>\n<rect x="(\d+)"/g)].map((m) => [m[1]?.replace(/&amp;/g, '&'), Number(m[2])]));
    expect([...x.keys()].sort()).toEqual([key(CLEAN), key(RAW), key(SUMMARY), 'step:aggregate-orders-1', 'step:clean-orders-1'].sort());
    const order = [key(RAW), 'step:clean-orders-1', key(CLEAN), 'step:aggregate-orders-1', key(SUMMARY)].map((k) => x.get(k) as number);
    expect(order).toEqual([...order].sort((a, b) => a - b));
    expect(new Set(order).size).toBe(5);
    expect(svg.match(/marker-end="url\(#arrow\)"/g)).toHaveLength(4);
    expect(svg).toContain('>clean-orders</text>');
    expect(svg).toContain('>orders/summary</text>');
  });

  it('--direction up walks to the inputs only', async () => {
    const r = await cli(['lineage', 'trace', key(SUMMARY), '--direction', 'up', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const json = JSON.parse(r.stdout) as { nodes: { key: string; distance: number }[] };
    expect(json.nodes.map((n) => [n.key, n.distance])).toEqual([
      ['step:aggregate-orders-1', 1],
      [key(CLEAN), 2],
      ['step:clean-orders-1', 3],
      [key(RAW), 4],
    ]);
    const table = await cli(['lineage', 'trace', key(CLEAN), '--direction', 'up', '--depth', '1']);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toContain('clean-orders-1');
    expect(table.stdout).not.toContain('orders/raw');
    expect(table.stdout).not.toContain('aggregate');
    expect(table.stdout.trimEnd().split('\n').pop()).toBe('1 node(s) in the closure');
  });

  it('traces several nodes over one session, from the arguments or stdin', async () => {
    const one = async (k: string) => JSON.parse((await cli(['lineage', 'trace', k, '--json'])).stdout) as unknown;
    const r = await cli(['lineage', 'trace', key(RAW), key(CLEAN), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const json = JSON.parse(r.stdout) as { node: string }[];
    expect(json).toEqual([{ node: key(RAW), ...(await one(key(RAW)) as object) }, { node: key(CLEAN), ...(await one(key(CLEAN)) as object) }]);
    const table = await cli(['lineage', 'trace', '-', '--direction', 'up'], { stdin: `${key(SUMMARY)}\n\n${key(CLEAN)}\n` });
    expect(table.code, table.stderr).toBe(0);
    const sections = table.stdout.split(/^== /m).slice(1);
    expect(sections.map((x) => x.split('\n')[0])).toEqual([key(SUMMARY), key(CLEAN)]);
    expect(sections[0]).toMatch(/4 node\(s\) in the closure\n/);
    expect(sections[1]).toMatch(/2 node\(s\) in the closure\n$/);
    const bad = await cli(['lineage', 'trace', key(RAW), 'step:no-such-step']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('start: node step:no-such-step not found');
  });

  it('follows OpenLineage datasets at object level', async () => {
    const r = await cli(['lineage', 'trace', 'object:dataset:warehouse:public.orders_src', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const keys = (JSON.parse(r.stdout) as { nodes: { key: string }[] }).nodes.map((n) => n.key);
    expect(keys).toContain(`step:openlineage:${OL_RUN_ID}`);
    expect(keys).toContain('object:dataset:warehouse:public.orders');
  });

  it('a bad --direction is a usage error (exit 2)', async () => {
    const r = await cli(['lineage', 'trace', key(RAW), '--direction', 'sideways']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--direction must be up, down, both or any, not "sideways"');
    expect(r.stderr).toContain('usage: retrace lineage trace');
    expect(r.stdout).toBe('');
  });
});

describe('retrace lineage path, node, runs', () => {
  it('path lists every step of a record in execution order', async () => {
    const r = await cli(['lineage', 'path', SUMMARY.objectId]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe(`record ${SUMMARY.objectId} ${SUMMARY.contentHash}`);
    expect(lines[1]).toMatch(/^#\s+step\s+transform\s+code\s+node\s+started\s+cpu ms\s+peak MiB\s+params$/);
    expect(lines[3]).toMatch(/^1\s+clean-orders-1\s+clean-orders\s+sha256:[0-9a-f]{12}…\s+node-a\s+\S+\s+250\.0\s+64\.0\s+\{"threshold":3\}$/);
    expect(lines[4]).toMatch(/^2\s+aggregate-orders-1\s+aggregate-orders\s+node-b\s/);
    expect(lines).toHaveLength(5);

    const json = await cli(['lineage', 'path', SUMMARY.objectId, '--json']);
    expect(json.code, json.stderr).toBe(0);
    const parsed = JSON.parse(json.stdout) as { record: { objectId: string; size: string }; steps: { stepId: string; codeVersion: string }[] };
    expect(parsed.record).toMatchObject({ objectId: SUMMARY.objectId, size: '42' });
    expect(parsed.steps.map((s) => s.stepId)).toEqual(['clean-orders-1', 'aggregate-orders-1']);
    expect(parsed.steps[0]?.codeVersion).toBe(CODE);
  });

  it('node prints a step, a version and a transform as JSON', async () => {
    const step = await cli(['lineage', 'node', 'step:clean-orders-1']);
    expect(step.code, step.stderr).toBe(0);
    // Protobuf JSON: enums by name, the body oneof as its member.
    const s = JSON.parse(step.stdout) as { node: { kind: string; id: string }; step: { transform: string; runId: string; used: unknown[] } };
    expect(s.node).toMatchObject({ kind: NodeKind[NodeKind.NODE_KIND_STEP], id: 'clean-orders-1' });
    expect(s.step).toMatchObject({ transform: 'clean-orders', runId: 'nightly-1', used: [{ ...RAW, unversioned: false }] });

    const version = await cli(['lineage', 'node', key(CLEAN)]);
    expect(version.code, version.stderr).toBe(0);
    expect(JSON.parse(version.stdout)).toMatchObject({ generatedBy: 'step:clean-orders-1', relatedSteps: ['step:aggregate-orders-1'] });

    const transform = await cli(['lineage', 'node', 'transform:job:warehouse:load_orders']);
    expect(transform.code, transform.stderr).toBe(0);
    expect(JSON.parse(transform.stdout)).toMatchObject({ relatedSteps: [`step:openlineage:${OL_RUN_ID}`] });

    const olVersion = await cli(['lineage', 'node', key(OL_OUTPUT)]);
    expect(olVersion.code, olVersion.stderr).toBe(0);
    expect(JSON.parse(olVersion.stdout)).toMatchObject({ generatedBy: `step:openlineage:${OL_RUN_ID}` });
  });

  it('runs lists native and OpenLineage runs, filtered by --prefix', async () => {
    const r = await cli(['lineage', 'runs']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^run\s+name\s+state\s+started\s+ended\s+parent$/m);
    expect(r.stdout).toMatch(/^nightly-1\s+nightly-orders\s+COMPLETE\s+\d{4}-/m);
    expect(r.stdout).toMatch(new RegExp(`^${OL_RUN_ID}\\s+job:warehouse:load_orders\\s+COMPLETE`, 'm'));

    const filtered = await cli(['lineage', 'runs', '--prefix', 'job:', '--json']);
    expect(filtered.code, filtered.stderr).toBe(0);
    const runs = (JSON.parse(filtered.stdout) as { runs: { runId: string }[] }).runs;
    expect(runs.map((x) => x.runId)).toEqual([OL_RUN_ID]);
  });
});

describe('retrace lineage proof and export', () => {
  it('proof checks the inclusion proof against the signed checkpoint', async () => {
    const r = await cli(['lineage', 'proof', 'ev-clean']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('event ev-clean is entry 2;');
    expect(r.stdout).toMatch(/audit path \(\d+ hashes\): verifies; checkpoint signature: valid/);

    const json = await cli(['lineage', 'proof', 'ev-summary', '--json']);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ seq: '4', verified: { included: true, signed: true } });
  });

  it('proof of an unknown event exits 1 with "not found"', async () => {
    const r = await cli(['lineage', 'proof', 'no-such-event']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('not found');
  });

  it('export --out writes a PROV-JSON document', async () => {
    const out = join(dir, 'prov.json');
    outFiles.push(out);
    const r = await cli(['lineage', 'export', key(CLEAN), '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`wrote PROV-JSON to ${out}`);
    expect(r.stdout).toBe('');
    expect(existsSync(out)).toBe(true);
    const doc = JSON.parse(readFileSync(out, 'utf8')) as Record<string, Record<string, Record<string, unknown>>>;
    for (const section of ['prefix', 'entity', 'activity', 'used', 'wasGeneratedBy']) expect(doc, section).toHaveProperty(section);
    const entities = Object.keys(doc['entity'] ?? {}).map(decodeURIComponent);
    for (const v of [RAW, CLEAN, SUMMARY]) expect(entities).toContain(`retrace:version/${v.objectId}@${v.contentHash}`);
    const activities = Object.keys(doc['activity'] ?? {}).map(decodeURIComponent);
    expect(activities.some((a) => a.includes('clean-orders-1'))).toBe(true);
    expect(activities.some((a) => a.includes('aggregate-orders-1'))).toBe(true);
    expect(Object.values(doc['used'] ?? {})).toHaveLength(2);
    expect(Object.values(doc['wasGeneratedBy'] ?? {})).toHaveLength(2);
  });
});

describe('retrace lineage errors', () => {
  it('a malformed node key is a usage error (exit 2)', async () => {
    for (const bad of ['bogus:xyz', 'version:orders/raw', 'step:']) {
      const r = await cli(['lineage', 'node', bad]);
      expect(r.code, bad).toBe(2);
      expect(r.stderr).toContain('usage: retrace lineage node');
      expect(r.stderr).toContain('NODE is object:<id>');
    }
    const missing = await cli(['lineage', 'trace']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('a node is required');
  });

  it('an unknown node exits 1 with "not found"', async () => {
    for (const unknown of ['step:no-such-step', `version:orders/raw@${h('never stored')}`, 'run:no-such-run']) {
      const r = await cli(['lineage', 'node', unknown]);
      expect(r.code, unknown).toBe(1);
      expect(r.stderr).toContain('not found');
    }
    const trace = await cli(['lineage', 'trace', 'object:nowhere']);
    expect(trace.code).toBe(1);
    expect(trace.stderr).toContain('not found');
  });

  it('--token-file - reads the token from the CLI\'s stdin; with an argument - (stdin too) it is a usage error, before anything is read or sent', async () => {
    const fromStdin = (args: string[], text: string): Promise<CliResult> => cli(args, { stdin: text, tokenFromStdin: true });
    const runs = await fromStdin(['lineage', 'runs'], `${tc.token}\n`);
    expect(runs.code, runs.stderr).toBe(0);
    expect(runs.stdout).toContain('nightly-1');
    const wrong = await fromStdin(['lineage', 'runs'], 'wrong-token-xxxxxxxx\n');
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/^error: .*token/);
    // One stdin cannot hold both: one of the two read nothing (the token, or the events sent without it).
    const events = readFileSync(nativeFile, 'utf8');
    for (const args of [['submit', '-'], ['ingest', 'orders', 'raw', '-'], ['lineage', 'trace', '-']]) {
      const r = await fromStdin(args, events);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain('error: --token-file - and the argument - both read stdin, which holds one of them only: give the token with --token-file FILE or RETRACE_TOKEN');
      expect(r.unread).toBe(Buffer.byteLength(events));
    }
  }, 15_000);

  it('a wrong token exits 1 and says so', async () => {
    const r = await cli(['lineage', 'runs'], { token: 'wrong-token-xxxxxxxx' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: .*token/);
    expect(r.stdout).toBe('');
    const submit = await cli(['submit', nativeFile], { token: 'wrong-token-xxxxxxxx' });
    expect(submit.code).toBe(1);
    expect(submit.stderr).toContain('token');
  });
});
