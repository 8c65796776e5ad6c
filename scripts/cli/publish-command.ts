import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { build, version as esbuildVersion, type Plugin } from 'esbuild';
import { RetraceError } from '../../common/errors.js';
import { CodeServiceDefinition, PublishedCode } from '../../common/gen/retrace/v1/code.js';
import { contentHashOf } from '../../common/hash.js';
import { formatBytes } from '../../common/node-resources.js';
import { nanosToIso } from '../../common/time.js';
import { TRANSFORM_BRAND, toRequirementsMessage, type TransformRequirements } from '../../common/transform.js';
import { flag, hasFlag, noMorePositionals, UsageError, type CliCommand } from './command.js';
import { openClient } from './client.js';
import { messageJson, responseJson } from './proto-json.js';
import { renderTable } from './format.js';

/** A bundled transform: one self-contained ESM file. */
export interface TransformBundle {
  bytes: Uint8Array;
  /** "sha256:<hex>" of `bytes`: the code version it publishes as. */
  codeVersion: string;
  /** e.g. "esbuild 0.28.2". */
  bundler: string;
  /** Base name of the bundled file. */
  sourceFile: string;
}

/** What a bundle's definition declares, read by loading it once in a worker. */
export interface BundleDefinition {
  name: string;
  requirements: TransformRequirements;
}

/** The repository root: `retrace/transform` in a transform file resolves to common/transform.ts under it. */
const RETRACE_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SDK_SPECIFIERS = new Set(['retrace', 'retrace/transform']);

/**
 * Resolves `retrace/transform` (and `retrace`) to the SDK in this repository, and loads the SDK's
 * files under the `retrace:` namespace so the bundle names them `retrace:common/...` instead of
 * by a path that depends on where Retrace is installed: the same source gives the same bytes.
 */
const sdkPlugin: Plugin = {
  name: 'retrace-sdk',
  setup(b) {
    b.onResolve({ filter: /^retrace(\/transform)?$/ }, (args) =>
      SDK_SPECIFIERS.has(args.path) ? { path: 'common/transform.ts', namespace: 'retrace' } : undefined,
    );
    b.onResolve({ filter: /^\.\.?\//, namespace: 'retrace' }, (args) => {
      const abs = resolve(RETRACE_ROOT, dirname(args.importer), args.path);
      const ts = abs.replace(/\.js$/, '.ts');
      return { path: relative(RETRACE_ROOT, existsSync(ts) ? ts : abs).split('\\').join('/'), namespace: 'retrace' };
    });
    b.onLoad({ filter: /.*/, namespace: 'retrace' }, (args) => ({
      contents: readFileSync(join(RETRACE_ROOT, args.path), 'utf8'),
      loader: args.path.endsWith('.ts') ? 'ts' : 'js',
      resolveDir: join(RETRACE_ROOT, dirname(args.path)),
    }));
  },
};

/**
 * Bundles a TS/JS transform file with esbuild into one self-contained ESM module (platform node,
 * target node20, every import bundled except Node built-ins). Deterministic: paths in the output
 * are relative to the file's folder and the SDK is named `retrace:...`, so the same source gives
 * the same bytes, hence the same code version. UsageError when the file is missing; RetraceError
 * INVALID_ARGUMENT with esbuild's messages when it does not build.
 */
export async function bundleTransform(file: string): Promise<TransformBundle> {
  const path = resolve(file);
  if (!existsSync(path) || !statSync(path).isFile()) throw new UsageError(`${file}: no such file`);
  let text: string;
  try {
    const result = await build({
      entryPoints: [path],
      absWorkingDir: dirname(path),
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      write: false,
      sourcemap: false,
      metafile: false,
      logLevel: 'silent',
      plugins: [sdkPlugin],
      // Bundled CommonJS dependencies call require() for built-ins; ESM has none of its own.
      banner: { js: "import { createRequire as __retraceCreateRequire } from 'node:module';\nconst require = __retraceCreateRequire(import.meta.url);" },
    });
    const out = result.outputFiles[0];
    if (!out) throw new Error('esbuild produced no output');
    text = out.text;
  } catch (err) {
    const errors = (err as { errors?: { text: string; location?: { file: string; line: number } | null }[] }).errors;
    const detail = errors?.length
      ? errors.map((e) => `${e.location ? `${e.location.file}:${e.location.line}: ` : ''}${e.text}`).join('; ')
      : (err as Error).message;
    throw new RetraceError('INVALID_ARGUMENT', `cannot bundle: ${detail}`, { field: file, cause: err });
  }
  const bytes = new TextEncoder().encode(text);
  return { bytes, codeVersion: contentHashOf(bytes), bundler: `esbuild ${esbuildVersion}`, sourceFile: basename(path) };
}

