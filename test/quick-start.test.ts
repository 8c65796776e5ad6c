import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI } from './helpers/coordinator-process.js';
import { processHarness } from './helpers/process-harness.js';
import { until } from './helpers/until.js';

/**
 * The README's promise, as a user meets it: `retrace start` prints "Try" lines that work as
 * printed, in another terminal in the same directory, and `retrace demo` exits 0. Each line runs
 * as its own `retrace` process (the `npx retrace` the line names is this CLI).
 */
const harness = processHarness();

afterAll(async () => {
  await harness.cleanup();
});

/**
 * `retrace ARGS` in `cwd`. With `stopWhenShown`, ends it (SIGINT, as Ctrl-C) 500 ms after its first
 * output, or after 30 s of none: a fixed 2.5 s once ended a watch that, on a machine at load 5–11,
 * had not yet printed anything.
 */
function retrace(args: readonly string[], cwd: string, stopWhenShown = false): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  harness.children.push(child);
  let out = '';
  let timer: NodeJS.Timeout | undefined;
  const stop = (ms: number): void => {
    clearTimeout(timer);
    timer = setTimeout(() => child.kill('SIGINT'), ms);
  };
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    if (stopWhenShown && out === '') stop(500);
    out += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  if (stopWhenShown) stop(30_000);
  return new Promise((resolve) =>
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    }),
  );
}

/** Whether something accepts connections on `address` (HOST:PORT). */
function listening(address: string): Promise<boolean> {
  const at = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const socket = createConnection({ host: address.slice(0, at), port: Number(address.slice(at + 1)) });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** The pids of `pid`'s child processes (Linux /proc). */
function childPids(pid: number): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        // Fields after the command name (which may hold spaces): state, then the parent pid.
        return Number(readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1]?.split(' ')[1]) === pid;
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Whether `pid` is a live process: not gone, and not a zombie. */
function running(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
}

describe('quick start', () => {
  it('retrace start prints Try lines that each work as printed, and SIGTERM frees its ports', async () => {
    const cwd = harness.tempDir('retrace-quick-start-');
    const watched = join(cwd, 'watched');
    mkdirSync(watched);
    const start = spawn(process.execPath, [CLI, 'start', '--data', join(cwd, 'data'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--watch-root', watched], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    harness.children.push(start);
    let out = '';
    let log = '';
    start.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    start.stderr.setEncoding('utf8').on('data', (d: string) => (log = (log + d).slice(-20_000)));
    const exited = new Promise<number | null>((resolve) => start.once('exit', (code) => resolve(code)));
    // The block ends with the curl lines, the last one Marquez's search.
    await until('retrace start to print its Try lines', () => (/\nTry, in another terminal here:\n[\s\S]*api\/v1\/search[^\n]*\n/.test(out) ? true : undefined), 90_000, 200);
    const addresses = JSON.parse(out.split('\n')[0] as string) as { grpc: string; http: string };
    const block = out.split('\nTry, in another terminal here:\n')[1] as string;
    const lines = block.split('\n').map((l) => l.trim());
    const commands = lines.filter((l) => l.startsWith('npx retrace ')).map((l) => l.replace(/ {3}# .*$/, '').slice('npx retrace '.length).split(' '));
    expect(commands.length).toBeGreaterThanOrEqual(20);
    const failed: string[] = [];
    for (const argv of commands) {
      const line = argv.join(' ');
      // Placeholders the line's comment tells the user to fill in, and a forecast that needs
      // 30 s of reports first (its comment says so), are not run as printed.
      if (/\b(REPLAY_ID|NODE)\b/.test(line) || argv[0] === 'forecast') continue;
      const watching = argv.includes('--watch') && (argv[0] === 'nodes' || argv[0] === 'watch');
      const r = await retrace(argv, cwd, watching);
      // A watch that never ends on its own is stopped like Ctrl-C after showing something.
      const ok = watching ? r.code === 130 && r.out.trim() !== 'interrupted (SIGINT)' : r.code === 0;
      if (!ok) failed.push(`retrace ${line}: exit ${r.code}\n${r.out.slice(0, 600)}`);
    }
    // The curl lines: the token from the file they name, the URL as printed.
    for (const l of lines.filter((x) => x.startsWith('curl '))) {
      const file = /\$\(cat (\S+)\)/.exec(l)?.[1] as string;
      const url = /'(http[^']+)'/.exec(l)?.[1] as string;
      const res = await fetch(url, { headers: { authorization: `Bearer ${readFileSync(file, 'utf8').trim()}` } });
      if (res.status !== 200) failed.push(`${url}: HTTP ${res.status}`);
    }
    expect(failed, failed.join('\n\n')).toEqual([]);
    start.kill('SIGTERM');
    expect(await exited, log).toBe(0);
    expect(await listening(addresses.grpc)).toBe(false);
    expect(await listening(addresses.http)).toBe(false);
  }, 240_000);

  it('the local agents of a retrace start killed outright (SIGKILL) leave too', async () => {
    const cwd = harness.tempDir('retrace-quick-start-kill-');
    const start = spawn(process.execPath, [CLI, 'start', '--data', join(cwd, 'data'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0'], { cwd, stdio: ['ignore', 'pipe', 'ignore'] });
    harness.children.push(start);
    let out = '';
    start.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    await until('retrace start to print its Try lines', () => (out.includes('Try, in another terminal here:') ? true : undefined), 90_000, 200);
    const agents = childPids(start.pid as number).filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes('agent'));
    expect(agents).toHaveLength(2);
    start.kill('SIGKILL');
    // Gone, or a zombie its new parent has yet to reap: either way no longer running.
    await until('the orphaned agents to exit', () => (agents.every((pid) => !running(pid)) ? true : undefined), 15_000, 100);
  }, 120_000);

  it('retrace demo exits 0 with every stop working', async () => {
    const r = await retrace(['demo'], harness.tempDir('retrace-demo-cwd-'));
    expect(r.out).toContain('demo complete: every stop worked.');
    expect(r.code).toBe(0);
  }, 120_000);
});
