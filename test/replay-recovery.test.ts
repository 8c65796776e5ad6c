import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { JobServiceDefinition } from '../common/gen/retrace/v1/job.js';
import { LineageServiceDefinition } from '../common/gen/retrace/v1/lineage.js';
import { ReplayReport, ReplayServiceDefinition, ReplayState, ReplayStepResult, ReplaySummary } from '../common/gen/retrace/v1/replay.js';
import { jobsExtension } from '../coordinator/jobs/jobs-extension.js';
import { replayExtension } from '../coordinator/replay/replay-extension.js';
import { openDatabase } from '../coordinator/store/database.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { runCliProcess } from './helpers/coordinator-process.js';
import { runCli } from './helpers/in-process-cli.js';
import { processHarness } from './helpers/process-harness.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * A replay a stopped coordinator left unended, as the next start finds it: marked FAILED with its
 * run closed, and counted the same way by `retrace jobs` and `retrace jobs show`. Real coordinators
 * (in-process and the `retrace coordinator` CLI) over one LevelDB data dir in a temp dir.
 */

const h = processHarness();
afterAll(() => h.cleanup());

/** An in-process coordinator with the replay and jobs services over `dataDir`. */
function coordinatorOn(dataDir: string): Promise<TestCoordinator> {
  const shared: CoordinatorServices = {};
  return startTestCoordinator({ dataDir, extensions: [jobsExtension(shared), replayExtension(shared)] });
}

/** Puts `report` in the replays table, as the engine saves it (the coordinator is stopped). */
async function storeReport(dataDir: string, report: ReplayReport): Promise<void> {
  const db = await openDatabase(join(dataDir, 'db'));
  try {
    await db.sublevel<string, string>('replays', {}).put(report.replayId, JSON.stringify(ReplayReport.toJSON(report)));
  } finally {
    await db.close();
  }
}

const T0 = 1_700_000_000_000_000_000n;

describe('a replay interrupted by a coordinator stop', () => {
  it('has its run closed even when the start that marks it FAILED is killed between the two writes', async () => {
    const dataDir = h.tempDir('retrace-replay-recovery-');
    const replayId = 'replay-20260101000000-aaaaaa';
    // 1. What a coordinator SIGKILLed during a replay leaves: its run open, its report RUNNING.
    const first = await coordinatorOn(dataDir);
    await first.client(LineageServiceDefinition).submitEvent({
      event: { eventId: `replay:${replayId}:run`, eventTimeNs: T0.toString(), producer: 'retrace-replay', body: { $case: 'run', value: { runId: replayId, name: `replay/${replayId}`, parentRunId: '', state: 'START', startedAtNs: T0.toString(), endedAtNs: '0', facets: undefined } } },
    });
    await first.stop();
    await storeReport(dataDir, ReplayReport.fromPartial({ replayId, state: ReplayState.REPLAY_STATE_RUNNING, startedAtNs: T0.toString(), endedAtNs: '0' }));

    // 2. The next start dies between closing the run and saving the replay FAILED (a test-only crash point).
    const crashed = await runCliProcess(['coordinator', '--data', dataDir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0'], h.children, { RETRACE_TEST_CRASH_AT: 'replay-recovery-between-writes' });
    expect(crashed.code, crashed.stderr).toBeNull();

    // 3. The one after: the replay FAILED, its run closed (saved FAILED first, the run stayed open for good).
    const third = await coordinatorOn(dataDir);
    try {
      const { report } = await third.client(ReplayServiceDefinition).getReplayReport({ replayId });
      expect(report?.state).toBe(ReplayState.REPLAY_STATE_FAILED);
      expect(report?.error).toContain('interrupted');
      const { runs } = await third.client(LineageServiceDefinition).listRuns({ pageSize: 0, pageToken: '', namePrefix: 'replay/' });
      expect(runs.find((r) => r.runId === replayId)).toMatchObject({ state: 'FAIL', endedAtNs: expect.not.stringMatching(/^0$/) as unknown });
    } finally {
      await third.stop();
    }
  }, 20_000);

  it('is counted alike by `jobs` and `jobs show`: planned steps that never ran are cancelled (show said "FAILED 2/2 tasks")', async () => {
    const dataDir = h.tempDir('retrace-replay-counts-');
    const replayId = 'replay-20260101000000-bbbbbb';
    // As the start after an interrupted replay saves it: the results of finished records, and a summary of all 6 planned steps.
    const step = (record: string): ReplayStepResult => ReplayStepResult.fromPartial({ record, step: 'shout', replayStepId: `replay:${replayId}/${record}`, status: 'SUCCEEDED', matches: true, attempts: 1 });
    await (await coordinatorOn(dataDir)).stop();
    await storeReport(
      dataDir,
      ReplayReport.fromPartial({
        replayId,
        state: ReplayState.REPLAY_STATE_FAILED,
        startedAtNs: T0.toString(),
        endedAtNs: (T0 + 1_000_000_000n).toString(),
        error: 'interrupted: the coordinator stopped during the replay; start it again',
        steps: [step('a'), step('b')],
        summary: ReplaySummary.fromPartial({ records: 6, steps: 6, matched: 2, cancelled: 4 }),
      }),
    );
    const tc = await coordinatorOn(dataDir);
    try {
      const { job } = await tc.client(JobServiceDefinition).getJob({ jobId: replayId });
      expect(job?.counts).toMatchObject({ total: 6, succeeded: 2, cancelled: 4, failed: 0 });
      const connect = ['--coordinator', tc.grpcAddress, '--token', tc.token];
      const listed = await runCli(['jobs', ...connect]);
      expect(listed.out).toContain('2/6 ok, 4 cancelled');
      const shown = await runCli(['jobs', 'show', replayId, ...connect]);
      expect(shown.code, shown.err).toBe(0);
      expect(shown.out).toContain('FAILED 2/6 tasks, 4 cancelled');
    } finally {
      await tc.stop();
    }
  }, 20_000);
});
