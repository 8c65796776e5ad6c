import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, constants, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { Status } from 'nice-grpc';
import { afterEach, describe, expect, it } from 'vitest';
import { codeExtension } from '../coordinator/code/code-extension.js';
import { PUBLISH_MAX_WAITING } from '../coordinator/grpc/publish-budget.js';
import { CodeServiceDefinition, PublishCodeRequest } from '../common/gen/retrace/v1/code.js';
import { main } from '../scripts/cli/main.js';
import { runCli } from './helpers/in-process-cli.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * PublishCode calls together hold at most 128 MiB: a call counts for 64 MiB (the largest request)
 * from its metadata until its bundle arrives. Calls that do not fit wait unread, up to
 * PUBLISH_MAX_WAITING; one more is refused with RESOURCE_EXHAUSTED before its bytes are read, and
 * the budget comes back when calls end in any way.
 */
describe('PublishCode memory budget', () => {
  let tc: TestCoordinator | undefined;
  let session: ClientHttp2Session | undefined;
  afterEach(async () => {
    session?.destroy();
    session = undefined;
    await tc?.stop();
    tc = undefined;
  });

  /** One PublishCode call on `session`: its length prefix and `bytes` of its message (all of it when undefined). */
  function rawPublish(s: ClientHttp2Session, token: string, message: Uint8Array, sent?: number): { stream: ClientHttp2Stream; status: Promise<number>; message: Promise<string> } {
    const stream = s.request({
      [constants.HTTP2_HEADER_METHOD]: 'POST',
      [constants.HTTP2_HEADER_PATH]: '/retrace.v1.CodeService/PublishCode',
      'content-type': 'application/grpc',
      te: 'trailers',
      authorization: `Bearer ${token}`,
    });
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(message.byteLength, 1);
    stream.write(prefix);
    if (sent === undefined) stream.end(message);
    else stream.write(message.subarray(0, sent));
    let details = '';
    const status = new Promise<number>((resolve) => {
      let code = -1;
      // A status ends the call for the caller, even one still sending (a stalled publish).
      const take = (h: Record<string, unknown>): void => {
        if (typeof h['grpc-message'] === 'string') details = decodeURIComponent(h['grpc-message']);
        if (h['grpc-status'] !== undefined) {
          code = Number(h['grpc-status']);
          resolve(code);
        }
      };
      stream.on('response', take);
      stream.on('trailers', take);
      stream.on('data', () => {});
      stream.on('close', () => resolve(code));
    });
    return { stream, status, message: status.then(() => details) };
  }

  it('two large publishes arriving: later ones wait, one past the queue is refused; all waiting ones succeed once room is back', async () => {
    tc = await startTestCoordinator({ extensions: [codeExtension()] });
    const coordinator = tc;
    const s = connect(`http://${coordinator.grpcAddress}`);
    session = s;
    const message = (i: number, bytes: number): Uint8Array =>
      PublishCodeRequest.encode({ bundle: Buffer.alloc(bytes, i), manifest: { transform: `t-${i}`, requirements: undefined, sourceFile: 't.js', bundler: 'test' } }).finish();
    // Two publishes whose bytes are still arriving hold the whole 128 MiB (64 MiB each, whatever their size).
    const big = [1, 2].map((i) => rawPublish(s, coordinator.token, message(i, 2 * 1024 * 1024), 1024));
    const small = Array.from({ length: PUBLISH_MAX_WAITING }, (_, i) => rawPublish(s, coordinator.token, message(100 + i, 1024)));
    const refused = rawPublish(s, coordinator.token, message(999, 1024));
    expect(await refused.status).toBe(Status.RESOURCE_EXHAUSTED);
    // The first large one is cancelled, the second completes: the waiting ones get in.
    big[0]?.stream.close(constants.NGHTTP2_CANCEL);
    big[1]?.stream.end(message(2, 2 * 1024 * 1024).subarray(1024));
    expect(await Promise.all(small.map((c) => c.status))).toEqual(small.map(() => Status.OK));
    expect(await big[1]?.status).toBe(Status.OK);

    // A refused manifest gives its share back too; the refusal names the limit.
    const client = coordinator.client(CodeServiceDefinition);
    await expect(client.publishCode({ bundle: Buffer.alloc(10), manifest: { transform: ' bad', requirements: undefined, sourceFile: 'b.js', bundler: 'test' } })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT });
    const again = [3, 4].map((i) => rawPublish(s, coordinator.token, message(i, 2 * 1024 * 1024), 1024));
    const queued = Array.from({ length: PUBLISH_MAX_WAITING }, (_, i) => rawPublish(s, coordinator.token, message(200 + i, 10)));
    const late = rawPublish(s, coordinator.token, message(300, 10));
    expect(await late.status).toBe(Status.RESOURCE_EXHAUSTED);
    expect(await late.message).toMatch(/^PublishCode: the coordinator takes in at most 128 MiB of code at once .* 16 more publishes already wait for room/);
    for (const c of again) c.stream.close(constants.NGHTTP2_CANCEL);
    expect(await Promise.all(queued.map((c) => c.status))).toEqual(queued.map(() => Status.OK));
    expect((await client.publishCode({ bundle: Buffer.alloc(10), manifest: { transform: 'late', requirements: undefined, sourceFile: 'l.js', bundler: 'test' } })).created).toBe(true);
  }, 20_000);

  it('publishes that stall after their metadata end DEADLINE_EXCEEDED once the receive time is up, and give their share back', async () => {
    tc = await startTestCoordinator({ extensions: [codeExtension()], coordinatorOptions: { publishReceiveTimeoutMs: 400 } });
    const coordinator = tc;
    const s = connect(`http://${coordinator.grpcAddress}`);
    session = s;
    const message = PublishCodeRequest.encode({ bundle: Buffer.alloc(1024 * 1024, 1), manifest: { transform: 'stalled', requirements: undefined, sourceFile: 't.js', bundler: 'test' } }).finish();
    // Two callers that send a little and then nothing hold the whole budget, until their time is up.
    const stalled = [0, 1].map(() => rawPublish(s, coordinator.token, message, 1024));
    const client = coordinator.client(CodeServiceDefinition);
    const started = Date.now();
    const waiting = client.publishCode({ bundle: Buffer.alloc(10), manifest: { transform: 'after', requirements: undefined, sourceFile: 'a.js', bundler: 'test' } });
    expect(await Promise.all(stalled.map((c) => c.status))).toEqual([Status.DEADLINE_EXCEEDED, Status.DEADLINE_EXCEEDED]);
    expect(await stalled[0]?.message).toMatch(/^PublishCode: the bundle did not arrive within 0\.4 s of the call being let in; it held 64 MiB of the 128 MiB publish budget/);
    expect((await waiting).created).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
    // A publish that delivers its bundle in time is not cut off by the timer it started.
    await new Promise((r) => setTimeout(r, 500));
    expect((await client.publishCode({ bundle: Buffer.alloc(10, 7), manifest: { transform: 'in-time', requirements: undefined, sourceFile: 'i.js', bundler: 'test' } })).created).toBe(true);
  }, 20_000);

  it('retrace coordinator --publish-receive-timeout sets the receive time; retrace coordinator and start refuse a bad one naming the flag', async () => {
    const root = mkdtempSync(join(tmpdir(), 'retrace-publish-flag-'));
    try {
      for (const command of ['coordinator', 'start']) {
        for (const [value, message] of [
          ['500ms', '--publish-receive-timeout: at least 1s, got 500ms'],
          ['soon', '--publish-receive-timeout: expected a duration like 30s, 5m, 2h or 1d, got "soon"'],
        ]) {
          const r = await runCli([command, '--data', join(root, 'never-made'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--publish-receive-timeout', value as string]);
          expect(r.code, r.err).toBe(2);
          expect(r.err).toContain(`error: ${message}`);
        }
      }
      expect(existsSync(join(root, 'never-made'))).toBe(false);

      const dataDir = join(root, 'data');
      const stop = new AbortController();
      let printed = '';
      let running: Promise<number> | undefined;
      const listening = new Promise<{ grpc: string }>((resolve) => {
        const stdout = new Writable({
          write(chunk: Buffer, _enc, cb) {
            printed += chunk.toString();
            if (printed.includes('\n')) resolve(JSON.parse(printed.split('\n')[0] as string) as { grpc: string });
            cb();
          },
        });
        running = main(['coordinator', '--data', dataDir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--publish-receive-timeout', '1s'], { stdout, stderr: new PassThrough().resume(), signal: stop.signal });
      });
      try {
        const { grpc } = await listening;
        const s = connect(`http://${grpc}`);
        session = s;
        const message = PublishCodeRequest.encode({ bundle: Buffer.alloc(64 * 1024, 1), manifest: { transform: 'stalled', requirements: undefined, sourceFile: 't.js', bundler: 'test' } }).finish();
        const started = Date.now();
        const stalled = rawPublish(s, readFileSync(join(dataDir, 'auth-token'), 'utf8').trim(), message, 1024);
        expect(await stalled.status).toBe(Status.DEADLINE_EXCEEDED);
        expect(await stalled.message).toMatch(/^PublishCode: the bundle did not arrive within 1 s of the call being let in/);
        expect(Date.now() - started).toBeLessThan(5000);
      } finally {
        stop.abort();
        expect(await running).toBe(0);
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }, 20_000);
});
