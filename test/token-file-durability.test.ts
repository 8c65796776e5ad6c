import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';

/**
 * `<data>/tokens.json` is written durably: data fsynced before the rename, the directory fsynced
 * after it. A power loss cannot be staged in a test; what is checked is the order of the real
 * file-system calls that makes one harmless (recorded by wrapping node:fs, the calls still run).
 */

const calls: string[] = [];
const fdPaths = new Map<number, string>();

vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const name = (p: unknown): string => String(p).split('/').pop() ?? '';
  return {
    ...fs,
    openSync: (path: string, flags: string, mode?: number) => {
      const fd = fs.openSync(path, flags, mode);
      fdPaths.set(fd, String(path));
      calls.push(`open ${name(path)}`);
      return fd;
    },
    fsyncSync: (fd: number) => {
      calls.push(`fsync ${name(fdPaths.get(fd))}`);
      fs.fsyncSync(fd);
    },
    renameSync: (from: string, to: string) => {
      calls.push(`rename ${name(from)} -> ${name(to)}`);
      fs.renameSync(from, to);
    },
  };
});

const { addToken, readTokenFile, tokensFilePath } = await import('../coordinator/token-file.js');

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('tokens file durability', () => {
  it('fsyncs the new table before renaming it over tokens.json, then fsyncs the directory; mode 0600', () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'retrace-token-durable-'));
    dirs.push(dataDir);
    calls.length = 0;
    addToken(dataDir, 'ci', 'client');
    const tmp = calls.find((c) => c.startsWith('open tokens.json.') && c.endsWith('.tmp'))?.slice('open '.length);
    expect(tmp).toBeDefined();
    const dirName = dataDir.split('/').pop();
    const fileCalls = calls.filter((c) => !c.includes('.lock'));
    expect(fileCalls).toEqual([`open ${tmp}`, `fsync ${tmp}`, `rename ${tmp} -> tokens.json`, `open ${dirName}`, `fsync ${dirName}`]);
    expect(statSync(tokensFilePath(dataDir)).mode & 0o777).toBe(0o600);
    expect(readTokenFile(dataDir).map((e) => e.name)).toEqual(['ci']);
  });
});
