import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codeExtension } from '../coordinator/code/code-extension.js';
import type { CodeStore } from '../coordinator/code/code-store.js';
import { pipelineExtension, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { ShardStatus } from '../common/gen/retrace/v1/shard.js';
import { main } from '../scripts/cli/main.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/** Each shard takes 120 ms: 20 records at 2 at once run ~1.2 s after they are all sent. */
const slowRunner: ShardRunner = {
  async run(assignment) {
    await new Promise((r) => setTimeout(r, 120));
    const now = (BigInt(Date.now()) * 1_000_000n).toString();
    const resources = { cpuTimeNs: '1000', peakMemoryBytes: '4096', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1000' };
    const outcome = { shardId: assignment.shardId, startedAtNs: now, endedAtNs: now, nodeId: 'node-a', attempt: 1, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from('ok'), mediaType: 'text/plain' }], resources, error: '' };
    return { outcome, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
  },
};

async function runOnTerminal(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const sink = (append: (s: string) => void, tty: boolean): Writable => Object.assign(new Writable({ write(chunk: Buffer, _e, cb) { append(chunk.toString()); cb(); } }), { isTTY: tty });
  const code = await main(argv, { stdout: sink((s) => (out += s), false), stderr: sink((s) => (err += s), true) });
  return { code, out, err };
}

describe('retrace ingest on a terminal', () => {
  let tc: TestCoordinator;
  const shared: PipelineShared = {};
  const dir = mkdtempSync(join(tmpdir(), 'retrace-ingest-progress-'));

  beforeAll(async () => {
    tc = await startTestCoordinator({ extensions: [codeExtension({ onCodeStore: (s) => (shared.code = s) }), pipelineExtension(shared, { runner: slowRunner, concurrency: 2 })] });
    const { code } = await (shared.code as CodeStore).publish(new TextEncoder().encode('// slow'), { transform: 'slow', requirements: undefined, sourceFile: 'slow.ts', bundler: 'test' });
    writeFileSync(join(dir, 'p.json'), JSON.stringify({ name: 'slow', sources: [{ name: 'in' }], steps: [{ name: 's', transform: 'slow', codeVersion: code?.codeVersion, inputs: ['in'] }] }));
  });
  afterAll(async () => {
    await tc?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('shows how many records it sent and how long their steps have run while a small file ingests slowly', async () => {
    // Before: nothing on stderr until the summary (a progress bar only for files of 1 MiB or more).
    const conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
    expect((await runOnTerminal(['pipeline', 'apply', join(dir, 'p.json'), ...conn])).code).toBe(0);
    const data = join(dir, 'r.jsonl');
    writeFileSync(data, Array.from({ length: 20 }, (_, i) => JSON.stringify({ key: `k${i}`, payload: { i } })).join('\n'));
    const r = await runOnTerminal(['ingest', 'slow', 'in', data, ...conn]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^accepted 20 {2}duplicates 0 {2}shards 20 run, 0 failed/);
    expect(r.err).toMatch(/\r\x1b\[K20 record\(s\) sent; waiting for their steps to finish \(1 s\)/);
    // The line is cleared before the summary.
    expect(r.err.endsWith('\r\x1b[K')).toBe(true);
  });
});
