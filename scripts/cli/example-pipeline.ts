import { fileURLToPath } from 'node:url';
import { CodeServiceDefinition } from '../../common/gen/retrace/v1/code.js';
import { PipelineServiceDefinition } from '../../common/gen/retrace/v1/pipeline.js';
import { RecomputeServiceDefinition } from '../../common/gen/retrace/v1/recompute.js';
import { parseArgs } from './command.js';
import { openClient } from './client.js';
import { publishTransformFile } from './publish-command.js';

const TRANSFORMS = ['scale-order', 'classify-order'] as const;

/**
 * The quick start's live pipeline, run for real on the local agents: publish two transforms
 * (scripts/examples/transforms), apply the `orders` pipeline (raw → scale → classify) and ingest
 * `records` orders 100 ms apart in event time. Provenance is recorded by the coordinator itself.
 * Safe to run again: publishing and ingesting the same content is idempotent.
 */
export async function runExamplePipeline(coordinator: string, token: string, options: { records?: number; signal?: AbortSignal } = {}): Promise<{ codeVersions: Record<string, string>; accepted: number; runId: string; firstRecord: string }> {
  const args = parseArgs(['--coordinator', coordinator, '--token', token]);
  // The quick start's plaintext loopback coordinator: no RETRACE_TLS_CA kept for another one applies.
  const code = openClient(CodeServiceDefinition, args, { env: {} });
  const pipelines = openClient(PipelineServiceDefinition, args, { env: {} });
  try {
    const codeVersions: Record<string, string> = {};
    for (const name of TRANSFORMS) {
      const { response } = await publishTransformFile(code.client, fileURLToPath(new URL(`../examples/transforms/${name}.ts`, import.meta.url)), { name, ...(options.signal ? { signal: options.signal } : {}) });
      codeVersions[name] = response.code?.codeVersion ?? '';
    }
    await pipelines.client.applyPipeline(
      {
        pipeline: {
          name: 'orders',
          sources: [{ name: 'raw', mediaType: 'application/json' }],
          steps: [
            { name: 'scale', transform: 'scale-order', codeVersion: codeVersions['scale-order'] ?? '', parameters: { rates: { EUR: 1.08, GBP: 1.27, USD: 1 } }, inputs: ['raw'], output: 'orders-usd' },
            { name: 'classify', transform: 'classify-order', codeVersion: codeVersions['classify-order'] ?? '', parameters: { largeCents: 10_000 }, inputs: ['scale'], output: 'orders-classified' },
          ],
        },
      } as never,
      { signal: options.signal },
    );
    const n = options.records ?? 20;
    const base = 1_767_225_600_000_000_000n;
    const records = Array.from({ length: n }, (_, i) => ({
      key: `o${i + 1}`,
      eventTimeNs: (base + BigInt(i) * 100_000_000n).toString(),
      payload: Buffer.from(JSON.stringify({ id: i + 1, amount: 7 * (i + 1) + (i % 4), currency: ['EUR', 'GBP', 'USD'][i % 3] })),
      mediaType: '',
    }));
    const r = await pipelines.client.ingest(
      (async function* () {
        yield { pipeline: 'orders', source: 'raw', records };
      })(),
      { signal: options.signal },
    );
    return { codeVersions, accepted: Number(r.accepted), runId: r.runId, firstRecord: 'record:orders/raw:o1' };
  } finally {
    code.close();
    pipelines.close();
  }
}

/**
 * The recompute part of the tour: re-ingests two orders of the `orders` pipeline with new content
 * — o2 with a new amount (its scale and classify outputs change) and o3 with only a note that the
 * steps ignore (scale's output comes out the same: early cutoff) — and returns the changes the
 * coordinator recorded for them. Under the `manual` policy nothing runs until `retrace recompute`.
 */
export async function changeExampleRecords(coordinator: string, token: string, options: { signal?: AbortSignal } = {}): Promise<{ changeIds: string[]; shardsRun: number }> {
  const args = parseArgs(['--coordinator', coordinator, '--token', token]);
  const pipelines = openClient(PipelineServiceDefinition, args, { env: {} });
  const recompute = openClient(RecomputeServiceDefinition, args, { env: {} });
  try {
    const records = [
      { key: 'o2', eventTimeNs: '0', payload: Buffer.from(JSON.stringify({ id: 2, amount: 150, currency: 'GBP' })), mediaType: '' },
      { key: 'o3', eventTimeNs: '0', payload: Buffer.from(JSON.stringify({ id: 3, amount: 23, currency: 'USD', note: 'gift wrap' })), mediaType: '' },
    ];
    const r = await pipelines.client.ingest(
      (async function* () {
        yield { pipeline: 'orders', source: 'raw', records };
      })(),
      { signal: options.signal },
    );
    const { changes } = await recompute.client.listChanges({ pipeline: 'orders', pageSize: 100, pageToken: '' }, { signal: options.signal });
    const changeIds = ['record:orders/raw:o2', 'record:orders/raw:o3'].map((id) => changes.find((c) => c.objectId === id)?.changeId ?? '').filter((id) => id !== '');
    return { changeIds, shardsRun: Number(r.shardsRun) };
  } finally {
    pipelines.close();
    recompute.close();
  }
}
