import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClientError, Status } from 'nice-grpc';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCodeCache } from '../agent/code-cache.js';
import { codeExtension } from '../coordinator/code/code-extension.js';
import type { CodeStore } from '../coordinator/code/code-store.js';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { contentHashOf } from '../common/hash.js';
import { defineTransform, normalizeOutputs, toTransformInputs, TransformError } from '../common/transform.js';
import { bundleTransform, readBundleDefinition } from '../scripts/cli/publish-command.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

const CLEAN_V1 = `
import { defineTransform } from 'retrace/transform';
import { helper } from './helper';

export default defineTransform({
  name: 'clean-orders',
  requirements: { cpu: 0.5, memoryMb: 128, gpu: true, instructionSets: ['avx2'] },
  run(input, params) {
    return { json: helper(input.json(), Number(params.min ?? 0)) };
  },
});
`;
const HELPER = `export function helper(order: { total: number }, min: number) { return { ...order, ok: order.total >= min }; }\n`;

/** `retrace <path> ...argv`, in-process. */
function retrace(path: string, argv: string[]): Promise<{ code: number; out: string; err: string }> {
  return runCli([...path.split(' '), ...argv]);
}

describe('transform SDK (pure)', () => {
  it('validates definitions and names the field', () => {
    const def = defineTransform({ name: 'ok', run: () => null });
    expect(def.name).toBe('ok');
    expect(Object.isFrozen(def)).toBe(true);
    expect(() => defineTransform({ name: ' bad', run: () => null })).toThrow(TransformError);
    expect(() => defineTransform({ name: 'x', run: 42 as never })).toThrow(/^run:/);
    expect(() => defineTransform({ name: 'x', requirements: { cpu: -1 }, run: () => null })).toThrow(/requirements\.cpu/);
    expect(() => defineTransform({ name: 'x', requirements: { memoryMb: 1.5 }, run: () => null })).toThrow(/requirements\.memoryMb/);
  });

  it('plans one call per primary record and normalises outputs', () => {
    const rec = (name: string, key: string, text: string) => ({ name, objectId: `o:${key}`, key, payload: new TextEncoder().encode(text), eventTimeNs: '5', mediaType: '' });
    const inputs = toTransformInputs([rec('orders', 'a', '{"n":1}'), rec('orders', 'b', '2'), rec('rates', 'r', 'x')]);
    expect(inputs.map((i) => i.key)).toEqual(['a', 'b']);
    expect(inputs[0]?.json()).toEqual({ n: 1 });
    expect(inputs[1]?.inputs.rates?.text()).toBe('x');
    expect(inputs[1]?.inputs.orders?.key).toBe('b');
    expect(inputs[0]?.eventTimeNs).toBe(5n);
    const outs = normalizeOutputs([{ json: { b: 1, a: 2 } }, { key: 'k', payload: 'hi' }, null], 'in');
    expect(outs.map((o) => [o.key, new TextDecoder().decode(o.payload), o.mediaType])).toEqual([
      ['in', '{"a":2,"b":1}', 'application/json'],
      ['k', 'hi', 'text/plain; charset=utf-8'],
    ]);
    expect(() => normalizeOutputs([{ key: 'x' }], 'in')).toThrow(/outputs\[0\]: needs exactly one of payload and json/);
    expect(() => normalizeOutputs(7, 'in')).toThrow(/outputs: must be an object/);
  });
});

