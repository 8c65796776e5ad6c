import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createChannel, createClient, Metadata, Status, type Channel } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { LineageServiceDefinition } from '../common/gen/retrace/v1/lineage.js';
import { killChildren, startCoordinatorProcess, type CoordinatorProcess } from './helpers/coordinator-process.js';

/**
 * The token check of the gRPC services, against the real CLI coordinator in a child process (so
 * its memory can be read apart from the client's).
 */

const children: ChildProcess[] = [];
const channels: Channel[] = [];
let dataDir: string;
let coord: CoordinatorProcess;
let token: string;

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'retrace-grpc-auth-'));
  coord = await startCoordinatorProcess(dataDir, children);
  token = readFileSync(join(dataDir, 'auth-token'), 'utf8').trim();
});

afterAll(async () => {
  for (const c of channels.splice(0)) c.close();
  await killChildren(children);
  rmSync(dataDir, { recursive: true, force: true });
});

function channel(): Channel {
  const c = createChannel(coord.grpc);
  channels.push(c);
  return c;
}

/** Peak resident memory of the coordinator process, bytes. */
function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${coord.proc.pid}/status`, 'utf8'));
  return Number(m?.[1]) * 1024;
}

describe('gRPC authentication', () => {
  it('refuses a call without the token, with another token or another scheme, and takes the scheme in any case', async () => {
    const ch = channel();
    const as = (authorization?: string) => createClient(LineageServiceDefinition, ch, authorization === undefined ? {} : { '*': { metadata: Metadata({ authorization }) } });
    for (const auth of [undefined, `Bearer ${token}x`, 'Bearer ', `Basic ${token}`, token]) {
      await expect(as(auth).listRuns({}), String(auth)).rejects.toMatchObject({ code: Status.UNAUTHENTICATED, details: expect.stringMatching(/Bearer <token>/) });
    }
    expect((await as(`Bearer ${token}`).listRuns({})).runs).toEqual([]);
    expect((await as(`bearer ${token}`).listRuns({})).runs).toEqual([]);
    expect((await createClient(HealthDefinition, ch).check({ service: '' })).status).toBe(1); // SERVING, no token needed
  });

  it('refuses before reading the request: large calls without the token do not grow the coordinator', async () => {
    const anon = createClient(CodeServiceDefinition, channel());
    const bundle = Buffer.alloc(48 * 1024 * 1024);
    const before = peakRss();
    const results = await Promise.allSettled(Array.from({ length: 4 }, () => anon.publishCode({ bundle, manifest: undefined })));
    expect(results.map((r) => (r.status === 'rejected' ? (r.reason as { code: Status }).code : 'stored'))).toEqual(Array(4).fill(Status.UNAUTHENTICATED));
    // Read after the whole request had arrived, these four would have taken at least 192 MiB.
    expect(peakRss() - before).toBeLessThan(64 * 1024 * 1024);
  });
});