// Loads the bundle in a worker with an empty environment and reports what its definition
// declares. CommonJS because `eval` workers are scripts; import() still loads the ESM bundle.
const INSPECT_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const brand = workerData.brand;
import(workerData.url).then((m) => {
  const isDef = (d) => d !== null && typeof d === 'object' && d.kind === brand && typeof d.name === 'string' && typeof d.run === 'function';
  const def = isDef(m.default) ? m.default : isDef(m.transform) ? m.transform : undefined;
  if (!def) throw new Error('the bundle exports no transform: make \`export default defineTransform({...})\` (or \`export const transform = ...\`)');
  parentPort.postMessage({ ok: true, name: def.name, requirements: JSON.parse(JSON.stringify(def.requirements ?? {})) });
}).catch((err) => parentPort.postMessage({ ok: false, error: err && err.message ? err.message : String(err) }));
`;

/**
 * Loads a bundle once in a worker thread (empty environment, 1 GiB heap, 15 s) and returns the
 * name and requirements its definition declares. RetraceError INVALID_ARGUMENT (`bundle`) when it
 * does not load or exports no definition.
 */
export async function readBundleDefinition(bytes: Uint8Array, options: { timeoutMs?: number } = {}): Promise<BundleDefinition> {
  const dir = mkdtempSync(join(tmpdir(), 'retrace-inspect-'));
  const file = join(dir, 'bundle.mjs');
  writeFileSync(file, bytes);
  const worker = new Worker(INSPECT_SOURCE, {
    eval: true,
    env: {},
    argv: [],
    execArgv: [],
    stdout: true,
    stderr: true,
    workerData: { url: pathToFileURL(file).href, brand: TRANSFORM_BRAND },
    resourceLimits: { maxOldGenerationSizeMb: 1024 },
  });
  // Top-level logging of the bundle is not the CLI's output.
  worker.stdout.resume();
  worker.stderr.resume();
  try {
    const reply = await new Promise<{ ok: true; name: string; requirements: TransformRequirements } | { ok: false; error: string }>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`loading took longer than ${options.timeoutMs ?? 15_000} ms`)), options.timeoutMs ?? 15_000);
      worker.once('message', (m: { ok: true; name: string; requirements: TransformRequirements } | { ok: false; error: string }) => {
        clearTimeout(timer);
        res(m);
      });
      worker.once('error', (err) => {
        clearTimeout(timer);
        rej(err);
      });
      worker.once('exit', (code) => {
        clearTimeout(timer);
        rej(new Error(`the bundle ended its thread (exit code ${code}) while loading`));
      });
    }).catch((err: unknown) => ({ ok: false as const, error: (err as Error).message }));
    if (!reply.ok) throw new RetraceError('INVALID_ARGUMENT', `does not load: ${reply.error}`, { field: 'bundle' });
    return { name: reply.name, requirements: reply.requirements };
  } finally {
    await worker.terminate();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Bundles a transform file, reads its definition (name, declared requirements) and publishes it:
 * what `retrace publish` does, and the quick start's example with it, so the requirements a
 * transform declares count in placement and in up-front checks wherever it is published from.
 */
export async function publishTransformFile(
  client: { publishCode: ReturnType<typeof openClient<typeof CodeServiceDefinition>>['client']['publishCode'] },
  file: string,
  options: { name?: string; signal?: AbortSignal } = {},
): Promise<{ response: Awaited<ReturnType<typeof client.publishCode>>; bundle: TransformBundle }> {
  const bundle = await bundleTransform(file);
  const def = await readBundleDefinition(bundle.bytes);
  const response = await client.publishCode(
    { bundle: Buffer.from(bundle.bytes), manifest: { transform: options.name ?? def.name, requirements: toRequirementsMessage(def.requirements), sourceFile: bundle.sourceFile, bundler: bundle.bundler } },
    options.signal ? { signal: options.signal } : {},
  );
  return { response, bundle };
}

const CONNECT_FLAGS = '[--coordinator HOST:PORT] [--token T | --token-file F] [--tls-ca FILE]';

function shortRequirements(r: PublishedCode['manifest']): string {
  const q = r?.requirements;
  if (!q) return '-';
  const parts = [
    q.cpu ? `cpu=${q.cpu}` : '',
    q.memoryMb ? `mem=${q.memoryMb}MiB` : '',
    q.gpu ? `gpu=${q.gpu}` : '',
    q.networkMbps ? `net=${q.networkMbps}Mbps` : '',
    q.instructionSets.length ? `isa=${q.instructionSets.join('+')}` : '',
  ].filter(Boolean);
  return parts.join(',') || '-';
}

/** `retrace publish` and `retrace code ...`. */
export const commands: CliCommand[] = [
  {
    path: ['publish'],
    summary: 'bundle a transform file and publish it; prints its code version',
    usage: `retrace publish FILE [--name NAME] [--json] ${CONNECT_FLAGS}
