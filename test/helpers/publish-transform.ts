import { basename } from 'node:path';
import type { Client } from 'nice-grpc';
import type { CodeManifest, CodeServiceDefinition } from '../../common/gen/retrace/v1/code.js';
import { bundleTransform } from '../../scripts/cli/publish-command.js';

/** Bundles `file` as `retrace publish` does and publishes it as `transform`; returns its code version. */
export async function publishTransform(code: Client<typeof CodeServiceDefinition>, file: string, transform: string, manifest: Partial<CodeManifest> = {}): Promise<string> {
  const bundle = await bundleTransform(file);
  const r = await code.publishCode({ bundle: Buffer.from(bundle.bytes), manifest: { transform, sourceFile: basename(file), bundler: bundle.bundler, ...manifest } });
  return r.code?.codeVersion ?? '';
}
