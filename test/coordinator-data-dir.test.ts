import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../common/errors.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { objectEvent } from './helpers/lineage-events.js';
import { runCli } from './helpers/in-process-cli.js';

const HAS_PROC = existsSync('/proc/self');

describe('coordinator data directory', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const start = (dataDir: string): Promise<unknown> => new Coordinator({ dataDir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} }).start();

  // Node 20's recursive mkdir never returned for this path: the coordinator hung at start.
  it.runIf(HAS_PROC)('a --data it cannot create is refused at once, naming it', async () => {
    const err = await start('/proc/nope/coordinator').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(String((err as Error).message)).toBe(`data: cannot create the directory "/proc/nope/coordinator": ENOENT: no such file or directory, mkdir '/proc/nope'`);
  }, 10_000);

  it('a --data under a file is refused; missing levels are made for this user only', async () => {
    const root = mkdtempSync(join(tmpdir(), 'retrace-coord-dir-'));
    dirs.push(root);
    writeFileSync(join(root, 'file'), 'x');
    await expect(start(join(root, 'file', 'data'))).rejects.toMatchObject({ message: expect.stringMatching(/^data: cannot create the directory .*: ENOTDIR/) });
    const deep = join(root, 'a', 'b');
    const c = new Coordinator({ dataDir: deep, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} });
    await c.start();
    await c.stop();
    expect(statSync(join(root, 'a')).mode & 0o777).toBe(0o700);
    expect(statSync(deep).mode & 0o777).toBe(0o700);
  }, 20_000);

  it('the database folder is for this user only, also in a data dir others can enter', async () => {
    const root = mkdtempSync(join(tmpdir(), 'retrace-coord-dir-'));
    dirs.push(root);
    chmodSync(root, 0o755);
    const c = new Coordinator({ dataDir: root, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} });
    await c.start();
    await c.stop();
    expect(statSync(join(root, 'db')).mode & 0o777).toBe(0o700);
    // One an earlier version left open is closed at the next start, with a line saying so.
    chmodSync(join(root, 'db'), 0o755);
    const lines: string[] = [];
    const again = new Coordinator({ dataDir: root, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: (l) => lines.push(l) });
    await again.start();
    await again.stop();
    expect(statSync(join(root, 'db')).mode & 0o777).toBe(0o700);
    expect(lines.join('\n')).toContain('was readable by other users; it is now mode 0700');
  }, 20_000);

  it('--db-write-buffer-mib sizes LevelDB\'s memtable: 3 MiB of events stay in the log under the default, and are flushed to tables under 1 MiB; bad values are refused naming the option', async () => {
    const tables = async (bufferMiB: number | undefined): Promise<number> => {
      const root = mkdtempSync(join(tmpdir(), 'retrace-coord-wbuf-'));
      dirs.push(root);
      const c = new Coordinator({ dataDir: root, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {}, ...(bufferMiB === undefined ? {} : { dbWriteBufferMiB: bufferMiB }) });
      await c.start();
      try {
        const blob = 'x'.repeat(60_000);
        for (let i = 0; i < 50; i++) {
          const event = objectEvent(`wb-${i}`, `obj:wb-${i}`, `w${i}`);
          if (event.body?.$case === 'objectVersion') event.body.value.attributes = { blob: `${i}${blob}` };
          await c.lineage.submit([event]);
        }
        // LevelDB flushes a full memtable in the background.
        await new Promise((r) => setTimeout(r, 300));
        return readdirSync(join(root, 'db')).filter((f) => f.endsWith('.ldb')).length;
      } finally {
        await c.stop();
      }
    };
    expect(await tables(undefined)).toBe(0);
    expect(await tables(1)).toBeGreaterThan(0);
    for (const bad of [0, 1025, 1.5]) {
      expect(() => new Coordinator({ dataDir: null, dbWriteBufferMiB: bad, log: () => {} })).toThrow(`dbWriteBufferMiB: expected a whole number of MiB from 1 to 1024, got ${bad}`);
    }
    // On the command line the flag is named (the option's name meant nothing there), as a usage error.
    const parent = mkdtempSync(join(tmpdir(), 'retrace-coord-wbuf-cli-'));
    dirs.push(parent);
    for (const bad of ['0', '2000']) {
      const cli = await runCli(['coordinator', '--data', join(parent, 'never-made'), '--db-write-buffer-mib', bad]);
      expect(cli.code).toBe(2);
      expect(cli.err).toContain(`error: --db-write-buffer-mib: expected a whole number of MiB from 1 to 1024, got ${bad}`);
    }
    expect(existsSync(join(parent, 'never-made'))).toBe(false);
  }, 20_000);

  it('a database that lost its CURRENT is refused and left as it was; a data dir in use names the other process', async () => {
    const root = mkdtempSync(join(tmpdir(), 'retrace-coord-damaged-'));
    dirs.push(root);
    const first = new Coordinator({ dataDir: root, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} });
    await first.start();
    // A second coordinator on the same data dir, while the first holds it.
    await expect(start(root)).rejects.toThrow(/db is in use by another process \(a coordinator already runs on this data dir\)/);
    await first.stop();
    const db = join(root, 'db');
    rmSync(join(db, 'CURRENT'));
    const before = readdirSync(db).sort();
    await expect(start(root)).rejects.toThrow(/holds \d+ file\(s\) but no CURRENT: the database is damaged; refusing to open it/);
    // LevelDB opening it as new would have deleted the table files and written a CURRENT.
    expect(readdirSync(db).sort()).toEqual(before);
  }, 20_000);

  it('an auth-token file an operator wrote is held to the 16-character rule, and one others can read is reported', async () => {
    const root = mkdtempSync(join(tmpdir(), 'retrace-coord-token-'));
    dirs.push(root);
    for (const [text, problem] of [['', 'holds no token'], ['abc\n', 'holds a token shorter than 16 characters']] as const) {
      writeFileSync(join(root, 'auth-token'), text, { mode: 0o600 });
      await expect(start(root)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining(`token: ${join(root, 'auth-token')} ${problem}`) });
    }
    writeFileSync(join(root, 'auth-token'), 'a-long-enough-operator-token\n');
    chmodSync(join(root, 'auth-token'), 0o644);
    const logs: string[] = [];
    const c = new Coordinator({ dataDir: root, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: (l) => logs.push(l) });
    await c.start();
    try {
      expect(c.authToken).toBe('a-long-enough-operator-token');
      expect(logs.some((l) => l.includes('can be read by other users (mode 644); chmod 600 it'))).toBe(true);
    } finally {
      await c.stop();
    }
  }, 20_000);
});
