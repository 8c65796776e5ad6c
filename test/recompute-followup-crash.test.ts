import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client, CompatServiceDefinition } from 'nice-grpc';
import { afterAll, describe, expect, it } from 'vitest';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { JobServiceDefinition } from '../common/gen/retrace/v1/job.js';
import { PipelineServiceDefinition, type Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ChangeKind, ChangePolicy, ChangeState, RecomputeServiceDefinition, type Change } from '../common/gen/retrace/v1/recompute.js';
import { startLocalAgents } from '../scripts/cli/local-agents.js';
import { ROOT, startCoordinatorProcess, type CoordinatorProcess } from './helpers/coordinator-process.js';
import { processHarness } from './helpers/process-harness.js';
import { publishTransform } from './helpers/publish-transform.js';
import { until } from './helpers/until.js';

/**
 * What an apply or a publish sets off (step changes recorded, auto ones submitted as recompute
 * jobs, every pipeline moved to newly published code) survives a coordinator SIGKILL between the
 * store write and the end of that follow-up: the real CLI coordinator, a child process, kills
 * itself at the exact point (RETRACE_TEST_CRASH_AT, a test-only hook), and the restarted one
 * finishes the follow-up. Before the fix the restarted coordinator did nothing: re-applying
 * answers "unchanged" and re-publishing "already stored".
 */

const WF_TASK = join(ROOT, 'scripts', 'examples', 'transforms', 'wf-task.ts');
const KEYS = ['k0', 'k1'];

const h = processHarness();
const { children } = h;

afterAll(() => h.cleanup());

function clients(address: string, token: string) {
  const make = <S extends CompatServiceDefinition>(d: S): Client<S> => h.client(address, token, d);
  return { code: make(CodeServiceDefinition), pipelines: make(PipelineServiceDefinition), recompute: make(RecomputeServiceDefinition), jobs: make(JobServiceDefinition) };
}

function pipelineOf(name: string, codeVersion: string, costMs: number): Pipeline {
  const step = (n: string, inputs: string[]) => ({ name: n, transform: 'wf-task', codeVersion, parameters: { step: n, costMs }, requirements: undefined, inputs, output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 });
  return { name, sources: [{ name: 'raw', mediaType: 'application/json', description: '' }], steps: [step('a', ['raw']), step('b', ['a'])] } as Pipeline;
}

/** Resolves once the process died of the SIGKILL it sent itself. */
async function killedItself(p: CoordinatorProcess): Promise<void> {
  const { signal } = await p.exited;
  expect(signal, p.stderr()).toBe('SIGKILL');
}

