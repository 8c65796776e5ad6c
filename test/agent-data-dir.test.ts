import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadOrCreateIdentity, lockDataDir } from '../agent/identity-store.js';
import { FailedPreconditionError } from '../common/errors.js';
import { makeDirectory } from '../agent/make-directory.js';
import { REPO_ROOT, spawnAgent, waitFor, type AgentProcess } from './helpers/mesh-server.js';
import { runCli } from './helpers/in-process-cli.js';

// /proc/nope is the case that made Node's recursive mkdir spin forever (the agent hung at start).
const HAS_PROC = existsSync('/proc/self');

/** The pid a lock or claim file names (its first word), or '' when there is none. */
function pidIn(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split(' ')[0] ?? '';
  } catch {
    return '';
  }
}

/** The name of a claim on the lock while it holds `text` (how identity-store names it). */
function claimOn(text: string): string {
  return `agent.lock.takeover-${text.trim().replace(' ', '-')}`;
}

/**
 * A process that locks each of `dirs` with lockDataDir, the first at `atMs` (epoch ms) and each
 * next `stepMs` later, writes `<i> ok` or `<i> refused` for each, and then keeps what it got until
 * killed (or exits, given a fifth argument `exit`).
 */
const LOCKER = `
const { lockDataDir } = await import(process.argv[1]);
const dirs = JSON.parse(process.argv[2]);
const at = Number(process.argv[3]);
const step = Number(process.argv[4]);
for (let i = 0; i < dirs.length; i++) {
  const t = at + i * step;
  await new Promise((r) => setTimeout(r, Math.max(0, t - 5 - Date.now())));
  while (Date.now() < t);
  const line = await lockDataDir(dirs[i], 'data').then(() => 'ok', (err) => 'refused ' + err.message);
  process.stdout.write(i + ' ' + line + '\\n');
}
if (process.argv[5] !== 'exit') setInterval(() => {}, 1 << 30);
`;

/**
 * Whether this host lets a user make a user and pid namespace (`unshare -Urpf`), in which a
 * test may choose the next pid (/proc/sys/kernel/ns_last_pid) and so have a pid really reused.
 */
