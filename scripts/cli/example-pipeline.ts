import { fileURLToPath } from 'node:url';
import { CodeServiceDefinition } from '../../common/gen/retrace/v1/code.js';
import { PipelineServiceDefinition } from '../../common/gen/retrace/v1/pipeline.js';
import { parseArgs } from './command.js';
import { openClient } from './client.js';
import { bundleTransform } from './publish-command.js';

const TRANSFORMS = ['scale-order', 'classify-order'] as const;

/**
 * The quick start's live pipeline, run for real on the local agents: publish two transforms
 * (scripts/examples/transforms), apply the `orders` pipeline (raw → scale → classify) and ingest
 * `records` orders 100 ms apart in event time. Provenance is recorded by the coordinator itself.
 * Safe to run again: publishing and ingesting the same content is idempotent.
 */
export async function runExamplePipeline(coordinator: string, token: string, options: { records?: number; signal?: AbortSignal } = {}): Promise<{ codeVersions: Record<string, string>; accepted: number; runId: string; firstRecord: string }> {
  const args = parseArgs(['--coordinator', coordinator, '--token', token]);
  const code = openClient(CodeServiceDefinition, args);
  const pipelines = openClient(PipelineServiceDefinition, args);
  try {
    const codeVersions: Record<string, string> = {};
    for (const name of TRANSFORMS) {
      const bundle = await bundleTransform(fileURLToPath(new URL(`../examples/transforms/${name}.ts`, import.meta.url)));
      const r = await code.client.publishCode({ bundle: Buffer.from(bundle.bytes), manifest: { transform: name, sourceFile: `${name}.ts`, bundler: bundle.bundler } }, { signal: options.signal });
      codeVersions[name] = r.code?.codeVersion ?? '';
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
