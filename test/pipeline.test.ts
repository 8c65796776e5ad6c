import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClientError, Metadata, Status, type Client } from 'nice-grpc';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codeExtension } from '../coordinator/code/code-extension.js';
import type { CodeStore } from '../coordinator/code/code-store.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { validatePipeline } from '../coordinator/pipeline/pipeline-store.js';
import { openDatabase } from '../coordinator/store/database.js';
import { createPayloadStore } from '../coordinator/store/payload-store.js';
import { LineageServiceDefinition } from '../common/gen/retrace/v1/lineage.js';
import { Pipeline, PipelineServiceDefinition, type IngestRequest } from '../common/gen/retrace/v1/pipeline.js';
import { TriggerKind } from '../common/gen/retrace/v1/provenance.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/** In-process transforms by name: deterministic functions of the input payloads. */
const TRANSFORMS: Record<string, (a: ShardAssignment) => { key?: string; text: string; mediaType: string }[]> = {
  upper: (a) => [{ text: new TextDecoder().decode(a.inputs[0]?.payload).toUpperCase(), mediaType: 'text/plain' }],
  enrich: (a) => [
    { text: JSON.stringify({ value: new TextDecoder().decode(a.inputs[0]?.payload), tag: (a.parameters as { tag?: string }).tag ?? '' }), mediaType: 'application/json' },
  ],
  boom: (a) => {
    const text = new TextDecoder().decode(a.inputs[0]?.payload);
    if (text.includes('BAD')) throw new Error(`cannot handle ${text}`);
    return [{ text, mediaType: 'text/plain' }];
  },
};

