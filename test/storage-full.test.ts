import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClientError, Status, type Client } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { Level } from 'level';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { codeExtension } from '../coordinator/code/code-extension.js';
import type { CodeStore } from '../coordinator/code/code-store.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { replayExtension, type ReplayShared } from '../coordinator/replay/replay-extension.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { guardStorage, isOutOfSpace } from '../coordinator/store/storage-guard.js';
import { ERROR_TABLE, errorCodeOfStatus, InsufficientStorageError, toHttpError, toServerError } from '../common/errors.js';
import { LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { Pipeline, PipelineServiceDefinition, type IngestRequest } from '../common/gen/retrace/v1/pipeline.js';
import { ShardStatus } from '../common/gen/retrace/v1/shard.js';
import { NodeInfo, NodeState } from '../common/gen/retrace/v1/node.js';
import { ReplayServiceDefinition, ReplayState, type WatchReplayResponse } from '../common/gen/retrace/v1/replay.js';
import { h, objectEvent } from './helpers/lineage-events.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { until } from './helpers/until.js';

/**
 * A full data dir (crash-review finding 4): the write that meets it fails RESOURCE_EXHAUSTED
 * (HTTP 507) naming the dir, health says NOT_SERVING, an ingest ends with the error, and once
 * space is back the coordinator serves again without a restart, every acknowledged event kept.
 */

const SERVING = 1;
const NOT_SERVING = 2;

/** LevelDB's error for a full disk, as classic-level raises it. */
function enospc(dir: string): Error {
  return Object.assign(new Error(`IO error: ${dir}/000005.ldb: No space left on device`), { code: 'LEVEL_IO_ERROR' });
}

/** Called as each shard starts (a test arms a failure there). */
let onShard: (() => void) | undefined;

/** A one-step pipeline whose shards run in-process (upper-cases its input). */
const upperRunner: ShardRunner = {
  async run(assignment) {
    onShard?.();
    const started = BigInt(Date.now()) * 1_000_000n;
    const text = new TextDecoder().decode(assignment.inputs[0]?.payload).toUpperCase();
    const resources = { cpuTimeNs: '1000', peakMemoryBytes: '4096', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1000' };
    const outcome = { shardId: assignment.shardId, startedAtNs: started.toString(), endedAtNs: (started + 1000n).toString(), nodeId: 'node-a', attempt: 1, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from(text), mediaType: 'text/plain' }], resources, error: '' };
    return { outcome, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
  },
};

function records(keys: string[]): AsyncIterable<IngestRequest> {
  return (async function* () {
    yield { pipeline: 'shout', source: 'raw', records: keys.map((key) => ({ key, eventTimeNs: '1700000000000000000', payload: Buffer.from(`text of ${key}`), mediaType: '' })) };
  })();
}

async function startWithPipeline(options: { dataDir?: string; probeMs: number; replay?: boolean; writeBufferMiB?: number }): Promise<{ tc: TestCoordinator; pipelines: Client<typeof PipelineServiceDefinition> }> {
  const shared: PipelineShared & ReplayShared & { code?: CodeStore } = {};
  if (options.replay) {
    shared.dispatcher = upperRunner;
    // The replay checks that some node could run it; the in-process runner is that node.
    shared.mesh = { nodes: () => [NodeInfo.fromPartial({ nodeId: 'node-a', state: NodeState.NODE_STATE_READY })] };
  }
  const tc = await startTestCoordinator({
    ...(options.dataDir === undefined ? {} : { dataDir: options.dataDir }),
    coordinatorOptions: { storageProbeIntervalMs: options.probeMs, ...(options.writeBufferMiB === undefined ? {} : { dbWriteBufferMiB: options.writeBufferMiB }) },
    extensions: [codeExtension({ onCodeStore: (s) => (shared.code = s) }), pipelineExtension(shared, { runner: upperRunner, concurrency: 4 }), ...(options.replay ? [replayExtension(shared)] : [])],
  });
  const code = await (shared.code as CodeStore).publish(new TextEncoder().encode('// upper'), { transform: 'upper', requirements: undefined, sourceFile: 'upper.ts', bundler: 'test' });
  const pipelines = tc.client(PipelineServiceDefinition);
  const pipeline = Pipeline.fromJSON({ name: 'shout', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'loud', transform: 'upper', codeVersion: code.code.codeVersion, inputs: ['raw'] }] });
  await pipelines.applyPipeline({ pipeline });
  return { tc, pipelines };
}

