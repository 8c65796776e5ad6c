import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeConnectFailure } from '../common/connect-failure.js';
import { CLI, ROOT, startCoordinatorProcess, type CoordinatorProcess } from './helpers/coordinator-process.js';
import { runCli } from './helpers/in-process-cli.js';
import { spawnAgent, waitFor, type AgentProcess } from './helpers/mesh-server.js';
import { startTestCoordinator } from './helpers/test-coordinator.js';

// Test-only pair (test/fixtures/tls/README.md): CN=localhost, SAN DNS:localhost and IP:127.0.0.1.
const CERT = join(ROOT, 'test', 'fixtures', 'tls', 'localhost.crt');
const KEY = join(ROOT, 'test', 'fixtures', 'tls', 'localhost.key');
const OTHER_KEY = join(ROOT, 'test', 'fixtures', 'tls', 'other.key');

function getJson(url: string, options: { ca?: Buffer; headers?: Record<string, string> }): Promise<{ status: number; body: unknown }> {
  const get = url.startsWith('https:') ? httpsGet : httpGet;
  return new Promise((resolve, reject) => {
    const req = get(url, { ...(options.ca ? { ca: options.ca } : {}), headers: options.headers ?? {} }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as unknown }));
    });
    req.on('error', reject);
  });
}

describe('TLS: retrace coordinator --tls-cert/--tls-key, clients --tls-ca (real processes)', () => {
  const children: ChildProcess[] = [];
  const agents: AgentProcess[] = [];
  const dirs: string[] = [];
  let coord: CoordinatorProcess;
  let tokenFile: string;
  let token: string;

  const tempDir = (): string => {
    const d = mkdtempSync(join(tmpdir(), 'retrace-tls-'));
    dirs.push(d);
    return d;
  };

  beforeAll(async () => {
    delete process.env.RETRACE_TLS_CA;
    const dataDir = tempDir();
    // --allow-remote on loopback: with TLS there is nothing to warn about.
    coord = await startCoordinatorProcess(dataDir, children, ['--tls-cert', CERT, '--tls-key', KEY, '--allow-remote']);
    tokenFile = join(dataDir, 'auth-token');
    token = readFileSync(tokenFile, 'utf8').trim();
  });

  afterAll(async () => {
    for (const a of agents) if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGKILL');
    await Promise.all(agents.map((a) => a.exited));
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    await Promise.all(children.map((c) => new Promise((resolve) => (c.exitCode === null && c.signalCode === null ? c.once('exit', resolve) : resolve(undefined)))));
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('answers the CLI with --tls-ca, and with RETRACE_TLS_CA', async () => {
    const r = await runCli(['lineage', 'runs', '--json', '--coordinator', coord.grpc, '--token-file', tokenFile, '--tls-ca', CERT]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ runs: [] });
    process.env.RETRACE_TLS_CA = CERT;
    try {
      const e = await runCli(['lineage', 'runs', '--json', '--coordinator', coord.grpc, '--token-file', tokenFile]);
      expect(e.code).toBe(0);
    } finally {
      delete process.env.RETRACE_TLS_CA;
    }
    expect(coord.stderr()).toContain('tls=on');
    expect(coord.stderr()).not.toContain('WARNING');
  });

  it('serves the HTTP API over https with the same certificate, and not over plain http', async () => {
    const r = await getJson(`https://${coord.http}/api/v1/namespaces`, { ca: readFileSync(CERT), headers: { authorization: `Bearer ${token}` } });
    expect(r.status).toBe(200);
    expect(r.body).toHaveProperty('namespaces');
    const unauthenticated = await getJson(`https://${coord.http}/api/v1/namespaces`, { ca: readFileSync(CERT) });
    expect(unauthenticated.status).toBe(401);
    await expect(getJson(`http://${coord.http}/api/v1/namespaces`, { headers: { authorization: `Bearer ${token}` } })).rejects.toThrow();
  });

  it('a CLI without --tls-ca fails with exit 1 and one line that suggests --tls-ca', async () => {
    const r = await runCli(['lineage', 'runs', '--json', '--coordinator', coord.grpc, '--token-file', tokenFile]);
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    expect(r.err).toMatch(/^error: cannot connect to the coordinator at 127\.0\.0\.1:\d+: .*pass --tls-ca FILE or set RETRACE_TLS_CA\n$/);
  });

  it('--tls-ca naming a file with no certificate is a usage error naming the flag', async () => {
    const r = await runCli(['lineage', 'runs', '--coordinator', coord.grpc, '--token-file', tokenFile, '--tls-ca', KEY]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--tls-ca: ');
    expect(r.err).toContain('holds no PEM certificate');
  });

  it('a real agent with --tls-ca registers with the TLS coordinator; without it, it logs why it cannot connect', async () => {
    const agent = spawnAgent(['--coordinator', coord.grpc, '--data', tempDir(), '--token-file', tokenFile, '--tls-ca', CERT, '--report-interval', '200ms', '--link-probe-interval', '0']);
    agents.push(agent);
    const { nodeId } = await agent.registered;
    const nodes = await runCli(['nodes', 'show', nodeId, '--coordinator', coord.grpc, '--token-file', tokenFile, '--tls-ca', CERT]);
    expect(nodes.code).toBe(0);
    expect(JSON.parse(nodes.out)).toMatchObject({ nodeId, connected: true });

    const plain = spawnAgent(['--coordinator', coord.grpc, '--data', tempDir(), '--token-file', tokenFile, '--report-interval', '200ms']);
    agents.push(plain);
    const line = await waitFor(() => plain.stderr.find((l) => l.includes('agent:disconnected')), 30_000, 'a disconnected log line');
    expect(line).toContain('pass --tls-ca FILE');
    expect(plain.child.exitCode).toBeNull();
  });

  it('--allow-remote without TLS starts, with one warning line on stderr', async () => {
    const plain = await startCoordinatorProcess(tempDir(), children, ['--allow-remote']);
    const warning = await waitFor(() => plain.stderr().split('\n').filter((l) => l.includes('WARNING')), 10_000, 'the warning');
    expect(warning).toHaveLength(1);
    expect(warning[0]).toMatch(/--allow-remote without TLS: bearer tokens .* cleartext; use --tls-cert FILE --tls-key FILE$/);
    plain.proc.kill('SIGTERM');
    expect((await plain.exited).code).toBe(0);
  });
});

describe('TLS flags and misconfiguration', () => {
  it('--tls-cert without --tls-key (and the reverse) is a usage error naming the flag', async () => {
    const r = await runCli(['coordinator', '--data', '/nonexistent-never-created', '--tls-cert', CERT]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^error: --tls-cert needs --tls-key\n/);
    const k = await runCli(['coordinator', '--data', '/nonexistent-never-created', '--tls-key', KEY]);
    expect(k.code).toBe(2);
    expect(k.err).toMatch(/^error: --tls-key needs --tls-cert\n/);
  });

  it('an unreadable file or a key that does not match the certificate is refused before listening', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrace-tls-'));
    try {
      const missing = await runCli(['coordinator', '--data', dir, '--tls-cert', join(dir, 'nope.crt'), '--tls-key', KEY]);
      expect(missing.code).toBe(2);
      expect(missing.err).toMatch(/^error: --tls-cert: cannot read .*nope\.crt/);
      const mismatch = await runCli(['coordinator', '--data', dir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--tls-cert', CERT, '--tls-key', OTHER_KEY]);
      expect(mismatch.code).toBe(1);
      expect(mismatch.err).toMatch(/^error: tls-key: does not match the certificate of --tls-cert/);
      expect(mismatch.out).toBe('');
      const swapped = await runCli(['coordinator', '--data', dir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--tls-cert', KEY, '--tls-key', CERT]);
      expect(swapped.code).toBe(1);
      expect(swapped.err).toMatch(/^error: tls-cert: not a PEM certificate/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a client with --tls-ca against a plaintext coordinator says it does not answer TLS', async () => {
    const tc = await startTestCoordinator({ quiet: true });
    try {
      const child = spawn(process.execPath, [CLI, 'lineage', 'runs', '--coordinator', tc.grpcAddress, '--token', tc.token, '--tls-ca', CERT], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RETRACE_TLS_CA: '' } });
      let err = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      const [code] = (await once(child, 'exit')) as [number | null];
      expect(code).toBe(1);
      expect(err).toMatch(/^error: cannot connect to the coordinator at .*: wrong version number; it does not answer TLS: drop --tls-ca[^\n]*\n$/);
      // In this process: the coordinator's stop below meets the connections this client is
      // dropping, which grpc-js's graceful shutdown never settles; the stop must end anyway.
      expect((await runCli(['lineage', 'runs', '--coordinator', tc.grpcAddress, '--token', tc.token, '--tls-ca', CERT])).code).toBe(1);
    } finally {
      await tc.stop();
    }
  });

  it('describeConnectFailure: refused connections get no TLS hint; other failures keep grpc-js details', () => {
    expect(describeConnectFailure('No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:1. Resolution note: ', { address: '127.0.0.1:1', tls: false })).toBe(
      'cannot connect to the coordinator at 127.0.0.1:1: connect ECONNREFUSED 127.0.0.1:1',
    );
    expect(describeConnectFailure('No connection established. Last error: Error: self-signed certificate. Resolution note: ', { address: 'h:1', tls: true })).toMatch(
      /^cannot connect to the coordinator at h:1: self-signed certificate; --tls-ca must hold/,
    );
    expect(describeConnectFailure('Connection dropped', { address: 'h:1', tls: false })).toBeUndefined();
  });
});
