import { Status, type Client, type CompatServiceDefinition } from 'nice-grpc';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { TriggerKind, type LineageEvent, type Step } from '../common/gen/retrace/v1/provenance.js';
import { addToken } from '../coordinator/token-file.js';
import { objectEvent, ref, stepEvent } from './helpers/lineage-events.js';
import { runCli } from './helpers/in-process-cli.js';
import { processHarness } from './helpers/process-harness.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';

/**
 * The principal a step records, for events a client writes itself: a client token's native
 * events (SubmitEvent, SubmitEvents) and OpenLineage runs are recorded as caused by the token's
 * name; the owner token's as sent. A real coordinator, LevelDB in a temp dir, real sockets.
 */

let tc: TestCoordinator;
let client: string;
/** Client channels, closed after all. */
const clients = processHarness();

function as<S extends CompatServiceDefinition>(token: string, definition: S): Client<S> {
  return clients.client(tc.grpcAddress, token, definition);
}

async function* batches(...list: LineageEvent[][]): AsyncIterable<{ events: LineageEvent[] }> {
  for (const events of list) yield { events };
}

/** The stored step `stepId`, or undefined when none is. */
async function storedStep(stepId: string): Promise<Step | undefined> {
  try {
    const node = await as(tc.token, LineageServiceDefinition).getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id: stepId, contentHash: '' } });
    return node.body?.$case === 'step' ? node.body.value : undefined;
  } catch (err) {
    if ((err as { code?: Status }).code === Status.NOT_FOUND) return undefined;
    throw err;
  }
}

async function storedObject(objectId: string, content: string): Promise<boolean> {
  try {
    await as(tc.token, LineageServiceDefinition).getNode({ node: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: objectId, contentHash: ref(objectId, content).contentHash } });
    return true;
  } catch (err) {
    if ((err as { code?: Status }).code === Status.NOT_FOUND) return false;
    throw err;
  }
}

const why = (principal: string): Step['why'] => ({ kind: TriggerKind.TRIGGER_KIND_MANUAL, id: 'm-1', principal });

beforeAll(async () => {
  tc = await startTestCoordinator({ quiet: true });
  client = addToken(tc.dataDir, 'ci-bot', 'client').token;
});

afterAll(async () => {
  await clients.cleanup();
  await tc.stop();
});

describe('principal of native step events', () => {
  it('a client token\'s SubmitEvents step with no principal is stored as the token\'s name; the same events resent are duplicates', async () => {
    const events = [objectEvent('pb-o1', 'pb:in1', 'a'), stepEvent('pb-s1', 'pb-step1', [ref('pb:in1', 'a')], [ref('pb:out1', 'b')]), stepEvent('pb-s1b', 'pb-step1b', [ref('pb:in1', 'a')], [ref('pb:out1b', 'c')], { why: why('') })];
    const lineage = as(client, LineageServiceDefinition);
    expect(await lineage.submitEvents(batches(events))).toMatchObject({ accepted: '3', duplicates: '0' });
    expect((await storedStep('pb-step1'))?.why).toMatchObject({ principal: 'ci-bot' });
    // A why with a trigger keeps it; only the principal is filled in.
    expect((await storedStep('pb-step1b'))?.why).toEqual({ kind: TriggerKind.TRIGGER_KIND_MANUAL, id: 'm-1', principal: 'ci-bot' });
    // Resent as sent (empty principal), and naming the token itself: duplicates, not refused.
    expect(await lineage.submitEvents(batches(events))).toMatchObject({ accepted: '0', duplicates: '3' });
    const named = [events[0] as LineageEvent, stepEvent('pb-s1', 'pb-step1', [ref('pb:in1', 'a')], [ref('pb:out1', 'b')], { why: why('ci-bot') })];
    expect(await lineage.submitEvents(batches(named))).toMatchObject({ accepted: '0', duplicates: '2' });
    expect(await lineage.submitEvent({ event: events[1] })).toMatchObject({ duplicate: true });
  });

  it('a client token\'s step naming another principal is PERMISSION_DENIED naming the field, and nothing of its batch is stored', async () => {
    const lineage = as(client, LineageServiceDefinition);
    const bad = [
      objectEvent('pb-o2', 'pb:in2', 'a2'),
      stepEvent('pb-s2', 'pb-step2', [ref('pb:in2', 'a2')], [ref('pb:out2', 'b2')]),
      objectEvent('pb-o3', 'pb:in3', 'a3'),
      stepEvent('pb-s3', 'pb-step3', [ref('pb:in3', 'a3')], [ref('pb:out3', 'b3')], { why: why('alice') }),
    ];
    await expect(lineage.submitEvents(batches([objectEvent('pb-o0', 'pb:in0', 'a0')], bad))).rejects.toMatchObject({
      code: Status.PERMISSION_DENIED,
      details: expect.stringMatching(/^batches\[1\]\.events\[3\]\.step\.why\.principal: .*"ci-bot".*"alice"/),
    });
    expect(await storedObject('pb:in0', 'a0')).toBe(true);
    expect(await storedObject('pb:in2', 'a2')).toBe(false);
    expect(await storedObject('pb:in3', 'a3')).toBe(false);
    expect(await storedStep('pb-step2')).toBeUndefined();
    expect(await storedStep('pb-step3')).toBeUndefined();

    await expect(lineage.submitEvent({ event: bad[3] })).rejects.toMatchObject({ code: Status.PERMISSION_DENIED, details: expect.stringMatching(/^event\.step\.why\.principal: /) });
    expect(await storedStep('pb-step3')).toBeUndefined();
  });

  it('a client token\'s SubmitEvent with no principal is stored as the token\'s name', async () => {
    const lineage = as(client, LineageServiceDefinition);
    await lineage.submitEvent({ event: objectEvent('pb-o4', 'pb:in4', 'a4') });
    await lineage.submitEvent({ event: stepEvent('pb-s4', 'pb-step4', [ref('pb:in4', 'a4')], [ref('pb:out4', 'b4')]) });
    expect((await storedStep('pb-step4'))?.why).toMatchObject({ principal: 'ci-bot' });
  });

  it('the owner token\'s steps are stored as sent: another principal, or none', async () => {
    const lineage = as(tc.token, LineageServiceDefinition);
    const events = [objectEvent('pb-o5', 'pb:in5', 'a5'), stepEvent('pb-s5', 'pb-step5', [ref('pb:in5', 'a5')], [ref('pb:out5', 'b5')], { why: why('alice') }), stepEvent('pb-s6', 'pb-step6', [ref('pb:in5', 'a5')], [ref('pb:out6', 'b6')])];
    expect(await lineage.submitEvents(batches(events))).toMatchObject({ accepted: '3' });
    expect((await storedStep('pb-step5'))?.why).toMatchObject({ principal: 'alice' });
    expect((await storedStep('pb-step6'))?.why).toBeUndefined();
    await lineage.submitEvent({ event: stepEvent('pb-s7', 'pb-step7', [ref('pb:in5', 'a5')], [ref('pb:out7', 'b7')], { why: why('bob') }) });
    expect((await storedStep('pb-step7'))?.why).toMatchObject({ principal: 'bob' });
  });
});