/**
 * A full disk on demand: `arm()` makes the next batch LevelDB writes fail as a full disk fails it
 * (once), by replacing `_write` on the prototype every classic-level chained batch shares, whose
 * `_write` goes to the native batch. `restore()` undoes it whether or not it fired.
 */
async function fullDiskOnce(dbDir: string): Promise<{ arm(): void; restore(): void }> {
  const probeDir = mkdtempSync(join(tmpdir(), 'retrace-proto-'));
  const probe = new Level(probeDir);
  await probe.open();
  const proto = Object.getPrototypeOf(probe.batch()) as { _write: (...args: unknown[]) => Promise<void> };
  await probe.close();
  rmSync(probeDir, { recursive: true, force: true });
  const original = proto._write;
  return {
    arm() {
      proto._write = async function (): Promise<void> {
        proto._write = original;
        throw enospc(dbDir);
      };
    },
    restore() {
      proto._write = original;
    },
  };
}

async function rejection(p: Promise<unknown>): Promise<ClientError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ClientError);
  return err as ClientError;
}

async function health(tc: TestCoordinator): Promise<number> {
  return (await tc.client(HealthDefinition).check({ service: '' })).status;
}

/** POSTs one OpenLineage COMPLETE RunEvent (job ns/job writing ns/out) to the coordinator's HTTP face. */
function postRunEvent(tc: TestCoordinator, runId: string): Promise<Response> {
  return fetch(`${tc.httpUrl}/api/v1/lineage`, {
    method: 'POST',
    headers: { ...tc.httpAuth, 'content-type': 'application/json' },
    body: JSON.stringify({
      eventTime: '2024-10-17T09:18:26.825Z',
      producer: 'https://example.com/p',
      schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent',
      eventType: 'COMPLETE',
      run: { runId, facets: {} },
      job: { namespace: 'ns', name: 'job', facets: {} },
      inputs: [],
      outputs: [{ namespace: 'ns', name: 'out' }],
    }),
  });
}

describe('the error table', () => {
  it('maps a full data dir to RESOURCE_EXHAUSTED and 507, and RESOURCE_EXHAUSTED back to RESOURCE_EXHAUSTED', () => {
    const err = new InsufficientStorageError('/var/lib/retrace/db', enospc('/var/lib/retrace/db'));
    expect(toServerError(err).code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(toServerError(err).details).toMatch(/^the data dir \/var\/lib\/retrace\/db is out of space/);
    expect(toHttpError(err)).toEqual({ status: 507, body: { error: 'INSUFFICIENT_STORAGE', message: err.message } });
    expect(ERROR_TABLE.RESOURCE_EXHAUSTED.http).toBe(429);
    expect(errorCodeOfStatus(Status.RESOURCE_EXHAUSTED)).toBe('RESOURCE_EXHAUSTED');
  });

  it('tells a full disk from other write errors', () => {
    expect(isOutOfSpace(enospc('/d'))).toBe(true);
    expect(isOutOfSpace(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }))).toBe(true);
    expect(isOutOfSpace(new Error('wrapped', { cause: Object.assign(new Error('quota'), { code: 'EDQUOT' }) }))).toBe(true);
    expect(isOutOfSpace(Object.assign(new Error('IO error: /d/000003.log: Input/output error'), { code: 'LEVEL_IO_ERROR' }))).toBe(false);
    expect(isOutOfSpace(new Error('Database is not open'))).toBe(false);
  });
});

