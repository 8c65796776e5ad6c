import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientError, Status } from 'nice-grpc';
import { Direction, LineageServiceDefinition, NodeKind, TraceView, type TraceRequest } from '../common/gen/retrace/v1/lineage.js';
import { TraceSessionClient } from '../scripts/cli/trace-session-client.js';
import { h, objectEvent, ref, stepEvent } from './helpers/lineage-events.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * Bad input to the lineage read RPCs: a malformed version hash, a negative as-of time, an
 * unknown view or node kind were answered NOT_FOUND or as an empty closure; each is
 * INVALID_ARGUMENT naming the field.
 */

let tc: TestCoordinator;
beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true });
  await tc.client(LineageServiceDefinition).submitEvents(
    (async function* () {
      yield { events: [objectEvent('in-a', 'in:a', 'a', '1000'), stepEvent('in-s1', 'in-s1', [ref('in:a', 'a')], [ref('in:b', 'b')], { timeNs: '2000' })] };
    })(),
  );
});
afterAll(async () => {
  await tc.stop();
});

const version = (contentHash: string) => ({ kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'in:a', contentHash });
const step = { kind: NodeKind.NODE_KIND_STEP, id: 'in-s1', contentHash: '' };

async function statusOf(call: Promise<unknown>): Promise<[Status, string] | 'ok'> {
  try {
    await call;
    return 'ok';
  } catch (err) {
    if (!(err instanceof ClientError)) throw err;
    return [err.code, err.details];
  }
}

describe('lineage read RPCs name the field of bad input', () => {
  it('Trace, GetNode, GetRecordPath and ExportProv', async () => {
    const c = tc.client(LineageServiceDefinition);
    expect(await statusOf(c.trace({ start: version('sha256:12') }))).toEqual([Status.INVALID_ARGUMENT, 'start.content_hash: malformed hash "sha256:12"; expected sha256:<64 lowercase hex digits>']);
    expect(await statusOf(c.trace({ start: version('') }))).toEqual([Status.INVALID_ARGUMENT, 'start.content_hash: is required for an object version (sha256:<64 hex digits>)']);
    expect(await statusOf(c.trace({ start: { kind: NodeKind.NODE_KIND_STEP, id: '', contentHash: '' } }))).toEqual([Status.INVALID_ARGUMENT, 'start.id: is required']);
    expect(await statusOf(c.trace({ start: { kind: 42 as NodeKind, id: 'x', contentHash: '' } }))).toEqual([Status.INVALID_ARGUMENT, 'start.kind: must be OBJECT, OBJECT_VERSION, STEP, RUN or TRANSFORM']);
    expect(await statusOf(c.trace({ start: step, asOfNs: '-5' }))).toEqual([Status.INVALID_ARGUMENT, 'as_of_ns: must be 0 (now) or nanoseconds since the epoch, got -5']);
    expect(await statusOf(c.trace({ start: step, view: 99 as TraceView }))).toEqual([Status.INVALID_ARGUMENT, 'view: unknown view 99']);
    expect(await statusOf(c.getNode({ node: version('xyz') }))).toEqual([Status.INVALID_ARGUMENT, 'node.content_hash: malformed hash "xyz"; expected sha256:<64 lowercase hex digits>']);
    expect(await statusOf(c.getRecordPath({ objectId: 'in:a', contentHash: 'xyz' }))).toEqual([Status.INVALID_ARGUMENT, 'content_hash: malformed hash "xyz"; expected sha256:<64 lowercase hex digits>']);
    expect(await statusOf(c.getRecordPath({ objectId: 'in:a', asOfNs: '-1' }))).toEqual([Status.INVALID_ARGUMENT, 'as_of_ns: must be 0 (now) or nanoseconds since the epoch, got -1']);
    expect(await statusOf(c.exportProv({ start: version('sha256:zz'), direction: Direction.DIRECTION_DOWNSTREAM }))).toEqual([Status.INVALID_ARGUMENT, 'start.content_hash: malformed hash "sha256:zz"; expected sha256:<64 lowercase hex digits>']);
    // Good input still answers; an unknown but well-formed version is NOT_FOUND.
    expect((await c.trace({ start: version(h('a')) })).nodes.map((n) => n.key)).toEqual(['step:in-s1', `version:in:b@${h('b')}`]);
    expect(await statusOf(c.trace({ start: version(h('zz')) }))).toEqual([Status.NOT_FOUND, `start: node version:in:a@${h('zz')} not found`]);
  });

  it('TraceSession answers the same errors with their field and stays open', async () => {
    const session = new TraceSessionClient(tc.client(LineageServiceDefinition));
    const bad = await session.trace({ start: version('sha256:12') } as TraceRequest).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(bad).toMatchObject({ code: 'INVALID_ARGUMENT', field: 'start.content_hash' });
    expect((await session.trace({ start: step } as TraceRequest)).nodes).toHaveLength(1);
    await session.close();
  });
});