describe('principal of OpenLineage runs', () => {
  const runEvent = (runId: string) => ({
    eventTime: '2024-10-17T09:18:26.825Z',
    producer: 'https://example.com/producer',
    schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent',
    eventType: 'COMPLETE',
    run: { runId, facets: {} },
    job: { namespace: 'pb', name: `job-${runId.slice(-2)}`, facets: { ownership: { _producer: 'https://example.com/producer', _schemaURL: 'https://openlineage.io/spec/facets/1-0-1/OwnershipJobFacet.json', owners: [{ name: 'team:data' }] } } },
    inputs: [{ namespace: 'pb', name: 'raw' }],
    outputs: [{ namespace: 'pb', name: `clean-${runId.slice(-2)}` }],
  });

  async function post(token: string, path: string, body: unknown): Promise<number> {
    const res = await fetch(`${tc.httpUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify(body) });
    await res.text();
    return res.status;
  }

  it('a client token\'s run is caused by the token\'s name, the ownership facet kept as a facet', async () => {
    const one = '00000000-0000-4000-8000-0000000000a1';
    const two = '00000000-0000-4000-8000-0000000000a2';
    expect(await post(client, '/api/v1/lineage', runEvent(one))).toBe(201);
    expect(await post(client, '/api/v1/lineage/batch', [runEvent(two)])).toBe(201);
    for (const runId of [one, two]) {
      const step = await storedStep(`openlineage:${runId}`);
      expect(step?.why).toMatchObject({ principal: 'ci-bot' });
      expect(JSON.stringify(step?.facets)).toContain('team:data');
    }
  });

  it('the owner token\'s run is caused by the ownership facet\'s first owner, as before', async () => {
    const runId = '00000000-0000-4000-8000-0000000000a3';
    expect(await post(tc.token, '/api/v1/lineage', runEvent(runId))).toBe(201);
    expect((await storedStep(`openlineage:${runId}`))?.why).toMatchObject({ principal: 'team:data' });
  });

  it('retrace submit of an OpenLineage file records what the HTTP API records: the client token\'s name, else the ownership facet\'s owner', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrace-submit-principal-'));
    try {
      const asClient = '00000000-0000-4000-8000-0000000000b1';
      const asOwner = '00000000-0000-4000-8000-0000000000b2';
      const conn = ['--coordinator', tc.grpcAddress];
      writeFileSync(join(dir, 'client.json'), JSON.stringify([runEvent(asClient)]));
      writeFileSync(join(dir, 'owner.json'), JSON.stringify(runEvent(asOwner)));
      const byClient = await runCli(['submit', join(dir, 'client.json'), ...conn, '--token', client]);
      expect(byClient.err).toBe('');
      expect(byClient.code).toBe(0);
      expect((await storedStep(`openlineage:${asClient}`))?.why).toMatchObject({ principal: 'ci-bot' });
      expect((await runCli(['submit', join(dir, 'owner.json'), ...conn, '--token', tc.token])).code).toBe(0);
      expect((await storedStep(`openlineage:${asOwner}`))?.why).toMatchObject({ principal: 'team:data' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
