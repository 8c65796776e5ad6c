import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { runCli } from './helpers/in-process-cli.js';
import { startRawToCleanCoordinator } from './helpers/recompute-coordinator.js';
import type { TestCoordinator } from './helpers/test-coordinator.js';

/** `retrace notify`, `changes show` and `recompute --content` as a user meets them. */
describe('recompute CLI: bad input, changes with nothing downstream', () => {
  let tc: TestCoordinator;
  let dir: string;
  const shared: CoordinatorServices = {};
  const cli = (...argv: string[]) => runCli([...argv, '--coordinator', tc.grpcAddress, '--token', tc.token]);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'retrace-recompute-cli-'));
    tc = await startRawToCleanCoordinator(shared);
  }, 30_000);
  afterAll(async () => {
    await tc?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a --content or notify FILE that cannot be read is a one-line usage error naming it, and nothing is recorded', async () => {
    const missing = join(dir, 'missing.json');
    const content = await cli('recompute', '--content', `dataset:raw=${missing}`);
    expect(content.code).toBe(2);
    expect(content.err.split('\n')[0]).toBe(`error: --content dataset:raw: ${missing}: no such file`);
    const notify = await cli('notify', 'dataset:raw', dir);
    expect(notify.code).toBe(2);
    expect(notify.err.split('\n')[0]).toBe(`error: FILE: ${dir}: is a directory, not a file`);
    const { changes } = await tc.client(RecomputeServiceDefinition).listChanges({ pipeline: '', pageSize: 10, pageToken: '' });
    expect(changes).toEqual([]);
  });

  it('notify and changes show say when a change has nothing downstream; a change with some does not', async () => {
    const leafFile = join(dir, 'clean.txt');
    writeFileSync(leafFile, 'CB');
    const leaf = await cli('notify', 'dataset:clean', leafFile);
    expect(leaf.code).toBe(0);
    expect(leaf.out).toContain('policy auto, reported');
    expect(leaf.out).toContain('nothing downstream: no recorded step has read dataset:clean, so there is nothing to recompute');
    const changeId = /change (chg-[0-9a-f]+)/.exec(leaf.out)?.[1] ?? '';
    const shown = await cli('changes', 'show', changeId);
    expect(shown.code).toBe(0);
    expect(shown.out).toContain('nothing downstream: no recorded step has read dataset:clean');
    const rawFile = join(dir, 'raw.txt');
    writeFileSync(rawFile, 'B');
    const raw = await cli('notify', 'dataset:raw', rawFile);
    expect(raw.code).toBe(0);
    expect(raw.out).not.toContain('nothing downstream');
  });

  it('bad words are refused, not half taken: jobs SUBCOMMAND, changes policy A/B/C, extra arguments, watch remove of an unknown id', async () => {
    const jobs = await cli('jobs', 'shwo', 'job-x');
    expect(jobs.code).toBe(2);
    expect(jobs.err.split('\n')[0]).toBe('error: unknown subcommand "shwo": show, watch, cancel or resume (no word: the list)');
    expect(jobs.out).toBe('');
    for (const argv of [['orders/raw/extra', 'manual'], ['orders/', 'manual'], ['orders/raw'], ['orders', 'manual', 'extra']]) {
      const policy = await cli('changes', 'policy', ...argv);
      expect(policy.code, argv.join(' ')).toBe(2);
      expect(policy.out).toBe('');
    }
    const { entries } = await tc.client(RecomputeServiceDefinition).listChangePolicies({});
    expect(entries).toEqual([]);
    for (const argv of [['impact', 'dataset:raw', 'dataset:clean'], ['notify', 'dataset:raw', 'a.txt', 'b.txt'], ['changes', 'list', 'extra'], ['changes', 'show', 'chg-1', 'chg-2'], ['watch', 'list', 'extra'], ['watch', 'remove', 'w-1', 'w-2']]) {
      const extra = await cli(...argv);
      expect(extra.code, argv.join(' ')).toBe(2);
      expect(extra.err.split('\n')[0]).toBe(`error: unexpected argument ${JSON.stringify(argv.at(-1))}`);
    }
    const unwatch = await cli('watch', 'remove', 'w-nope');
    expect(unwatch.code).toBe(1);
    expect(unwatch.out).toBe('');
    expect(unwatch.err).toBe('error: watch_id: no watch "w-nope" (retrace watch list shows them)\n');
  });
});
