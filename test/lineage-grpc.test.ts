import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientError, createChannel, createClient, Status } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { Direction, LineageServiceDefinition, NodeKind, SubmitEventsRequest, SubmitEventsResponse, TraceView, type TraceRequest, type TraceSessionResponse } from '../common/gen/retrace/v1/lineage.js';
import { TraceSessionClient } from '../scripts/cli/trace-session-client.js';
import { decodeCompactTrace } from '../common/trace-compact.js';
import { decodeSubmitEventsRequest, LazySubmitEventsRequest } from '../coordinator/grpc/lineage-wire.js';
import { LedgerEntryBody, LineageEvent, Step, TriggerKind } from '../common/gen/retrace/v1/provenance.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { h, objectEvent, ref, runEvent, stepEvent } from './helpers/lineage-events.js';

let tc: TestCoordinator;
beforeAll(async () => {
  tc = await startTestCoordinator();
});
afterAll(async () => {
  await tc.stop();
});

async function* batches<T>(...items: T[]): AsyncGenerator<T> {
  for (const i of items) yield i;
}

describe('LineageService over gRPC', () => {
  it('accepts streamed batches and unary events, idempotently', async () => {
    const c = tc.client(LineageServiceDefinition);
    const r = await c.submitEvents(batches({ events: [runEvent('g-run', 'g-run'), objectEvent('g-o1', 'g:raw', 'raw')] }, { events: [stepEvent('g-s1', 'g-s1', [ref('g:raw', 'raw')], [ref('g:out', 'out')], { runId: 'g-run' })] }));
    expect(r).toMatchObject({ batches: '2', accepted: '3', duplicates: '0', treeSize: '3' });
    const again = await c.submitEvent({ event: objectEvent('g-o1', 'g:raw', 'raw') });
    expect(again).toEqual({ seq: '1', duplicate: true });
    const trace = await c.trace({ start: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'g:raw', contentHash: h('raw') }, direction: Direction.DIRECTION_DOWNSTREAM });
    expect(trace.nodes.map((n) => n.key)).toEqual(['step:g-s1', `version:g:out@${h('out')}`]);
    // Streamed events are stored with their received bytes; the ledger body decodes to the event.
    const proof = await c.getProof({ eventId: 'g-s1' });
    const body = LedgerEntryBody.decode(Buffer.from(proof.entryBody, 'base64'));
    expect(body.event).toEqual(stepEvent('g-s1', 'g-s1', [ref('g:raw', 'raw')], [ref('g:out', 'out')], { runId: 'g-run' }));
    expect(body.seq).toBe('2');
  });

  it('decodes SubmitEvents like the generated decoder, keeping each event\'s bytes and skipping unknown fields', () => {
    const events = [objectEvent('d1', 'd:1', 'd1'), stepEvent('d2', 'd2', [ref('d:1', 'd1')], [ref('d:2', 'd2')])];
    const known = SubmitEventsRequest.encode({ events }).finish();
    const unknown = Uint8Array.of((9 << 3) | 0, 42, (10 << 3) | 2, 2, 7, 7); // field 9 varint, field 10 bytes
    const bytes = Buffer.concat([unknown, known, unknown]);
    const decoded = decodeSubmitEventsRequest(bytes);
    expect(decoded).toBeInstanceOf(LazySubmitEventsRequest);
    expect(decoded.events).toEqual(SubmitEventsRequest.decode(bytes).events);
    const { wire } = (decoded as LazySubmitEventsRequest).decode();
    expect(wire.map((w) => LineageEvent.decode(w))).toEqual(events);
    expect(wire.map((w) => Buffer.from(w))).toEqual(events.map((e) => Buffer.from(LineageEvent.encode(e).finish())));
  });

  it('names the batch and field of bad input with INVALID_ARGUMENT and stores nothing of that batch', async () => {
    const c = tc.client(LineageServiceDefinition);
    const before = (await c.verifyLedger({})).entriesChecked;
    const err = await c
      .submitEvents(batches({ events: [objectEvent('g-b1', 'g:b1', 'b1')] }, { events: [objectEvent('g-b2', 'g:b2', 'b2'), stepEvent('g-bad', 'g-bad', [ref('g:b2', 'b2')], [{ objectId: 'x', contentHash: 'sha256:nothex', unversioned: false }])] }))
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(ClientError);
    expect((err as ClientError).code).toBe(Status.INVALID_ARGUMENT);
    expect((err as ClientError).details).toMatch(/^batches\[1\]\.events\[1\]\.step\.generated\[0\]\.content_hash: malformed hash/);
    const after = (await c.verifyLedger({})).entriesChecked;
    expect(BigInt(after) - BigInt(before)).toBe(1n); // batch 0 stored, batch 1 not at all
    await expect(c.getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'g:b2', contentHash: h('b2') } })).rejects.toMatchObject({ code: Status.NOT_FOUND });
    await expect(c.trace({ start: { kind: NodeKind.NODE_KIND_STEP, id: 'nope', contentHash: '' } })).rejects.toMatchObject({ code: Status.NOT_FOUND, details: expect.stringMatching(/^start: /) });
    await expect(c.trace({ start: { kind: NodeKind.NODE_KIND_STEP, id: 'g-s1', contentHash: '' }, pageSize: 200_000 })).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^page_size/) });
    await expect(c.submitEvent({})).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: 'event: is required' });
    // An event over the 1 MiB limit is named like any other bad field; a message over the
    // transport's 64 MiB is RESOURCE_EXHAUSTED, as gRPC clients expect of any server.
    const big = { ...objectEvent('g-big', 'g:big', 'big'), body: { $case: 'objectVersion' as const, value: { objectId: 'g:big', contentHash: h('big'), size: '3', mediaType: '', createdAtNs: '0', attributes: { blob: 'x'.repeat(1_100_000) }, facets: undefined } } };
    await expect(c.submitEvents(batches({ events: [objectEvent('g-small', 'g:small', 's'), big] }))).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/^batches\[0\]\.events\[1\]: event is \d+ bytes encoded; the limit is 1048576/) });
    await expect(c.getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'g:small', contentHash: h('s') } })).rejects.toMatchObject({ code: Status.NOT_FOUND });
    await expect(c.submitEvent({ event: { ...big, body: { ...big.body, value: { ...big.body.value, attributes: { blob: 'x'.repeat(65 * 2 ** 20) } } } } })).rejects.toMatchObject({ code: Status.RESOURCE_EXHAUSTED });
  });

  it('names the event whose bytes do not decode (INVALID_ARGUMENT, batches[i].events[j]) and stores nothing of that batch', async () => {
    // SubmitEvents with the request bytes as given, so one event can be garbage on the wire.
    const raw = {
      submitEvents: {
        path: '/retrace.v1.LineageService/SubmitEvents',
        requestStream: true,
        responseStream: false,
        requestSerialize: (bytes: Uint8Array): Buffer => Buffer.from(bytes),
        requestDeserialize: (bytes: Buffer): Uint8Array => bytes,
        responseSerialize: (r: SubmitEventsResponse): Buffer => Buffer.from(SubmitEventsResponse.encode(r).finish()),
        responseDeserialize: (bytes: Buffer): SubmitEventsResponse => SubmitEventsResponse.decode(bytes),
        options: {},
      },
    } as const;
    const c = tc.client(raw);
    const good = SubmitEventsRequest.encode({ events: [objectEvent('g-w1', 'g:w1', 'w1')] }).finish();
    // events[1] is a length-delimited field 1 whose payload is a varint that never ends.
    const garbage = Uint8Array.of(0x0a, 0x04, 0x08, 0xff, 0xff, 0xff);
    const bad = Buffer.concat([SubmitEventsRequest.encode({ events: [objectEvent('g-w2', 'g:w2', 'w2')] }).finish(), garbage]);
    const before = BigInt((await tc.client(LineageServiceDefinition).verifyLedger({})).entriesChecked);
    const err = await c.submitEvents(batches(good, bad)).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(ClientError);
    expect((err as ClientError).code).toBe(Status.INVALID_ARGUMENT);
    expect((err as ClientError).details).toMatch(/^batches\[1\]\.events\[1\]: does not decode as a LineageEvent/);
    const lineage = tc.client(LineageServiceDefinition);
    expect(BigInt((await lineage.verifyLedger({})).entriesChecked) - before).toBe(1n);
    await expect(lineage.getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'g:w2', contentHash: h('w2') } })).rejects.toMatchObject({ code: Status.NOT_FOUND });
  });

  it('keeps a status message short when it would echo a huge id, and the channel keeps answering', async () => {
    const c = tc.client(LineageServiceDefinition);
    const err = await c.getRecordPath({ objectId: 'x'.repeat(100_000), contentHash: '', asOfNs: '0' }, { signal: AbortSignal.timeout(10_000) }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(ClientError);
    expect((err as ClientError).code).toBe(Status.NOT_FOUND);
    expect((err as ClientError).details.length).toBeLessThanOrEqual(1024);
    expect((err as ClientError).details).toMatch(/^object_id: object "xxx.*… \(\d+ characters in all\)$/);
    expect((await c.listRuns({})).runs).toBeDefined();
  });

  it('refuses calls without the token, but serves health and reflection', async () => {
    const channel = createChannel(tc.grpcAddress);
    try {
      const anon = createClient(LineageServiceDefinition, channel);
      await expect(anon.listRuns({})).rejects.toMatchObject({ code: Status.UNAUTHENTICATED });
      const health = createClient(HealthDefinition, channel);
      expect((await health.check({ service: '' })).status).toBe(1); // SERVING
    } finally {
      channel.close();
    }
  });

  it('lists its services through server reflection', async () => {
    const grpc = await import('@grpc/grpc-js');
    // Reflection is a bidi stream of ServerReflectionRequest{list_services:""}; encode it by hand (field 7, string).
    const client = new grpc.Client(tc.grpcAddress, grpc.credentials.createInsecure());
    const call = client.makeBidiStreamRequest('/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', (b: Buffer) => b, (b: Buffer) => b);
    const response = await new Promise<Buffer>((resolve, reject) => {
      call.on('data', (d: Buffer) => resolve(d));
      call.on('error', reject);
      call.write(Buffer.from([0x3a, 0x00]));
    });
    call.end();
    client.close();
    expect(response.toString('latin1')).toContain('retrace.v1.LineageService');
  });

  it('exports W3C PROV-JSON of a subgraph', async () => {
    const c = tc.client(LineageServiceDefinition);
    const r = await c.exportProv({ start: { kind: NodeKind.NODE_KIND_STEP, id: 'g-s1', contentHash: '' } });
    const doc = JSON.parse(r.provJson) as Record<string, Record<string, Record<string, unknown>>>;
    expect(doc.prefix?.retrace).toBeDefined();
    expect(Object.keys(doc.activity ?? {})).toEqual(['retrace:step%2Fg-s1']);
    expect(Object.values(doc.used ?? {})).toEqual([{ 'prov:activity': 'retrace:step%2Fg-s1', 'prov:entity': `retrace:${encodeURIComponent(`version/g:raw@${h('raw')}`)}` }]);
    expect(Object.values(doc.wasGeneratedBy ?? {})[0]).toMatchObject({ 'prov:entity': `retrace:${encodeURIComponent(`version/g:out@${h('out')}`)}` });
    expect(Object.keys(doc.entity ?? {})).toHaveLength(2);
    expect(Object.keys(doc.agent ?? {})).toContain('retrace:node%2Fnode-1');
  });

  it("exports an OpenLineage producer as a prov:SoftwareAgent and the trigger kind by its name, as --json prints it", async () => {
    const c = tc.client(LineageServiceDefinition);
    const producer = 'https://github.com/OpenLineage/OpenLineage/tree/1.23.0/integration/spark';
    await c.submitEvents(batches({
      events: [
        objectEvent('pa-in', 'pa:in', 'in'),
        stepEvent('pa-s1', 'pa-s1', [ref('pa:in', 'in')], [ref('pa:out', 'out')], { why: { kind: TriggerKind.TRIGGER_KIND_EVENT, id: 'r1', principal: producer } }),
        stepEvent('pa-s2', 'pa-s2', [ref('pa:in', 'in')], [ref('pa:out2', 'out2')], { why: { kind: TriggerKind.TRIGGER_KIND_MANUAL, id: 'r2', principal: 'alice' } }),
      ],
    }));
    const r = await c.exportProv({ start: { kind: NodeKind.NODE_KIND_OBJECT, id: 'pa:in', contentHash: '' }, direction: Direction.DIRECTION_DOWNSTREAM });
    const doc = JSON.parse(r.provJson) as Record<string, Record<string, Record<string, unknown>>>;
    expect(doc.agent?.[`retrace:${encodeURIComponent(`principal/${producer}`)}`]).toEqual({ 'prov:type': { $: 'prov:SoftwareAgent', type: 'prov:QUALIFIED_NAME' } });
    expect(doc.agent?.['retrace:principal%2Falice']).toEqual({ 'prov:type': { $: 'prov:Person', type: 'prov:QUALIFIED_NAME' } });
    const s1 = await c.getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: 'pa-s1', contentHash: '' } });
    const printed = s1.body?.$case === 'step' ? (Step.toJSON(s1.body.value) as { why: { kind: unknown } }).why.kind : undefined;
    expect(printed).toBe('TRIGGER_KIND_EVENT');
    expect(doc.activity?.['retrace:step%2Fpa-s1']?.['retrace:triggerKind']).toBe(printed);
    expect(doc.activity?.['retrace:step%2Fpa-s2']?.['retrace:triggerKind']).toBe('TRIGGER_KIND_MANUAL');
  });

  it('answers the compact view with the nodes and distances of the ids view, page by page', async () => {
    const c = tc.client(LineageServiceDefinition);
    // a, b → s1 → x1, a, b → s2 → x2 (t 2000); x1, x2 → s3 → y (t 3000); a → f<i> → z<i> (t 4000);
    // y, z0 → s4 → w (t 5000); b → s5 → y's second version (t 6000).
    const events = [objectEvent('cv-a', 'cv:a', 'a', '1000'), objectEvent('cv-b', 'cv:b', 'b', '1000')];
    events.push(stepEvent('cv-s1', 'cv-s1', [ref('cv:a', 'a'), ref('cv:b', 'b')], [ref('cv:x1', 'x1')], { timeNs: '2000' }));
    events.push(stepEvent('cv-s2', 'cv-s2', [ref('cv:a', 'a'), ref('cv:b', 'b')], [ref('cv:x2', 'x2')], { timeNs: '2000' }));
    events.push(stepEvent('cv-s3', 'cv-s3', [ref('cv:x1', 'x1'), ref('cv:x2', 'x2')], [ref('cv:y', 'y')], { timeNs: '3000' }));
    for (let i = 0; i < 9; i++) events.push(stepEvent(`cv-f${i}`, `cv-f${i}`, [ref('cv:a', 'a')], [ref(`cv:z${i}`, `z${i}`)], { timeNs: '4000' }));
    events.push(stepEvent('cv-s4', 'cv-s4', [ref('cv:y', 'y'), ref('cv:z0', 'z0')], [ref('cv:w', 'w')], { timeNs: '5000' }));
    events.push(stepEvent('cv-s5', 'cv-s5', [ref('cv:b', 'b')], [ref('cv:y', 'y2')], { timeNs: '6000' }));
    await c.submitEvents(batches({ events }));
    const version = (id: string, content: string) => ({ kind: NodeKind.NODE_KIND_OBJECT_VERSION, id, contentHash: h(content) });
    type Page = { total: string; nodes: string[] };
    const pages = async (request: Partial<TraceRequest>, view: TraceView): Promise<Page[]> => {
      const out: Page[] = [];
      let pageToken = '';
      do {
        const r = await c.trace({ ...request, view, pageToken });
        let ids: ArrayLike<number>;
        let distances: ArrayLike<number>;
        if (view === TraceView.TRACE_VIEW_COMPACT) {
          expect(r.nodeIds).toEqual([]);
          expect(r.packedNodeIds.length).toBe(0);
          ({ nodeIds: ids, distances } = decodeCompactTrace(r));
          // Within a group, node numbers ascend.
          for (let i = 1; i < ids.length; i++) if (distances[i] === distances[i - 1]) expect(ids[i]).toBeGreaterThan(ids[i - 1] as number);
        } else {
          expect(r.compactNodeIds.length).toBe(0);
          ({ nodeIds: ids, distances } = r);
        }
        const keys = (await c.resolveNodes({ nodeIds: Array.from(ids) })).keys;
        out.push({ total: r.totalNodes, nodes: keys.map((k, i) => `${distances[i]} ${k}`).sort() });
        pageToken = r.nextPageToken;
      } while (pageToken !== '');
      return out;
    };
    // [name, request, closure size now, as-of time that cuts it, closure size then]
    const cases: [string, Partial<TraceRequest>, number, string, number][] = [
      ['downstream', { start: version('cv:a', 'a'), direction: Direction.DIRECTION_DOWNSTREAM }, 26, '3500', 6],
      // Upstream of a version is whole from its first sighting (before it, NOT_FOUND): nothing to cut.
      ['upstream', { start: version('cv:w', 'w'), direction: Direction.DIRECTION_UPSTREAM }, 11, '5000', 11],
      ['upstream object-level', { start: { kind: NodeKind.NODE_KIND_OBJECT, id: 'cv:y', contentHash: '' }, direction: Direction.DIRECTION_UPSTREAM }, 8, '5500', 7],
      ['both', { start: version('cv:x2', 'x2'), direction: Direction.DIRECTION_BOTH }, 7, '3500', 5],
    ];
    for (const [name, request, total, cut, totalThen] of cases) {
      for (const [asOfNs, size] of [['0', total], [cut, totalThen]] as const) {
        for (const pageSize of [0, 3]) {
          const what = `${name} as of ${asOfNs}, page size ${pageSize}`;
          const compact = await pages({ ...request, asOfNs, pageSize }, TraceView.TRACE_VIEW_COMPACT);
          const ids = await pages({ ...request, asOfNs, pageSize }, TraceView.TRACE_VIEW_IDS);
          expect(compact, what).toEqual(ids);
          const all = ids.flatMap((p) => p.nodes);
          expect(all, what).toHaveLength(size);
          expect(new Set(all).size).toBe(size);
          expect(ids.every((p) => p.total === String(size))).toBe(true);
          expect(ids.length, what).toBe(pageSize === 0 ? 1 : Math.max(1, Math.ceil(size / pageSize)));
        }
      }
    }
    const down = (await pages(cases[0]?.[1] as Partial<TraceRequest>, TraceView.TRACE_VIEW_COMPACT))[0]?.nodes;
    expect(down).toContain(`4 version:cv:w@${h('w')}`);
  });

  it('answers pipelined TraceSession queries in order, as Trace does, and keeps the session open after a bad query', async () => {
    const c = tc.client(LineageServiceDefinition);
    await c.submitEvents(batches({ events: [objectEvent('ts-a', 'ts:a', 'a', '1000'), stepEvent('ts-s1', 'ts-s1', [ref('ts:a', 'a')], [ref('ts:b', 'b')], { timeNs: '2000' }), stepEvent('ts-s2', 'ts-s2', [ref('ts:b', 'b')], [ref('ts:c', 'c')], { timeNs: '3000' })] }));
    const a = { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'ts:a', contentHash: h('a') };
    const cv = { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'ts:c', contentHash: h('c') };
    const good: Partial<TraceRequest>[] = [
      { start: a, direction: Direction.DIRECTION_DOWNSTREAM, view: TraceView.TRACE_VIEW_COMPACT },
      { start: cv, direction: Direction.DIRECTION_UPSTREAM, includeEdges: true },
      { start: a, direction: Direction.DIRECTION_DOWNSTREAM, asOfNs: '2500', view: TraceView.TRACE_VIEW_KEYS },
      { start: a, direction: Direction.DIRECTION_BOTH, pageSize: 1 },
    ];
    const session = new TraceSessionClient(c);
    // Sent before any answer is read: good and bad queries interleaved.
    const answers = [
      session.trace(good[0] as TraceRequest),
      session.trace({ start: { kind: NodeKind.NODE_KIND_STEP, id: 'ts-nope', contentHash: '' } }),
      session.trace(good[1] as TraceRequest),
      session.trace({ start: a, pageSize: 200_000 }),
      session.trace(good[2] as TraceRequest),
    ].map((p) => p.then((r) => ({ ok: r }), (err: unknown) => ({ err })));
    const settled = await Promise.all(answers);
    expect(settled[0]).toEqual({ ok: await c.trace(good[0] as TraceRequest) });
    expect(settled[2]).toEqual({ ok: await c.trace(good[1] as TraceRequest) });
    expect(settled[4]).toEqual({ ok: await c.trace(good[2] as TraceRequest) });
    expect((settled[4] as { ok: { keys: string[] } }).ok.keys).toEqual(['step:ts-s1', `version:ts:b@${h('b')}`]);
    expect(settled[1]).toMatchObject({ err: { code: 'NOT_FOUND', field: 'start', message: 'start: node step:ts-nope not found' } });
    expect(settled[3]).toMatchObject({ err: { code: 'INVALID_ARGUMENT', field: 'page_size' } });
    // Still open after the errors; paging works through it.
    const page1 = await session.trace(good[3] as TraceRequest);
    const page2 = await session.trace({ ...good[3], pageToken: page1.nextPageToken });
    expect([page1.nodes.length, page2.nodes.length, page1.totalNodes]).toEqual([1, 1, '4']);
    expect(page2).toEqual(await c.trace({ ...good[3], pageToken: page1.nextPageToken }));
    await session.close();
    await expect(session.trace(good[0] as TraceRequest)).rejects.toMatchObject({ code: 'UNAVAILABLE' });

    // On the raw stream: answers carry the request ids; a request without a query is an error.
    const raw: TraceSessionResponse[] = [];
    for await (const r of c.traceSession(batches({ requestId: 7 }, { requestId: 9, trace: good[2] as TraceRequest }))) raw.push(r);
    expect(raw.map((r) => [r.requestId, r.result?.$case])).toEqual([[7, 'error'], [9, 'trace']]);
    expect(raw[0]?.result).toEqual({ $case: 'error', value: { code: Status.INVALID_ARGUMENT, message: 'trace: is required', field: 'trace' } });

    // Aborting the client's signal ends the session: queries then reject, none hangs.
    const abort = new AbortController();
    const aborted = new TraceSessionClient(c, { signal: abort.signal });
    expect((await aborted.trace(good[2] as TraceRequest)).keys).toHaveLength(2);
    const pending = aborted.trace(good[0] as TraceRequest).then(() => 'answered', () => 'rejected');
    abort.abort();
    expect(['answered', 'rejected']).toContain(await pending);
    await expect(aborted.trace(good[0] as TraceRequest)).rejects.toBeDefined();
    await aborted.close();

    // Without the token the stream itself fails.
    const channel = createChannel(tc.grpcAddress);
    try {
      const anon = createClient(LineageServiceDefinition, channel);
      const anonSession = new TraceSessionClient(anon);
      await expect(anonSession.trace(good[0] as TraceRequest)).rejects.toMatchObject({ code: Status.UNAUTHENTICATED });
    } finally {
      channel.close();
    }
  });

  it('lists runs and verifies the ledger', async () => {
    const c = tc.client(LineageServiceDefinition);
    const runs = await c.listRuns({ namePrefix: 'pipeline/' });
    expect(runs.runs.map((r) => r.runId)).toEqual(['g-run']);
    const v = await c.verifyLedger({});
    expect(v.ok).toBe(true);
    expect(v.checkpoint?.treeSize).toBe(v.entriesChecked);
  });
});