describe('guardStorage on LevelDB in a temp dir', () => {
  it('refuses writes while FULL, keeps reads, and reopens root and nested sublevels once the probe finds room', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrace-guard-'));
    const db = await openDatabase(dir);
    // Under the guard: the next array batch fails as a full disk fails it.
    let failNext = false;
    const hooks = db as unknown as { _batch: (...args: unknown[]) => Promise<void>; _open: (...args: unknown[]) => Promise<void> };
    const batch = hooks._batch.bind(db);
    hooks._batch = async (...args) => {
      if (!failNext) return batch(...args);
      failNext = false;
      throw enospc(dir);
    };
    const logs: string[] = [];
    let room = false;
    const guard = guardStorage(db, {
      dir,
      log: (l) => logs.push(l),
      probeIntervalMs: 3_600_000,
      probeSpace: async () => {
        if (!room) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      },
    });
    const states: string[] = [];
    guard.onChange((s) => states.push(s));
    try {
      const outer = db.sublevel<string, string>('outer', { valueEncoding: 'utf8' });
      const inner = outer.sublevel<string, string>('inner', { valueEncoding: 'utf8' });
      await inner.put('a', '1');
      failNext = true;
      const err = await inner.batch([{ type: 'put', key: 'b', value: '2' }, { type: 'put', key: 'c', value: '3' }]).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(InsufficientStorageError);
      expect((err as Error).message).toContain(`the data dir ${dir} is out of space`);
      expect((err as Error).cause).toBeInstanceOf(Error);
      expect(guard.state).toBe('FULL');
      // Refused at once while FULL, whatever the write; reads go on.
      await expect(outer.put('x', 'y')).rejects.toBeInstanceOf(InsufficientStorageError);
      expect(() => db.batch()).toThrow(InsufficientStorageError);
      expect(await inner.get('a')).toBe('1');
      expect(await inner.get('b')).toBeUndefined();

      expect(await guard.probe()).toBe('FULL');
      expect(logs.some((l) => l.includes('still cannot be written: ENOSPC'))).toBe(true);
      room = true;
      // A reopen that fails leaves it FULL, and the next probe tries again.
      const open = hooks._open;
      hooks._open = async () => {
        hooks._open = open;
        throw new Error('IO error: simulated open failure');
      };
      expect(await guard.probe()).toBe('FULL');
      expect(await guard.probe()).toBe('WRITABLE');
      expect(states).toEqual(['FULL', 'WRITABLE']);
      // Sublevels made before the reopen work after it, nested ones too.
      await inner.batch([{ type: 'put', key: 'b', value: '2' }]);
      expect(await inner.getMany(['a', 'b', 'c'])).toEqual(['1', '2', undefined]);
      await outer.put('x', 'y');
      expect(await outer.get('x')).toBe('y');
    } finally {
      await guard.stop();
      await db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a LevelDB write that fails for space (injected once)', () => {
  let tc: TestCoordinator | undefined;
  let restore: (() => void) | undefined;
  afterEach(async () => {
    restore?.();
    await tc?.stop();
    tc = undefined;
  });

  it('answers RESOURCE_EXHAUSTED and 507, goes NOT_SERVING, ends an ingest with the error, and recovers without a restart', async () => {
    const started = await startWithPipeline({ probeMs: 3_600_000 });
    tc = started.tc;
    const { pipelines } = started;
    const lineage = tc.client(LineageServiceDefinition);
    const dbDir = join(tc.dataDir, 'db');
    for (let i = 0; i < 5; i++) await lineage.submitEvent({ event: objectEvent(`before-${i}`, `obj:before-${i}`, `b${i}`) });
    await pipelines.ingest(records(['a', 'b']));
    const acked = (await lineage.verifyLedger({})).entriesChecked;
    expect(await health(tc)).toBe(SERVING);

    // The next batch LevelDB writes fails as a full disk fails it.
    const disk = await fullDiskOnce(dbDir);
    restore = disk.restore;
    disk.arm();

    const full = await rejection(lineage.submitEvent({ event: objectEvent('during', 'obj:during', 'd') }));
    expect(full.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(full.details).toContain(`the data dir ${dbDir} is out of space`);
    expect(tc.coordinator.storage?.state).toBe('FULL');
    expect(await health(tc)).toBe(NOT_SERVING);
    // Later writes are refused at once, the HTTP face's with 507 and the usual error body.
    const res = await postRunEvent(tc, '00000000-0000-4000-8000-000000000001');
    expect(res.status).toBe(507);
    expect(await res.json()).toEqual({ error: 'INSUFFICIENT_STORAGE', message: expect.stringContaining(`the data dir ${dbDir} is out of space`) });
    // An ingest ends with the error instead of waiting.
    const ingest = await rejection(pipelines.ingest(records(['c'])));
    expect(ingest.code).toBe(Status.RESOURCE_EXHAUSTED);
    // Reads go on, and nothing of the refused writes is in the ledger.
    expect((await lineage.verifyLedger({})).entriesChecked).toBe(acked);

    expect(await tc.coordinator.storage?.probe()).toBe('WRITABLE');
    expect(await health(tc)).toBe(SERVING);
    // The refused event was never recorded: it is new now, at the next seq.
    expect(await lineage.submitEvent({ event: objectEvent('during', 'obj:during', 'd') })).toEqual({ seq: acked, duplicate: false });
    await pipelines.ingest(records(['c']));
    const report = await lineage.verifyLedger({});
    expect(report.ok).toBe(true);
    for (let i = 0; i < 5; i++) expect((await lineage.getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: `obj:before-${i}`, contentHash: h(`b${i}`) } })).node).toBeDefined();
  });
});

