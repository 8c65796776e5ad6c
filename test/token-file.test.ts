import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { addToken, readTokenFile, revokeToken, tokenDigest, tokensFilePath } from '../coordinator/token-file.js';

/** `<data>/tokens.json` edited by several `retrace token` processes at once. */

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const dirs: string[] = [];

afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'retrace-token-file-'));
  dirs.push(dir);
  return dir;
}

/** A child process that adds `count` tokens named `<prefix>-<i>` and prints `name token` lines. */
function addInChild(dataDir: string, prefix: string, count: number): Promise<string> {
  const script = `
const { addToken } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'coordinator/token-file.ts')).href)});
for (let i = 0; i < ${count}; i++) {
  const name = '${prefix}-' + i;
  console.log(name + ' ' + addToken(${JSON.stringify(dataDir)}, name, 'client').token);
}`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`child ${prefix} exited ${code}: ${err}`))));
  });
}

/** A child process running one real addToken with RETRACE_TEST_CRASH_AT set; resolves with the signal that ended it. */
function addCrashingAt(dataDir: string, name: string, point: string): Promise<NodeJS.Signals | null> {
  const script = `
const { addToken } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'coordinator/token-file.ts')).href)});
addToken(${JSON.stringify(dataDir)}, ${JSON.stringify(name)}, 'client');`;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: 'ignore', env: { ...process.env, RETRACE_TEST_CRASH_AT: point } });
    child.on('exit', (_code, signal) => resolve(signal));
  });
}

describe('tokens file', () => {
  it('keeps every token that concurrent adds printed', async () => {
    const dataDir = tempDir();
    const outs = await Promise.all(['a', 'b', 'c', 'd'].map((p) => addInChild(dataDir, p, 40)));
    const printed = outs.flatMap((o) => o.trim().split('\n')).map((line) => line.split(' ') as [string, string]);
    expect(printed).toHaveLength(160);
    const stored = new Map(readTokenFile(dataDir).map((e) => [e.name, e.sha256]));
    const lost = printed.filter(([name, token]) => stored.get(name) !== tokenDigest(token)).map(([name]) => name);
    expect(lost).toEqual([]);
  }, 30_000);

  it('a token add killed mid-write (SIGKILL) loses nothing stored and blocks no later add or revoke', async () => {
    const dataDir = tempDir();
    const kept = addToken(dataDir, 'kept', 'client');
    // Killed after writing its new table beside the file, holding the lock, before the rename.
    expect(await addCrashingAt(dataDir, 'killed', 'token-file-written')).toBe('SIGKILL');
    expect(existsSync(`${tokensFilePath(dataDir)}.lock`)).toBe(true);
    expect(readTokenFile(dataDir).map((e) => e.name)).toEqual(['kept']);
    // The next edits take the dead process's lock over at once, rather than waiting for it to
    // grow stale (30 s) and refusing meanwhile: a revoke must not wait on a killed add.
    const started = Date.now();
    addToken(dataDir, 'after', 'client');
    revokeToken(dataDir, 'kept');
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(readTokenFile(dataDir).map((e) => e.name)).toEqual(['after']);
    expect(readTokenFile(dataDir).some((e) => e.sha256 === tokenDigest(kept.token))).toBe(false);
    expect(readdirSync(dataDir).filter((f) => f.endsWith('.lock') || f.endsWith('.takeover'))).toEqual([]);
  }, 30_000);

  it('takes over a lock left by a process that died while editing', () => {
    const dataDir = tempDir();
    const lock = `${tokensFilePath(dataDir)}.lock`;
    writeFileSync(lock, '');
    const old = new Date(Date.now() - 60_000);
    utimesSync(lock, old, old);
    addToken(dataDir, 'after-crash', 'client');
    expect(readTokenFile(dataDir).map((e) => e.name)).toEqual(['after-crash']);
  });
});
