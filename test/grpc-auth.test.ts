import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client as GrpcClient, credentials, Metadata as GrpcMetadata } from '@grpc/grpc-js';
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

  it('the open services (health, reflection) take no large request from anyone: RESOURCE_EXHAUSTED, nothing buffered', async () => {
    const ch = channel();
    const health = createClient(HealthDefinition, ch);
    const service = 'a'.repeat(40 * 1024 * 1024);
    const before = peakRss();
    const results = await Promise.allSettled(Array.from({ length: 4 }, () => health.check({ service })));
    expect(results.map((r) => (r.status === 'rejected' ? (r.reason as { code: Status }).code : 'answered'))).toEqual(Array(4).fill(Status.RESOURCE_EXHAUSTED));
    expect(String((results[0] as PromiseRejectedResult).reason)).toMatch(/larger than max \(\d+ vs 65536\)/);
    // Read whole, these four took well over 400 MiB.
    expect(peakRss() - before).toBeLessThan(64 * 1024 * 1024);
    // Reflection through grpc-js with hand-encoded requests (its nice-grpc service is google-protobuf's).
    const raw = new GrpcClient(coord.grpc, credentials.createInsecure());
    const reflect = (request: Buffer): Promise<{ code: number; answers: number }> =>
      new Promise((resolve) => {
        const call = raw.makeBidiStreamRequest('/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', (b: Buffer) => b, (b: Buffer) => b, new GrpcMetadata());
        let answers = 0;
        call.on('data', () => answers++);
        call.on('error', (err: { code: number }) => resolve({ code: err.code, answers }));
        call.on('end', () => resolve({ code: Status.OK, answers }));
        call.write(request);
        call.end();
      });
    const field = (tag: number, text: string): Buffer => {
      const bytes = Buffer.from(text);
      const len: number[] = [];
      for (let n = bytes.length; ; n >>>= 7) {
        if (n < 128) { len.push(n); break; }
        len.push((n & 127) | 128);
      }
      return Buffer.concat([Buffer.from([tag, ...len]), bytes]);
    };
    try {
      expect(await reflect(field(0x22, 'x'.repeat(1024 * 1024)))).toMatchObject({ code: Status.RESOURCE_EXHAUSTED }); // file_containing_symbol
      // What they are for still works without a token.
      expect(await reflect(field(0x3a, ''))).toEqual({ code: Status.OK, answers: 1 }); // list_services
      expect((await health.check({ service: '' })).status).toBe(1);
    } finally {
      raw.close();
    }
  });
});