Bundles FILE (TypeScript or JavaScript; its default export is defineTransform({...}) from
'retrace/transform') with esbuild into one ESM file, loads it once to read the transform's name and
requirements, and stores it in the coordinator. The code version is sha256 of the bundle: the
same source publishes as the same version. --name overrides the definition's name.`,
    async run(args, io) {
      const [file] = args.positionals;
      if (!file) throw new UsageError('a transform file is required');
      noMorePositionals(args, 1);
      const nameFlag = flag(args, 'name');
      if (nameFlag === 'true') throw new UsageError('--name needs a value');
      const { client, close } = openClient(CodeServiceDefinition, args);
      try {
        const { response: res, bundle } = await publishTransformFile(client, file, { ...(nameFlag === undefined ? {} : { name: nameFlag }), signal: io.signal });
        const code = res.code;
        // A version has one manifest, the first publisher's: `--name other` on a bundle already
        // published as "double" said "double ... already published" and exited 0, so a pipeline
        // step naming "other" was then refused (`steps[0].transform: ... is transform "double"`).
        const storedName = code?.manifest?.transform;
        if (!res.created && nameFlag !== undefined && storedName !== undefined && storedName !== nameFlag) {
          throw new RetraceError('ALREADY_EXISTS', `code version ${code?.codeVersion ?? bundle.codeVersion} is already published as transform ${JSON.stringify(storedName)}, not ${JSON.stringify(nameFlag)}; a version keeps its first name (use ${JSON.stringify(storedName)}, or change the source to make a new version)`, { field: '--name' });
        }
        if (hasFlag(args, 'json')) io.stdout.write(`${JSON.stringify(responseJson(CodeServiceDefinition, 'publishCode', res))}\n`);
        else {
          io.stdout.write(
            `${code?.codeVersion ?? bundle.codeVersion}  ${code?.manifest?.transform ?? ''}  ${formatBytes(Number(code?.sizeBytes ?? 0))}  ${res.created ? 'published' : 'already published'}\n`,
          );
        }
        return 0;
      } finally {
        close();
      }
    },
  },
  {
    path: ['code', 'list'],
    summary: 'published code versions, newest first',
    usage: `retrace code list [--transform NAME] [--limit N] [--json] ${CONNECT_FLAGS}`,
    integers: { limit: 'uint32' },
    async run(args, io) {
      noMorePositionals(args, 0);
      const limitText = flag(args, 'limit', '100') as string;
      const limit = Number(limitText);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new UsageError(`--limit: expected 1..1000, got ${JSON.stringify(limitText)}`);
      const { client, close } = openClient(CodeServiceDefinition, args);
      try {
        const res = await client.listCode({ transform: flag(args, 'transform', '') as string, pageSize: limit, pageToken: '' }, { signal: io.signal });
        if (hasFlag(args, 'json')) {
          io.stdout.write(`${JSON.stringify(responseJson(CodeServiceDefinition, 'listCode', res))}\n`);
          return 0;
        }
        io.stdout.write(
          renderTable(
            ['VERSION', 'TRANSFORM', 'SIZE', 'PUBLISHED', 'SOURCE', 'REQUIREMENTS'],
            res.versions.map((v) => [v.codeVersion, v.manifest?.transform, formatBytes(Number(v.sizeBytes)), nanosToIso(v.publishedAtNs), v.manifest?.sourceFile, shortRequirements(v.manifest)]),
          ),
        );
        return 0;
      } finally {
        close();
      }
    },
  },
  {
    path: ['code', 'show'],
    summary: 'one code version: manifest as JSON (--out FILE writes the bundle)',
    usage: `retrace code show VERSION [--out FILE] [--json] ${CONNECT_FLAGS}\nPrints the version's manifest as JSON (with or without --json).`,
    async run(args, io) {
      const [codeVersion] = args.positionals;
      if (!codeVersion) throw new UsageError('a code version (sha256:...) is required');
      noMorePositionals(args, 1);
      const { client, close } = openClient(CodeServiceDefinition, args);
      try {
        const res = await client.getCode({ codeVersion }, { signal: io.signal });
        const out = flag(args, 'out');
        if (out !== undefined && out !== 'true') {
          try {
            writeFileSync(out, res.bundle);
          } catch (err) {
            // Was the bare "EISDIR: illegal operation on a directory, open '/tmp/x'".
            throw new RetraceError('INVALID_ARGUMENT', `cannot write ${out}: ${(err as NodeJS.ErrnoException).code === 'EISDIR' ? 'it is a directory' : (err as Error).message}`, { field: '--out' });
          }
        }
        io.stdout.write(`${JSON.stringify(res.code ? messageJson('retrace.v1.PublishedCode', PublishedCode, res.code) : {}, null, 2)}\n`);
        return 0;
      } finally {
        close();
      }
    },
  },
];
