import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipelineServiceDefinition, type Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ChangeKind, ChangePolicy, RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import { ReplayServiceDefinition, ReplayState, type ReplayPolicy, type ReplayReport, type StartReplayRequest } from '../common/gen/retrace/v1/replay.js';
import type { JobView } from '../coordinator/jobs/job-manager.js';
import { jobsExtension } from '../coordinator/jobs/jobs-extension.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import { recomputeExtension } from '../coordinator/recompute/recompute-extension.js';
import { replayExtension } from '../coordinator/replay/replay-extension.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startAgentCoordinator, type AgentCoordinator } from './helpers/test-coordinator.js';
import { until } from './helpers/until.js';

/**
 * A record whose steps were executed more than once (the pipeline run, then recomputes after a
 * parameter change and its revert) replays each logical step once, along its current path, and a
 * recompute step that reproduced an existing version compares against that version.
 */

const SCALE = fileURLToPath(new URL('../scripts/examples/transforms/scale-order.ts', import.meta.url));
const CLASSIFY = fileURLToPath(new URL('../scripts/examples/transforms/classify-order.ts', import.meta.url));

describe('replay of recomputed records (real coordinator, real agent process)', () => {
  let tc: AgentCoordinator;
  const shared: CoordinatorServices = {};
  let pipeline: Pipeline;
  let ingestRun = '';
  const t0 = 1_767_225_600_000_000_000n;
  /** Step ids of the first recompute's executed classify tasks, by record key. */
  const recomputed = new Map<string, string>();

  const recompute = () => tc.client(RecomputeServiceDefinition);
  const pipelines = () => tc.client(PipelineServiceDefinition);
  const current = async (dataset: string, key: string) => (await shared.pipelines?.store.getCurrent('orders', dataset, key))?.contentHash;

  /** Applies `orders` with classify's largeCents, recomputes the parameter change, resolves with the ended job. */
  async function applyLarge(largeCents: number): Promise<JobView & { tasks: NonNullable<JobView['tasks']> }> {
    pipeline = { ...pipeline, steps: pipeline.steps.map((s) => (s.name === 'classify' ? { ...s, parameters: { largeCents } } : s)) };
    await pipelines().applyPipeline({ pipeline });
    const { changes } = await recompute().listChanges({ pipeline: 'orders', pageSize: 0, pageToken: '' });
    const change = changes.find((c) => c.kind === ChangeKind.CHANGE_KIND_PARAMETERS && c.step === 'classify' && c.newHash !== '' && !recomputedChanges.has(c.changeId));
    if (!change) throw new Error('no parameters change');
    recomputedChanges.add(change.changeId);
    const r = await recompute().recompute({ changeIds: [change.changeId], objectIds: [], newContents: [], policy: undefined });
    return until(`job ${r.jobId}`, async () => {
      const j = await (shared.jobs as NonNullable<CoordinatorServices['jobs']>).get(r.jobId);
      return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state) ? (j as JobView & { tasks: NonNullable<JobView['tasks']> }) : undefined;
    }, 90_000);
  }
  const recomputedChanges = new Set<string>();

  async function replay(selector: StartReplayRequest['selector']): Promise<ReplayReport> {
    const client = tc.client(ReplayServiceDefinition);
    const policy = { faults: { seed: '1', outages: [], linkOutageProbability: 0, corruptInputProbability: 0, stepFailureProbability: 0, addedLatencyMs: 0 } } as unknown as ReplayPolicy;
    const started = await client.startReplay({ selector, policy });
    for await (const p of client.watchReplay({ replayId: started.replayId })) if (p.state === ReplayState.REPLAY_STATE_SUCCEEDED) break;
    const { report } = await client.getReplayReport({ replayId: started.replayId });
    if (!report) throw new Error('no report');
    return report;
  }
  const record = (key: string): StartReplayRequest['selector'] => ({ selector: { $case: 'recordIds', value: { objectIds: [`record:orders/raw:${key}`] } } });

  beforeAll(async () => {
    tc = await startAgentCoordinator({
      tmpPrefix: 'retrace-replay-recomputed-',
      shared,
      extensions: () => [schedulerExtension(shared, { shardTimeoutMs: 20_000 }), pipelineExtension(shared), jobsExtension(shared, { seed: 1 }), recomputeExtension(shared), replayExtension(shared)],
      transforms: [{ name: 'scale-order', path: SCALE }, { name: 'classify-order', path: CLASSIFY }],
      agents: [{ name: 'a1' }],
    });
    const scale = tc.codeVersions['scale-order'] ?? '';
    const classify = tc.codeVersions['classify-order'] ?? '';
    pipeline = {
      name: 'orders',
      sources: [{ name: 'raw', mediaType: 'application/json', description: '' }],
      steps: [
        { name: 'scale', transform: 'scale-order', codeVersion: scale, parameters: { rates: { USD: 1 } }, requirements: undefined, inputs: ['raw'], output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 },
        { name: 'classify', transform: 'classify-order', codeVersion: classify, parameters: { largeCents: 10_000 }, requirements: undefined, inputs: ['scale'], output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 },
      ],
    } as Pipeline;
    await pipelines().applyPipeline({ pipeline });
    await recompute().setChangePolicy({ pipeline: 'orders', source: '', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
    // o1: 7000 cents, medium at 10000 and large at 5000; o3: 200 cents, small at both.
    const orders = [
      { key: 'o1', amount: 70 },
      { key: 'o3', amount: 2 },
    ];
    const r = await pipelines().ingest((async function* () {
      yield { pipeline: 'orders', source: 'raw', records: orders.map((o, i) => ({ key: o.key, eventTimeNs: (t0 + BigInt(i) * 1_000_000n).toString(), payload: Buffer.from(JSON.stringify({ id: i, amount: o.amount, currency: 'USD' })), mediaType: '' })) };
    })());
    expect(Number(r.shardsRun)).toBe(4);
    ingestRun = r.runId;
    const o1Before = await current('classify', 'o1');
    const o3Before = await current('classify', 'o3');

    const first = await applyLarge(5_000);
    expect(first.state).toBe('SUCCEEDED');
    for (const t of first.tasks) {
      const key = /key=(\S+)/.exec(t.label)?.[1] ?? '';
      expect(t.outcome).toBe('executed');
      recomputed.set(key, `recompute:${first.jobId}/${t.id}`);
    }
    // o3 came out as it was: its recompute step reproduced the pipeline's version.
    expect(await current('classify', 'o3')).toBe(o3Before);
    const o3Step = await tc.coordinator.lineage.readStep(recomputed.get('o3') ?? '');
    expect(o3Step?.generated).toEqual([]);
    expect(await current('classify', 'o1')).not.toBe(o1Before);

    // The revert is served from the pipeline's own executions: nothing runs (its steps are recorded with `cachedFrom`).
    const second = await applyLarge(10_000);
    expect(second.state).toBe('SUCCEEDED');
    expect(second.tasks.map((t) => t.outcome)).toEqual(['cached', 'cached']);
    expect(await current('classify', 'o1')).toBe(o1Before);
  }, 180_000);

  afterAll(async () => {
    await tc?.stop();
  });

  /** Each replayed step compares against the version the pipeline holds as current now. */
  async function expectCurrentPath(report: ReplayReport, keys: readonly string[]): Promise<void> {
    expect(report.state).toBe(ReplayState.REPLAY_STATE_SUCCEEDED);
    expect(report.summary).toMatchObject({ records: keys.length, steps: 2 * keys.length, matched: 2 * keys.length, differed: 0, failed: 0, nondeterministic: 0 });
    for (const key of keys) {
      const steps = report.steps.filter((s) => s.record === `record:orders/raw:${key}`);
      expect(steps.map((s) => s.step)).toEqual(['scale', 'classify']);
      for (const s of steps) {
        expect(s.originalOutputHashes).toEqual([await current(s.step, key)]);
        expect(s.replayOutputHashes).toEqual(s.originalOutputHashes);
      }
    }
  }

  it('replays a record whose step a recompute reproduced: each step once, the newest execution, no false non-determinism', async () => {
    const report = await replay(record('o3'));
    await expectCurrentPath(report, ['o3']);
    // Both the pipeline run and the first recompute made o3's current classify output; the newest counts.
    expect(report.steps.find((s) => s.step === 'classify')?.originalStepId).toBe(recomputed.get('o3'));
  });

  it('replays a record a recompute changed and a cached revert moved back along the execution that made its current output', async () => {
    const report = await replay(record('o1'));
    await expectCurrentPath(report, ['o1']);
    const classify = report.steps.find((s) => s.step === 'classify');
    expect(classify?.originalStepId).not.toBe(recomputed.get('o1'));
    expect(classify?.originalStepId.startsWith('orders/classify/')).toBe(true);
    expect(classify?.codeVersion).toBe(pipeline.steps[1]?.codeVersion);
  });

  it('a window replay and a run replay take the same one execution per step', async () => {
    const window = await replay({ selector: { $case: 'window', value: { pipeline: 'orders', source: 'raw', fromNs: t0.toString(), toNs: (t0 + 1_000_000_000n).toString() } } });
    await expectCurrentPath(window, ['o1', 'o3']);
    const run = await replay({ selector: { $case: 'runId', value: ingestRun } });
    await expectCurrentPath(run, ['o1', 'o3']);
  });
});
