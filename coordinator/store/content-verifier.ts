import { InvalidArgumentError } from '../../common/errors.js';
import type { ContentCheck } from '../../common/gen/retrace/v1/lineage.js';
import { PipelineVersion } from '../../common/gen/retrace/v1/pipeline.js';
import { sha256Hex } from '../../common/hash.js';
import { createCodeStore } from '../code/code-store.js';
import { createPipelineStore, validatePipeline } from '../pipeline/pipeline-store.js';
import { createPayloadStore } from './payload-store.js';
import type { Database } from './database.js';

/** The kinds of stored content verify checks, in the order it checks and reports them. */
export const CONTENT_KINDS = ['payloads', 'code_bundles', 'code_versions', 'pipeline_versions'] as const;
export type ContentKind = (typeof CONTENT_KINDS)[number];

export interface ContentVerifyOptions {
  /** Called now and then during a kind's scan with what it checked so far. */
  onProgress?: (kind: ContentKind, checked: number, bytes: number) => void;
  /** Stops the scan (rejects with the signal's reason). */
  signal?: AbortSignal;
}

/** Values (or bytes) between two onProgress calls. */
const PROGRESS_EVERY = 1000;
const PROGRESS_BYTES = 64 * 1024 * 1024;

/**
 * Checks the content the ledger does not cover, one kind after another, each scan streaming (one
 * value in memory at a time): every payload block and code bundle hashes (SHA-256 of the stored
 * bytes) to its key; every code version record parses, names its own key and has its bundle, of
 * the recorded size; every pipeline version parses, is stored under its own name and number,
 * passes the definition checks `apply` made, and names code versions that are stored; every
 * pipeline's latest version number points at a stored version. A kind's scan stops at its first
 * bad value, which its ContentCheck names. Reads only: works on a live database or on a data
 * dir with the coordinator stopped, with or without the code and pipeline features.
 */
export async function verifyContent(db: Database, options: ContentVerifyOptions = {}): Promise<ContentCheck[]> {
  const { onProgress, signal } = options;
  // The stores only make their sublevels here; the clock stamps writes, and none are made.
  const clock = (): bigint => 0n;
  const payloads = createPayloadStore(db);
  const code = createCodeStore(db, clock);
  const pipelines = createPipelineStore(db, clock);
  const checks: ContentCheck[] = [];

  const scan = async <T>(kind: ContentKind, rows: AsyncIterable<T>, check: (row: T) => Promise<{ key: string; bytes: number; problem?: string }>): Promise<void> => {
    const c: ContentCheck = { kind, checked: '0', bytes: '0', firstBadKey: '', problem: '' };
    checks.push(c);
    let checked = 0;
    let bytes = 0;
    let reportedBytes = 0;
    for await (const row of rows) {
      signal?.throwIfAborted();
      const r = await check(row);
      checked++;
      bytes += r.bytes;
      if (r.problem !== undefined) {
        c.firstBadKey = r.key;
        c.problem = r.problem;
        break;
      }
      if (checked % PROGRESS_EVERY === 0 || bytes - reportedBytes >= PROGRESS_BYTES) {
        reportedBytes = bytes;
        onProgress?.(kind, checked, bytes);
      }
    }
    c.checked = String(checked);
    c.bytes = String(bytes);
    onProgress?.(kind, checked, bytes);
  };

  await scan('payloads', payloads.stored(), async ([hex, value]) => hashedToKey(hex, value, 'payload', 'the payload block'));

  // Bundle sizes by hex, for the version records' check (code versions are few).
  const bundleSizes = new Map<string, number>();
  await scan('code_bundles', code.storedBundles(), async ([hex, value]) => {
    bundleSizes.set(hex, value.byteLength);
    return hashedToKey(hex, value, 'code bundle', 'the bundle');
  });

  await scan('code_versions', code.storedVersions(), async ([hex, text]) => {
    const key = `sha256:${hex}`;
    const bad = (problem: string): { key: string; bytes: number; problem: string } => ({ key, bytes: text.length, problem: `code version ${key}: ${problem}` });
    let record: { codeVersion?: unknown; sizeBytes?: unknown };
    try {
      record = JSON.parse(text) as { codeVersion?: unknown; sizeBytes?: unknown };
    } catch {
      return bad('its record is not JSON: it was altered');
    }
    if (record.codeVersion !== key) return bad(`its record names code version ${JSON.stringify(record.codeVersion)}: it was altered`);
    const size = bundleSizes.get(hex);
    if (size === undefined) return bad('its bundle is missing');
    if (String(record.sizeBytes) !== String(size)) return bad(`its record says ${String(record.sizeBytes)} bytes, the stored bundle has ${size}`);
    return { key, bytes: text.length };
  });

  await scan('pipeline_versions', pipelines.storedVersions(), async ([name, version, text]) => {
    const key = `${name}@${version}`;
    const bad = (problem: string): { key: string; bytes: number; problem: string } => ({ key, bytes: text.length, problem: `pipeline ${JSON.stringify(name)} version ${version}: ${problem}` });
    let pv: PipelineVersion;
    try {
      pv = PipelineVersion.fromJSON(JSON.parse(text));
    } catch {
      return bad('its record is not JSON: it was altered');
    }
    if (!pv.pipeline || pv.pipeline.name !== name || pv.version !== version) return bad(`its record names pipeline ${JSON.stringify(pv.pipeline?.name)} version ${pv.version}: it was altered`);
    try {
      validatePipeline(pv.pipeline);
    } catch (err) {
      if (err instanceof InvalidArgumentError) return bad(`the stored definition is invalid: ${err.message}`);
      throw err;
    }
    for (const [i, step] of pv.pipeline.steps.entries()) {
      if (!bundleSizes.has(step.codeVersion.slice('sha256:'.length))) return bad(`steps[${i}] (${JSON.stringify(step.name)}) names code version ${step.codeVersion}, which is not stored`);
    }
    return { key, bytes: text.length };
  });
  const pipelineCheck = checks[checks.length - 1] as ContentCheck;
  if (pipelineCheck.problem === '') {
    for await (const [name, latest] of pipelines.storedLatest()) {
      const v = Number(latest);
      const found = Number.isInteger(v) && v > 0 ? await pipelines.get(name, v).then(() => true, () => false) : false;
      if (!found) {
        pipelineCheck.firstBadKey = `${name}@${latest}`;
        pipelineCheck.problem = `pipeline ${JSON.stringify(name)}: its latest version is ${JSON.stringify(latest)}, which is not stored`;
        break;
      }
    }
  }
  return checks;
}

/** A content-addressed value's check: its bytes hash to `hex`, the key it is stored under. */
function hashedToKey(hex: string, value: Uint8Array, what: string, altered: string): { key: string; bytes: number; problem?: string } {
  const actual = sha256Hex(value);
  const key = `sha256:${hex}`;
  return actual === hex ? { key, bytes: value.byteLength } : { key, bytes: value.byteLength, problem: `${what} ${key} holds ${value.byteLength} bytes that hash to sha256:${actual}: ${altered} was altered` };
}

/** The first failed check, or undefined when every kind checked out. */
export function firstContentProblem(checks: readonly ContentCheck[]): ContentCheck | undefined {
  return checks.find((c) => c.problem !== '');
}
