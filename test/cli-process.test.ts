import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';

/** The `retrace` command as a real process: what a shell sees when a pipe closes or Ctrl-C comes. */
const CLI = new URL('../scripts/retrace.mjs', import.meta.url).pathname;

function run(args: string[]) {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  return { child, exited, stderr: () => stderr };
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