describe('retrace publish / CodeService against a real coordinator', () => {
  let coord: TestCoordinator;
  let store: CodeStore | undefined;
  let dir: string;
  let connect: string[];

  beforeAll(async () => {
    coord = await startTestCoordinator({ extensions: [codeExtension({ onCodeStore: (s) => (store = s) })] });
    dir = mkdtempSync(join(tmpdir(), 'retrace-publish-'));
    connect = ['--coordinator', coord.grpcAddress, '--token', coord.token];
  });

  afterAll(async () => {
    await coord.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function writeTransform(sub: string, source: string): string {
    mkdirSync(join(dir, sub), { recursive: true });
    writeFileSync(join(dir, sub, 'helper.ts'), HELPER);
    const file = join(dir, sub, 'clean.ts');
    writeFileSync(file, source);
    return file;
  }

  it('bundles deterministically, reads the definition, publishes idempotently, keeps old versions', async () => {
    const file = writeTransform('v1', CLEAN_V1);
    const a = await bundleTransform(file);
    const b = await bundleTransform(file);
    // The same source in another folder gives the same bytes too (no absolute paths inside).
    const elsewhere = await bundleTransform(writeTransform('copy/deeper', CLEAN_V1));
    expect(Buffer.from(a.bytes).equals(Buffer.from(b.bytes))).toBe(true);
    expect(elsewhere.codeVersion).toBe(a.codeVersion);
    expect(a.codeVersion).toBe(contentHashOf(a.bytes));
    const text = new TextDecoder().decode(a.bytes);
    expect(text).not.toContain(dir);
    expect(text).not.toContain('nice-grpc');

    const def = await readBundleDefinition(a.bytes);
    expect(def).toEqual({ name: 'clean-orders', requirements: { cpu: 0.5, memoryMb: 128, gpu: true, instructionSets: ['avx2'] } });

    const first = await retrace('publish', [file, '--json', ...connect]);
    expect(first.err).toBe('');
    expect(first.code).toBe(0);
    const p1 = JSON.parse(first.out) as { code: { codeVersion: string; manifest: Record<string, unknown>; sizeBytes: string }; created?: boolean };
    expect(p1.created).toBe(true);
    expect(p1.code.codeVersion).toBe(a.codeVersion);
    expect(p1.code.manifest).toMatchObject({ transform: 'clean-orders', sourceFile: 'clean.ts', requirements: { cpu: 0.5, memoryMb: 128, gpu: 1, instructionSets: ['avx2'] } });
    expect(String(p1.code.manifest.bundler)).toMatch(/^esbuild \d/);
    expect(Number(p1.code.sizeBytes)).toBe(a.bytes.byteLength);

    const again = await retrace('publish', [file, ...connect]);
    expect(again.code).toBe(0);
    expect(again.out).toMatch(new RegExp(`^${a.codeVersion}  clean-orders  .*already published\\n$`));
    // --name on a bundle already published under another name: the name cannot be applied, and
    // was dropped without a word (exit 0, "clean-orders ... already published").
    const renamed = await retrace('publish', [file, '--name', 'other-name', ...connect]);
    expect(renamed.code).toBe(1);
    expect(renamed.out).toBe('');
    expect(renamed.err).toBe(`error: --name: code version ${a.codeVersion} is already published as transform "clean-orders", not "other-name"; a version keeps its first name (use "clean-orders", or change the source to make a new version)\n`);
    expect((await retrace('publish', [file, '--name', 'clean-orders', ...connect])).code).toBe(0);

    // A change in the source (here in an imported file) is a new version; the old one stays.
    writeFileSync(join(dir, 'v1', 'helper.ts'), HELPER.replace('>= min', '> min'));
    const changed = await retrace('publish', [file, '--name', 'clean-orders', '--json', ...connect]);
    const p2 = JSON.parse(changed.out) as { code: { codeVersion: string }; created?: boolean };
    expect(p2.created).toBe(true);
    expect(p2.code.codeVersion).not.toBe(a.codeVersion);

    const client = coord.client(CodeServiceDefinition);
    const old = await client.getCode({ codeVersion: a.codeVersion });
    expect(contentHashOf(old.bundle)).toBe(a.codeVersion);
    expect(old.code?.manifest?.transform).toBe('clean-orders');

    const listed = await retrace('code list', ['--json', ...connect]);
    const versions = (JSON.parse(listed.out) as { versions: { codeVersion: string }[] }).versions.map((v) => v.codeVersion);
    expect(versions).toEqual([p2.code.codeVersion, a.codeVersion]);
    const table = await retrace('code list', connect);
    expect(table.out).toContain('cpu=0.5,mem=128MiB,gpu=1,isa=avx2');
    const shown = await retrace('code show', [a.codeVersion, '--out', join(dir, 'out.mjs'), ...connect]);
    expect(shown.code).toBe(0);
    expect(contentHashOf(readFileSync(join(dir, 'out.mjs')))).toBe(a.codeVersion);
    const toDir = await retrace('code show', [a.codeVersion, '--out', dir, ...connect]);
    expect(toDir.code).toBe(1);
    expect(toDir.err).toBe(`error: --out: cannot write ${dir}: it is a directory\n`);
    expect((await store?.list({ transform: 'nope' }))?.versions).toEqual([]);
  });

  it('pages ListCode and stores one version for concurrent publishes of the same bytes', async () => {
    const client = coord.client(CodeServiceDefinition);
    const manifest = { transform: 'paged', sourceFile: 'p.ts', bundler: 'test' };
    const bundles = [1, 2, 3].map((i) => Buffer.from(`export default ${i};`));
    const results = await Promise.all([...bundles, ...bundles].map((bundle) => client.publishCode({ bundle, manifest })));
    expect(results.filter((r) => r.created)).toHaveLength(3);
    const page1 = await client.listCode({ transform: 'paged', pageSize: 2 });
    expect(page1.versions).toHaveLength(2);
    expect(page1.nextPageToken).not.toBe('');
    const page2 = await client.listCode({ transform: 'paged', pageSize: 2, pageToken: page1.nextPageToken });
    expect(page2.versions).toHaveLength(1);
    expect(page2.nextPageToken).toBe('');
    expect(new Set([...page1.versions, ...page2.versions].map((v) => v.codeVersion))).toEqual(new Set(bundles.map((b) => contentHashOf(b))));
  });

  it('code show fetches a bundle past grpc-js\'s default 4 MiB message limit', async () => {
    // A bundle may be 32 MiB; the CLI's channel took 4 MiB at most, so `code show` of a
    // 5 MiB bundle (a transform with a lookup table) failed: "Received message larger than max".
    const client = coord.client(CodeServiceDefinition);
    const bundle = Buffer.alloc(5 * 1024 * 1024, 'a');
    const { code } = await client.publishCode({ bundle, manifest: { transform: 'big-table', sourceFile: 'big.ts', bundler: 'test' } });
    const out = join(dir, 'big.mjs');
    const shown = await retrace('code show', [code?.codeVersion ?? '', '--out', out, ...connect]);
    expect(shown.err).toBe('');
    expect(shown.code).toBe(0);
    expect(contentHashOf(readFileSync(out))).toBe(code?.codeVersion);
  });

  it('rejects bad input with the status and field', async () => {
    const client = coord.client(CodeServiceDefinition);
    const manifest = { transform: 'x', sourceFile: 'x.ts', bundler: 'test' };
    const fails = async (p: Promise<unknown>, status: Status, text: RegExp): Promise<void> => {
      const err = await p.then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(ClientError);
      expect((err as ClientError).code).toBe(status);
      expect((err as ClientError).details).toMatch(text);
    };
    await fails(client.getCode({ codeVersion: `sha256:${'0'.repeat(64)}` }), Status.NOT_FOUND, /^code_version: code version sha256:0+ not found/);
    await fails(client.getCode({ codeVersion: 'abc' }), Status.INVALID_ARGUMENT, /^code_version:/);
    await fails(client.publishCode({ bundle: Buffer.alloc(0), manifest }), Status.INVALID_ARGUMENT, /^bundle: must not be empty/);
    await fails(client.publishCode({ bundle: Buffer.alloc(32 * 1024 * 1024 + 1, 32), manifest }), Status.INVALID_ARGUMENT, /^bundle: is 33554433 bytes; the limit is/);
    await fails(client.publishCode({ bundle: Buffer.from('x'), manifest: { ...manifest, transform: '' } }), Status.INVALID_ARGUMENT, /^manifest\.transform:/);
    await fails(client.publishCode({ bundle: Buffer.from('x') }), Status.INVALID_ARGUMENT, /^manifest: is required/);
    await fails(client.listCode({ pageSize: 5000 }), Status.INVALID_ARGUMENT, /^page_size:/);
    await fails(client.listCode({ pageToken: 'nope' }), Status.INVALID_ARGUMENT, /^page_token:/);

    writeFileSync(join(dir, 'none.ts'), 'export const x = 1;\n');
    const none = await retrace('publish', [join(dir, 'none.ts'), ...connect]);
    expect(none.code).toBe(1);
    expect(none.err).toMatch(/bundle: does not load: the bundle exports no transform/);
    writeFileSync(join(dir, 'broken.ts'), 'export default defineTransform({ name: \n');
    const broken = await retrace('publish', [join(dir, 'broken.ts'), ...connect]);
    expect(broken.code).toBe(1);
    expect(broken.err).toMatch(/cannot bundle: broken\.ts:2: /);
    expect((await retrace('publish', [join(dir, 'missing.ts'), ...connect])).code).toBe(2);
    expect((await retrace('publish', connect)).code).toBe(2);
  });

  it('caches fetched bundles on disk, verifies them and shares concurrent fetches', async () => {
    const client = coord.client(CodeServiceDefinition);
    const bundle = Buffer.from('export default "cached";');
    const { code } = await client.publishCode({ bundle, manifest: { transform: 'cached', sourceFile: 'c.ts', bundler: 'test' } });
    const version = code?.codeVersion ?? '';
    let fetches = 0;
    const cacheDir = join(dir, 'agent', 'code');
    const fetch = async (v: string): Promise<Uint8Array> => {
      fetches++;
      return (await client.getCode({ codeVersion: v })).bundle;
    };
    const cache = createCodeCache({ dir: cacheDir, fetch });
    const [x, y] = await Promise.all([cache.get(version), cache.get(version)]);
    expect(fetches).toBe(1);
    expect(x).toEqual(y);
    expect(x.path).toBe(join(cacheDir, `${version.slice(7)}.mjs`));
    expect(readFileSync(x.path).equals(bundle)).toBe(true);
    expect(await cache.list()).toEqual([version]);
    // A new process (a new cache) reuses the file without fetching.
    const again = createCodeCache({ dir: cacheDir, fetch });
    await again.get(version);
    expect(fetches).toBe(1);

    // Bytes that do not hash to the requested version are refused, and nothing is cached.
    const liar = createCodeCache({ dir: cacheDir, fetch: async () => Buffer.from('tampered') });
    const wanted = contentHashOf('the real thing');
    await expect(liar.get(wanted)).rejects.toThrow(/hashes to sha256:[0-9a-f]{64}; refused/);
    expect(await liar.list()).toEqual([version]);
    await expect(liar.get('sha256:nope')).rejects.toThrow(/code_version/);
    // Unknown versions: the fetcher's NOT_FOUND comes through, and is not remembered.
    await expect(cache.get(`sha256:${'1'.repeat(64)}`)).rejects.toThrow(/not found/);
  });
});
