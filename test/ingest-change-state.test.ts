import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { PipelineServiceDefinition, type Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ChangeKind, ChangePolicy, ChangeState, RecomputeServiceDefinition, type Change } from '../common/gen/retrace/v1/recompute.js';
import { startLocalAgents } from '../scripts/cli/local-agents.js';
import { ROOT, startCoordinatorProcess, type CoordinatorProcess } from './helpers/coordinator-process.js';
import { processHarness } from './helpers/process-harness.js';
import { publishTransform } from './helpers/publish-transform.js';

/**
 * A re-ingested record's change (policy auto) says RECOMPUTED_BY_INGEST only once its ingest ran
 * the record's steps successfully and made them durable (crash-review finding 5). Before, the
 * change was stored with that state as soon as it was noticed: a coordinator SIGKILLed before
 * the steps were durable, or a step that failed, left a change claiming work never recorded.
 */

const WF_TASK = join(ROOT, 'scripts', 'examples', 'transforms', 'wf-task.ts');

const h = processHarness();
const { children } = h;

afterAll(() => h.cleanup());

function clients(address: string, token: string) {
  return { code: h.client(address, token, CodeServiceDefinition), pipelines: h.client(address, token, PipelineServiceDefinition), recompute: h.client(address, token, RecomputeServiceDefinition) };
}

/** raw → a → b; step a fails on an input that contains "boom". */
function pipelineOf(codeVersion: string): Pipeline {
  const step = (n: string, inputs: string[], extra: Record<string, unknown> = {}) => ({ name: n, transform: 'wf-task', codeVersion, parameters: { step: n, ...extra }, requirements: undefined, inputs, output: '', timeoutMs: 0, retries: 0, retryBackoffMs: 0 });
  return { name: 'wf', sources: [{ name: 'raw', mediaType: 'application/json', description: '' }], steps: [step('a', ['raw'], { failIf: 'boom' }), step('b', ['a'])] } as Pipeline;
}

const record = (key: string, value: string) => ({ key, payload: Buffer.from(JSON.stringify({ key, value })), eventTimeNs: '0', mediaType: 'application/json' });

describe('the state of a change a re-ingest noticed', () => {
  it('is RECOMPUTED_BY_INGEST only after its steps succeeded durably: not after a step failed, nor after a SIGKILL before they were recorded', async () => {
    const dataDir = h.tempDir('retrace-ingest-change-');
    const coordDir = join(dataDir, 'coordinator');
    // Dies right after the first change an ingest notices is recorded, before its steps run.
    const first = await startCoordinatorProcess(coordDir, children, [], { RETRACE_TEST_CRASH_AT: 'ingest-change-recorded' });
    const token = readFileSync(join(coordDir, 'auth-token'), 'utf8').trim();
    h.agents.push(...(await startLocalAgents(first.grpc, token, dataDir, [{ name: 'a1', reportInterval: '200ms' }])));
    let c = clients(first.grpc, token);
    const v1 = await publishTransform(c.code, WF_TASK, 'wf-task');
    expect((await c.pipelines.applyPipeline({ pipeline: pipelineOf(v1) })).created).toBe(true);
    const ingest = (records: ReturnType<typeof record>[]) =>
      c.pipelines.ingest(
        (async function* () {
          yield { pipeline: 'wf', source: 'raw', records };
        })(),
      );
    // First versions: nothing changed yet, so nothing crashes.
    expect(Number((await ingest([record('k0', 'v1'), record('k1', 'v1')])).shardsRun)).toBe(4);

    // 1. k0 changes; the coordinator dies once the change is recorded, before its steps ran.
    await expect(ingest([record('k0', 'v2')])).rejects.toThrow();
    const { signal } = await (first as CoordinatorProcess).exited;
    expect(signal, first.stderr()).toBe('SIGKILL');
    h.closeClients();

    const second = await startCoordinatorProcess(coordDir, children, ['--grpc', first.grpc]);
    c = clients(second.grpc, token);
    const changeOf = async (objectId: string): Promise<Change[]> => (await c.recompute.listChanges({ pipeline: 'wf', pageSize: 0, pageToken: '' })).changes.filter((ch) => ch.kind === ChangeKind.CHANGE_KIND_RECORD && ch.objectId === objectId);
    const [interrupted] = await changeOf('record:wf/raw:k0');
    // Noticed, under auto, but its steps were never recorded: reported, not recomputed.
    expect(interrupted).toMatchObject({ policy: ChangePolicy.CHANGE_POLICY_AUTO, state: ChangeState.CHANGE_STATE_REPORTED, jobIds: [] });

    // The client sends the unacknowledged record again: the same change, now recomputed by the ingest.
    expect(Number((await ingest([record('k0', 'v2')])).shardsRun)).toBe(2);
    expect(await changeOf('record:wf/raw:k0')).toEqual([{ ...interrupted, state: ChangeState.CHANGE_STATE_RECOMPUTED_BY_INGEST }]);

    // 2. k1 changes to content step a fails on: the change stays reported (no durable new output).
    const failed = await ingest([record('k1', 'boom')]);
    expect(Number(failed.shardsFailed)).toBe(1);
    const [left] = await changeOf('record:wf/raw:k1');
    expect(left).toMatchObject({ policy: ChangePolicy.CHANGE_POLICY_AUTO, state: ChangeState.CHANGE_STATE_REPORTED });

    // 3. Instead of a resend, newer content comes: its ingest brings the downstream to it, which
    // also settles the change left reported before it.
    expect(Number((await ingest([record('k1', 'v3')])).shardsRun)).toBe(2);
    const settled = await changeOf('record:wf/raw:k1');
    const newer = settled.find((ch) => ch.changeId !== left?.changeId);
    expect(newer).toMatchObject({ state: ChangeState.CHANGE_STATE_RECOMPUTED_BY_INGEST, oldHash: left?.newHash });
    expect(settled.find((ch) => ch.changeId === left?.changeId)).toMatchObject({ state: ChangeState.CHANGE_STATE_RECOMPUTED_BY_INGEST, jobIds: [], detail: expect.stringContaining(`superseded by change ${newer?.changeId}`) });
  }, 60_000);
});