const CAN_REUSE_PIDS = HAS_PROC && spawnSync('unshare', ['-Urpf', '--mount-proc', 'true']).status === 0;

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
      expect(pidIn(join(dir, 'agent.lock'))).toBe(String(process.pid));
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
      expect(pidIn(join(dir, 'agent.lock'))).toBe(String(process.pid));
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
    expect(pidIn(join(dir, 'agent.lock'))).toBe(String(process.pid));
    expect(readdirSync(dir)).toEqual(['agent.lock']);
    await release();
  });

  const children: ChildProcess[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGKILL');
        await new Promise((r) => c.once('exit', r));
      }
    }
  });

  /** Starts LOCKER on `dirs`; resolves its pid and a function resolving its first `n` lines. */
  function locker(dirs: string[], atMs = 0, stepMs = 0): { child: ChildProcess; lines: (n: number) => Promise<string[]> } {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', LOCKER, join(REPO_ROOT, 'agent', 'identity-store.ts'), JSON.stringify(dirs), String(atMs), String(stepMs)], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const lines = async (n: number): Promise<string[]> => {
      await waitFor(() => out.split('\n').length > n, 15_000, `${n} lines of a locker`);
      return out.split('\n').slice(0, n);
    };
    return { child, lines };
  }

  /** A process that does nothing until killed: the one a dead agent's pid went to. */
  function unrelated(): number {
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)'], { stdio: 'ignore' });
    children.push(child);
    return child.pid as number;
  }

  /** The lock text of an agent (a real process) that locked a dir and was killed. */
  async function deadAgentsLock(): Promise<{ pid: number; text: string }> {
    const dir = tempDir();
    const { child, lines } = locker([dir]);
    expect(await lines(1)).toEqual(['0 ok']);
    const text = readFileSync(join(dir, 'agent.lock'), 'utf8');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    return { pid: child.pid as number, text };
  }

  it.runIf(HAS_PROC)("a dead agent's lock is taken over even when its pid now names another, unrelated process", async () => {
    // The pid alone said "alive": a restarted agent was refused until that process ended.
    const dead = await deadAgentsLock();
    const dir = tempDir();
    const reused = dead.text.replace(String(dead.pid), String(unrelated()));
    writeFileSync(join(dir, 'agent.lock'), reused);
    const release = await lockDataDir(dir, 'data');
    expect(pidIn(join(dir, 'agent.lock'))).toBe(String(process.pid));
    expect(readdirSync(dir)).toEqual(['agent.lock']);
    await release();
  }, 20_000);

  it('a lock naming only a pid (an older agent, a host without /proc) is held while that pid runs', async () => {
    const dir = tempDir();
    const pid = unrelated();
    writeFileSync(join(dir, 'agent.lock'), `${pid}\n`);
    await expect(lockDataDir(dir, 'data')).rejects.toThrow(`is in use by another agent (pid ${pid})`);
    expect(readdirSync(dir)).toEqual(['agent.lock']);
  });

  it.runIf(CAN_REUSE_PIDS)('a restarted agent takes over from a killed one whose pid the kernel gave to another process', async () => {
    // In a pid namespace of its own the next pid can be chosen: the killed agent's goes to `sleep`.
    const dir = tempDir();
    const script = `
      set -e
      node --import tsx --input-type=module -e "$LOCKER" "$STORE" '["${dir}"]' 0 0 > "$OUT" & agent=$!
      until grep -q ok "$OUT"; do sleep 0.02; done
      kill -9 $agent; wait $agent || true
      echo $((agent - 1)) > /proc/sys/kernel/ns_last_pid
      sleep 30 & other=$!
      echo "killed $agent, now $other"
      node --import tsx --input-type=module -e "$LOCKER" "$STORE" '["${dir}"]' 0 0 exit
      kill $other`;
    const r = spawnSync('unshare', ['-Urpf', '--mount-proc', 'bash', '-c', script], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      env: { ...process.env, LOCKER, STORE: join(REPO_ROOT, 'agent', 'identity-store.ts'), OUT: join(tempDir(), 'out') },
      timeout: 15_000,
    });
    expect(r.status, r.stderr).toBe(0);
    const [reuse, outcome] = r.stdout.trim().split('\n');
    const m = /^killed (\d+), now (\d+)$/.exec(reuse ?? '');
    expect(m?.[1], reuse).toBe(m?.[2]);
    expect(outcome).toBe('0 ok');
    expect(readdirSync(dir)).toEqual(['agent.lock']);
  }, 20_000);

  it.runIf(HAS_PROC)('a dead agent its parent has not reaped (a zombie) holds no lock', async () => {
    // bash starts a child and becomes `sleep`, which never reaps it: once the child ends it stays a zombie.
    const parent = spawn('bash', ['-c', 'sleep 0.01 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'ignore'] });
    children.push(parent);
    let out = '';
    parent.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const zombie = await waitFor(() => /^\d+\n/.exec(out)?.[0].trim(), 5000, 'the child\'s pid');
    await waitFor(() => readFileSync(`/proc/${zombie}/stat`, 'latin1').split(') ')[1]?.startsWith('Z'), 5000, 'a zombie');
    const dir = tempDir();
    writeFileSync(join(dir, 'agent.lock'), `${zombie}\n`);
    const release = await lockDataDir(dir, 'data');
    expect(pidIn(join(dir, 'agent.lock'))).toBe(String(process.pid));
    await release();
  });

  it.runIf(HAS_PROC)("a dead claimant's takeover claim is taken over even when its pid now names another process", async () => {
    const dead = await deadAgentsLock();
    const dir = tempDir();
    writeFileSync(join(dir, 'agent.lock'), dead.text);
    writeFileSync(join(dir, claimOn(dead.text)), dead.text.replace(String(dead.pid), String(unrelated())));
    const release = await lockDataDir(dir, 'data');
    expect(pidIn(join(dir, 'agent.lock'))).toBe(String(process.pid));
    expect(readdirSync(dir)).toEqual(['agent.lock']);
    await release();
  }, 20_000);

  it("what a takeover whose agent died just after its rename left is removed by the next agent to hold the lock", async () => {
    // The winner renamed its lock in and died before removing its claim: the claim stayed for good.
    const gone = spawnSync(process.execPath, ['-e', '']).pid;
    const winner = spawnSync(process.execPath, ['-e', '']).pid;
    const dir = tempDir();
    writeFileSync(join(dir, 'agent.lock'), `${winner}\n`);
    writeFileSync(join(dir, `agent.lock.takeover-${gone}`), `${winner}\n`);
    writeFileSync(join(dir, `agent.lock.takeover-${gone}.takeover-${winner}`), `${winner}\n`);
    writeFileSync(join(dir, `agent.lock.${winner}.0123abcd`), `${winner}\n`);
    writeFileSync(join(dir, 'node-identity.json'), '{}');
    let release = await lockDataDir(dir, 'data');
    expect(readdirSync(dir).sort()).toEqual(['agent.lock', 'node-identity.json']);
    await release();
    // And when the lock was released since, by the next to take it at all.
    writeFileSync(join(dir, `agent.lock.takeover-${gone}`), `${winner}\n`);
    release = await lockDataDir(dir, 'data');
    expect(readdirSync(dir).sort()).toEqual(['agent.lock', 'node-identity.json']);
    await release();
  });

  it.runIf(HAS_PROC)("of agent processes taking over a dead agent's lock whose pid was reused, exactly one gets it", async () => {
    const dead = await deadAgentsLock();
    const reused = dead.text.replace(String(dead.pid), String(unrelated()));
    const dirs = Array.from({ length: 12 }, () => tempDir());
    for (const d of dirs) writeFileSync(join(d, 'agent.lock'), reused);
    // Each process tries dir i at the same moment as the others (i * 40 ms after a common start).
    const at = Date.now() + 2500;
    const racers = Array.from({ length: 4 }, () => locker(dirs, at, 40));
    const outs = await Promise.all(racers.map((r) => r.lines(dirs.length)));
    for (let i = 0; i < dirs.length; i++) {
      const got = racers.filter((_, k) => outs[k]?.[i] === `${i} ok`);
      expect(got, `dir ${i}: ${outs.map((o) => o[i]).join(' | ')}`).toHaveLength(1);
      expect(pidIn(join(dirs[i] as string, 'agent.lock'))).toBe(String(got[0]?.child.pid));
      expect(readdirSync(dirs[i] as string)).toEqual(['agent.lock']);
      for (const o of outs) if (o[i] !== `${i} ok`) expect(o[i]).toMatch(/^\d+ refused .*(is in use by another agent|is being taken by another agent)/);
    }
  }, 30_000);

  it('one agent per data dir: a second is refused while the first runs, a killed one\'s lock is taken over', async () => {
    const dir = tempDir();
    // No coordinator: an agent keeps retrying, which is all this needs.
    const args = ['--coordinator', '127.0.0.1:1', '--token', 'unused', '--data', dir];
    const first = spawnAgent(args);
    agents.push(first);
    const lock = join(dir, 'agent.lock');
    const holder = (): string => pidIn(lock);
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
