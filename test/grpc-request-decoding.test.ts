import { Client, credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LineageServiceDefinition } from '../common/gen/retrace/v1/lineage.js';
import { meshExtension } from '../coordinator/mesh/mesh-extension.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * Request bytes that are not a valid protobuf message of the method's request type, sent by a raw
 * grpc-js client (nice-grpc clients only send what they encoded): refused with INVALID_ARGUMENT
 * naming the message, not grpc-js's INTERNAL "Error deserializing request", and the coordinator
 * goes on serving.
 */

// Field 1, length-delimited, then a length varint cut short.
const TRUNCATED = Buffer.from([0x0a, 0xff]);
const identity = (b: Buffer): Buffer => b;

let tc: TestCoordinator;
let raw: Client;

beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true, extensions: [meshExtension()] });
  raw = new Client(tc.grpcAddress, credentials.createInsecure());
});

afterAll(async () => {
  raw?.close();
  await tc?.stop();
});

function auth(): Metadata {
  const m = new Metadata();
  m.set('authorization', `Bearer ${tc.token}`);
  return m;
}

function unary(path: string, bytes: Buffer): Promise<ServiceError | Buffer> {
  return new Promise((resolve) => raw.makeUnaryRequest(path, identity, identity, bytes, auth(), (err, res) => resolve(err ?? (res as Buffer))));
}

function clientStream(path: string, messages: Buffer[]): Promise<ServiceError | Buffer> {
  return new Promise((resolve) => {
    const call = raw.makeClientStreamRequest(path, identity, identity, auth(), (err, res) => resolve(err ?? (res as Buffer)));
    for (const m of messages) call.write(m);
    call.end();
  });
}

describe('undecodable request bytes', () => {
  it('a unary call (LineageService/GetNode) is INVALID_ARGUMENT naming the request message', async () => {
    const r = await unary('/retrace.v1.LineageService/GetNode', TRUNCATED);
    expect(r).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect((r as ServiceError).details).toMatch(/^request: not a valid retrace\.v1\.GetNodeRequest message: \S/);
  });

  it('NodeService/GetNode names its own request message', async () => {
    const r = await unary('/retrace.v1.NodeService/GetNode', TRUNCATED);
    expect(r).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect((r as ServiceError).details).toMatch(/^request: not a valid retrace\.v1\.NodeServiceGetNodeRequest message: /);
  });

  it('a client stream (LineageService/SubmitEvents) is INVALID_ARGUMENT naming the message in the stream', async () => {
    const first = await clientStream('/retrace.v1.LineageService/SubmitEvents', [TRUNCATED]);
    expect(first).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect((first as ServiceError).details).toMatch(/^requests\[0\]: not a valid retrace\.v1\.SubmitEventsRequest message: \S/);
    // An empty message is a valid (empty) batch; the bad one after it is named by its place.
    const second = await clientStream('/retrace.v1.LineageService/SubmitEvents', [Buffer.alloc(0), TRUNCATED]);
    expect(second).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect((second as ServiceError).details).toMatch(/^requests\[1\]: not a valid retrace\.v1\.SubmitEventsRequest message: /);
  });

  it('the coordinator goes on serving, and well-formed raw bytes still work', async () => {
    await unary('/retrace.v1.LineageService/GetNode', TRUNCATED);
    const runs = await tc.client(LineageServiceDefinition).listRuns({});
    expect(runs.runs).toEqual([]);
    const ok = await unary('/retrace.v1.LineageService/ListRuns', Buffer.alloc(0));
    expect(ok).toBeInstanceOf(Buffer);
  });
});
