import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LineageServiceDefinition, type ContentCheck } from '../common/gen/retrace/v1/lineage.js';
import { Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { contentHashOf } from '../common/hash.js';
import { createCodeStore } from '../coordinator/code/code-store.js';
import { createPipelineStore } from '../coordinator/pipeline/pipeline-store.js';
import { verifyContent } from '../coordinator/store/content-verifier.js';
import { openDatabase, type Database } from '../coordinator/store/database.js';
import { createPayloadStore } from '../coordinator/store/payload-store.js';
import { runCliProcess } from './helpers/coordinator-process.js';
import { filledDataDir, startTestCoordinator } from './helpers/test-coordinator.js';

/**
 * Stored content the ledger does not cover: payload blocks, code bundles, code version records
 * and pipeline versions in a real LevelDB data dir (a coordinator filled its ledger; the stores
 * wrote the rest). Each case alters a copy's bytes in LevelDB; `retrace verify` (offline and
 * online) must name the first bad key of each kind and exit non-zero.
 */

const PAYLOADS = ['alpha,1\n', 'beta,2\n', 'gamma,3\n'].map((s) => Buffer.from(s));
const BUNDLE = Buffer.from('export default (input) => input.toUpperCase();\n');
const clock = (): bigint => 1_730_000_000_000_000_000n;

let baseDir: string;
let codeVersion: string;
const copies: string[] = [];

beforeAll(async () => {
  baseDir = await filledDataDir(async (tc) => {
    const client = tc.client(LineageServiceDefinition);
    const events = PAYLOADS.map((p, i) =>
      LineageEvent.fromPartial({
        eventId: `obj:${i}`,
        eventTimeNs: String(1_730_000_000_000_000_000n + BigInt(i)),
        producer: 'test://content-verify',
        body: { $case: 'objectVersion', value: { objectId: `in/${i}`, contentHash: contentHashOf(p), size: String(p.length), mediaType: 'text/csv' } },
      }),
    );
    await client.submitEvents(
      (async function* () {
        yield { events };
      })(),
    );
  });
  const db = await openDatabase(join(baseDir, 'db'));
  try {
    await createPayloadStore(db).putMany(PAYLOADS);
    const code = createCodeStore(db, clock);
    codeVersion = (await code.publish(BUNDLE, { transform: 'upper', requirements: undefined, sourceFile: 'upper.ts', bundler: 'test' })).code.codeVersion;
    await createPipelineStore(db, clock, code).apply(
      Pipeline.fromPartial({ name: 'p', sources: [{ name: 'in' }], steps: [{ name: 'up', transform: 'upper', codeVersion, inputs: ['in'] }] }),
    );
  } finally {
    await db.close();
  }
}, 30_000);

afterAll(() => {
  if (baseDir) rmSync(baseDir, { recursive: true, force: true });
});

afterEach(() => {
  for (const d of copies.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A copy of the filled data dir, with `alter` run on its LevelDB. */
async function alteredCopy(alter: (db: Database) => Promise<void> = async () => {}): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'retrace-content-'));
  copies.push(dir);
  cpSync(baseDir, dir, { recursive: true });
  const db = await openDatabase(join(dir, 'db'));
  try {
    await alter(db);
  } finally {
    await db.close();
  }
  return dir;
}

const hexOf = (hash: string): string => hash.slice('sha256:'.length);

/** Flips one byte of a stored value, in place of the stored one. */
async function flipStored(db: Database, path: string[], key: string): Promise<void> {
  let sub = db.sublevel<string, Uint8Array>(path[0] as string, { valueEncoding: 'view' });
  for (const name of path.slice(1)) sub = sub.sublevel<string, Uint8Array>(name, { valueEncoding: 'view' });
  const value = await sub.get(key);
  expect(value, `${path.join('/')}/${key}`).toBeDefined();
  const altered = Buffer.from(value as Uint8Array);
  altered[0] = (altered[0] as number) ^ 0x20;
  await sub.put(key, altered);
}

const runCli = (args: string[]) => runCliProcess(args);

const byKind = (checks: readonly ContentCheck[]): Record<string, ContentCheck> => Object.fromEntries(checks.map((c) => [c.kind, c]));

describe('verify of stored content', () => {
  it('passes on an untouched data dir and counts every kind', async () => {
    const dir = await alteredCopy();
    const r = await runCli(['verify', '--data', dir]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain(`ok: ${PAYLOADS.length} entries`);
    expect(r.stdout).toContain(`ok: ${PAYLOADS.length} payloads`);
    expect(r.stdout).toContain('ok: 1 code bundles');
    expect(r.stdout).toContain('ok: 1 code versions');
    expect(r.stdout).toContain('ok: 1 pipeline versions');
  }, 15_000);

  it('names an altered payload block and an altered code bundle, each by key, and exits 1; --ledger-only skips them', async () => {
    const badPayload = hexOf(contentHashOf(PAYLOADS[1] as Buffer));
    const dir = await alteredCopy(async (db) => {
      await flipStored(db, ['payloads', 'bytes'], badPayload);
      await flipStored(db, ['code', 'bundles'], hexOf(codeVersion));
    });
    const r = await runCli(['verify', '--data', dir]);
    expect(r.code, r.stdout + r.stderr).toBe(1);
    // The ledger itself is intact.
    expect(r.stdout).toContain(`ok: ${PAYLOADS.length} entries`);
    expect(r.stdout).toContain(`TAMPERED: payloads: first bad key sha256:${badPayload}: payload sha256:${badPayload} holds`);
    expect(r.stdout).toContain(`TAMPERED: code bundles: first bad key ${codeVersion}: code bundle ${codeVersion} holds`);

    const json = await runCli(['verify', '--data', dir, '--json']);
    expect(json.code).toBe(1);
    const report = JSON.parse(json.stdout) as { ok: boolean; problem?: string; content: ContentCheck[] };
    expect(report.ok).toBe(false);
    expect(report.problem).toBeUndefined();
    const kinds = byKind(report.content);
    expect(kinds.payloads?.firstBadKey).toBe(`sha256:${badPayload}`);
    expect(kinds.code_bundles?.firstBadKey).toBe(codeVersion);
    expect(kinds.code_versions?.problem).toBe('');

    const ledgerOnly = await runCli(['verify', '--data', dir, '--ledger-only']);
    expect(ledgerOnly.code, ledgerOnly.stdout).toBe(0);
    expect(ledgerOnly.stdout).not.toContain('payloads');
  }, 20_000);

  it('names a pipeline version whose step names an unstored code version, and a code version record altered', async () => {
    const other = contentHashOf('not published');
    const dir = await alteredCopy(async (db) => {
      const versions = db.sublevel('pipelines').sublevel<string, string>('versions', { valueEncoding: 'utf8' });
      const key = 'p\u00000000000001';
      const text = await versions.get(key);
      expect(text).toBeDefined();
      await versions.put(key, (text as string).replace(codeVersion, other));
      const codeVersions = db.sublevel('code').sublevel<string, string>('versions', { valueEncoding: 'utf8' });
      await codeVersions.put(hexOf(codeVersion), '{"codeVersion": "sha256:');
    });
    const db = await openDatabase(join(dir, 'db'), { createIfMissing: false });
    let checks: ContentCheck[];
    try {
      checks = await verifyContent(db);
    } finally {
      await db.close();
    }
    const kinds = byKind(checks);
    expect(kinds.payloads?.problem).toBe('');
    expect(kinds.payloads?.checked).toBe(String(PAYLOADS.length));
    expect(kinds.code_versions).toMatchObject({ firstBadKey: codeVersion, problem: `code version ${codeVersion}: its record is not JSON: it was altered` });
    expect(kinds.pipeline_versions).toMatchObject({ firstBadKey: 'p@1', problem: `pipeline "p" version 1: steps[0] ("up") names code version ${other}, which is not stored` });
  }, 15_000);

  it('VerifyLedger (online) reports the content per kind; ledger_only skips it', async () => {
    const badPayload = hexOf(contentHashOf(PAYLOADS[0] as Buffer));
    const dir = await alteredCopy(async (db) => {
      await db.sublevel('payloads').sublevel<string, Uint8Array>('bytes', { valueEncoding: 'view' }).put(badPayload, Buffer.from('forged'));
    });
    const tc = await startTestCoordinator({ dataDir: dir, quiet: true });
    try {
      const client = tc.client(LineageServiceDefinition);
      const r = await client.verifyLedger({});
      expect(r.ok).toBe(false);
      expect(r.problem).toBe('');
      expect(r.entriesChecked).toBe(String(PAYLOADS.length));
      // Payloads are scanned in key order, up to the first bad one.
      const position = PAYLOADS.map((p) => hexOf(contentHashOf(p))).sort().indexOf(badPayload) + 1;
      expect(byKind(r.content).payloads).toMatchObject({ checked: String(position), firstBadKey: `sha256:${badPayload}` });
      expect(byKind(r.content).code_bundles).toMatchObject({ checked: '1', problem: '' });
      const online = await runCli(['verify', '--coordinator', tc.grpcAddress, '--token', tc.token]);
      expect(online.code, online.stdout + online.stderr).toBe(1);
      expect(online.stdout).toContain(`TAMPERED: payloads: first bad key sha256:${badPayload}`);
      const ledgerOnly = await client.verifyLedger({ ledgerOnly: true });
      expect(ledgerOnly.ok).toBe(true);
      expect(ledgerOnly.content).toEqual([]);
    } finally {
      await tc.stop();
    }
  }, 20_000);
});
