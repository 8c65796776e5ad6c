import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createChannel, createClientFactory, Metadata, type Channel, type Client } from 'nice-grpc';
import { afterEach, describe, expect, it } from 'vitest';
import { LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { contentHashOf } from '../common/hash.js';
import { killChildren, runCliProcess, startCoordinatorProcess } from './helpers/coordinator-process.js';

/**
 * Crash safety of the ledger: a child-process coordinator (the real CLI, LevelDB in a temp dir)
 * is SIGKILLed while several clients submit; every event whose submission was acknowledged must
 * be there after a restart, the ledger must verify, and resending is idempotent.
 */

const KILL_AFTER_ACKS = 1500;

type LineageClient = Client<typeof LineageServiceDefinition>;

const children: ChildProcess[] = [];
const channels: Channel[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const c of channels.splice(0)) c.close();
  await killChildren(children);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function connect(address: string, token: string): LineageClient {
  const channel = createChannel(address);
  channels.push(channel);
  return createClientFactory().create(LineageServiceDefinition, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${token}` }) } });
}

const runCli = (args: string[]) => runCliProcess(args, children);

const BASE_NS = 1_700_000_000_000_000_000n;
const PRODUCER = 'test://crash-safety';

function versionEvent(eventId: string, objectId: string, content: string, n: number): LineageEvent {
  return LineageEvent.fromPartial({
    eventId,
    eventTimeNs: (BASE_NS + BigInt(n)).toString(),
    producer: PRODUCER,
    body: { $case: 'objectVersion', value: { objectId, contentHash: contentHashOf(content), size: String(content.length), mediaType: 'text/plain' } },
  });
}

/** A run, an input version and a step of that run that uses it and generates an output: two batches. */
function stepUnit(prefix: string, n: number): LineageEvent[][] {
  const runId = `${prefix}-run`;
  const input = versionEvent(`${prefix}-in`, `${prefix}/in`, `${prefix} input`, n);
  const run = LineageEvent.fromPartial({
    eventId: `${prefix}-run`,
    eventTimeNs: (BASE_NS + BigInt(n)).toString(),
    producer: PRODUCER,
    body: { $case: 'run', value: { runId, name: `crash-${prefix}`, state: 'RUNNING' } },
  });
  const step = LineageEvent.fromPartial({
    eventId: `${prefix}-step`,
    eventTimeNs: (BASE_NS + BigInt(n) + 1n).toString(),
    producer: PRODUCER,
    body: {
      $case: 'step',
      value: {
        stepId: `${prefix}-step`,
        runId,
        transform: 'crash-transform',
        used: [{ objectId: `${prefix}/in`, contentHash: contentHashOf(`${prefix} input`) }],
        generated: [{ objectId: `${prefix}/out`, contentHash: contentHashOf(`${prefix} output`) }],
      },
    },
  });
  return [[run, input], [step]];
}

async function* batchesOf(batches: LineageEvent[][]): AsyncGenerator<{ events: LineageEvent[] }> {
  for (const events of batches) yield { events };
}

async function inChunks<T>(items: readonly T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

describe('crash safety', () => {
  it('keeps every acknowledged event across a SIGKILL mid-submission, verifies, and stays idempotent', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'retrace-crash-'));
    dirs.push(dataDir);
    const first = await startCoordinatorProcess(dataDir, children);
    const token = readFileSync(join(dataDir, 'auth-token'), 'utf8').trim();

    /** Every acknowledged event, with the seq the coordinator answered (unary) or undefined (stream). */
    const acked = new Map<string, { event: LineageEvent; seq?: string }>();
    /** Submissions that were not acknowledged (in flight at the kill, or sent after it). */
    const unacked: LineageEvent[][][] = [];
    const anomalies: string[] = [];
    let inFlight = 0;
    let inFlightAtKill = -1;
    let stopped = false;
    const kill = (): void => {
      if (stopped) return;
      stopped = true;
      inFlightAtKill = inFlight;
      first.proc.kill('SIGKILL');
    };
    const noteAck = (): void => {
      if (acked.size >= KILL_AFTER_ACKS) kill();
    };

    const clients = Array.from({ length: 4 }, () => connect(first.grpc, token));
    const unaryWorker = async (client: LineageClient, w: string): Promise<void> => {
      for (let n = 0; !stopped; n++) {
        const id = `u-${w}-${n}`;
        const event = versionEvent(id, `crash/${w}/${n}`, `content ${w} ${n}`, n);
        inFlight++;
        let r;
        try {
          r = await client.submitEvent({ event });
        } catch {
          unacked.push([[event]]);
          return;
        } finally {
          inFlight--;
        }
        if (r.duplicate) anomalies.push(`${id} was a duplicate on first submission`);
        acked.set(id, { event, seq: r.seq });
        noteAck();
      }
    };
    const streamWorker = async (client: LineageClient, w: string): Promise<void> => {
      for (let n = 0; !stopped; n++) {
        const batches = stepUnit(`s-${w}-${n}`, n);
        inFlight++;
        let r;
        try {
          r = await client.submitEvents(batchesOf(batches));
        } catch {
          unacked.push(batches);
          return;
        } finally {
          inFlight--;
        }
        if (r.batches !== '2' || r.accepted !== '3') anomalies.push(`s-${w}-${n}: ${JSON.stringify(r)}`);
        for (const event of batches.flat()) acked.set(event.eventId, { event });
        noteAck();
      }
    };
    const workers = clients.flatMap((client, c) => [
      unaryWorker(client, `${c}a`),
      unaryWorker(client, `${c}b`),
      unaryWorker(client, `${c}c`),
      streamWorker(client, `${c}s`),
    ]);
    const died = await first.exited;
    await Promise.all(workers);
    expect(died.signal, first.stderr()).toBe('SIGKILL');
    expect(anomalies).toEqual([]);
    expect(acked.size).toBeGreaterThanOrEqual(KILL_AFTER_ACKS);
    // The kill landed while other submissions were waiting for their answer. (Some of those may
    // still have been acknowledged: their answers were already on the wire. Those count as acked.)
    expect(inFlightAtKill).toBeGreaterThan(0);

    // Restart on the same data dir.
    const second = await startCoordinatorProcess(dataDir, children);
    const client = connect(second.grpc, token);

    // Every acknowledged event is in the ledger, at the seq it was acknowledged with.
    const ids = [...acked.keys()];
    const missing: string[] = [];
    await inChunks(ids, 64, async (id) => {
      try {
        const proof = await client.getProof({ eventId: id });
        const want = acked.get(id)?.seq;
        if (want !== undefined) expect(proof.seq, id).toBe(want);
      } catch (err) {
        missing.push(`${id}: ${(err as Error).message}`);
      }
    });
    expect(missing).toEqual([]);
    // ...and so are the entities the stream workers created.
    const stepIds = ids.filter((id) => id.endsWith('-step'));
    expect(stepIds.length).toBeGreaterThan(0);
    await inChunks(stepIds, 64, async (id) => {
      const node = await client.getNode({ node: { kind: NodeKind.NODE_KIND_STEP, id, contentHash: '' } });
      expect(node.body?.$case).toBe('step');
    });

    const report = await client.verifyLedger({});
    expect(report.problem).toBe('');
    expect(report.ok).toBe(true);
    expect(BigInt(report.entriesChecked)).toBeGreaterThanOrEqual(BigInt(acked.size));
    const treeSize = report.entriesChecked;

    // Resending every acknowledged event after the restart stores nothing new.
    const events = [...acked.values()].map((a) => a.event);
    const resend: LineageEvent[][] = [];
    for (let i = 0; i < events.length; i += 250) resend.push(events.slice(i, i + 250));
    const again = await client.submitEvents(batchesOf(resend));
    expect(again).toEqual({ batches: String(resend.length), accepted: '0', duplicates: String(events.length), treeSize });
    const unary = [...acked.values()].filter((a) => a.seq !== undefined).slice(0, 50);
    for (const a of unary) {
      const r = await client.submitEvent({ event: a.event });
      expect(r).toEqual({ seq: a.seq, duplicate: true });
    }
    expect((await client.verifyLedger({})).entriesChecked).toBe(treeSize);

    // Clients retry what was never acknowledged; each retry completes (stored or duplicate).
    for (const batches of unacked) {
      const r = await client.submitEvents(batchesOf(batches));
      expect(Number(r.accepted) + Number(r.duplicates)).toBe(batches.flat().length);
    }
    for (const event of unacked.flat(2)) expect((await client.getProof({ eventId: event.eventId })).seq).toMatch(/^\d+$/);

    // A clean stop, then the offline verifier agrees.
    second.proc.kill('SIGTERM');
    const stopped2 = await second.exited;
    expect(stopped2, second.stderr()).toEqual({ code: 0, signal: null });
    const verify = await runCli(['verify', '--data', dataDir]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    expect(verify.stdout).toMatch(/^ok: \d+ entries/);
  });
});