describe('apply and publish follow-ups across a coordinator crash', () => {
  it('a SIGKILL after the version or the code is stored: the restarted coordinator records and submits what it owed', async () => {
    const dataDir = h.tempDir('retrace-followup-crash-');
    const coordDir = join(dataDir, 'coordinator');
    const first = await startCoordinatorProcess(coordDir, children, [], { RETRACE_TEST_CRASH_AT: 'apply-changes-recorded' });
    const token = readFileSync(join(coordDir, 'auth-token'), 'utf8').trim();
    h.agents.push(...(await startLocalAgents(first.grpc, token, dataDir, [{ name: 'a1', reportInterval: '200ms' }])));
    let c = clients(first.grpc, token);
    const v1 = await publishTransform(c.code, WF_TASK, 'wf-task');
    // Both pipelines under the default policy (auto), with recorded steps to recompute.
    for (const name of ['wf', 'wf2']) {
      expect((await c.pipelines.applyPipeline({ pipeline: pipelineOf(name, v1, 1) })).created).toBe(true);
      const r = await c.pipelines.ingest((async function* () {
        yield { pipeline: name, source: 'raw', records: KEYS.map((key) => ({ key, payload: Buffer.from(JSON.stringify({ key })), eventTimeNs: '0', mediaType: 'application/json' })) };
      })());
      expect(Number(r.shardsRun)).toBe(KEYS.length * 2);
    }

    // 1. An apply whose parameter changes are recorded when the coordinator dies: no job yet.
    const wfV2 = pipelineOf('wf', v1, 2);
    await expect(c.pipelines.applyPipeline({ pipeline: wfV2 })).rejects.toThrow();
    await killedItself(first);
    h.closeClients();

    // Restarted on the same port (the agent reconnects), set to die in the publish's follow-up.
    const second = await startCoordinatorProcess(coordDir, children, ['--grpc', first.grpc], { RETRACE_TEST_CRASH_AT: 'publish-pipeline-followed' });
    c = clients(second.grpc, token);
    const changesOf = async (pipeline: string, kind: ChangeKind): Promise<Change[]> => (await c.recompute.listChanges({ pipeline, pageSize: 0, pageToken: '' })).changes.filter((ch) => ch.kind === kind);
    const submitted = await until('the apply\'s auto changes submitted after the restart', async () => {
      const chs = await changesOf('wf', ChangeKind.CHANGE_KIND_PARAMETERS);
      return chs.length === 2 && chs.every((ch) => ch.jobIds.length > 0) ? chs : undefined;
    }, 10_000);
    expect(submitted.map((ch) => ch.step).sort()).toEqual(['a', 'b']);
    expect(submitted.every((ch) => ch.state === ChangeState.CHANGE_STATE_RECOMPUTE_SUBMITTED && ch.policy === ChangePolicy.CHANGE_POLICY_AUTO)).toBe(true);
    // One job for both, not one per try.
    const jobIds = [...new Set(submitted.flatMap((ch) => ch.jobIds))];
    expect(jobIds).toHaveLength(1);
    const job = (await c.jobs.getJob({ jobId: jobIds[0] ?? '' })).job;
    expect(job?.kind).toBe('recompute');
    expect(job?.tasks.map((t) => t.label).sort()).toEqual(['wf/a key=k0', 'wf/a key=k1', 'wf/b key=k0', 'wf/b key=k1']);
    // The version was stored before the crash: applying it again is no new version.
    expect((await c.pipelines.applyPipeline({ pipeline: wfV2 })).created).toBe(false);

    // 2. A publish that dies once the first pipeline (wf) followed it: wf2 was never told.
    const src = readFileSync(WF_TASK, 'utf8').replace('const VERSION = 1;', 'const VERSION = 2;');
    mkdirSync(join(dataDir, 'v2'));
    writeFileSync(join(dataDir, 'v2', 'wf-task.ts'), src);
    await expect(publishTransform(c.code, join(dataDir, 'v2', 'wf-task.ts'), 'wf-task')).rejects.toThrow();
    await killedItself(second);
    h.closeClients();

    const third = await startCoordinatorProcess(coordDir, children, ['--grpc', first.grpc]);
    c = clients(third.grpc, token);
    const v2 = (await c.code.listCode({ transform: 'wf-task', pageSize: 0, pageToken: '' })).versions.map((v) => v.codeVersion).find((v) => v !== v1) ?? '';
    expect(v2).not.toBe('');
    const stepVersions = async (name: string) => ((await c.pipelines.getPipeline({ name, version: 0 })).pipeline?.pipeline?.steps ?? []).map((s) => s.codeVersion);
    for (const name of ['wf', 'wf2']) {
      const followed = await until(`${name}'s step changes to the published code submitted`, async () => {
        const chs = (await changesOf(name, ChangeKind.CHANGE_KIND_CODE_VERSION)).filter((ch) => ch.newHash === v2);
        return chs.length === 2 && chs.every((ch) => ch.jobIds.length === 1) ? chs : undefined;
      }, 10_000);
      expect(followed.map((ch) => ch.step).sort()).toEqual(['a', 'b']);
      expect(new Set(followed.flatMap((ch) => ch.jobIds)).size).toBe(1);
      expect(await stepVersions(name)).toEqual([v2, v2]);
    }
    // wf followed before the crash and was not moved twice; wf2 got exactly one new version.
    expect((await c.pipelines.getPipeline({ name: 'wf', version: 0 })).versions).toEqual([1, 2, 3]);
    expect((await c.pipelines.getPipeline({ name: 'wf2', version: 0 })).versions).toEqual([1, 2]);
    // The apply's job was not submitted again by the later starts.
    expect([...new Set((await changesOf('wf', ChangeKind.CHANGE_KIND_PARAMETERS)).flatMap((ch) => ch.jobIds))]).toEqual(jobIds);
  }, 60_000);
});
