import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isAbortError } from 'abort-controller-x';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobServiceDefinition, JobState } from '../common/gen/retrace/v1/job.js';
import { RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import type { RecomputeShardRunner } from '../coordinator/recompute/recompute-executor.js';
import type { Dispatcher } from '../coordinator/scheduler/dispatcher.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { runCli } from './helpers/in-process-cli.js';
import { startRawToCleanCoordinator } from './helpers/recompute-coordinator.js';
import type { TestCoordinator } from './helpers/test-coordinator.js';

/** A recompute interrupted by its caller: while it is planned, and while `--watch` follows its job. */
describe('recompute interrupted (review)', () => {
  let tc: TestCoordinator;
  let dir: string;
  const shared: CoordinatorServices = {};

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'retrace-recompute-interrupt-'));
    tc = await startRawToCleanCoordinator(shared);
    // A shard runner that runs until its attempt is aborted: the job stays RUNNING until cancelled.
    const runner: RecomputeShardRunner & { waiting(): [] } = {
      run: (_assignment, options) =>
        new Promise((_resolve, reject) => {
          options?.signal?.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
        }),
      waiting: () => [],
    };
    shared.dispatcher = runner as unknown as Dispatcher;
  }, 30_000);
  afterAll(async () => {
    await tc?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a call cancelled while it is planned records nothing and submits no job', async () => {
    const recomputer = shared.recompute?.recomputer;
    if (!recomputer) throw new Error('no recompute extension');
    const call = recomputer.recompute({ changeIds: [], objectIds: [], newContents: [{ objectId: 'dataset:raw', payload: Buffer.from('B'), mediaType: '' }], policy: undefined }, 'me', AbortSignal.abort());
    const err = await call.then(
      () => undefined,
      (e: unknown) => e,
    );
    // Before: the job was submitted (and the change recorded) for a caller told "interrupted", who never learnt its id.
    expect(isAbortError(err)).toBe(true);
    expect((await tc.client(JobServiceDefinition).listJobs({ state: 0, kind: '', pageSize: 10, pageToken: '' })).jobs).toEqual([]);
    expect((await tc.client(RecomputeServiceDefinition).listChanges({ pipeline: '', pageSize: 10, pageToken: '' })).changes).toEqual([]);
  });

  it('Ctrl-C during recompute --watch says the job goes on and how to cancel it', async () => {
    const file = join(dir, 'raw.txt');
    writeFileSync(file, 'C');
    const controller = new AbortController();
    // Ctrl-C once the job is being watched.
    const onErr = (s: string): void => {
      if (s.startsWith('job job-')) setTimeout(() => controller.abort(), 300);
    };
    const { code, out, err } = await runCli(['recompute', '--content', `dataset:raw=${file}`, '--watch', '--coordinator', tc.grpcAddress, '--token', tc.token], controller.signal, onErr);
    const jobId = /job (job-[0-9a-f-]+):/.exec(err)?.[1] ?? '';
    expect(jobId).not.toBe('');
    expect(code).toBe(130);
    expect(out).toContain(`${jobId}: RUNNING`);
    expect(err).toContain(`job ${jobId} goes on (RUNNING): Ctrl-C stopped the watch, not the job; retrace jobs watch ${jobId} follows it, retrace jobs cancel ${jobId} stops it\n`);
    expect(err.trimEnd().split('\n').at(-1)).toBe('interrupted');
    // It did go on: cancelling it now is what ends it.
    expect((await tc.client(JobServiceDefinition).cancelJob({ jobId })).state).toBe(JobState.JOB_STATE_CANCELLED);
  });
});