describe('work the full disk cuts off', () => {
  let tc: TestCoordinator | undefined;
  let restore: (() => void) | undefined;
  afterEach(async () => {
    restore?.();
    onShard = undefined;
    await tc?.stop();
    tc = undefined;
  });

  it('an ingest has its run ended (FAIL) once writes are taken again, without waiting for a restart or another ingest', async () => {
    const started = await startWithPipeline({ probeMs: 3_600_000 });
    tc = started.tc;
    const { pipelines } = started;
    const lineage = tc.client(LineageServiceDefinition);
    const disk = await fullDiskOnce(join(tc.dataDir, 'db'));
    restore = disk.restore;
    // The record's provenance is the write that meets the full disk: the run has started by then.
    onShard = () => {
      onShard = undefined;
      disk.arm();
    };
    const cut = await rejection(pipelines.ingest(records(['a'])));
    expect(cut.code).toBe(Status.RESOURCE_EXHAUSTED);
    const shoutRuns = async () => (await lineage.listRuns({ namePrefix: 'pipeline:shout', pageSize: 0, pageToken: '' })).runs;
    // Its end could not be written either.
    expect((await shoutRuns()).map((r) => r.state)).toEqual(['RUNNING']);

    expect(await tc.coordinator.storage?.probe()).toBe('WRITABLE');
    const [failed] = await until('the cut-off run ended', async () => {
      const runs = await shoutRuns();
      return runs[0]?.state === 'FAIL' ? runs : undefined;
    }, 10_000);
    expect((failed?.facets as { retrace?: { error?: string } } | undefined)?.retrace?.error).toContain('is out of space');
    await pipelines.ingest(records(['b']));
    expect((await shoutRuns()).map((r) => r.state).sort()).toEqual(['COMPLETE', 'FAIL']);
  });

  it('a replay ends FAILED with the error instead of never ending, and its run is closed once writes are taken again', async () => {
    const started = await startWithPipeline({ probeMs: 3_600_000, replay: true });
    tc = started.tc;
    const lineage = tc.client(LineageServiceDefinition);
    const replays = tc.client(ReplayServiceDefinition);
    const { runId } = await started.pipelines.ingest(records(['a', 'b']));
    const disk = await fullDiskOnce(join(tc.dataDir, 'db'));
    restore = disk.restore;
    // A replayed shard's provenance is the write that meets the full disk.
    onShard = () => {
      onShard = undefined;
      disk.arm();
    };
    const { replayId } = await replays.startReplay({ selector: { selector: { $case: 'runId', value: runId } }, policy: undefined });
    let last: WatchReplayResponse | undefined;
    for await (const p of replays.watchReplay({ replayId })) last = p;
    expect(last?.state).toBe(ReplayState.REPLAY_STATE_FAILED);
    expect(last?.message).toContain('is out of space');
    const { report } = await replays.getReplayReport({ replayId });
    expect(report?.state).toBe(ReplayState.REPLAY_STATE_FAILED);
    expect(report?.error).toMatch(/^the replay stopped: .*is out of space/);

    expect(await tc.coordinator.storage?.probe()).toBe('WRITABLE');
    // Saved again by itself, its run closed (not RUNNING, as a restart would otherwise find it).
    const run = await until('the replay run closed', async () => {
      const r = (await lineage.listRuns({ namePrefix: `replay/${replayId}`, pageSize: 0, pageToken: '' })).runs[0];
      return r && r.state !== 'RUNNING' ? r : undefined;
    }, 10_000);
    expect((run.facets as { retrace?: { replayState?: string } } | undefined)?.retrace?.replayState).toBe('FAILED');
  });
});

describe('a request that meets the database closed', () => {
  it('answers UNAVAILABLE (gRPC) and 503 (HTTP), which clients retry, rather than an internal error', async () => {
    let db: Database | undefined;
    const tc = await startTestCoordinator({ extensions: [(ctx) => ((db = ctx.db), { name: 'db-handle' })] });
    try {
      const lineage = tc.client(LineageServiceDefinition);
      await lineage.submitEvent({ event: objectEvent('one', 'obj:one', '1') });
      // As during the storage guard's reopen, which closes it for a moment.
      await (db as Database).close();
      const read = await rejection(lineage.verifyLedger({ ledgerOnly: true }));
      expect(read.code).toBe(Status.UNAVAILABLE);
      expect(read.details).toContain('the database is not open');
      const write = await rejection(lineage.submitEvent({ event: objectEvent('two', 'obj:two', '2') }));
      expect(write.code).toBe(Status.UNAVAILABLE);
      const res = await postRunEvent(tc, '00000000-0000-4000-8000-000000000002');
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({ error: 'UNAVAILABLE', message: expect.stringContaining('the database is not open') });
    } finally {
      await tc.stop();
    }
  });
});

