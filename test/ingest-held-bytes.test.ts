import { afterEach, describe, expect, it } from 'vitest';
import { Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ShardStatus } from '../common/gen/retrace/v1/shard.js';
import { codeExtension } from '../coordinator/code/code-extension.js';
import type { CodeStore } from '../coordinator/code/code-store.js';
import { pipelineExtension, type PipelineHandles, type PipelineShared } from '../coordinator/pipeline/pipeline-extension.js';
import type { IngestRecordInput, ShardRunner } from '../coordinator/pipeline/pipeline-runner.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * An ingest holds at most `maxHeldBytes` of source payloads at once (records running or waiting
 * for their provenance to be durable), so large records run fewer at a time; a record larger
 * than the bound alone still runs.
 */
describe('ingest memory bound', () => {
  let tc: TestCoordinator | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  /** Starts a coordinator whose shards take 20 ms each; resolves the runner and the most shards seen running at once. */
  async function start(maxHeldBytes?: number): Promise<{ ingest: (recs: IngestRecordInput[]) => Promise<number> }> {
    let running = 0;
    let most = 0;
    const runner: ShardRunner = {
      async run(assignment) {
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 20));
        running--;
        const started = BigInt(Date.now()) * 1_000_000n;
        const resources = { cpuTimeNs: '1000', peakMemoryBytes: '4096', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: '0', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '1000' };
        const outcome = { shardId: assignment.shardId, startedAtNs: started.toString(), endedAtNs: (started + 1000n).toString(), nodeId: 'node-a', attempt: 1, status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [{ key: '', contentHash: '', payload: Buffer.from(String(assignment.inputs[0]?.payload.byteLength)), mediaType: 'text/plain' }], resources, error: '' };
        return { outcome, nodeId: 'node-a', attempts: 1, queuedMs: 0, host: 'host-a' };
      },
    };
    const shared: PipelineShared & { code?: CodeStore } = {};
    tc = await startTestCoordinator({ extensions: [codeExtension({ onCodeStore: (s) => (shared.code = s) }), pipelineExtension(shared, { runner, ...(maxHeldBytes === undefined ? {} : { maxHeldBytes }) })] });
    const code = await (shared.code as CodeStore).publish(new TextEncoder().encode('// size'), { transform: 'size', requirements: undefined, sourceFile: 'size.ts', bundler: 'test' });
    const handles = shared.pipelines as PipelineHandles;
    await handles.store.apply(Pipeline.fromJSON({ name: 'sizes', sources: [{ name: 'raw', mediaType: 'application/octet-stream' }], steps: [{ name: 'size', transform: 'size', codeVersion: code.code.codeVersion, inputs: ['raw'] }] }));
    return {
      async ingest(recs) {
        most = 0;
        const summary = await handles.runner.ingest('sizes', 'raw', [recs]);
        expect(summary.shardsFailed).toBe(0);
        expect(summary.shardsRun).toBe(recs.length);
        return most;
      },
    };
  }
  const records = (n: number, bytes: number, tag: string): IngestRecordInput[] => Array.from({ length: n }, (_, i) => ({ key: `${tag}-${i}`, payload: Buffer.alloc(bytes, i) }));

  it('records of 4 KB under a 10 KB bound run two at a time; without the bound all twelve at once', async () => {
    const bounded = await start(10_000);
    expect(await bounded.ingest(records(12, 4_000, 'a'))).toBe(2);
    // A record larger than the bound runs when it is the only one held.
    expect(await bounded.ingest(records(2, 50_000, 'big'))).toBe(1);
    await tc?.stop();
    tc = undefined;
    const unbounded = await start();
    expect(await unbounded.ingest(records(12, 4_000, 'b'))).toBe(12);
  }, 30_000);
});
