import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { JobServiceDefinition, JobState, TaskState, type Job } from '../common/gen/retrace/v1/job.js';
import { PipelineServiceDefinition, type Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ChangePolicy, RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import { jobsExtension } from '../coordinator/jobs/jobs-extension.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import { recomputeExtension } from '../coordinator/recompute/recompute-extension.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { h } from './helpers/lineage-events.js';
import { startAgentCoordinator, type AgentCoordinator } from './helpers/test-coordinator.js';

/**
 * A change reverted by a recompute served from the memo records no step, so the latest recorded
 * execution of a step downstream still names the reverted version. A later change of another
 * input must recompute that step with the current version of the first one, as a from-scratch
 * run of the same inputs would.
 */

const WF_TASK = fileURLToPath(new URL('../scripts/examples/transforms/wf-task.ts', import.meta.url));

describe('recompute after a reverted change', () => {
  let tc: AgentCoordinator;
  const shared: CoordinatorServices = {};
  let codeVersion = '';

  beforeAll(async () => {
    tc = await startAgentCoordinator({
      tmpPrefix: 'retrace-revert-',
      shared,
      extensions: () => [schedulerExtension(shared, { shardTimeoutMs: 20_000 }), pipelineExtension(shared), jobsExtension(shared, { seed: 1 }), recomputeExtension(shared)],
      transforms: [{ name: 'wf-task', path: WF_TASK }],
      agents: [{ name: 'a1' }],
    });
    codeVersion = tc.codeVersions['wf-task'] ?? '';
  }, 120_000);

  afterAll(async () => {
    await tc?.stop();
  });

  const pipelineOf = (name: string): Pipeline => {
    const step = (n: string, inputs: string[]) => ({ name: n, transform: 'wf-task', codeVersion, parameters: { step: n }, requirements: undefined, inputs, output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 });
    return { name, sources: [{ name: 'x', mediaType: '', description: '' }, { name: 'y', mediaType: '', description: '' }], steps: [step('p', ['x']), step('q', ['y']), step('r', ['p', 'q'])] } as Pipeline;
  };
  const ingest = async (pipeline: string, source: string, text: string) =>
    tc.client(PipelineServiceDefinition).ingest((async function* () {
      yield { pipeline, source, records: [{ key: 'k', payload: Buffer.from(text), eventTimeNs: '0', mediaType: '' }] };
    })());
  const current = async (pipeline: string, dataset: string) => (await shared.pipelines?.store.getCurrent(pipeline, dataset, 'k'))?.contentHash;

  /** Polls the job until it ended; expects it SUCCEEDED. */
  async function succeeded(jobId: string): Promise<Job | undefined> {
    const deadline = Date.now() + 60_000;
    let job: Job | undefined;
    while (Date.now() < deadline) {
      job = (await tc.client(JobServiceDefinition).getJob({ jobId })).job;
      if (job && job.state >= JobState.JOB_STATE_SUCCEEDED) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    return job;
  }

  /** NotifyChange + Recompute; resolves with the ended job's outcomes by step. */
  async function change(source: string, text: string): Promise<Record<string, string>> {
    const rc = tc.client(RecomputeServiceDefinition);
    const n = await rc.notifyChange({ objectId: `record:wf/${source}:k`, contentHash: '', payload: Buffer.from(text), mediaType: '', noticedBy: '' });
    const { jobId } = await rc.recompute({ changeIds: [n.change?.changeId ?? ''], objectIds: [], newContents: [], policy: undefined });
    const job = await succeeded(jobId);
    return Object.fromEntries((job?.tasks ?? []).map((t) => [t.label.replace(/^wf\/| key=k$/g, ''), t.state === TaskState.TASK_STATE_SUCCEEDED ? t.outcome : TaskState[t.state]]));
  }

  it('uses the current version of an input a cached revert moved back', async () => {
    for (const name of ['wf', 'fresh']) await tc.client(PipelineServiceDefinition).applyPipeline({ pipeline: pipelineOf(name) });
    await tc.client(RecomputeServiceDefinition).setChangePolicy({ pipeline: 'wf', source: '', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
    await ingest('wf', 'x', 'x0');
    await ingest('wf', 'y', 'y0');
    const p0 = await current('wf', 'p');

    expect(await change('x', 'x1')).toEqual({ p: 'executed', r: 'executed' });
    expect(await current('wf', 'p')).not.toBe(p0);
    // The revert comes from the memo: p is back at p0 without a new recorded step.
    expect(await change('x', 'x0')).toEqual({ p: 'cached', r: 'cached' });
    expect(await current('wf', 'p')).toBe(p0);
    // What a change of x would touch now: the executions of x's current content (x0, first seen
    // before x1), not those of x1.
    const impact = await tc.client(RecomputeServiceDefinition).impact({ target: { $case: 'objectId', value: 'record:wf/x:k' }, asOfNs: '' });
    const p = await tc.coordinator.lineage.readStep(impact.steps.find((s) => s.step === 'p')?.stepId ?? '');
    expect(p?.used).toEqual([{ objectId: 'record:wf/x:k', contentHash: h('x0'), unversioned: false }]);

    expect(await change('y', 'y1')).toEqual({ q: 'executed', r: 'executed' });
    // The same inputs from scratch (same step names and parameters: the same bytes).
    await ingest('fresh', 'x', 'x0');
    await ingest('fresh', 'y', 'y1');
    expect(await current('wf', 'r')).toBe(await current('fresh', 'r'));
  }, 120_000);

  it('re-applying a reverted change is a change again, served from the memo', async () => {
    const p1 = (await current('wf', 'p')) ?? '';
    expect(await change('x', 'x1')).toEqual({ p: 'cached', r: 'executed' });
    expect(await change('x', 'x0')).toEqual({ p: 'cached', r: 'cached' });
    expect(await current('wf', 'p')).toBe(p1);
    // x1 again: the index's newest version of x is x1 already, but the record is at x0 now.
    expect(await change('x', 'x1')).toEqual({ p: 'cached', r: 'cached' });
  }, 120_000);

  it('under manual, two changes of a record before a recompute: either one brings the downstream to the content now', async () => {
    for (const name of ['man', 'man-fresh']) await tc.client(PipelineServiceDefinition).applyPipeline({ pipeline: pipelineOf(name) });
    await tc.client(RecomputeServiceDefinition).setChangePolicy({ pipeline: 'man', source: '', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
    await ingest('man', 'x', 'm0');
    await ingest('man', 'y', 'n0');
    // What the downstream must come to: the same inputs from scratch.
    await ingest('man-fresh', 'x', 'm2');
    await ingest('man-fresh', 'y', 'n0');
    const rc = tc.client(RecomputeServiceDefinition);
    const notify = async (text: string) => (await rc.notifyChange({ objectId: 'record:man/x:k', contentHash: '', payload: Buffer.from(text), mediaType: '', noticedBy: '' })).change?.changeId ?? '';
    await notify('m1');
    const c2 = await notify('m2');
    // The newer change: its old version (m1) no step read; the walk starts from m0's readers.
    const r2 = await rc.recompute({ changeIds: [c2], objectIds: [], newContents: [], policy: undefined });
    expect(r2.tasks.map((t) => t.label)).toEqual(['man/p key=k', 'man/r key=k']);
    await succeeded(r2.jobId);
    expect(await current('man', 'p')).toBe(await current('man-fresh', 'p'));
    expect(await current('man', 'r')).toBe(await current('man-fresh', 'r'));

    // The older change, recomputed after: at the record's content now (m2), not at m1.
    await notify('m3');
    await notify('m4');
    const older = (await rc.listChanges({ pipeline: 'man', pageSize: 0, pageToken: '' })).changes.find((c) => c.newHash === h('m3'))?.changeId ?? '';
    const newer = (await rc.listChanges({ pipeline: 'man', pageSize: 0, pageToken: '' })).changes.find((c) => c.newHash === h('m4'))?.changeId ?? '';
    const r1 = await rc.recompute({ changeIds: [older], objectIds: [], newContents: [], policy: undefined });
    // The job also recomputes the reported change that made the content current.
    expect(r1.changeIds).toEqual([older, newer]);
    await succeeded(r1.jobId);
    await ingest('man-fresh', 'x', 'm4');
    expect(await current('man', 'p')).toBe(await current('man-fresh', 'p'));
    expect((await rc.getChange({ changeId: newer })).change?.jobIds).toEqual([r1.jobId]);
  }, 120_000);

  it('under auto, a change made again after a revert is a change of its own, with its own job', async () => {
    await tc.client(PipelineServiceDefinition).applyPipeline({ pipeline: pipelineOf('auto') });
    await ingest('auto', 'x', 'x0');
    await ingest('auto', 'y', 'y0');
    const rc = tc.client(RecomputeServiceDefinition);
    const seen: { changeId: string; jobIds: string[] }[] = [];
    const p: Record<string, string | undefined> = {};
    for (const text of ['x1', 'x0', 'x1']) {
      const n = await rc.notifyChange({ objectId: 'record:auto/x:k', contentHash: '', payload: Buffer.from(text), mediaType: '', noticedBy: '' });
      const c = n.change;
      expect(c?.jobIds, `${text}: ${JSON.stringify(c)}`).toHaveLength(1);
      seen.push({ changeId: c?.changeId ?? '', jobIds: c?.jobIds ?? [] });
      await succeeded(c?.jobIds[0] ?? '');
      p[text] = await current('auto', 'p');
    }
    // Three changes, three jobs; and p follows x back to x1's output.
    expect(new Set(seen.map((s) => s.changeId)).size).toBe(3);
    expect(new Set(seen.flatMap((s) => s.jobIds)).size).toBe(3);
    expect(p.x1).toBeDefined();
    expect(p.x1).not.toBe(p.x0);
    expect(await current('auto', 'p')).toBe(p.x1);
    // Every step here was served from the memo (of wf's runs): impact names those steps, with the
    // node and cost of the runs whose results they reused.
    const impact = await rc.impact({ target: { $case: 'objectId', value: 'record:auto/x:k' }, asOfNs: '' });
    expect(impact.steps.map((s) => s.step)).toEqual(['p', 'r']);
    for (const s of impact.steps) {
      expect(s.stepId).toMatch(/^recompute:/);
      expect(s.nodeId).toBe(tc.agents[0]?.nodeId);
      expect(Number(s.wallTimeNs)).toBeGreaterThan(0);
    }
  }, 120_000);

  it('under auto, a step whose parameters are applied A, B, A and B again recomputes each time: the last apply is not taken for the first', async () => {
    const rc = tc.client(RecomputeServiceDefinition);
    const withParams = (v: string): Pipeline => {
      const p = pipelineOf('redo');
      for (const s of p.steps) if (s.name === 'p') s.parameters = { step: 'p', v };
      return p;
    };
    await tc.client(PipelineServiceDefinition).applyPipeline({ pipeline: withParams('A') });
    await ingest('redo', 'x', 'x0');
    await ingest('redo', 'y', 'y0');
    const outputOf: Record<string, string | undefined> = { A: await current('redo', 'p') };
    const changeIds: string[] = [];
    for (const v of ['B', 'A', 'B']) {
      const before = new Set((await rc.listChanges({ pipeline: 'redo', pageSize: 0, pageToken: '' })).changes.map((c) => c.changeId));
      await tc.client(PipelineServiceDefinition).applyPipeline({ pipeline: withParams(v) });
      const made = (await rc.listChanges({ pipeline: 'redo', pageSize: 0, pageToken: '' })).changes.filter((c) => !before.has(c.changeId));
      // The apply's change of step p, with its job.
      expect(made.map((c) => c.step), `apply of ${v}`).toEqual(['p']);
      expect(made[0]?.jobIds).toHaveLength(1);
      changeIds.push(made[0]?.changeId ?? '');
      await succeeded(made[0]?.jobIds[0] ?? '');
      const out = await current('redo', 'p');
      if (outputOf[v] !== undefined) expect(out, `p after the apply of ${v} again`).toBe(outputOf[v]);
      outputOf[v] = out;
    }
    expect(new Set(changeIds).size).toBe(3);
    expect(outputOf.B).not.toBe(outputOf.A);
  }, 120_000);

  it('a record moved by a memo hit gets versions with the size and media type the reused run recorded', async () => {
    // x0 under wf was served from wf's own ingest run (the first test's revert), so that memo entry
    // came from a recorded step, not from an execution: a new record moved to x0 reuses it.
    await tc.client(PipelineServiceDefinition).applyPipeline({ pipeline: pipelineOf('late') });
    await ingest('late', 'x', 'x9');
    await ingest('late', 'y', 'y0');
    const n = await tc.client(RecomputeServiceDefinition).notifyChange({ objectId: 'record:late/x:k', contentHash: '', payload: Buffer.from('x0'), mediaType: '', noticedBy: '' });
    const job = await succeeded(n.change?.jobIds[0] ?? '');
    expect(job?.tasks.find((t) => t.label === 'late/p key=k')?.outcome).toBe('cached');
    const p = await shared.pipelines?.store.getCurrent('late', 'p', 'k');
    // p reads x only: 'fresh' ran it on x0 (the first test).
    const wfP = await shared.pipelines?.store.getCurrent('fresh', 'p', 'k');
    expect(p?.contentHash).toBe(wfP?.contentHash);
    const version = await tc.client(LineageServiceDefinition).getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'record:late/p:k', contentHash: p?.contentHash ?? '' } });
    const v = version.body?.$case === 'objectVersion' ? version.body.value : undefined;
    expect(Number(v?.size)).toBeGreaterThan(0);
    expect(v?.size).toBe(String(wfP?.size));
    expect(p?.size).toBe(wfP?.size);
  }, 120_000);
});
