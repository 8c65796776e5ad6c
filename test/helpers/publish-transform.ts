import { writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Client } from 'nice-grpc';
import type { CodeManifest, CodeServiceDefinition } from '../../common/gen/retrace/v1/code.js';
import { bundleTransform } from '../../scripts/cli/publish-command.js';

/** Bundles `file` as `retrace publish` does and publishes it as `transform`; returns its code version. */
export async function publishTransform(code: Client<typeof CodeServiceDefinition>, file: string, transform: string, manifest: Partial<CodeManifest> = {}): Promise<string> {
  const bundle = await bundleTransform(file);
  const r = await code.publishCode({ bundle: Buffer.from(bundle.bytes), manifest: { transform, sourceFile: basename(file), bundler: bundle.bundler, ...manifest } });
  return r.code?.codeVersion ?? '';
}

/**
 * Writes each source to `<dir>/<name>.ts` and bundles it as `retrace publish` does, one after the
 * other; adds each code version to `versions` (by name) and each bundle's bytes to `bundles` (by code version).
 */
export async function bundleSources(dir: string, sources: Readonly<Record<string, string>>, versions: Record<string, string>, bundles: Map<string, Uint8Array>): Promise<void> {
  for (const [name, source] of Object.entries(sources)) {
    const file = join(dir, `${name}.ts`);
    writeFileSync(file, source);
    const b = await bundleTransform(file);
    versions[name] = b.codeVersion;
    bundles.set(b.codeVersion, b.bytes);
  }
}
