import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Status } from 'nice-grpc';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { ChangeKind, ChangePolicy, RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import { MAX_WATCHED_FILE_BYTES } from '../coordinator/recompute/change-detector.js';
import { recomputeExtension } from '../coordinator/recompute/recompute-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { until } from './helpers/until.js';
import { runCli } from './helpers/in-process-cli.js';


// Watched paths as plain objects (no pipeline, no agents): first sight records a version, an edit
// is a change, and the watch survives a coordinator restart on the same data dir.
describe('watched paths', () => {
  const root = mkdtempSync(join(tmpdir(), 'retrace-watch-'));
  const dataDir = join(root, 'data');
  const files = join(root, 'files');
  mkdirSync(dataDir);
  mkdirSync(join(files, 'sub'), { recursive: true });
  let tc: TestCoordinator | undefined;
  // The root holds the data dir too: watching it whole is refused, its files dir is not.
  const start = async (watchRoots: string[] = [root]): Promise<TestCoordinator> => {
    const shared: CoordinatorServices = {};
    tc = await startTestCoordinator({ dataDir, extensions: [pipelineExtension(shared), recomputeExtension(shared, { watchRoots })] });
    return tc;
  };
  afterAll(async () => {
    await tc?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it('records first versions, reports edits as file changes, and watches again after a restart', async () => {
    writeFileSync(join(files, 'a.csv'), 'x,1\n');
    writeFileSync(join(files, 'sub', 'b.csv'), 'y,2\n');
    writeFileSync(join(files, '.swp'), 'editor temp');
    let c = await start();
    const w = await c.client(RecomputeServiceDefinition).watchPath({ path: files, pipeline: '', source: '', objectIdPrefix: 'file:', policy: 0, rescanIntervalMs: 200, debounceMs: 20 });
    expect(w.watch).toMatchObject({ path: files, objectIdPrefix: 'file:', rescanIntervalMs: 200 });
    const versions = (id: string): string[] => (tc as TestCoordinator).coordinator.lineage.index.membersOf(`object:${id}`);
    await until('first versions', () => (versions('file:a.csv').length === 1 && versions('file:sub/b.csv').length === 1 ? true : undefined));
    expect(versions('file:.swp')).toEqual([]);

    await c.stop({ keepData: true });
    writeFileSync(join(files, 'a.csv'), 'x,10\n');
    c = await start();
    const client = c.client(RecomputeServiceDefinition);
    expect((await client.listWatches({})).watches.map((x) => x.path)).toEqual([files]);
    const change = await until('the edit made while stopped', async () => (await client.listChanges({ pipeline: '', pageSize: 0, pageToken: '' })).changes.find((x) => x.objectId === 'file:a.csv'));
    expect(change).toMatchObject({ kind: ChangeKind.CHANGE_KIND_FILE, oldHash: contentHashOf('x,1\n'), newHash: contentHashOf('x,10\n'), noticedBy: `watch:${files}` });
    expect(versions('file:a.csv')).toHaveLength(2);
    expect(versions('file:sub/b.csv')).toHaveLength(1);
    // Unchanged content is no change: a rescan of the same bytes records nothing new.
    writeFileSync(join(files, 'sub', 'b.csv'), 'y,2\n');
    await new Promise((r) => setTimeout(r, 600));
    expect(versions('file:sub/b.csv')).toHaveLength(1);
  });

  it('reads only inside the watch roots, never the data dir, with bounded timings; a refused watch changes no policy', async () => {
    await tc?.stop({ keepData: true });
    const outside = mkdtempSync(join(tmpdir(), 'retrace-outside-'));
    try {
      symlinkSync(outside, join(root, 'link-out'));
      const c = await start();
      const client = c.client(RecomputeServiceDefinition);
      const req = { pipeline: '', source: '', objectIdPrefix: 'x:', policy: 0, rescanIntervalMs: 0, debounceMs: 0 };
      const refused = async (path: string, code: Status, text: string, extra: Partial<typeof req> = {}): Promise<void> => {
        await expect(client.watchPath({ ...req, ...extra, path })).rejects.toMatchObject({ code, details: expect.stringContaining(text) });
      };
      await refused(dataDir, Status.PERMISSION_DENIED, "path: \"" + dataDir + "\" is or holds the coordinator's data dir");
      await refused(join(dataDir, 'db'), Status.PERMISSION_DENIED, 'is or holds the coordinator');
      await refused(root, Status.PERMISSION_DENIED, 'is or holds the coordinator');
      await refused(outside, Status.PERMISSION_DENIED, `is outside the coordinator's --watch-root directories (${realpathSync(root)})`);
      // A link inside a root is followed to where it points, which is outside.
      await refused(join(root, 'link-out'), Status.PERMISSION_DENIED, 'is outside');
      await refused(files, Status.INVALID_ARGUMENT, 'rescan_interval_ms: must be from 100 to 86400000 ms', { rescanIntervalMs: 1 });
      await refused(files, Status.INVALID_ARGUMENT, 'rescan_interval_ms', { rescanIntervalMs: 2_592_000_000 });
      await refused(files, Status.INVALID_ARGUMENT, 'debounce_ms: must be at most 60000 ms', { debounceMs: 60_001 });
      // A watch refused for its path leaves the source's change policy as it was.
      await c.client(PipelineServiceDefinition).applyPipeline({ pipeline: Pipeline.fromJSON({ name: 'p', sources: [{ name: 's' }], steps: [{ name: 'up', transform: 'upper', codeVersion: contentHashOf('upper'), inputs: ['s'] }] }) });
      await refused(outside, Status.PERMISSION_DENIED, 'is outside', { objectIdPrefix: '', pipeline: 'p', source: 's', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
      expect((await client.listChangePolicies({})).entries).toEqual([]);

      // A file over the size cap is left out and said so; the others are read.
      const big = join(files, 'big.bin');
      writeFileSync(big, '');
      truncateSync(big, MAX_WATCHED_FILE_BYTES + 1);
      const w = await client.watchPath({ ...req, path: files, objectIdPrefix: 'cap:', rescanIntervalMs: 200 });
      const listed = await until('the scan that leaves big.bin out', async () => (await client.listWatches({})).watches.find((x) => x.watchId === w.watch?.watchId && x.lastError !== ''));
      expect(listed?.lastError).toBe('left out 1 file(s) over 32 MiB: big.bin');
      expect(c.coordinator.lineage.index.membersOf('object:cap:a.csv')).toHaveLength(1);
      expect(c.coordinator.lineage.index.has('object:cap:big.bin')).toBe(false);
      rmSync(big);

      // Restarted with other roots, the persisted watches are listed with why, not watched.
      await c.stop({ keepData: true });
      const narrow = await start([outside]);
      const watches = (await narrow.client(RecomputeServiceDefinition).listWatches({})).watches;
      expect(watches.length).toBeGreaterThan(0);
      for (const x of watches) expect(x.lastError).toContain('not watched: path: ');
    } finally {
      rmSync(outside, { recursive: true, force: true });
    }
  });

  it('reads the file it listed, not a link swapped in while the scan waited for the sink', async () => {
    await tc?.stop({ keepData: true });
    const shared: CoordinatorServices = {};
    tc = await startTestCoordinator({ dataDir, extensions: [pipelineExtension(shared), recomputeExtension(shared, { watchRoots: [root] })] });
    const recomputer = shared.recompute?.recomputer as NonNullable<CoordinatorServices['recompute']>['recomputer'];
    const swapped = join(root, 'swapped');
    mkdirSync(swapped);
    writeFileSync(join(dataDir, 'secret.txt'), 'SECRET');
    // Two files of the size cap fill one batch: the sink takes them before c.txt is read.
    for (const name of ['a.bin', 'b.bin']) {
      writeFileSync(join(swapped, name), '');
      truncateSync(join(swapped, name), MAX_WATCHED_FILE_BYTES);
    }
    writeFileSync(join(swapped, 'c.txt'), 'plain');
    const onFiles = recomputer.onFiles.bind(recomputer);
    let calls = 0;
    recomputer.onFiles = async (watch, batch) => {
      // The earlier tests' watches scan too.
      if (watch.path === swapped && ++calls === 1) {
        rmSync(join(swapped, 'c.txt'));
        symlinkSync(join(dataDir, 'secret.txt'), join(swapped, 'c.txt'));
      }
      return onFiles(watch, batch);
    };
    const client = tc.client(RecomputeServiceDefinition);
    const w = await client.watchPath({ path: swapped, pipeline: '', source: '', objectIdPrefix: 'swap:', policy: 0, rescanIntervalMs: 60_000, debounceMs: 0 });
    await shared.recompute?.detector.scanNow(w.watch?.watchId ?? '');
    expect(calls).toBe(1);
    const index = tc.coordinator.lineage.index;
    expect(index.membersOf('object:swap:a.bin')).toHaveLength(1);
    expect(index.has('object:swap:c.txt')).toBe(false);
    expect(index.has(`version:swap:c.txt@${contentHashOf('SECRET')}`)).toBe(false);
    rmSync(swapped, { recursive: true, force: true });
  });

  it('without --watch-root, watching is off', async () => {
    await tc?.stop({ keepData: true });
    const c = await start([]);
    await expect(c.client(RecomputeServiceDefinition).watchPath({ path: files, pipeline: '', source: '', objectIdPrefix: 'x:', policy: 0, rescanIntervalMs: 0, debounceMs: 0 })).rejects.toMatchObject({
      code: Status.FAILED_PRECONDITION,
      details: expect.stringContaining('path: watching files is off: start the coordinator with --watch-root DIR'),
    });
  });
});

// A watched pipeline source whose ingest fails a step leaves the file's change reported; the
// watch must say why, as it does for files it left out (retrace watch list).
describe('a watched pipeline source whose ingest fails', () => {
  const root = mkdtempSync(join(tmpdir(), 'retrace-watch-fail-'));
  let tc: TestCoordinator | undefined;
  afterAll(async () => {
    await tc?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it('a watched file that is deleted shows as missing (deleted), not as ENOENT', async () => {
    const single = join(root, 'single.txt');
    writeFileSync(single, 'one');
    const shared: CoordinatorServices = {};
    const t = await startTestCoordinator({ extensions: [pipelineExtension(shared), recomputeExtension(shared, { watchRoots: [root] })] });
    try {
      const client = t.client(RecomputeServiceDefinition);
      const w = await client.watchPath({ path: single, pipeline: '', source: '', objectIdPrefix: 'single:', policy: 0, rescanIntervalMs: 60_000, debounceMs: 0 });
      const watchId = w.watch?.watchId ?? '';
      rmSync(single);
      await shared.recompute?.detector.scanNow(watchId);
      const listed = (await client.listWatches({})).watches.find((x) => x.watchId === watchId);
      expect(listed?.lastError).toBe('missing (deleted); scanned again until it is back');
      const shown = await runCli(['watch', 'list', '--coordinator', t.grpcAddress, '--token', t.token]);
      expect(shown.out).toContain('missing (deleted)');
      expect(shown.out).not.toContain('ENOENT');
    } finally {
      await t.stop();
    }
  });

  it('shows the failed shards in the watch error', async () => {
    const shared: CoordinatorServices = {};
    tc = await startTestCoordinator({ extensions: [pipelineExtension(shared), recomputeExtension(shared, { watchRoots: [root] })] });
    const pipelines = shared.pipelines as NonNullable<CoordinatorServices['pipelines']>;
    await pipelines.store.apply(Pipeline.fromPartial({ name: 'w', sources: [{ name: 'raw', mediaType: 'text/plain' }], steps: [{ name: 'parse', transform: 'parse', codeVersion: contentHashOf('parse'), inputs: ['raw'] }] }));
    // The agents' part is not under test: the ingest of the file reports a failed shard.
    pipelines.runner.ingest = async () => ({ accepted: 1, duplicates: 0, runId: 'ingest:w:1', shardsRun: 1, shardsFailed: 1, firstError: 'step parse: SHARD_STATUS_FAILED: bad input', pipelineVersion: 1 });
    writeFileSync(join(root, 'a.txt'), 'x');
    const client = tc.client(RecomputeServiceDefinition);
    const w = await client.watchPath({ path: root, pipeline: 'w', source: 'raw', objectIdPrefix: '', policy: 0, rescanIntervalMs: 60_000, debounceMs: 0 });
    await shared.recompute?.detector.scanNow(w.watch?.watchId ?? '');
    const [listed] = (await client.listWatches({})).watches;
    expect(listed?.lastError).toBe('ingest ingest:w:1: 1 shard(s) failed: step parse: SHARD_STATUS_FAILED: bad input');
  });
});
