import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { meshExtension } from '../coordinator/mesh/mesh-extension.js';
import { runCliProcess } from './helpers/coordinator-process.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator } from './helpers/test-coordinator.js';

/** The `retrace` command as a real process: what a shell sees when a pipe closes or Ctrl-C comes. */
const CLI = new URL('../scripts/retrace.mjs', import.meta.url).pathname;

function run(args: string[]) {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  return { child, exited, stderr: () => stderr, stdout: () => stdout };
}

describe('retrace as a process', () => {
  const servers: Server[] = [];
  const sockets: Socket[] = [];
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy();
    for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  });

  it('stops quietly with status 0 when its reader goes away (`retrace help | head -1`)', async () => {
    const p = run(['help']);
    p.child.stdout.destroy();
    expect(await p.exited).toBe(0);
    expect(p.stderr()).toBe('');
  }, 20_000);

  it('a coordinator whose log pipe closes keeps running, and still stops in order on SIGTERM (exit 0)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrace-epipe-'));
    try {
      const p = run(['coordinator', '--data', dir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0']);
      // Its log (stderr) goes nowhere from the start: the reader is gone.
      p.child.stderr.destroy();
      for (let i = 0; i < 300 && !p.stdout().includes('"grpc"'); i++) await new Promise((r) => setTimeout(r, 50));
      const { grpc } = JSON.parse(p.stdout().trim().split('\n')[0] ?? '{}') as { grpc: string };
      expect(grpc).toMatch(/^127\.0\.0\.1:\d+$/);
      await new Promise((r) => setTimeout(r, 500));
      expect(p.child.exitCode).toBeNull();
      p.child.kill('SIGTERM');
      expect(await p.exited).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('Ctrl-C on a watch that ends quietly still exits 130 (143 for SIGTERM), saying so', async () => {
    const tc = await startTestCoordinator({ quiet: true, extensions: [meshExtension()] });
    try {
      for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
        const p = run(['nodes', '--watch', '--coordinator', tc.grpcAddress, '--token', tc.token]);
        // The watch is up once it has drawn the (empty) inventory.
        for (let i = 0; i < 200 && p.stdout() === ''; i++) await new Promise((r) => setTimeout(r, 50));
        expect(p.stdout()).not.toBe('');
        p.child.kill(signal);
        expect(await p.exited).toBe(code);
        expect(p.stderr()).toBe(`interrupted (${signal})\n`);
      }
    } finally {
      await tc.stop();
    }
  }, 30_000);

  it('Ctrl-C during a call says "interrupted" and exits 130, without calling it unexpected', async () => {
    // A coordinator that accepts the connection and never answers: the call waits until interrupted.
    const server = createServer((s) => sockets.push(s));
    servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const p = run(['lineage', 'trace', 'object:x', '--coordinator', `127.0.0.1:${port}`, '--token', 't']);
    await once(server, 'connection');
    p.child.kill('SIGINT');
    expect(await p.exited).toBe(130);
    expect(p.stderr()).toBe('interrupted (SIGINT)\n');
  }, 20_000);
});

/** What a user mistyping at the shell meets: one line naming the mistake, exit 2, and nothing half done. */
describe('retrace usage errors', () => {
  const NOWHERE = ['--coordinator', '127.0.0.1:1', '--token', 'unused'];

  it.each([
    [['bogus'], 'error: unknown command "bogus"; retrace help lists every command\n'],
    [['nodse'], 'error: unknown command "nodse" (did you mean nodes?); retrace help lists every command\n'],
    [['lineage'], 'error: lineage needs a subcommand: trace, path, node, export, runs, proof; retrace help lists every command\n'],
    [['lineage', 'tarce', 'object:x'], 'error: unknown command "lineage tarce" (did you mean lineage trace?); lineage takes trace, path, node, export, runs, proof; retrace help lists every command\n'],
  ])('%j is one line on stderr with exit 2, not the command list on stdout', async (argv, message) => {
    const r = await runCli(argv);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toBe(message);
  });

  it.each([[['--help']], [['-h']], [['help']], [[]], [['lineage', '--help']]])('%j prints the command list with exit 0', async (argv) => {
    const r = await runCli(argv);
    expect(r.code).toBe(0);
    expect(r.err).toBe('');
    expect(r.out).toContain('lineage trace');
  });

  it('a flag that takes a value but got none is a usage error, not the value "true" (no file named true)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrace-bare-'));
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      for (const [argv, name] of [
        [['lineage', 'trace', 'object:x', ...NOWHERE, '--svg'], 'svg'],
        [['lineage', 'trace', 'object:x', '--depth', ...NOWHERE], 'depth'],
        [['forecast', 'n1', '--metric', 'cpu', '--horizon', '1h', ...NOWHERE, '--plot'], 'plot'],
        [['replay', 'start', '--record', '--watch', ...NOWHERE], 'record'],
      ] as const) {
        const r = await runCli([...argv]);
        expect(r.err).toMatch(new RegExp(`^error: --${name} needs a value\n\nusage: retrace `));
        expect(r.code).toBe(2);
      }
      expect(existsSync(join(dir, 'true'))).toBe(false);
      // Flags that take no value still stand alone at the end.
      const r = await runCli(['lineage', 'trace', 'object:x', ...NOWHERE, '--object-level', '--dot']);
      expect(r.err).toMatch(/^error: cannot connect to the coordinator/);
      expect(r.code).toBe(1);
    } finally {
      process.chdir(cwd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each(['grpc', 'http'] as const)('a coordinator whose --%s port is taken says so in one line naming the flag', async (taken) => {
    const blocker = createServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const port = (blocker.address() as { port: number }).port;
    const dir = mkdtempSync(join(tmpdir(), 'retrace-inuse-'));
    const stop = new AbortController();
    try {
      const listen = { grpc: '127.0.0.1:0', http: '127.0.0.1:0', [taken]: `127.0.0.1:${port}` };
      const running = runCli(['coordinator', '--data', dir, '--grpc', listen.grpc, '--http', listen.http], stop.signal);
      const r = await Promise.race([running, new Promise<undefined>((res) => setTimeout(() => res(undefined), 15_000))]);
      stop.abort();
      expect(r?.code).toBe(1);
      expect(r?.err.trim().split('\n').at(-1)).toBe(
        `error: --${taken} 127.0.0.1:${port}: address already in use (another coordinator or retrace start is running?); stop it, or pick another port (0 picks a free one)`,
      );
    } finally {
      stop.abort();
      await new Promise((r) => blocker.close(r));
      rmSync(dir, { recursive: true, force: true });
    }
  }, 20_000);

  it('as a process, a taken port is reported once, in the CLI\'s words; GRPC_VERBOSITY brings back grpc-js\'s own line', async () => {
    const blocker = createServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const port = (blocker.address() as { port: number }).port;
    const dir = mkdtempSync(join(tmpdir(), 'retrace-inuse-'));
    try {
      const args = ['coordinator', '--data', dir, '--grpc', `127.0.0.1:${port}`, '--http', '127.0.0.1:0'];
      const quiet = await runCliProcess(args);
      expect(quiet.code).toBe(1);
      expect(quiet.stderr).toContain(`error: --grpc 127.0.0.1:${port}: address already in use`);
      expect(quiet.stderr).not.toMatch(/No address added/);
      const verbose = await runCliProcess(args, undefined, { GRPC_VERBOSITY: 'ERROR' });
      expect(verbose.code).toBe(1);
      expect(verbose.stderr).toMatch(/^E No address added out of total 1 resolved/m);
    } finally {
      await new Promise((r) => blocker.close(r));
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});
