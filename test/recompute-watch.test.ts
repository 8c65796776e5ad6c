import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ChangeKind, RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import { contentHashOf } from '../common/hash.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import { recomputeExtension } from '../coordinator/recompute/recompute-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { until } from './helpers/until.js';


// Watched paths as plain objects (no pipeline, no agents): first sight records a version, an edit
// is a change, and the watch survives a coordinator restart on the same data dir.
describe('watched paths', () => {
  const root = mkdtempSync(join(tmpdir(), 'retrace-watch-'));
  const dataDir = join(root, 'data');
  const files = join(root, 'files');
  mkdirSync(dataDir);
  mkdirSync(join(files, 'sub'), { recursive: true });
  let tc: TestCoordinator | undefined;
  const start = async (): Promise<TestCoordinator> => {
    const shared: CoordinatorServices = {};
    tc = await startTestCoordinator({ dataDir, extensions: [pipelineExtension(shared), recomputeExtension(shared)] });
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
});