/** Whether this process may mount a tmpfs (root in a container that allows it; not on most CI). */
function tmpfsMountable(): { ok: true } | { ok: false; reason: string } {
  if (process.platform !== 'linux') return { ok: false, reason: `${process.platform} has no tmpfs mount` };
  const dir = mkdtempSync(join(tmpdir(), 'retrace-mountcheck-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir], { stdio: 'pipe' });
    execFileSync('umount', [dir], { stdio: 'pipe' });
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `mount -t tmpfs failed: ${String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim() || 'not permitted'}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const mountable = tmpfsMountable();

describe.runIf(mountable.ok)(`a data dir on a 16 MiB tmpfs that fills up${mountable.ok ? '' : ` (skipped: ${mountable.reason})`}`, () => {
  let mountpoint = '';
  let tc: TestCoordinator | undefined;
  beforeAll(() => {
    mountpoint = mkdtempSync(join(tmpdir(), 'retrace-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', mountpoint]);
  });
  afterEach(async () => {
    await tc?.stop({ keepData: true });
    tc = undefined;
    for (const name of ['data', 'ballast']) rmSync(join(mountpoint, name), { recursive: true, force: true });
  });
  afterAll(() => {
    execFileSync('umount', [mountpoint]);
    rmSync(mountpoint, { recursive: true, force: true });
  });

  // With LevelDB's own 4 MiB memtable (the default 64 would never flush on this disk):
  // 11 MiB leave about 5: the log fits, the table of the first 4 MiB memtable does not, and
  // LevelDB then fails every write until reopened. 14 MiB leave 2: the log itself is cut short,
  // and without the reopen, records acknowledged after it were lost at the next start.
  it.each([
    ['a compaction', 11],
    ['the log', 14],
  ])('refuses writes when %s meets the full disk, goes NOT_SERVING, serves again once space is freed; every acknowledged event kept, across a restart', async (_what, ballastMiB) => {
    const dataDir = join(mountpoint, 'data');
    mkdirSync(dataDir);
    let started = await startWithPipeline({ dataDir, probeMs: 100, writeBufferMiB: 4 });
    tc = started.tc;
    let lineage = tc.client(LineageServiceDefinition);
    const ballast = join(mountpoint, 'ballast');
    writeFileSync(ballast, Buffer.alloc(ballastMiB * 1024 * 1024));
    const blob = 'x'.repeat(60_000);
    const acked: number[] = [];
    const fill = async (from: number, count: number): Promise<ClientError | undefined> => {
      for (let i = from; i < from + count; i++) {
        const event = objectEvent(`fill-${i}`, `obj:fill-${i}`, `f${i}`);
        if (event.body?.$case === 'objectVersion') event.body.value.attributes = { blob: `${i}${blob}` };
        try {
          await lineage.submitEvent({ event });
          acked.push(i);
        } catch (err) {
          return err as ClientError;
        }
      }
      return undefined;
    };
    const refused = await fill(0, 400);
    expect(refused?.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(refused?.details).toContain(`the data dir ${join(dataDir, 'db')} is out of space`);
    expect(acked.length).toBeGreaterThan(10);
    expect(await health(tc)).toBe(NOT_SERVING);
    const ingest = await rejection(started.pipelines.ingest(records(['x'])));
    expect(ingest.code).toBe(Status.RESOURCE_EXHAUSTED);
    // Still refused a few probes later while the disk stays full.
    await new Promise((r) => setTimeout(r, 300));
    expect(await health(tc)).toBe(NOT_SERVING);

    rmSync(ballast);
    await until('SERVING once the ballast is gone', async () => ((await health(tc as TestCoordinator)) === SERVING ? true : undefined), 5000);
    expect(await fill(1000, 20)).toBeUndefined();
    await started.pipelines.ingest(records(['x']));
    const expectAllAcked = async (): Promise<void> => {
      for (const i of acked) expect((await lineage.getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: `obj:fill-${i}`, contentHash: h(`f${i}`) } })).node).toBeDefined();
      const verify = await runCli(['verify', '--coordinator', (tc as TestCoordinator).grpcAddress, '--token', (tc as TestCoordinator).token]);
      expect(verify.out).toMatch(/^ok: \d+ entries/);
      expect(verify.code).toBe(0);
    };
    await expectAllAcked();
    // LevelDB replays its log at the next open: what it acknowledged must all be there.
    await tc.stop({ keepData: true });
    tc = undefined;
    started = await startWithPipeline({ dataDir, probeMs: 100, writeBufferMiB: 4 });
    tc = started.tc;
    lineage = tc.client(LineageServiceDefinition);
    await expectAllAcked();
  }, 15_000);
});
