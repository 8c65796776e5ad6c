import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { PipelineServiceDefinition, type Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { startLocalAgents } from '../scripts/cli/local-agents.js';
import { ROOT, startCoordinatorProcess } from './helpers/coordinator-process.js';
import { runCli } from './helpers/in-process-cli.js';
import { processHarness } from './helpers/process-harness.js';
import { publishTransform } from './helpers/publish-transform.js';
import { until } from './helpers/until.js';

/**
 * `retrace ingest` whose coordinator is SIGKILLed mid-run said only "Connection dropped": not
 * which run was cut short nor what to do. It names the run now and how to finish it.
 */

const WF_TASK = join(ROOT, 'scripts', 'examples', 'transforms', 'wf-task.ts');
const h = processHarness();
afterAll(() => h.cleanup());

describe('retrace ingest losing its coordinator', () => {
  it('names the run and says to send the same file again (records already ingested come back as duplicates)', async () => {
    const dir = h.tempDir('retrace-ingest-lost-');
    const coordinator = await startCoordinatorProcess(join(dir, 'coordinator'), h.children);
    const token = readFileSync(join(dir, 'coordinator', 'auth-token'), 'utf8').trim();
    const codeVersion = await publishTransform(h.client(coordinator.grpc, token, CodeServiceDefinition), WF_TASK, 'wf-task');
    const pipelines = h.client(coordinator.grpc, token, PipelineServiceDefinition);
    // No agent runs: the shards wait for a node, so the ingest is mid-run when the coordinator dies.
    const pipeline = { name: 'wf', sources: [{ name: 'raw', mediaType: 'application/json', description: '' }], steps: [{ name: 'a', transform: 'wf-task', codeVersion, parameters: { step: 'a' }, inputs: ['raw'], output: '' }] } as unknown as Pipeline;
    await pipelines.applyPipeline({ pipeline });
    const data = join(dir, 'r.jsonl');
    writeFileSync(data, Array.from({ length: 3 }, (_, i) => JSON.stringify({ key: `k${i}`, payload: { i } })).join('\n'));
    const ingest = runCli(['ingest', 'wf', 'raw', data, '--coordinator', coordinator.grpc, '--token', token]);
    const runId = await until('the ingest run', async () => (await pipelines.getIngestStatus({ pipeline: 'wf', runId: '' })).runningRuns[0], 10_000);
    coordinator.proc.kill('SIGKILL');
    await coordinator.exited;
    h.closeClients();
    const r = await ingest;
    expect(r.code).not.toBe(0);
    expect(r.err).toContain(`lost the coordinator during ingest run ${runId}`);
    expect(r.err).toContain(`retrace ingest wf raw ${data}`);
    expect(r.err).toContain('duplicates');
    // What the message promises: the same file sent again finishes the ingest (here the killed
    // run had stored none of its records: no step of theirs had run).
    const again = await startCoordinatorProcess(join(dir, 'coordinator'), h.children);
    h.agents.push(...(await startLocalAgents(again.grpc, token, dir, [{ name: 'a1', reportInterval: '200ms' }])));
    const resent = await runCli(['ingest', 'wf', 'raw', data, '--coordinator', again.grpc, '--token', token]);
    expect(resent.out).toMatch(/^accepted 3 {2}duplicates 0 {2}shards 3 run, 0 failed/);
    const twice = await runCli(['ingest', 'wf', 'raw', data, '--coordinator', again.grpc, '--token', token]);
    expect(twice.out).toMatch(/^accepted 0 {2}duplicates 3 {2}shards 0 run, 0 failed/);
  }, 30_000);
});
