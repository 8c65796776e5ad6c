import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Status } from 'nice-grpc';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { JobServiceDefinition } from '../common/gen/retrace/v1/job.js';
import { PipelineServiceDefinition, type Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { TriggerKind } from '../common/gen/retrace/v1/provenance.js';
import { ChangeKind, ChangePolicy, ChangeState, RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import type { JobView } from '../coordinator/jobs/job-manager.js';
import { jobsExtension } from '../coordinator/jobs/jobs-extension.js';
import { pipelineExtension } from '../coordinator/pipeline/pipeline-extension.js';
import { recomputeExtension } from '../coordinator/recompute/recompute-extension.js';
import { schedulerExtension } from '../coordinator/scheduler/scheduler-extension.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { publishTransform } from './helpers/publish-transform.js';
import { contentHashOf } from '../common/hash.js';
import { startAgentCoordinator, type AgentCoordinator } from './helpers/test-coordinator.js';
import { runCli } from './helpers/in-process-cli.js';
import { until } from './helpers/until.js';

const WF_TASK = fileURLToPath(new URL('../scripts/examples/transforms/wf-task.ts', import.meta.url));
const KEYS = 6;

const cli = runCli;


describe('recompute end to end (real coordinator, real agent processes)', () => {
  let tc: AgentCoordinator;
  const shared: CoordinatorServices = {};
  let wfV1 = '';
  let pipeline: Pipeline;

  const recompute = () => tc.client(RecomputeServiceDefinition);
  const pipelines = () => tc.client(PipelineServiceDefinition);
  const json = (o: unknown): Buffer => Buffer.from(JSON.stringify(o));

  async function finished(jobId: string): Promise<JobView & { tasks: NonNullable<JobView['tasks']> }> {
    return until(`job ${jobId}`, async () => {
      const j = await (shared.jobs as NonNullable<CoordinatorServices['jobs']>).get(jobId);
      return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state) ? (j as JobView & { tasks: NonNullable<JobView['tasks']> }) : undefined;
    }, 90_000);
  }
  /** The job's lineage run once closed in `state`: the job's end is stored before its executor closes the run (jobEnded). */
  async function closedRun(jobId: string, state: string) {
    return until(`run ${jobId} ${state}`, async () => {
      const run = await tc.coordinator.lineage.readRun(jobId);
      return run?.state === state ? run : undefined;
    }, 10_000);
  }
  /** label → outcome (or state when it did not succeed). */
  function outcomes(job: { tasks: NonNullable<JobView['tasks']> }): Record<string, string> {
    return Object.fromEntries(job.tasks.map((t) => [t.label, t.state === 'SUCCEEDED' ? (t.outcome ?? '?') : t.state]));
  }
  async function ingest(name: string, source: string, records: { key: string; payload: Buffer }[]) {
    return pipelines().ingest((async function* () {
      yield { pipeline: name, source, records: records.map((r) => ({ ...r, eventTimeNs: '0', mediaType: '' })) };
    })());
  }
  function versionsOf(objectId: string): string[] {
    return tc.coordinator.lineage.index.membersOf(`object:${objectId}`);
  }

  beforeAll(async () => {
    tc = await startAgentCoordinator({
      tmpPrefix: 'retrace-recompute-',
      shared,
      code: { onPublished: async (c, p) => shared.recompute?.recomputer.onCodePublished(c, p) },
      extensions: (dir) => [schedulerExtension(shared, { shardTimeoutMs: 20_000 }), pipelineExtension(shared), jobsExtension(shared, { seed: 1 }), recomputeExtension(shared, { watchRoots: [dir] })],
      transforms: [{ name: 'wf-task', path: WF_TASK }],
      agents: [{ name: 'a1', labels: ['pool=a'] }, { name: 'a2', labels: ['pool=b'] }],
    });
    wfV1 = tc.codeVersions['wf-task'] ?? '';
    const step = (name: string, inputs: string[], parameters: Record<string, unknown>) => ({ name, transform: 'wf-task', codeVersion: wfV1, parameters, requirements: undefined, inputs, output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 });
    pipeline = {
      name: 'wf',
      sources: [{ name: 'raw', mediaType: 'application/json', description: '' }],
      steps: [
        // proj looks at id and amount only: a change of `note` leaves its output as it was.
        step('proj', ['raw'], { project: ['id', 'amount'], failIf: 'FAIL', costMs: 5 }),
        step('total', ['proj'], { project: ['amount'] }),
        step('audit', ['raw'], {}),
      ],
    } as Pipeline;
    await pipelines().applyPipeline({ pipeline });
    // Manual: the tests start each recompute themselves (auto is tested on its own).
    await recompute().setChangePolicy({ pipeline: 'wf', source: '', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
    const r = await ingest('wf', 'raw', Array.from({ length: KEYS }, (_, i) => ({ key: `k${i}`, payload: json({ id: i, amount: 10 * i, note: 'n' }) })));
    expect(Number(r.accepted)).toBe(KEYS);
    expect(Number(r.shardsRun)).toBe(KEYS * 3);
  }, 180_000);

  afterAll(async () => {
    await tc?.stop();
  });

  let k2Change = '';
  let beforeK2Ns = '';

  it('a one-source change recomputes exactly its downstream closure, recorded as new versions with why = the job', async () => {
    beforeK2Ns = (BigInt(Date.now()) * 1_000_000n).toString();
    await new Promise((r) => setTimeout(r, 20));
    const n = await recompute().notifyChange({ objectId: 'record:wf/raw:k2', contentHash: '', payload: json({ id: 2, amount: 99, note: 'n' }), mediaType: 'application/json', noticedBy: '' });
    expect(n.unchanged).toBe(false);
    expect(n.change).toMatchObject({ kind: ChangeKind.CHANGE_KIND_OBJECT, objectId: 'record:wf/raw:k2', policy: ChangePolicy.CHANGE_POLICY_MANUAL, state: ChangeState.CHANGE_STATE_REPORTED, noticedBy: 'notify:anonymous' });
    k2Change = n.change?.changeId ?? '';
    // The change is in provenance too: a run with what changed, old and new hash.
    const run = await tc.client(LineageServiceDefinition).getNode({ node: { kind: NodeKind.NODE_KIND_RUN, id: `change:${k2Change}`, contentHash: '' } });
    expect(JSON.stringify(run.body?.$case === 'run' ? run.body.value.facets : {})).toContain(n.change?.oldHash ?? 'x');

    const impact = await recompute().impact({ target: { $case: 'changeId', value: k2Change }, asOfNs: '0' });
    expect(impact.stepCount).toBe(3);
    expect(impact.steps.map((s) => `${s.step}:${s.key}`).sort()).toEqual(['audit:k2', 'proj:k2', 'total:k2']);
    expect(impact.objectCount).toBe(3);
    expect(Number(impact.estimatedWallTimeNs)).toBeGreaterThan(0);
    expect(impact.steps.every((s) => s.placementNodeId !== '')).toBe(true);
    expect(impact.steps.find((s) => s.step === 'total')?.dependsOn).toEqual([impact.steps.find((s) => s.step === 'proj')?.stepId]);

    // A change named twice is one change of the job (its title and change list name it once).
    const twice = await recompute().recompute({ changeIds: [k2Change, k2Change], objectIds: [], newContents: [], policy: { maxAttempts: 0, concurrency: 0, targetNodeIds: [], targetLabels: {}, dryRun: true } });
    expect(twice.changeIds).toEqual([k2Change]);
    const r = await recompute().recompute({ changeIds: [k2Change], objectIds: [], newContents: [], policy: undefined });
    expect(r.tasks).toHaveLength(3);
    const job = await finished(r.jobId);
    expect(job.state).toBe('SUCCEEDED');
    expect(outcomes(job)).toEqual({ 'wf/proj key=k2': 'executed', 'wf/total key=k2': 'executed', 'wf/audit key=k2': 'executed' });
    // New versions; the old ones stay queryable.
    for (const ds of ['proj', 'total', 'audit']) expect(versionsOf(`record:wf/${ds}:k2`)).toHaveLength(2);
    for (const ds of ['proj', 'total', 'audit']) expect(versionsOf(`record:wf/${ds}:k1`)).toHaveLength(1);
    // The job's run is closed with it: COMPLETE, with its end time.
    const jobRun = await closedRun(r.jobId, 'COMPLETE');
    expect(jobRun).toMatchObject({ name: `recompute/${r.jobId}`, state: 'COMPLETE' });
    expect(BigInt(jobRun?.endedAtNs ?? '0')).toBeGreaterThanOrEqual(BigInt(jobRun?.startedAtNs ?? '1'));
    const stepId = `recompute:${r.jobId}/${r.tasks.find((t) => t.label.includes('total'))?.taskId}`;
    const step = await tc.coordinator.lineage.readStep(stepId);
    expect(step?.why).toMatchObject({ kind: TriggerKind.TRIGGER_KIND_RECOMPUTE, id: r.jobId });
    expect((await recompute().getChange({ changeId: k2Change })).change).toMatchObject({ state: ChangeState.CHANGE_STATE_RECOMPUTE_SUBMITTED, jobIds: [r.jobId] });
  });

  it('answers impact as of an earlier time', async () => {
    const then = await recompute().impact({ target: { $case: 'objectId', value: 'record:wf/raw:k2' }, asOfNs: beforeK2Ns });
    expect(then.steps.map((s) => s.step).sort()).toEqual(['audit', 'proj', 'total']);
    expect(then.steps.every((s) => s.stepId.startsWith('wf/'))).toBe(true);
    // Now the latest version of raw:k2 is the one the recompute used.
    const now = await recompute().impact({ target: { $case: 'objectId', value: 'record:wf/raw:k2' }, asOfNs: '0' });
    expect(now.steps.filter((s) => s.depth === 1).every((s) => s.stepId.startsWith('recompute:'))).toBe(true);
    await expect(recompute().impact({ target: { $case: 'objectId', value: 'record:wf/raw:k2' }, asOfNs: '1000' })).rejects.toMatchObject({ code: Status.NOT_FOUND });
  });

  it('a repeated recompute is served entirely from the cache', async () => {
    const r = await recompute().recompute({ changeIds: [k2Change], objectIds: [], newContents: [], policy: undefined });
    const job = await finished(r.jobId);
    expect(job.state).toBe('SUCCEEDED');
    expect(Object.values(outcomes(job))).toEqual(['cached', 'cached', 'cached']);
  });

  it('early cutoff: an output that comes out unchanged stops the recompute there', async () => {
    const n = await recompute().notifyChange({ objectId: 'record:wf/raw:k3', contentHash: '', payload: json({ id: 3, amount: 30, note: 'edited' }), mediaType: '', noticedBy: 'test' });
    const r = await recompute().recompute({ changeIds: [n.change?.changeId ?? ''], objectIds: [], newContents: [], policy: undefined });
    const job = await finished(r.jobId);
    expect(job.tasks.map((t) => t.error ?? '').join('')).toBe('');
    expect(outcomes(job)).toEqual({ 'wf/proj key=k3': 'executed', 'wf/audit key=k3': 'executed', 'wf/total key=k3': 'cutoff' });
    expect(versionsOf('record:wf/proj:k3')).toHaveLength(1);
    expect(versionsOf('record:wf/total:k3')).toHaveLength(1);
    expect(versionsOf('record:wf/audit:k3')).toHaveLength(2);
  });

  it('a new code version of a step recomputes that step everywhere and what its new outputs change', async () => {
    const src = readFileSync(WF_TASK, 'utf8').replace('const VERSION = 1;', 'const VERSION = 2;');
    mkdirSync(join(tc.dir, 'v2'), { recursive: true });
    writeFileSync(join(tc.dir, 'v2', 'wf-task.ts'), src);
    const v2 = await publishTransform(tc.client(CodeServiceDefinition), join(tc.dir, 'v2', 'wf-task.ts'), 'wf-task');
    expect(v2).not.toBe(wfV1);
    const next = { ...pipeline, steps: pipeline.steps.map((s) => (s.name === 'proj' ? { ...s, codeVersion: v2 } : s)) };
    expect((await pipelines().applyPipeline({ pipeline: next })).created).toBe(true);
    const { changes } = await recompute().listChanges({ pipeline: 'wf', pageSize: 0, pageToken: '' });
    const change = changes.find((c) => c.kind === ChangeKind.CHANGE_KIND_CODE_VERSION);
    expect(change).toMatchObject({ step: 'proj', oldHash: wfV1, newHash: v2, state: ChangeState.CHANGE_STATE_REPORTED });
    // Placed where the policy says: every executed step on the second agent.
    const target = tc.agents[1]?.nodeId ?? '';
    const r = await recompute().recompute({ changeIds: [change?.changeId ?? ''], objectIds: [], newContents: [], policy: { maxAttempts: 0, concurrency: 4, targetNodeIds: [target], targetLabels: {}, dryRun: false } });
    const job = await finished(r.jobId);
    const nodes = await Promise.all(r.tasks.map(async (t) => (await tc.coordinator.lineage.readStep(`recompute:${r.jobId}/${t.taskId}`))?.nodeId));
    expect(new Set(nodes)).toEqual(new Set([target]));
    expect(job.tasks.map((t) => t.error ?? '').join('')).toBe('');
    expect(job.state).toBe('SUCCEEDED');
    const o = outcomes(job);
    expect(Object.keys(o).sort()).toEqual([...Array.from({ length: KEYS }, (_, i) => `wf/proj key=k${i}`), ...Array.from({ length: KEYS }, (_, i) => `wf/total key=k${i}`)].sort());
    // proj's digest includes the code's VERSION, so every proj output changed and total ran again.
    expect(o).toEqual(Object.fromEntries(Object.keys(o).map((k) => [k, "executed"])));
    pipeline = next;
  });

  it('publishing a new code version of a used transform is a change: reported under manual, followed under auto', async () => {
    const publish = async (version: number): Promise<string> => {
      const src = readFileSync(WF_TASK, 'utf8').replace('const VERSION = 1;', `const VERSION = ${version};`);
      mkdirSync(join(tc.dir, `v${version}`), { recursive: true });
      writeFileSync(join(tc.dir, `v${version}`, 'wf-task.ts'), src);
      return publishTransform(tc.client(CodeServiceDefinition), join(tc.dir, `v${version}`, 'wf-task.ts'), 'wf-task');
    };
    const published = async (hash: string) => (await recompute().listChanges({ pipeline: 'wf', pageSize: 0, pageToken: '' })).changes.filter((c) => c.kind === ChangeKind.CHANGE_KIND_CODE_PUBLISHED && c.newHash === hash);
    const stepVersions = async () => Object.fromEntries(((await pipelines().getPipeline({ name: 'wf', version: 0 })).pipeline?.pipeline?.steps ?? []).map((s) => [s.name, s.codeVersion]));
    const before = await stepVersions();

    // Manual: one change per step that uses wf-task, and the pipeline keeps its pinned versions.
    const v3 = await publish(3);
    const reported = await published(v3);
    expect(reported.map((c) => c.step).sort()).toEqual(['audit', 'proj', 'total']);
    expect(reported.every((c) => c.state === ChangeState.CHANGE_STATE_REPORTED && c.objectId === 'code:wf-task')).toBe(true);
    expect(await stepVersions()).toEqual(before);
    // Recomputing the change for `audit` moves that step to v3 and reruns it for every key.
    const auditChange = reported.find((c) => c.step === 'audit');
    const r = await recompute().recompute({ changeIds: [auditChange?.changeId ?? ''], objectIds: [], newContents: [], policy: undefined });
    const job = await finished(r.jobId);
    expect(job.state).toBe('SUCCEEDED');
    expect(Object.keys(outcomes(job)).sort()).toEqual(Array.from({ length: KEYS }, (_, i) => `wf/audit key=k${i}`).sort());
    expect(await stepVersions()).toEqual({ ...before, audit: v3 });
    expect((await tc.coordinator.lineage.readStep(`recompute:${r.jobId}/${r.tasks[0]?.taskId ?? ''}`))?.codeVersion).toBe(v3);
    // The pipeline version the recompute applied records audit's code change: that job ran it,
    // so it is not left reported as if still to do.
    const moved = (await recompute().listChanges({ pipeline: 'wf', pageSize: 0, pageToken: '' })).changes.filter((c) => c.kind === ChangeKind.CHANGE_KIND_CODE_VERSION && c.newHash === v3);
    expect(moved.map((c) => [c.step, c.state, c.jobIds])).toEqual([['audit', ChangeState.CHANGE_STATE_RECOMPUTE_SUBMITTED, [r.jobId]]]);

    // Auto: the pipeline follows the new version at once and its step changes are recomputed.
    await recompute().setChangePolicy({ pipeline: 'wf', source: '', policy: ChangePolicy.CHANGE_POLICY_AUTO });
    try {
      const v4 = await publish(4);
      expect(await stepVersions()).toEqual({ proj: v4, total: v4, audit: v4 });
      const { changes } = await recompute().listChanges({ pipeline: 'wf', pageSize: 0, pageToken: '' });
      const followed = changes.filter((c) => c.kind === ChangeKind.CHANGE_KIND_CODE_VERSION && c.newHash === v4);
      expect(followed.map((c) => c.step).sort()).toEqual(['audit', 'proj', 'total']);
      const jobIds = [...new Set(followed.flatMap((c) => c.jobIds))];
      expect(jobIds).toHaveLength(1);
      const auto = await finished(jobIds[0] ?? '');
      expect(auto.state).toBe('SUCCEEDED');
      expect(Object.values(outcomes(auto)).every((o) => o === 'executed')).toBe(true);
      expect(auto.tasks).toHaveLength(3 * KEYS);
      pipeline = (await pipelines().getPipeline({ name: 'wf', version: 0 })).pipeline?.pipeline as Pipeline;
    } finally {
      await recompute().setChangePolicy({ pipeline: 'wf', source: '', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
    }
  });

  it('a step that keeps failing is retried, then fails only its subtree', async () => {
    const r = await recompute().recompute({
      changeIds: [],
      objectIds: [],
      newContents: [
        { objectId: 'record:wf/raw:k4', payload: json({ id: 4, amount: 40, note: 'FAIL' }), mediaType: '' },
        { objectId: 'record:wf/raw:k5', payload: json({ id: 5, amount: 55, note: 'n' }), mediaType: '' },
      ],
      policy: { maxAttempts: 2, concurrency: 4, targetNodeIds: [], targetLabels: {}, dryRun: false },
    });
    expect(r.changeIds).toHaveLength(2);
    const job = await finished(r.jobId);
    expect(job.state).toBe('FAILED');
    const o = outcomes(job);
    expect(o).toMatchObject({ 'wf/proj key=k4': 'FAILED', 'wf/total key=k4': 'UPSTREAM_FAILED', 'wf/audit key=k4': 'executed', 'wf/proj key=k5': 'executed', 'wf/total key=k5': 'executed', 'wf/audit key=k5': 'executed' });
    expect(job.tasks.find((t) => t.label === 'wf/proj key=k4')?.attempts).toBe(2);
    expect(job.tasks.find((t) => t.label === 'wf/proj key=k4')?.error).toMatch(/failIf/);
    const closed = await closedRun(r.jobId, 'FAIL');
    expect(closed).toMatchObject({ state: 'FAIL', facets: { retrace: { jobState: 'FAILED', error: expect.stringMatching(/1 task\(s\) failed/) } } });
    expect(closed?.endedAtNs).not.toBe('0');
    // Resumed, the run is reopened, then closed again at the job's new end.
    const runEvents = async () => (await tc.coordinator.lineage.readEvents(await tc.coordinator.lineage.store.entitySeqs('runs', r.jobId))).map((e) => (e.body?.$case === 'run' ? e.body.value.state : ''));
    expect(await runEvents()).toEqual(['RUNNING', 'FAIL']);
    const jobs = shared.jobs as NonNullable<CoordinatorServices['jobs']>;
    await jobs.resume(r.jobId);
    expect((await finished(r.jobId)).state).toBe('FAILED');
    await until('the run closed again', async () => ((await runEvents()).length === 4 ? true : undefined), 10_000);
    expect(await runEvents()).toEqual(['RUNNING', 'FAIL', 'RUNNING', 'FAIL']);
    const reclosed = await tc.coordinator.lineage.readRun(r.jobId);
    expect(reclosed?.state).toBe('FAIL');
    expect(BigInt(reclosed?.endedAtNs ?? '0')).toBeGreaterThan(BigInt(closed?.endedAtNs ?? '0'));
  });

  it('refuses a change policy for a pipeline or source that does not exist, storing nothing', async () => {
    const before = (await recompute().listChangePolicies({})).entries;
    await expect(recompute().setChangePolicy({ pipeline: 'nope', source: '', policy: ChangePolicy.CHANGE_POLICY_MANUAL })).rejects.toMatchObject({ code: Status.NOT_FOUND, details: expect.stringMatching(/^pipeline: pipeline "nope" not found/) });
    await expect(recompute().setChangePolicy({ pipeline: 'wf', source: 'nosrc', policy: ChangePolicy.CHANGE_POLICY_MANUAL })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^source: pipeline "wf" has no source "nosrc" \(sources: raw\)/) });
    expect((await recompute().listChangePolicies({})).entries).toEqual(before);
  });

  it('policy: manual reports a re-ingested change and runs nothing; auto recomputes at once', async () => {
    await recompute().setChangePolicy({ pipeline: 'wf', source: 'raw', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
    const projVersions = versionsOf('record:wf/proj:k1').length;
    const manual = await ingest('wf', 'raw', [{ key: 'k1', payload: json({ id: 1, amount: 11, note: 'n' }) }]);
    expect(Number(manual.accepted)).toBe(1);
    expect(Number(manual.shardsRun)).toBe(0);
    const reported = (await recompute().listChanges({ pipeline: 'wf', pageSize: 0, pageToken: '' })).changes[0];
    expect(reported).toMatchObject({ kind: ChangeKind.CHANGE_KIND_RECORD, objectId: 'record:wf/raw:k1', state: ChangeState.CHANGE_STATE_REPORTED, policy: ChangePolicy.CHANGE_POLICY_MANUAL });
    expect(versionsOf('record:wf/proj:k1')).toHaveLength(projVersions);
    // Sending the same record again runs nothing either: the change waits for a recompute.
    expect(Number((await ingest('wf', 'raw', [{ key: 'k1', payload: json({ id: 1, amount: 11, note: 'n' }) }])).shardsRun)).toBe(0);
    // The waiting change's steps are the object's impact, and recomputing the object recomputes that change, not a second one of the same two hashes.
    const impact = await recompute().impact({ target: { $case: 'objectId', value: 'record:wf/raw:k1' }, asOfNs: '0' });
    const planned = await recompute().recompute({ changeIds: [], objectIds: ['record:wf/raw:k1'], newContents: [], policy: { maxAttempts: 0, concurrency: 0, targetNodeIds: [], targetLabels: {}, dryRun: true } });
    expect(planned.changeIds).toEqual([reported?.changeId]);
    expect(impact.stepCount).toBe(planned.tasks.length);
    expect(planned.tasks.length).toBeGreaterThan(0);
    // A label no node carries is refused up front, as an unknown node id is; one some node carries plans.
    const targeting = (targetLabels: Record<string, string>) => recompute().recompute({ changeIds: [], objectIds: ['record:wf/raw:k1'], newContents: [], policy: { maxAttempts: 0, concurrency: 0, targetNodeIds: [], targetLabels, dryRun: true } });
    await expect(targeting({ pool: 'gpu' })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: 'policy.target_labels: no known node has pool=gpu (labels of known nodes: pool=a, pool=b)' });
    expect((await targeting({ pool: 'b' })).tasks).toHaveLength(planned.tasks.length);

    await recompute().setChangePolicy({ pipeline: 'wf', source: 'raw', policy: ChangePolicy.CHANGE_POLICY_AUTO });
    const auto = await ingest('wf', 'raw', [{ key: 'k1', payload: json({ id: 1, amount: 12, note: 'n' }) }]);
    expect(Number(auto.shardsRun)).toBe(3);
    const inline = (await recompute().listChanges({ pipeline: 'wf', pageSize: 0, pageToken: '' })).changes[0];
    expect(inline).toMatchObject({ objectId: 'record:wf/raw:k1', state: ChangeState.CHANGE_STATE_RECOMPUTED_BY_INGEST, policy: ChangePolicy.CHANGE_POLICY_AUTO });

    // NotifyChange under auto submits the job itself.
    const n = await recompute().notifyChange({ objectId: 'record:wf/raw:k0', contentHash: '', payload: json({ id: 0, amount: 1, note: 'n' }), mediaType: '', noticedBy: '' });
    expect(n.change?.jobIds).toHaveLength(1);
    const job = await finished(n.change?.jobIds[0] ?? '');
    expect(job.state).toBe('SUCCEEDED');
    expect(job.tasks).toHaveLength(3);
  });

  it('an ingest still running on the version an apply replaced: its late steps are recomputed too (auto)', async () => {
    const step = (salt: number) => ({ name: 's1', transform: 'wf-task', codeVersion: wfV1, parameters: { salt, costMs: 5 }, requirements: undefined, inputs: ['raw'], output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 });
    const late = (salt: number) => ({ name: 'late', sources: [{ name: 'raw', mediaType: 'application/json', description: '' }], steps: [step(salt)] }) as Pipeline;
    await pipelines().applyPipeline({ pipeline: late(0) });
    await recompute().setChangePolicy({ pipeline: 'late', source: '', policy: ChangePolicy.CHANGE_POLICY_AUTO });
    const records = (from: number) => Array.from({ length: 3 }, (_, i) => ({ key: `k${from + i}`, payload: json({ id: from + i }), eventTimeNs: '0', mediaType: '' }));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    // One ingest call: three records, then (after the apply) three more, all on version 1.
    const ingesting = pipelines().ingest((async function* () {
      yield { pipeline: 'late', source: 'raw', records: records(0) };
      await gate;
      yield { pipeline: 'late', source: 'raw', records: records(3) };
    })());
    await until('the first three records processed', () => ([0, 1, 2].every((i) => versionsOf(`record:late/s1:k${i}`).length === 1) ? true : undefined), 30_000);
    await pipelines().applyPipeline({ pipeline: late(1) });
    release();
    const r = await ingesting;
    expect(Number(r.shardsRun)).toBe(6);
    // The apply's recompute covered k0-k2; k3-k5 ran on version 1 after it, and are recomputed after the run.
    await until('every record at version 2', () => (Array.from({ length: 6 }, (_, i) => versionsOf(`record:late/s1:k${i}`).length).every((n) => n === 2) ? true : undefined), 30_000);
    const change = (await recompute().listChanges({ pipeline: 'late', pageSize: 0, pageToken: '' })).changes.find((c) => c.kind === ChangeKind.CHANGE_KIND_PARAMETERS);
    expect(change?.jobIds).toHaveLength(2);
    const followUp = await finished(change?.jobIds[1] ?? '');
    expect(followUp.state).toBe('SUCCEEDED');
    expect(Object.entries(outcomes(followUp)).filter(([, o]) => o === 'executed').map(([label]) => label).sort()).toEqual(['late/s1 key=k3', 'late/s1 key=k4', 'late/s1 key=k5']);
  }, 90_000);

  it('a watched directory is a source: each file a record, edits become changes', async () => {
    const docs = join(tc.dir, 'docs');
    mkdirSync(docs);
    writeFileSync(join(docs, 'a.txt'), 'alpha');
    writeFileSync(join(docs, 'b.txt'), 'beta');
    await pipelines().applyPipeline({ pipeline: { name: 'docs', sources: [{ name: 'files', mediaType: 'text/plain', description: '' }], steps: [{ name: 'wc', transform: 'wf-task', codeVersion: wfV1, parameters: { ignoreInputSuffix: 1 }, requirements: undefined, inputs: ['files'], output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 }] } as Pipeline });
    const w = await recompute().watchPath({ path: docs, pipeline: 'docs', source: 'files', objectIdPrefix: '', policy: ChangePolicy.CHANGE_POLICY_AUTO, rescanIntervalMs: 300, debounceMs: 50 });
    expect(w.watch?.watchId).toMatch(/^w-/);
    await until('both files ingested', () => (versionsOf('record:docs/wc:a.txt').length === 1 && versionsOf('record:docs/wc:b.txt').length === 1 ? true : undefined), 30_000);
    writeFileSync(join(docs, 'a.txt'), 'alphabet');
    const change = await until('the edit noticed', async () => (await recompute().listChanges({ pipeline: 'docs', pageSize: 0, pageToken: '' })).changes.find((c) => c.objectId === 'record:docs/files:a.txt'), 30_000);
    expect(change).toMatchObject({ kind: ChangeKind.CHANGE_KIND_FILE, noticedBy: expect.stringContaining(`watch:${docs}`) });
    await until('a.txt recomputed', () => (versionsOf('record:docs/wc:a.txt').length === 2 ? true : undefined), 30_000);
    expect(versionsOf('record:docs/wc:b.txt')).toHaveLength(1);
    expect((await recompute().listWatches({})).watches[0]).toMatchObject({ path: docs, files: 2, lastError: '' });
    expect((await recompute().unwatchPath({ watchId: w.watch?.watchId ?? '' })).removed).toBe(true);
  });

  it('the CLI: notify, changes, impact (table, DOT, SVG), recompute --watch', async () => {
    const conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    const file = join(tc.dir, 'k5.json');
    writeFileSync(file, JSON.stringify({ id: 5, amount: 56, note: 'n' }));
    await recompute().setChangePolicy({ pipeline: 'wf', source: 'raw', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
    const n = await cli(['notify', 'record:wf/raw:k5', file, ...conn]);
    expect(n.code).toBe(0);
    const changeId = /change (chg-[0-9a-f]{16})/.exec(n.out)?.[1] ?? '';
    expect(changeId).not.toBe('');
    expect((await cli(['changes', ...conn])).out).toContain(changeId);
    const table = await cli(['impact', changeId, ...conn]);
    expect(table.out).toMatch(/3 steps, 3 objects/);
    const limited = await cli(['impact', changeId, '--limit', '1', ...conn]);
    expect(limited.out.endsWith('1 of 3 steps shown (--limit N, 0 for all)\n')).toBe(true);
    const svgFile = join(tc.dir, 'impact.svg');
    const dot = await cli(['impact', changeId, '--dot', '--svg', svgFile, ...conn]);
    expect(dot.out).toMatch(/^digraph "impact" \{/);
    // The changed record feeds two steps; one of them feeds the third.
    expect(dot.out.match(/^ {2}"[^"]+" -> "[^"]+";$/gm)).toHaveLength(3);
    expect(readFileSync(svgFile, 'utf8')).toMatch(/^<svg[\s\S]*total k5[\s\S]*<\/svg>/);
    const dry = await cli(['recompute', changeId, '--dry-run', ...conn]);
    expect(dry.out).toMatch(/dry run: 3 tasks/);
    const run = await cli(['recompute', changeId, '--watch', ...conn]);
    expect(run.code).toBe(0);
    // Said at once, before planning (seconds for a large pipeline) ends in the job line.
    expect(run.err.split('\n').slice(0, 2)).toEqual([`planning the recompute of ${changeId}: finding the steps it affects...`, expect.stringMatching(new RegExp(`^job \\S+: 3 tasks for ${changeId}$`))]);
    expect(run.out).toMatch(/SUCCEEDED: 3 executed, 0 cached, 0 cut off/);
  });

  it('recompute --content --dry-run stores nothing; the real run after it works; a repeated notify names its change', async () => {
    const conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    const objectId = 'record:wf/raw:k1';
    const content = Buffer.from(JSON.stringify({ id: 1, amount: 77, note: 'dry' }));
    const file = join(tc.dir, 'k1-dry.json');
    writeFileSync(file, content);
    const hash = contentHashOf(content);
    const payloads = (shared.pipelines as NonNullable<CoordinatorServices['pipelines']>).payloads;
    const state = async () => ({
      changes: (await recompute().listChanges({ pipeline: '', pageSize: 0, pageToken: '' })).changes.map((c) => c.changeId),
      versions: versionsOf(objectId),
      current: await (shared.pipelines as NonNullable<CoordinatorServices['pipelines']>).store.getCurrent('wf', 'raw', 'k1'),
      stored: await payloads.has(hash),
    });
    const before = await state();
    expect(before.stored).toBe(false);
    const ledgerBefore = tc.coordinator.lineage.treeSize;
    const dry = await cli(['recompute', '--content', `${objectId}=${file}`, '--dry-run', ...conn]);
    expect(dry.err).toBe('');
    expect(dry.out).toMatch(/^dry run: 3 tasks for chg-[0-9a-f]{16}\n/);
    const changeId = /chg-[0-9a-f]{16}/.exec(dry.out)?.[0] ?? '';
    expect(await state()).toEqual(before);
    // Nothing in the ledger either (a run the previous test's job closes may land meanwhile).
    const seqs = Array.from({ length: Number(tc.coordinator.lineage.treeSize - ledgerBefore) }, (_, i) => ledgerBefore + BigInt(i));
    expect((await tc.coordinator.lineage.readEvents(seqs)).map((e) => e.eventId).filter((id) => id.includes(objectId) || id.includes(changeId))).toEqual([]);
    await expect(recompute().getChange({ changeId })).rejects.toMatchObject({ code: Status.NOT_FOUND });

    const run = await cli(['recompute', '--content', `${objectId}=${file}`, '--watch', ...conn]);
    expect(run.err).toContain(`for ${changeId}`);
    expect(run.out).toMatch(/SUCCEEDED: 3 executed, 0 cached, 0 cut off/);
    expect(run.code).toBe(0);
    expect(await payloads.has(hash)).toBe(true);

    // The same content again: the object's latest version already, made so by that change.
    const again = await recompute().notifyChange({ objectId, contentHash: '', payload: content, mediaType: '', noticedBy: '' });
    expect(again).toMatchObject({ unchanged: true, change: { changeId, newHash: hash } });
    const n = await cli(['notify', objectId, file, ...conn]);
    expect(n.out).toContain(`${objectId}: unchanged: that is its latest version, since change ${changeId}`);
    // Content that no change made the latest (a step's output) says only that.
    const total = await (shared.pipelines as NonNullable<CoordinatorServices['pipelines']>).store.getCurrent('wf', 'total', 'k0');
    const plain = await recompute().notifyChange({ objectId: 'record:wf/total:k0', contentHash: total?.contentHash ?? '', payload: Buffer.alloc(0), mediaType: '', noticedBy: '' });
    expect(plain).toEqual({ unchanged: true, change: undefined });
    // Recompute with such content: the change that made it the latest again, else refused.
    expect((await cli(['recompute', '--content', `${objectId}=${file}`, '--dry-run', ...conn])).out).toMatch(new RegExp(`^dry run: 3 tasks for ${changeId}\\n`));
    const totalBytes = Buffer.from(await payloads.get(total?.contentHash ?? ''));
    await expect(recompute().recompute({ changeIds: [], objectIds: [], newContents: [{ objectId: 'record:wf/total:k0', payload: totalBytes, mediaType: '' }], policy: undefined })).rejects.toMatchObject({ code: Status.FAILED_PRECONDITION, details: expect.stringMatching(/^new_contents\[0\]\.payload: /) });
  });

  it('impact ID: an id that is no object and no step, or an object not yet there as of --as-of, gets the object\'s error', async () => {
    const conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    const none = await cli(['impact', 'nonexist:thing', ...conn]);
    expect(none.code).toBe(1);
    expect(none.err).toContain('object_id: no object or step has the id "nonexist:thing"');
    const early = await cli(['impact', 'record:wf/raw:k1', '--as-of', '1970-01-01T00:00:01Z', ...conn]);
    expect(early.code).toBe(1);
    expect(early.err).toMatch(/object_id: object "record:wf\/raw:k1" has no version as of 1970-01-01T00:00:01Z \(its first is from 20\d\d-/);
    // A time that is no time is the command line's fault (exit 2), before anything is asked.
    const bad = await cli(['impact', 'record:wf/raw:k1', '--as-of', 'yesterday', ...conn]);
    expect(bad.code, bad.err).toBe(2);
    expect(bad.err).toContain('--as-of: not an ISO-8601 date-time: "yesterday"');
    // A step id still falls back to the step.
    const stepId = (await recompute().impact({ target: { $case: 'objectId', value: 'record:wf/raw:k1' }, asOfNs: '0' })).steps[0]?.stepId ?? '';
    const step = await cli(['impact', stepId, ...conn]);
    expect(step.err).toBe('');
    expect(step.out).toContain(`impact of step:${stepId}`);
  });

  it('bad requests get clear errors naming the field', async () => {
    const c = recompute();
    await expect(c.notifyChange({ objectId: 'record:wf/raw:nope', contentHash: `sha256:${'a'.repeat(64)}`, payload: Buffer.alloc(0), mediaType: '', noticedBy: '' })).rejects.toMatchObject({ code: Status.NOT_FOUND, details: expect.stringMatching(/^object_id: /) });
    await expect(c.notifyChange({ objectId: 'record:wf/raw:k1', contentHash: 'md5:abc', payload: Buffer.alloc(0), mediaType: '', noticedBy: '' })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^content_hash: /) });
    await expect(c.impact({ target: { $case: 'objectId', value: 'no-such-object' }, asOfNs: '0' })).rejects.toMatchObject({ code: Status.NOT_FOUND, details: expect.stringMatching(/^object_id: /) });
    await expect(c.recompute({ changeIds: ['chg-0000000000000000'], objectIds: [], newContents: [], policy: undefined })).rejects.toMatchObject({ code: Status.NOT_FOUND, details: expect.stringMatching(/^change_ids\[0\]: /) });
    await expect(c.recompute({ changeIds: [], objectIds: ['record:wf/raw:nope'], newContents: [], policy: undefined })).rejects.toMatchObject({ code: Status.NOT_FOUND, details: expect.stringMatching(/^object_ids\[0\]: /) });
    // At most 1024 steps at once: the RPC names the field, the CLI the flag, and nothing starts.
    const jobsBefore = (await tc.client(JobServiceDefinition).listJobs({ state: 0, kind: '', pageSize: 0, pageToken: '' })).jobs.length;
    await expect(c.recompute({ changeIds: [], objectIds: ['record:wf/raw:k1'], newContents: [], policy: { maxAttempts: 0, concurrency: 4_000_000_000, targetNodeIds: [], targetLabels: {}, dryRun: false } })).rejects.toMatchObject({
      code: Status.INVALID_ARGUMENT,
      details: 'policy.concurrency: at most 1024 steps at once (0: the default, 16), got 4000000000',
    });
    const tooMany = await cli(['recompute', 'record:wf/raw:k1', '--concurrency', '1025', '--coordinator', tc.grpcAddress, '--token', tc.token]);
    expect(tooMany.code).toBe(2);
    expect(tooMany.err).toContain('--concurrency: at most 1024 steps at once, got 1025');
    const tooOften = await cli(['recompute', 'record:wf/raw:k1', '--max-attempts', '101', '--coordinator', tc.grpcAddress, '--token', tc.token]);
    expect(tooOften.code).toBe(2);
    expect(tooOften.err).toContain('--max-attempts: at most 100 attempts per step, got 101');
    expect((await tc.client(JobServiceDefinition).listJobs({ state: 0, kind: '', pageSize: 0, pageToken: '' })).jobs.length).toBe(jobsBefore);
    // New content of an object no step reads: refused naming it, and nothing recorded (dry run or not).
    const before = (await c.listChanges({ pipeline: 'wf', pageSize: 0, pageToken: '' })).changes.length;
    for (const dryRun of [true, false]) {
      await expect(c.recompute({ changeIds: [], objectIds: [], newContents: [{ objectId: 'record:wf/total:k1', payload: Buffer.from('{"leaf":1}'), mediaType: '' }], policy: { maxAttempts: 0, concurrency: 0, targetNodeIds: [], targetLabels: {}, dryRun } })).rejects.toMatchObject({
        code: Status.FAILED_PRECONDITION,
        details: 'new_contents[0].object_id: no step has read a version of record:wf/total:k1: nothing to recompute (retrace notify records new content without recomputing)',
      });
    }
    expect((await c.listChanges({ pipeline: 'wf', pageSize: 0, pageToken: '' })).changes.length).toBe(before);
    const cyclic = { name: 'loop', sources: [{ name: 'raw', mediaType: '', description: '' }], steps: [{ name: 'a', transform: 'wf-task', codeVersion: wfV1, parameters: {}, requirements: undefined, inputs: ['b'], output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 }, { name: 'b', transform: 'wf-task', codeVersion: wfV1, parameters: {}, requirements: undefined, inputs: ['a'], output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 }] } as Pipeline;
    await expect(pipelines().applyPipeline({ pipeline: cyclic })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/cycle/) });
    const unknownCode = { ...pipeline, steps: pipeline.steps.map((s) => (s.name === 'audit' ? { ...s, codeVersion: `sha256:${'0'.repeat(64)}` } : s)) };
    await expect(pipelines().applyPipeline({ pipeline: unknownCode })).rejects.toMatchObject({ code: Status.NOT_FOUND, details: expect.stringMatching(/^steps\[2\]\.code_version: /) });
    await expect(c.watchPath({ path: 'relative/dir', pipeline: 'wf', source: 'raw', objectIdPrefix: '', policy: 0, rescanIntervalMs: 0, debounceMs: 0 })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^path: /) });
  });
});
