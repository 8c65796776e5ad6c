import type { ChildProcess } from 'node:child_process';
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
import { replayExtension, type ReplayShared } from '../coordinator/replay/replay-extension.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { createPayloadStore } from '../coordinator/store/payload-store.js';
import { LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { Pipeline, PipelineServiceDefinition, type IngestRequest } from '../common/gen/retrace/v1/pipeline.js';
import { TriggerKind } from '../common/gen/retrace/v1/provenance.js';
import { ReplayServiceDefinition } from '../common/gen/retrace/v1/replay.js';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { startCoordinatorProcess } from './helpers/coordinator-process.js';
import { parseRecordLine, readPipelineFile } from '../scripts/cli/pipeline-commands.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/** In-process transforms by name: deterministic functions of the input payloads. */
const TRANSFORMS: Record<string, (a: ShardAssignment) => { key?: string; text: string; mediaType: string }[]> = {
  upper: (a) => [{ text: new TextDecoder().decode(a.inputs[0]?.payload).toUpperCase(), mediaType: 'text/plain' }],
  enrich: (a) => [
    { text: JSON.stringify({ value: new TextDecoder().decode(a.inputs[0]?.payload), tag: (a.parameters as { tag?: string }).tag ?? '' }), mediaType: 'application/json' },
  ],
  // Fails the first time it sees each input (an outage, a flaky service).
  flaky: (a) => {
    const text = new TextDecoder().decode(a.inputs[0]?.payload);
    if (!flakySeen.has(text)) {
      flakySeen.add(text);
      throw new Error(`transient failure on ${text}`);
    }
    return [{ text, mediaType: 'text/plain' }];
  },
  // Refused by the agent as corrupt: a retry would be refused the same way.
  corrupt: () => {
    throw Object.assign(new Error('inputs[0] does not hash to its content hash'), { status: ShardStatus.SHARD_STATUS_INPUT_CORRUPTED });
  },
  boom: (a) => {
    const text = new TextDecoder().decode(a.inputs[0]?.payload);
    if (text.includes('BAD')) throw new Error(`cannot handle ${text}`);
    return [{ text, mediaType: 'text/plain' }];
  },
};

const flakySeen = new Set<string>();
/** The `attemptsBefore` of every run, in order. */
const attemptsBeforeSeen: (number | undefined)[] = [];

/** A fake dispatcher: runs the transform in-process, reports node "node-a" and made-up resources. */
function fakeRunner(calls: ShardAssignment[]): ShardRunner {
  return {
    async run(assignment, options) {
      calls.push(assignment);
      attemptsBeforeSeen.push(options?.attemptsBefore);
      const started = BigInt(Date.now()) * 1_000_000n;
      const fn = TRANSFORMS[assignment.transform];
      const base = { shardId: assignment.shardId, startedAtNs: started.toString(), endedAtNs: (started + 1000n).toString(), nodeId: 'node-a', attempt: 1 };
      const resources = { cpuTimeNs: '1000', peakMemoryBytes: '4096', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1000' };
      try {
        if (!fn) throw new Error(`unknown transform ${assignment.transform}`);
        const outputs = fn(assignment).map((o) => ({ key: o.key ?? '', contentHash: '', payload: Buffer.from(o.text), mediaType: o.mediaType }));
        return { outcome: { ...base, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs, resources, error: '' }, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
      } catch (err) {
        const status = (err as { status?: ShardStatus }).status ?? ShardStatus.SHARD_STATUS_FAILED;
        return { outcome: { ...base, status, outputs: [], resources, error: (err as Error).message }, nodeId: 'node-a', attempts: 1, queuedMs: 0 };
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
    // No steps, or two steps writing one output dataset, were stored; nothing is now.
    const listed = (await pipelines.listPipelines({})).pipelines.length;
    await expectStatus(pipelines.applyPipeline({ pipeline: { ...base, name: 'no-steps', steps: [] } }), Status.INVALID_ARGUMENT, /^steps: at least one step is required/);
    await expectStatus(
      pipelines.applyPipeline({ pipeline: { ...base, name: 'two-writers', steps: [{ ...steps[0]!, output: 'clean' }, { ...steps[1]!, output: 'clean' }] } }),
      Status.INVALID_ARGUMENT,
      /^steps\[1\]\.output: output dataset "clean" is written by both steps\[0\] \("shout"\) and steps\[1\] \("tagged"\)/,
    );
    // A step's output defaults to its name: another step naming that output is the same clash.
    await expectStatus(pipelines.applyPipeline({ pipeline: { ...base, name: 'two-writers', steps: [steps[0]!, { ...steps[1]!, output: 'shout' }] } }), Status.INVALID_ARGUMENT, /^steps\[1\]\.output: output dataset "shout"/);
    await expectStatus(pipelines.applyPipeline({ pipeline: { ...base, name: 'two-writers', steps: [{ ...steps[0]!, output: 'tagged' }, steps[1]!] } }), Status.INVALID_ARGUMENT, /^steps\[0\]\.output: output dataset "tagged"/);
    expect((await pipelines.listPipelines({})).pipelines.length).toBe(listed);
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

    // The failed shard recorded no step, but the run's end lists it: queryable after the call.
    const run = await lineage.getNode({ node: { kind: NodeKind.NODE_KIND_RUN, id: res.runId, contentHash: '' } });
    const runFacets = JSON.stringify(run);
    expect(runFacets).toContain('"failures":["checked/k4: SHARD_STATUS_FAILED: cannot handle ');
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

    // A stream without records (messages that only name the pipeline and source) is refused and
    // records no run; one whose records come after such a message ingests them.
    const runs = async () => (await lineage.listRuns({ pageSize: 1000, pageToken: '', namePrefix: 'pipeline:orders' })).runs.length;
    const runsBefore = await runs();
    const headerOnly = (n: number, then: IngestRequest[] = []): AsyncIterable<IngestRequest> =>
      (async function* () {
        for (let k = 0; k < n; k++) yield { pipeline: 'orders', source: 'raw', records: [] };
        yield* then;
      })();
    await expectStatus(pipelines.ingest(headerOnly(1)), Status.INVALID_ARGUMENT, /^requests: the stream sent no records for pipeline "orders" source "raw"/);
    await expectStatus(pipelines.ingest(headerOnly(3)), Status.INVALID_ARGUMENT, /sent no records/);
    expect(await runs()).toBe(runsBefore);
    const late = await pipelines.ingest(headerOnly(2, [{ pipeline: '', source: '', records: [{ key: 'late', eventTimeNs: '1700000000000000000', payload: Buffer.from('late'), mediaType: '' }] }]));
    expect(late).toMatchObject({ accepted: '1', shardsRun: '3' });
    expect(await runs()).toBe(runsBefore + 1);
    await expectStatus(pipelines.ingest(headerOnly(1, [{ pipeline: 'other', source: '', records: [] }])), Status.INVALID_ARGUMENT, /^requests\[1\]\.pipeline: every message must name pipeline "orders"/);
  });

  it('a re-ingested record whose change a step does not see: the step reproduces its output (facet reproduced), the ingest succeeds', async () => {
    await pipelines.applyPipeline({ pipeline: definition({ name: 'caseless' }) });
    const first = await pipelines.ingest(records('caseless', 'raw', [{ key: 'k1', text: 'hello' }]));
    expect(first).toMatchObject({ accepted: '1', shardsRun: '3', shardsFailed: '0' });
    // Upper-casing makes "HELLO" exactly what "hello" made: shout's output version exists already.
    const again = await pipelines.ingest(records('caseless', 'raw', [{ key: 'k1', text: 'HELLO' }]));
    expect(again).toMatchObject({ accepted: '1', shardsRun: '1', shardsFailed: '0', firstError: '' });
    const readers = tc.coordinator.lineage.index.consumersOf(`version:record:caseless/raw:k1@${contentHashOf('HELLO')}`);
    expect(readers).toHaveLength(1);
    const shout = await tc.coordinator.lineage.readStep((readers[0] as string).slice('step:'.length));
    expect(shout?.generated).toEqual([]);
    expect((shout?.facets as { retrace?: { reproduced?: unknown } }).retrace?.reproduced).toEqual([{ objectId: 'record:caseless/shout:k1', contentHash: contentHashOf('HELLO') }]);
    // The record's path is the one that made its outputs.
    const path = await lineage.getRecordPath({ objectId: 'record:caseless/checked:k1', contentHash: '', asOfNs: '0' });
    expect(path.steps.map((s) => s.transform)).toEqual(['upper', 'enrich', 'boom']);
  });

  it("a record's path without a hash is the pipeline's current record, also when a step reproduced an older version (it showed the newest version first seen)", async () => {
    await pipelines.applyPipeline({ pipeline: definition({ name: 'backagain' }) });
    for (const text of ['hello', 'bye', 'HELLO']) expect(await pipelines.ingest(records('backagain', 'raw', [{ key: 'k1', text }]))).toMatchObject({ accepted: '1', shardsFailed: '0' });
    // shout made HELLO, then BYE, then HELLO again (reproduced: no new version): HELLO is current.
    const path = await lineage.getRecordPath({ objectId: 'record:backagain/shout:k1', contentHash: '', asOfNs: '0' });
    expect(path.record?.contentHash).toBe(contentHashOf('HELLO'));
    expect(path.steps.map((s) => s.used[0]?.contentHash)).toEqual([contentHashOf('hello')]);
    // A hash or a time still picks the version asked for.
    const bye = await lineage.getRecordPath({ objectId: 'record:backagain/shout:k1', contentHash: contentHashOf('BYE'), asOfNs: '0' });
    expect(bye.record?.contentHash).toBe(contentHashOf('BYE'));
  });

  it('keeps a step parameter named `__proto__` (dropped by the Struct conversion) as an own key, stored and returned, without touching any prototype', async () => {
    // As a raw gRPC client can send it: JSON.parse makes `__proto__` an own key.
    const parameters = JSON.parse('{"__proto__": {"polluted": true}, "tag": "p1"}') as Record<string, unknown>;
    const pipeline = definition({ name: 'protokey' });
    pipeline.steps[1]!.parameters = parameters;
    expect(Buffer.from(Pipeline.encode(pipeline).finish()).includes('__proto__')).toBe(true);
    await pipelines.applyPipeline({ pipeline });
    const ownProto = (o: unknown) => (o !== null && typeof o === 'object' && Object.hasOwn(o, '__proto__') ? (o as Record<string, unknown>)['__proto__'] : 'missing');
    const stored = (await pipelines.getPipeline({ name: 'protokey', version: 0 })).pipeline?.pipeline?.steps[1]?.parameters;
    expect(ownProto(stored)).toEqual({ polluted: true });
    expect(Object.getPrototypeOf(stored)).toBe(Object.prototype);
    expect((stored as { polluted?: unknown }).polluted).toBeUndefined();
    const seen = calls.length;
    expect(await pipelines.ingest(records('protokey', 'raw', [{ key: 'k1', text: 'hi' }]))).toMatchObject({ accepted: '1' });
    expect(ownProto(calls.slice(seen).find((a) => a.transform === 'enrich')?.parameters)).toEqual({ polluted: true });
    const path = await lineage.getRecordPath({ objectId: 'record:protokey/tagged:k1', contentHash: '', asOfNs: '0' });
    expect(ownProto(path.steps.find((st) => st.transform === 'enrich')?.parameters)).toEqual({ polluted: true });
    // A step whose parameters differ only by that key is a different definition.
    pipeline.steps[1]!.parameters = { tag: 'p1' };
    expect((await pipelines.applyPipeline({ pipeline })).created).toBe(true);
    expect(({} as { polluted?: unknown }).polluted).toBeUndefined();
  });

  it('retries a step whose transform failed as often as its `retries` says, recording the attempts; refusals are not retried', async () => {
    await expectStatus(
      pipelines.applyPipeline({ pipeline: definition({ name: 'retry-bad', steps: [{ ...definition().steps[0]!, retries: 101 }] }) }),
      Status.INVALID_ARGUMENT,
      /steps\[0\]\.retries: at most 100/,
    );
    await expectStatus(
      pipelines.applyPipeline({ pipeline: definition({ name: 'cpu-bad', steps: [{ ...definition().steps[0]!, requirements: { cpu: -1, memoryMb: 0, gpu: 0, instructionSets: [], networkMbps: 0 } }] }) }),
      Status.INVALID_ARGUMENT,
      /steps\[0\]\.requirements\.cpu: expected a number ≥ 0, got -1/,
    );
    const def = Pipeline.fromJSON({
      name: 'retrying',
      sources: [{ name: 'raw' }],
      steps: [
        { name: 'flaky', transform: 'flaky', codeVersion: CODE.flaky, inputs: ['raw'], retries: 2, retryBackoffMs: 1 },
        { name: 'never', transform: 'boom', codeVersion: CODE.boom, inputs: ['flaky'], retries: 2, retryBackoffMs: 1 },
        { name: 'loud', transform: 'upper', codeVersion: CODE.upper, inputs: ['raw'] },
        { name: 'once', transform: 'flaky', codeVersion: CODE.flaky, inputs: ['loud'] },
        { name: 'refused', transform: 'corrupt', codeVersion: CODE.corrupt, inputs: ['raw'], retries: 5, retryBackoffMs: 1 },
      ],
    });
    await pipelines.applyPipeline({ pipeline: def });
    let before = calls.length;
    attemptsBeforeSeen.length = 0;
    const res = await pipelines.ingest(records('retrying', 'raw', [{ key: 'r1', text: 'retry-me' }]));
    // flaky failed once, then ran; once (no retries) failed once; refused is not retried.
    expect(calls.slice(before).map((c) => c.stepName)).toEqual(['flaky', 'flaky', 'never', 'loud', 'once', 'refused']);
    expect([res.shardsRun, res.shardsFailed]).toEqual(['5', '2']);
    expect(res.firstError).toBe('once/r1: SHARD_STATUS_FAILED: transient failure on RETRY-ME');
    const ok = await lineage.getRecordPath({ objectId: 'record:retrying/never:r1', contentHash: '', asOfNs: '0' });
    expect(ok.steps.map((st) => (st.facets?.retrace as { attempts?: number }).attempts)).toEqual([2, 1]);
    // A retry's placements are numbered after the earlier ones'.
    expect(attemptsBeforeSeen).toEqual([undefined, 1, undefined, undefined, undefined, undefined]);

    before = calls.length;
    const failed = await pipelines.ingest(records('retrying', 'raw', [{ key: 'r2', text: 'BAD' }]));
    expect(calls.slice(before).map((c) => c.stepName)).toEqual(['flaky', 'flaky', 'never', 'never', 'never', 'loud', 'once', 'refused']);
    expect(failed.firstError).toBe('never/r2: SHARD_STATUS_FAILED: cannot handle BAD (after 3 attempts)');
    expect(attemptsBeforeSeen.slice(-8)).toEqual([undefined, 1, undefined, 1, 2, undefined, undefined, undefined]);
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
      // The step's requirements, timeout and retries are shown (they were not: an apply could not be checked).
      writeFileSync(file, JSON.stringify({ name: 'cli-opts', sources: [{ name: 'in' }], steps: [{ name: 'up', transform: 'upper', code_version: CODE.upper, inputs: ['in'], requirements: { memoryMb: 64 }, timeoutMs: 2000, retries: 2, retryBackoffMs: 50 }] }));
      expect((await cli('pipeline apply', [file, ...conn])).code).toBe(0);
      expect((await cli('pipeline show', ['cli-opts', ...conn])).out).toMatch(/OPTIONS\n[- ]+\nup +upper .* \{\} +mem=64MiB timeout=2000ms retries=2 backoff=50ms\n/);
      const data = join(dir, 'r.jsonl');
      writeFileSync(data, `${JSON.stringify({ key: 'a', eventTime: '2024-01-01T00:00:00Z', payload: 'abc' })}\n${JSON.stringify({ key: 'b', payload: { n: 1 } })}\n`);
      const ing = await cli('ingest', ['cli', 'in', data, '--json', ...conn]);
      expect(ing.code).toBe(0);
      expect(JSON.parse(ing.out)).toMatchObject({ accepted: '2', shardsRun: '2' });
      const path = await lineage.getRecordPath({ objectId: 'record:cli/up:b', contentHash: '', asOfNs: '0' });
      expect(path.record?.contentHash).toBe(contentHashOf('{"N":1}'));
      // A file without records (empty, or blank lines only) is a usage error naming it; no run is recorded.
      const runsBefore = (await lineage.listRuns({ pageSize: 1000, pageToken: '', namePrefix: '' })).runs.length;
      for (const [name, text] of [['empty.jsonl', ''], ['blank.jsonl', '\n  \n\n']]) {
        const empty = join(dir, name as string);
        writeFileSync(empty, text as string);
        const r = await cli('ingest', ['cli', 'in', empty, ...conn]);
        expect(r.code).toBe(2);
        expect(r.err).toContain(`error: ${empty} holds no records: expected one JSON object per line`);
      }
      expect((await lineage.listRuns({ pageSize: 1000, pageToken: '', namePrefix: '' })).runs.length).toBe(runsBefore);
      // A key too long, past the first batch of 500 records and after a blank line: the error names its line in the file.
      const lines = Array.from({ length: 700 }, (_, i) => JSON.stringify({ key: i === 600 ? 'k'.repeat(5000) : `long-${i}`, payload: 'x' }));
      lines.splice(10, 0, '');
      const long = join(dir, 'long.jsonl');
      writeFileSync(long, `${lines.join('\n')}\n`);
      const r = await cli('ingest', ['cli', 'in', long, ...conn]);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/^error: line 602\.key: /);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('payload retention (coordinator with a retention, sweep over gRPC and the CLI)', () => {
  let tc: TestCoordinator;
  const calls: ShardAssignment[] = [];
  const shared: PipelineShared & ReplayShared = {};
  const RETENTION_MS = 300;

  beforeAll(async () => {
    shared.dispatcher = fakeRunner(calls);
    // The replay checks that some node could run it; the fake runner is that node.
    shared.mesh = { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-a', state: NodeState.NODE_STATE_READY })] };
    tc = await startTestCoordinator({
      extensions: [pipelineExtension(shared, { runner: fakeRunner(calls), payloadRetentionMs: RETENTION_MS, sweepIntervalMs: 3_600_000 }), replayExtension(shared)],
    });
    const code = contentHashOf('any transform');
    await tc.client(PipelineServiceDefinition).applyPipeline({
      pipeline: Pipeline.fromJSON({
        name: 'kept',
        sources: [{ name: 'raw', mediaType: 'text/plain' }],
        steps: [
          { name: 'shout', transform: 'upper', codeVersion: code, inputs: ['raw'] },
          { name: 'tagged', transform: 'enrich', codeVersion: code, parameters: { tag: 'x' }, inputs: ['shout'] },
        ],
      }),
    });
  });
  afterAll(async () => {
    await tc.stop();
  });

  it('deletes superseded payloads once they expire and keeps current ones; a replay that needs a swept one says so', async () => {
    const pipelines = tc.client(PipelineServiceDefinition);
    const first = await pipelines.ingest(records('kept', 'raw', [{ key: 'a', text: 'one' }]));
    await pipelines.ingest(records('kept', 'raw', [{ key: 'a', text: 'two' }, { key: 'b', text: 'bee' }]));
    const superseded = [contentHashOf('one'), contentHashOf('ONE'), contentHashOf(JSON.stringify({ value: 'ONE', tag: 'x' }))];
    const current = ['two', 'TWO', 'bee', 'BEE'].map((t) => contentHashOf(t));
    await new Promise((r) => setTimeout(r, RETENTION_MS + 100));
    const args = ['--coordinator', tc.grpcAddress, '--token', tc.token];

    const dry = await cli('payloads sweep', ['--dry-run', '--json', ...args]);
    expect(dry.code).toBe(0);
    expect(JSON.parse(dry.out)).toMatchObject({ retentionMs: String(RETENTION_MS), scanned: '9', expired: '9', kept: '6', deleted: '3', dryRun: true });
    for (const h of superseded) expect((await pipelines.getPayload({ contentHash: h })).payload.length).toBeGreaterThan(0);

    const swept = await cli('payloads sweep', args);
    expect(swept.code).toBe(0);
    expect(swept.out).toContain('deleted 3 payloads (');
    expect(swept.out).toContain('kept 6 as old but still in use');
    for (const h of superseded) await expectStatus(pipelines.getPayload({ contentHash: h }), Status.NOT_FOUND, 'content_hash');
    for (const h of current) expect((await pipelines.getPayload({ contentHash: h })).payload.length).toBeGreaterThan(0);

    // Replaying the run that read the swept version fails, naming the payload it lacks.
    const replays = tc.client(ReplayServiceDefinition);
    const started = await replays.startReplay({ selector: { selector: { $case: 'runId', value: first.runId } }, policy: undefined });
    for await (const _ of replays.watchReplay({ replayId: started.replayId }));
    const { report } = await replays.getReplayReport({ replayId: started.replayId });
    expect(report?.summary?.failed).toBeGreaterThan(0);
    expect(report?.steps.find((st) => st.error !== '')?.error).toContain(`${contentHashOf('one')}) is not kept (retention)`);

    // The old content again is a change back: its steps run again and store their outputs anew.
    const before = calls.length;
    const again = await pipelines.ingest(records('kept', 'raw', [{ key: 'a', text: 'one' }]));
    expect(again.shardsFailed).toBe('0');
    expect(calls.length - before).toBe(2);
    for (const h of superseded) expect((await pipelines.getPayload({ contentHash: h })).payload.length).toBeGreaterThan(0);
  });

  it('a coordinator that keeps payloads forever refuses to sweep; the CLI checks --payload-retention and --watch-root', async () => {
    const forever = await startTestCoordinator({ extensions: [pipelineExtension({}, { runner: fakeRunner([]) })] });
    try {
      const r = await cli('payloads sweep', ['--coordinator', forever.grpcAddress, '--token', forever.token]);
      expect(r.code).toBe(1);
      expect(r.err).toContain('start the coordinator with --payload-retention');
    } finally {
      await forever.stop();
    }
    // The real command passes the flags on: its coordinator sweeps, and watches inside its root only.
    const children: ChildProcess[] = [];
    const dataDir = mkdtempSync(join(tmpdir(), 'retrace-retention-'));
    const watchRoot = mkdtempSync(join(tmpdir(), 'retrace-watch-root-'));
    try {
      const proc = await startCoordinatorProcess(dataDir, children, ['--payload-retention', '30d', '--watch-root', watchRoot]);
      const conn = ['--coordinator', proc.grpc, '--token-file', join(dataDir, 'auth-token')];
      const r = await cli('payloads sweep', ['--json', ...conn]);
      expect(r.err).toBe('');
      // Protobuf JSON with every field: the zero counts too.
      expect(JSON.parse(r.out)).toEqual({ retentionMs: String(30 * 86_400_000), scanned: '0', expired: '0', kept: '0', deleted: '0', bytesDeleted: '0', stamped: '0', dryRun: false });
      expect((await cli('watch', [watchRoot, '--prefix', 'w:', ...conn])).code).toBe(0);
      const outside = await cli('watch', [dataDir, '--prefix', 'w:', ...conn]);
      expect(outside.code).toBe(1);
      expect(outside.err).toContain("is or holds the coordinator's data dir");
    } finally {
      for (const c of children) c.kill('SIGKILL');
      await Promise.all(children.map((c) => new Promise((resolve) => (c.exitCode === null && c.signalCode === null ? c.once('exit', resolve) : resolve(undefined)))));
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(watchRoot, { recursive: true, force: true });
    }
    for (const [value, message] of [
      ['500ms', '--payload-retention: at least 1s, got 500ms'],
      ['soon', '--payload-retention: expected a duration like 30s'],
    ] as const) {
      const r = await cli('coordinator', ['--payload-retention', value, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--data', join(tmpdir(), 'retrace-never-made')]);
      expect(r.code).toBe(2);
      expect(r.err).toContain(message);
    }
    for (const command of ['coordinator', 'start']) {
      const r = await cli(command, ['--watch-root', join(tmpdir(), 'retrace-no-such-dir'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--data', join(tmpdir(), 'retrace-never-made')]);
      expect(r.code).toBe(2);
      expect(r.err).toContain('--watch-root: ');
      expect(r.err).toContain('retrace-no-such-dir" is not a directory');
    }
  });
});

describe('ingest JSONL lines', () => {
  it('refuses an empty key and a mediaType that is not text, naming the line and field', () => {
    expect(() => parseRecordLine('{"key":"","payload":1}', 3)).toThrow(expect.objectContaining({ field: 'line 3.key' }));
    expect(() => parseRecordLine('{"key":"k","payload":{"x":1},"mediaType":5}', 2)).toThrow(expect.objectContaining({ field: 'line 2.mediaType', message: 'line 2.mediaType: expected text such as "application/json", got 5' }));
    expect(parseRecordLine('{"key":"k","payload":{"x":1},"mediaType":"application/x-ndjson"}', 1)).toMatchObject({ key: 'k', mediaType: 'application/x-ndjson' });
  });

  it('refuses an event time past int64, naming the line (it failed in the encoder, naming none)', () => {
    for (const t of ['"99999999999999999999999"', '1e30', '"2300-01-01T00:00:00Z"']) {
      expect(() => parseRecordLine(`{"key":"k","payload":1,"eventTime":${t}}`, 7)).toThrow(expect.objectContaining({ field: 'line 7.eventTime', message: expect.stringContaining('past the latest event time') }));
    }
    expect(parseRecordLine('{"key":"k","payload":1,"eventTime":"9223372036854775807"}', 1).eventTimeNs).toBe('9223372036854775807');
  });

  it('refuses an event time in ns given as a JSON number past 2^53 (it was stored rounded), naming the line; a string keeps every digit', () => {
    expect(() => parseRecordLine('{"key":"k","payload":1,"eventTime":1763000000123456789}', 5)).toThrow(
      expect.objectContaining({ field: 'line 5.eventTime', message: expect.stringContaining('line 5.eventTime: a JSON number past 2^53 (9007199254740991) cannot be read exactly') }),
    );
    expect(parseRecordLine('{"key":"k","payload":1,"eventTime":"1763000000123456789"}', 1).eventTimeNs).toBe('1763000000123456789');
    expect(parseRecordLine('{"key":"k","payload":1,"eventTime":9007199254740991}', 1).eventTimeNs).toBe('9007199254740991');
  });

  it('refuses a member a record does not have (a misspelt eventTime was ingested without it)', () => {
    expect(() => parseRecordLine('{"key":"k","payload":1,"evenTime":"2020-01-01T00:00:00Z"}', 4)).toThrow(expect.objectContaining({ field: 'line 4.evenTime', message: 'line 4.evenTime: unknown field; a record has key, eventTime, payload, mediaType' }));
  });
});

describe('pipeline apply FILE.json', () => {
  const dir = mkdtempSync(join(tmpdir(), 'retrace-pipeline-file-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const step = { name: 's', transform: 't', codeVersion: `sha256:${'a'.repeat(64)}`, inputs: ['raw'] };
  const read = (pipeline: unknown): Pipeline => {
    const file = join(dir, 'p.json');
    writeFileSync(file, JSON.stringify(pipeline));
    return readPipelineFile(file);
  };

  it('names the field of a member the definition does not have or of the wrong type, instead of dropping it or failing in the encoder', () => {
    // Each was dropped (a misspelt "retry", parameters that are not an object) or failed as
    // "Request message serialization failure: invalid uint32: -1", naming no field.
    expect(() => read({ name: 'p', sources: [{ name: 'raw' }], steps: [{ ...step, retry: 2 }] })).toThrow(expect.objectContaining({ field: 'steps[0].retry', message: expect.stringMatching(/^steps\[0\]\.retry: unknown field; PipelineStep has name, /) }));
    expect(() => read({ name: 'p', sources: [{ name: 'raw' }], steps: [{ ...step, parameters: 'x' }] })).toThrow(expect.objectContaining({ field: 'steps[0].parameters', message: 'steps[0].parameters: expected an object, got "x"' }));
    expect(() => read({ name: 'p', sources: [{ name: 'raw' }], steps: [{ ...step, retries: -1 }] })).toThrow(expect.objectContaining({ field: 'steps[0].retries' }));
    expect(() => read({ name: 'p', sources: [{ name: 'raw' }], steps: [{ ...step, requirements: { memoryMb: 'lots' } }] })).toThrow(expect.objectContaining({ field: 'steps[0].requirements.memoryMb' }));
    expect(() => read({ name: 5, sources: [{ name: 'raw' }], steps: [step] })).toThrow(expect.objectContaining({ field: 'pipeline.name' }));
    // gpu as defineTransform takes it: true is one GPU, false none; another kind is still named.
    expect(read({ name: 'p', sources: [{ name: 'raw' }], steps: [{ ...step, requirements: { gpu: true } }] }).steps[0]?.requirements?.gpu).toBe(1);
    expect(read({ name: 'p', sources: [{ name: 'raw' }], steps: [{ ...step, requirements: { gpu: false } }] }).steps[0]?.requirements?.gpu).toBe(0);
    expect(() => read({ name: 'p', sources: [{ name: 'raw' }], steps: [{ ...step, requirements: { gpu: 'yes' } }] })).toThrow(expect.objectContaining({ field: 'steps[0].requirements.gpu' }));
    // proto names are JSON too.
    expect(read({ name: 'p', sources: [{ name: 'raw', media_type: 'application/json' }], steps: [{ ...step, timeout_ms: 100, parameters: { rate: 2 } }] })).toMatchObject({ name: 'p', steps: [{ timeoutMs: 100, parameters: { rate: 2 } }] });
  });
});

describe('payload store', () => {
  const rows = async (db: Database, name: string): Promise<number> => (await db.sublevel('payloads').sublevel(name).keys().all()).length;

  it('deduplicates, and a sweep deletes what was not referenced within the retention unless it is in use', async () => {
    const db = await openDatabase(null);
    let now = 1_000;
    const store = createPayloadStore(db, { retentionMs: 100, now: () => now });
    const h1 = await store.put(Buffer.from('same'));
    expect(await store.put(Buffer.from('same'))).toBe(h1);
    expect(await rows(db, 'bytes')).toBe(1);
    const current = await store.put(Buffer.from('current'));
    now = 1_050;
    const other = await store.put(Buffer.from('other'));
    now = 1_120;
    const dry = await store.sweep({ inUse: () => [current], dryRun: true });
    expect(dry).toEqual({ retentionMs: 100, scanned: 3, expired: 2, kept: 1, deleted: 1, bytesDeleted: 4, stamped: 0, dryRun: true });
    expect(await store.has(h1)).toBe(true);
    expect(await store.sweep({ inUse: () => [current] })).toMatchObject({ expired: 2, kept: 1, deleted: 1, bytesDeleted: 4, dryRun: false });
    expect(await store.has(h1)).toBe(false);
    expect(await rows(db, 'touched')).toBe(2);
    expect(await store.has(other)).toBe(true);
    // The kept one's retention was renewed by that sweep: once superseded it stays the retention.
    now = 1_200;
    expect(await store.sweep({ inUse: () => [] })).toMatchObject({ expired: 1, deleted: 1 });
    expect(await store.has(other)).toBe(false);
    expect(await store.has(current)).toBe(true);
    now = 1_300;
    expect(await store.sweep({ inUse: () => [] })).toMatchObject({ expired: 1, deleted: 1 });
    expect(await store.has(current)).toBe(false);
    expect(await rows(db, 'touched')).toBe(0);
    await expect(createPayloadStore(db).sweep({ inUse: () => [] })).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', message: expect.stringContaining('--payload-retention') });
    await db.close();
  });

  it('payloads stored while they were kept forever start their retention at the first sweep', async () => {
    const db = await openDatabase(null);
    const forever = createPayloadStore(db);
    const old = await forever.put(Buffer.from('old'));
    expect(await rows(db, 'touched')).toBe(0);
    let now = 5_000;
    const store = createPayloadStore(db, { retentionMs: 100, now: () => now });
    expect(await store.sweep({ inUse: () => [], dryRun: true })).toMatchObject({ scanned: 1, stamped: 1, expired: 0, deleted: 0 });
    expect(await rows(db, 'touched')).toBe(0);
    expect(await store.sweep({ inUse: () => [] })).toMatchObject({ scanned: 1, stamped: 1, expired: 0, deleted: 0 });
    now = 5_050;
    expect(await store.sweep({ inUse: () => [] })).toMatchObject({ stamped: 0, expired: 0 });
    now = 5_101;
    expect(await store.sweep({ inUse: () => [] })).toMatchObject({ expired: 1, deleted: 1 });
    expect(await store.has(old)).toBe(false);
    await db.close();
  });

  it('keeps what is stored or retained while a sweep runs; retain says whether every payload is stored', async () => {
    const db = await openDatabase(null);
    let now = 1_000;
    const store = createPayloadStore(db, { retentionMs: 100, now: () => now });
    const a = await store.put(Buffer.from('a'));
    const b = await store.put(Buffer.from('b'));
    const c = await store.put(Buffer.from('c'));
    now = 2_000;
    let retained: boolean | undefined;
    const report = await store.sweep({
      // The sweep has listed a, b and c as expired by the time it asks what is in use.
      async *inUse() {
        await store.put(Buffer.from('a'));
        retained = await store.retain([b]);
      },
    });
    expect(retained).toBe(true);
    expect(report).toMatchObject({ expired: 3, kept: 2, deleted: 1 });
    expect([await store.has(a), await store.has(b), await store.has(c)]).toEqual([true, true, false]);
    expect(await store.retain([a, b])).toBe(true);
    expect(await store.retain([a, c])).toBe(false);
    expect(await store.retain([])).toBe(true);
    // retain() stamped c, which is gone: the next sweep drops that row, and only that one.
    expect(await rows(db, 'touched')).toBe(3);
    await store.sweep({ inUse: () => [] });
    expect(await rows(db, 'touched')).toBe(2);
    // A sweep stopped before it deletes leaves every payload.
    now = 3_000;
    const stop = new AbortController();
    stop.abort();
    await expect(store.sweep({ inUse: () => [], signal: stop.signal })).rejects.toThrow();
    expect(await store.has(a)).toBe(true);
    await db.close();
  });
});

/** `retrace <path> ...argv`, in-process. */
function cli(path: string, argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return runCli([...path.split(' '), ...argv]);
}