/** A fake dispatcher: runs the transform in-process, reports node "node-a" and made-up resources. */
function fakeRunner(calls: ShardAssignment[]): ShardRunner {
  return {
    async run(assignment) {
      calls.push(assignment);
      const started = BigInt(Date.now()) * 1_000_000n;
      const fn = TRANSFORMS[assignment.transform];
      const base = { shardId: assignment.shardId, startedAtNs: started.toString(), endedAtNs: (started + 1000n).toString(), nodeId: 'node-a', attempt: 1 };
      const resources = { cpuTimeNs: '1000', peakMemoryBytes: '4096', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1000' };
      try {
        if (!fn) throw new Error(`unknown transform ${assignment.transform}`);
        const outputs = fn(assignment).map((o) => ({ key: o.key ?? '', contentHash: '', payload: Buffer.from(o.text), mediaType: o.mediaType }));
        return { outcome: { ...base, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs, resources, error: '' }, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
      } catch (err) {
        return { outcome: { ...base, status: ShardStatus.SHARD_STATUS_FAILED, outputs: [], resources, error: (err as Error).message }, nodeId: 'node-a', attempts: 1, queuedMs: 0 };
      }
    },
  };
}

const CODE: Record<string, string> = {};

function definition(overrides: Partial<Pipeline> = {}): Pipeline {
  return Pipeline.fromJSON({
    name: 'orders',
    sources: [{ name: 'raw', mediaType: 'text/plain' }],
    steps: [
      { name: 'shout', transform: 'upper', codeVersion: CODE.upper, inputs: ['raw'] },
      { name: 'tagged', transform: 'enrich', codeVersion: CODE.enrich, parameters: { tag: 't1' }, inputs: ['shout'] },
      { name: 'checked', transform: 'boom', codeVersion: CODE.boom, inputs: ['tagged'] },
    ],
    ...overrides,
  });
}

function records(pipeline: string, source: string, recs: { key: string; text: string }[]): AsyncIterable<IngestRequest> {
  return (async function* () {
    yield { pipeline, source, records: recs.map((r) => ({ key: r.key, eventTimeNs: '1700000000000000000', payload: Buffer.from(r.text), mediaType: '' })) };
  })();
}

async function expectStatus(p: Promise<unknown>, status: Status, text: string | RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ClientError);
  expect((err as ClientError).code).toBe(status);
  expect((err as ClientError).details).toMatch(text);
}

describe('pipelines', () => {
  let tc: TestCoordinator;
  const calls: ShardAssignment[] = [];
  const shared: PipelineShared & { code?: CodeStore } = {};
  let pipelines: Client<typeof PipelineServiceDefinition>;
  let lineage: Client<typeof LineageServiceDefinition>;

  beforeAll(async () => {
    tc = await startTestCoordinator({
      extensions: [codeExtension({ onCodeStore: (s) => (shared.code = s) }), pipelineExtension(shared, { runner: fakeRunner(calls), concurrency: 8 })],
    });
    for (const name of Object.keys(TRANSFORMS)) {
      const r = await (shared.code as CodeStore).publish(new TextEncoder().encode(`// ${name}`), { transform: name, requirements: undefined, sourceFile: `${name}.ts`, bundler: 'test' });
      CODE[name] = r.code.codeVersion;
    }
    pipelines = tc.client(PipelineServiceDefinition);
    lineage = tc.client(LineageServiceDefinition);
  });
  afterAll(async () => {
    await tc.stop();
  });

  it('rejects bad definitions, naming the field', async () => {
    const base = definition();
    const steps = base.steps;
    await expectStatus(pipelines.applyPipeline({ pipeline: { ...base, steps: [steps[0]!, { ...steps[1]!, inputs: ['nope'] }] } }), Status.INVALID_ARGUMENT, /steps\[1\]\.inputs\[0\]: unknown input "nope"/);
    await expectStatus(pipelines.applyPipeline({ pipeline: { ...base, steps: [steps[0]!, { ...steps[1]!, name: 'shout' }] } }), Status.INVALID_ARGUMENT, /steps\[1\]\.name: duplicate/);
    await expectStatus(
      pipelines.applyPipeline({ pipeline: { ...base, steps: [{ ...steps[0]!, inputs: ['checked'] }, steps[1]!, steps[2]!] } }),
      Status.INVALID_ARGUMENT,
      /steps\[\d\]\.inputs\[0\]: cycle/,
    );
    await expectStatus(pipelines.applyPipeline({ pipeline: { ...base, steps: [{ ...steps[0]!, codeVersion: 'sha256:abc' }] } }), Status.INVALID_ARGUMENT, /steps\[0\]\.code_version: malformed/);
    await expectStatus(
      pipelines.applyPipeline({ pipeline: { ...base, steps: [{ ...steps[0]!, codeVersion: contentHashOf('never published') }] } }),
      Status.NOT_FOUND,
      /steps\[0\]\.code_version/,
    );
    expect(() => validatePipeline({ ...base, steps: [{ ...steps[0]!, inputs: ['shout'] }] })).toThrow(/steps\[0\]\.inputs\[0\]/);
  });

  it('versions definitions and keeps old versions', async () => {
    const a = await pipelines.applyPipeline({ pipeline: definition({ name: 'versioned' }) });
    expect([a.pipeline?.version, a.created]).toEqual([1, true]);
    const again = await pipelines.applyPipeline({ pipeline: definition({ name: 'versioned' }) });
    expect([again.pipeline?.version, again.created]).toEqual([1, false]);
    const changed = definition({ name: 'versioned' });
    changed.steps[1]!.parameters = { tag: 't2' };
    const b = await pipelines.applyPipeline({ pipeline: changed });
    expect([b.pipeline?.version, b.created]).toEqual([2, true]);
    const v1 = await pipelines.getPipeline({ name: 'versioned', version: 1 });
    expect(v1.pipeline?.pipeline?.steps[1]?.parameters).toEqual({ tag: 't1' });
    expect(v1.versions).toEqual([1, 2]);
    const list = await pipelines.listPipelines({});
    expect(list.pipelines.find((p) => p.pipeline?.name === 'versioned')?.version).toBe(2);
    await expectStatus(pipelines.getPipeline({ name: 'missing', version: 0 }), Status.NOT_FOUND, /pipeline "missing"/);
  });

  it('runs every step and records complete provenance; re-ingest is idempotent; failures are reported', async () => {
    await pipelines.applyPipeline({ pipeline: definition() });
    const recs = [
      { key: 'k1', text: 'hello' },
      { key: 'k2', text: 'world' },
      { key: 'k3', text: 'hello' },
      { key: 'k4', text: 'bad' },
    ];
    const principal = Metadata({ 'x-retrace-principal': 'alice', authorization: `Bearer ${tc.token}` });
    const res = await pipelines.ingest(records('orders', 'raw', recs), { metadata: principal });
    expect(res.accepted).toBe('4');
    expect(res.duplicates).toBe('0');
    expect(res.shardsRun).toBe('12');
    expect(res.shardsFailed).toBe('1');
    expect(res.firstError).toMatch(/^checked\/k4: SHARD_STATUS_FAILED: cannot handle /);
    expect(res.runId).toMatch(/^ingest:orders:/);

    const path = await lineage.getRecordPath({ objectId: 'record:orders/checked:k1', contentHash: '', asOfNs: '0' });
    expect(path.steps.map((s) => s.transform)).toEqual(['upper', 'enrich', 'boom']);
    expect(path.record?.mediaType).toBe('text/plain');
    const [first, second] = path.steps;
    const tagged = second!;
    expect(tagged.stepId).toMatch(/^orders\/tagged\/[0-9a-f]{64}$/);
    expect(tagged.runId).toBe(res.runId);
    expect(tagged.codeVersion).toBe(CODE.enrich);
    expect(tagged.parameters).toEqual({ tag: 't1' });
    expect([tagged.nodeId, tagged.host]).toEqual(['node-a', 'host-a']);
    expect(BigInt(tagged.endedAtNs) > BigInt(tagged.startedAtNs)).toBe(true);
    expect(tagged.why).toEqual({ kind: TriggerKind.TRIGGER_KIND_EVENT, id: res.runId, principal: 'alice' });
    expect(tagged.resources?.cpuTimeNs).toBe('1000');
    expect(tagged.used).toEqual([{ objectId: 'record:orders/shout:k1', contentHash: contentHashOf('HELLO'), unversioned: false }]);
    const out = JSON.stringify({ value: 'HELLO', tag: 't1' });
    expect(tagged.generated).toEqual([{ objectId: 'record:orders/tagged:k1', contentHash: contentHashOf(out), unversioned: false }]);
    expect(tagged.facets?.retrace).toMatchObject({ pipeline: 'orders', pipelineVersion: 1, step: 'tagged', inputs: { shout: 'record:orders/shout:k1' } });
    expect(first?.used[0]?.objectId).toBe('record:orders/raw:k1');

    // Payloads are content-addressed: k1 and k3 share one.
    const p = await pipelines.getPayload({ contentHash: contentHashOf(out) });
    expect(Buffer.from(p.payload).toString()).toBe(out);
    await expectStatus(pipelines.getPayload({ contentHash: contentHashOf('nothing') }), Status.NOT_FOUND, /payload/);

    // The failed shard recorded nothing for its output.
    await expectStatus(lineage.getRecordPath({ objectId: 'record:orders/checked:k4', contentHash: '', asOfNs: '0' }), Status.NOT_FOUND, /object/);
    const tagged4 = await lineage.getRecordPath({ objectId: 'record:orders/tagged:k4', contentHash: '', asOfNs: '0' });
    expect(tagged4.steps).toHaveLength(2);

    // Same records again: no shard runs again except the failed one, and only run events are new.
    const size = tc.coordinator.lineage.treeSize;
    const callsBefore = calls.length;
    const again = await pipelines.ingest(records('orders', 'raw', recs));
    expect([again.accepted, again.duplicates, again.shardsRun, again.shardsFailed]).toEqual(['0', '4', '1', '1']);
    expect(calls.length - callsBefore).toBe(1);
    expect(tc.coordinator.lineage.treeSize - size).toBe(2n);

    // A changed record runs its whole path again.
    const changed = await pipelines.ingest(records('orders', 'raw', [{ key: 'k1', text: 'hello again' }]));
    expect([changed.accepted, changed.shardsRun, changed.shardsFailed]).toEqual(['1', '3', '0']);
    const latest = await lineage.getRecordPath({ objectId: 'record:orders/tagged:k1', contentHash: '', asOfNs: '0' });
    expect(latest.steps[0]?.used[0]?.contentHash).toBe(contentHashOf('hello again'));

    await expectStatus(pipelines.ingest(records('orders', 'nope', recs)), Status.INVALID_ARGUMENT, /source/);
    await expectStatus(pipelines.ingest(records('ghost', 'raw', recs)), Status.NOT_FOUND, /pipeline/);
  });

  it('joins a second input by key when both are available', async () => {
    const join = Pipeline.fromJSON({
      name: 'joined',
      sources: [{ name: 'a' }, { name: 'b' }],
      steps: [{ name: 'both', transform: 'enrich', codeVersion: CODE.enrich, inputs: ['a', 'b'] }],
    });
    await pipelines.applyPipeline({ pipeline: join });
    const r1 = await pipelines.ingest(records('joined', 'a', [{ key: 'x', text: 'left' }]));
    expect(r1.shardsRun).toBe('0');
    const r2 = await pipelines.ingest(records('joined', 'b', [{ key: 'x', text: 'right' }]));
    expect(r2.shardsRun).toBe('1');
    const path = await lineage.getRecordPath({ objectId: 'record:joined/both:x', contentHash: '', asOfNs: '0' });
    expect(path.steps[0]?.used.map((u) => u.objectId)).toEqual(['record:joined/a:x', 'record:joined/b:x']);
  });

  it('CLI: apply, list, show, ingest a JSONL file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrace-pipeline-cli-'));
    try {
      const file = join(dir, 'p.json');
      writeFileSync(file, JSON.stringify({ name: 'cli', sources: [{ name: 'in' }], steps: [{ name: 'up', transform: 'upper', code_version: CODE.upper, inputs: ['in'] }] }));
      const conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
      const a = await cli('pipeline apply', [file, ...conn]);
      expect(a.out).toMatch(/cli version 1 {2}created/);
      expect((await cli('pipeline list', conn)).out).toMatch(/cli +1 +in +up/);
      expect((await cli('pipeline show', ['cli', ...conn])).out).toMatch(/up +upper/);
      const data = join(dir, 'r.jsonl');
      writeFileSync(data, `${JSON.stringify({ key: 'a', eventTime: '2024-01-01T00:00:00Z', payload: 'abc' })}\n${JSON.stringify({ key: 'b', payload: { n: 1 } })}\n`);
      const ing = await cli('ingest', ['cli', 'in', data, '--json', ...conn]);
      expect(ing.code).toBe(0);
      expect(JSON.parse(ing.out)).toMatchObject({ accepted: '2', shardsRun: '2' });
      const path = await lineage.getRecordPath({ objectId: 'record:cli/up:b', contentHash: '', asOfNs: '0' });
      expect(path.record?.contentHash).toBe(contentHashOf('{"N":1}'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('payload store', () => {
  it('deduplicates and sweeps unreferenced payloads after the retention', async () => {
    const db = await openDatabase(null);
    let now = 1_000;
    const store = createPayloadStore(db, { retentionMs: 100, now: () => now });
    const h1 = await store.put(Buffer.from('same'));
    const h2 = await store.put(Buffer.from('same'));
    expect(h1).toBe(h2);
    let n = 0;
    for await (const _ of db.sublevel('payloads').sublevel('bytes').keys()) n++;
    expect(n).toBe(1);
    now = 1_050;
    const other = await store.put(Buffer.from('other'));
    now = 1_120;
    expect(await store.sweep()).toBe(1);
    expect(await store.has(h1)).toBe(false);
    expect(await store.has(other)).toBe(true);
    const forever = createPayloadStore(db);
    expect(await forever.sweep()).toBe(0);
    await db.close();
  });
});

/** `retrace <path> ...argv`, in-process. */
function cli(path: string, argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return runCli([...path.split(' '), ...argv]);
}
