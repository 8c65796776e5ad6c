import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadOrCreateIdentity, lockDataDir } from '../agent/identity-store.js';
import { FailedPreconditionError } from '../common/errors.js';
import { makeDirectory } from '../agent/make-directory.js';
import { spawnAgent, waitFor, type AgentProcess } from './helpers/mesh-server.js';
import { runCli } from './helpers/in-process-cli.js';

// /proc/nope is the case that made Node's recursive mkdir spin forever (the agent hung at start).
const HAS_PROC = existsSync('/proc/self');

describe('agent data directory', () => {
  const dirs: string[] = [];
  const agents: AgentProcess[] = [];

  afterEach(async () => {
    for (const a of agents.splice(0)) {
      if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGKILL');
      await a.exited;
    }
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  function tempDir(): string {
    const d = mkdtempSync(join(tmpdir(), 'retrace-datadir-'));
    dirs.push(d);
    return d;
  }

  it('makeDirectory creates missing levels with the mode, and accepts one that exists', async () => {
    const root = tempDir();
    const deep = join(root, 'a', 'b', 'c');
    await makeDirectory(deep, 0o700);
    expect(statSync(deep).isDirectory()).toBe(true);
    expect(statSync(join(root, 'a')).mode & 0o777).toBe(0o700);
    await makeDirectory(deep);
    await makeDirectory(root);
  });

  it('the agent data dir and the parents it makes are for this user only (node identity, code cache)', async () => {
    const root = tempDir();
    const dataDir = join(root, '.retrace', 'agent');
    await loadOrCreateIdentity(dataDir);
    expect(statSync(join(root, '.retrace')).mode & 0o777).toBe(0o700);
    expect(statSync(dataDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dataDir, 'node-identity.json')).mode & 0o777).toBe(0o600);
  });

  it('makeDirectory rejects with the system error when a level cannot be made', async () => {
    const root = tempDir();
    writeFileSync(join(root, 'file'), 'x');
    await expect(makeDirectory(join(root, 'file', 'sub'))).rejects.toMatchObject({ code: 'ENOTDIR' });
    await expect(makeDirectory(join(root, 'file'))).rejects.toMatchObject({ code: 'ENOTDIR' });
    if (HAS_PROC) await expect(makeDirectory('/proc/nope/deeper')).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it.runIf(HAS_PROC)('retrace agent --data /proc/nope exits 1 at once with an error naming --data (it hung)', async () => {
    const agent = spawnAgent(['--coordinator', '127.0.0.1:1', '--token', 'unused', '--data', '/proc/nope/agent']);
    agents.push(agent);
    expect(await agent.exited).toBe(1);
    expect(agent.stderr).toContain(`error: --data: cannot create the directory "/proc/nope/agent": ENOENT: no such file or directory, mkdir '/proc/nope'`);
  }, 15_000);

  it('retrace agent --data under a file exits 1 with an error naming --data', async () => {
    const root = tempDir();
    writeFileSync(join(root, 'file'), 'x');
    const agent = spawnAgent(['--coordinator', '127.0.0.1:1', '--token', 'unused', '--data', join(root, 'file', 'agent')]);
    agents.push(agent);
    expect(await agent.exited).toBe(1);
    expect(agent.stderr.some((l) => l.startsWith(`error: --data: cannot create the directory ${JSON.stringify(join(root, 'file', 'agent'))}: ENOTDIR`))).toBe(true);
  }, 15_000);

  it('retrace agent checks its intervals before it starts: reports at least 50 ms, link probes at least 100 ms (what the runtime takes), and 0 turns the link probe off', async () => {
    const base = ['agent', '--coordinator', '127.0.0.1:1', '--token', 'unused', '--data', tempDir()];
    for (const [flagArgs, message] of [
      [['--report-interval', '10ms'], '--report-interval: at least 50ms, got 10ms'],
      [['--report-interval', '0s'], '--report-interval: at least 50ms, got 0s'],
      [['--report-interval', '0'], '--report-interval: expected a duration like 30s'],
      [['--link-probe-interval', '20ms'], '--link-probe-interval: at least 100ms, got 20ms'],
      [['--link-probe-interval', '60ms'], '--link-probe-interval: at least 100ms, got 60ms'],
    ] as const) {
      const r = await runCli([...base, ...flagArgs]);
      expect(r.code, r.err).toBe(2);
      expect(r.err).toContain(message);
    }
  });

  it('of agents locking one data dir at the same moment, exactly one gets it', async () => {
    // The lock was created empty and then written: one read empty took it for a dead holder's.
    for (let round = 0; round < 20; round++) {
      const dir = tempDir();
      const tries = await Promise.allSettled(Array.from({ length: 8 }, () => lockDataDir(dir, 'data')));
      expect(tries.filter((t) => t.status === 'fulfilled')).toHaveLength(1);
      for (const t of tries) if (t.status === 'rejected') expect(String(t.reason)).toMatch(/is in use by another agent|is being taken by another agent/);
      expect(readFileSync(join(dir, 'agent.lock'), 'utf8')).toBe(`${process.pid}\n`);
    }
  });

  it('of agents taking over a dead process\'s lock at the same moment, exactly one gets it', async () => {
    // Each read the dead pid; one removed the lock and linked its own, and the next removed that
    // fresh lock and linked its own: both ran. A process that has exited: its pid is not alive.
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    for (let round = 0; round < 60; round++) {
      const dir = tempDir();
      writeFileSync(join(dir, 'agent.lock'), `${dead}\n`);
      // Started a few event-loop turns apart, so that one's removal falls between another's steps
      // (started together, they move in lockstep and all remove before any links).
      const after = async (turns: number): Promise<void> => {
        for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
      };
      const tries = await Promise.allSettled(Array.from({ length: 4 }, (_, i) => after((i * round) % 7).then(() => lockDataDir(dir, 'data'))));
      expect(tries.filter((t) => t.status === 'fulfilled')).toHaveLength(1);
      for (const t of tries) if (t.status === 'rejected') expect(t.reason).toBeInstanceOf(FailedPreconditionError);
      expect(readFileSync(join(dir, 'agent.lock'), 'utf8')).toBe(`${process.pid}\n`);
      // Nothing of the takeover is left behind.
      expect(readdirSync(dir)).toEqual(['agent.lock']);
    }
  });

  it('a takeover left half done by a process that died holds no one off', async () => {
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    const dir = tempDir();
    writeFileSync(join(dir, 'agent.lock'), `${dead}\n`);
    writeFileSync(join(dir, `agent.lock.takeover-${dead}`), `${dead}\n`);
    const release = await lockDataDir(dir, 'data');
    expect(readFileSync(join(dir, 'agent.lock'), 'utf8')).toBe(`${process.pid}\n`);
    expect(readdirSync(dir)).toEqual(['agent.lock']);
    await release();
  });

  it('one agent per data dir: a second is refused while the first runs, a killed one\'s lock is taken over', async () => {
    const dir = tempDir();
    // No coordinator: an agent keeps retrying, which is all this needs.
    const args = ['--coordinator', '127.0.0.1:1', '--token', 'unused', '--data', dir];
    const first = spawnAgent(args);
    agents.push(first);
    const lock = join(dir, 'agent.lock');
    // The lock's pid, or '' while there is none (a takeover removes the stale one first).
    const holder = (): string => {
      try {
        return readFileSync(lock, 'utf8').trim();
      } catch {
        return '';
      }
    };
    await waitFor(() => holder() === String(first.child.pid), 10_000, 'the first agent\'s lock');
    // Two agents on one dir registered as the same node and took it from each other over and over.
    const second = spawnAgent(args);
    agents.push(second);
    expect(await second.exited).toBe(1);
    expect(second.stderr.join('\n')).toContain(`error: --data: ${dir} is in use by another agent (pid ${first.child.pid})`);
    first.child.kill('SIGKILL');
    await first.exited;
    const third = spawnAgent(args);
    agents.push(third);
    await waitFor(() => holder() === String(third.child.pid), 10_000, 'the lock taken over');
    third.child.kill('SIGTERM');
    await third.exited;
    expect(existsSync(lock)).toBe(false);
  });
});
