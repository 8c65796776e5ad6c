import type { ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createChannel, createClientFactory, Metadata, type Channel } from 'nice-grpc';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LineageServiceDefinition } from '../common/gen/retrace/v1/lineage.js';
import { LineageEvent, type Checkpoint } from '../common/gen/retrace/v1/provenance.js';
import { contentHashOf } from '../common/hash.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { CHECKPOINT_FILE, createCheckpointFileWriter, readCheckpointFile } from '../coordinator/ledger/checkpoint-file.js';
import { loadCheckpointSigner } from '../coordinator/ledger/checkpoint-signer.js';
import { killChildren, runCliProcess, startCoordinatorProcess } from './helpers/coordinator-process.js';
import { startTestCoordinator } from './helpers/test-coordinator.js';

/**
 * A LevelDB log cut short (a crash on a filesystem that loses the tail, or tampering) loses
 * acknowledged entries together with the checkpoints stored beside them. A child-process
 * coordinator acknowledges events and is SIGKILLed, so they live only in the db's .log file;
 * the log is cut; `retrace verify` must report the loss against DIR/checkpoint.jsonl, and the
 * coordinator must refuse to start unless --accept-ledger-loss.
 */

const BATCHES = 8;
const PER_BATCH = 25;
const BASE_NS = 1_720_000_000_000_000_000n;

const children: ChildProcess[] = [];
const channels: Channel[] = [];
const dirs: string[] = [];
let killedDir: string;

function event(n: number): LineageEvent {
  const content = `record ${n} ${'x'.repeat(200)}`;
  return LineageEvent.fromPartial({
    eventId: `obj:${n}`,
    eventTimeNs: (BASE_NS + BigInt(n)).toString(),
    producer: 'test://ledger-truncation',
    body: { $case: 'objectVersion', value: { objectId: `data/${n}`, contentHash: contentHashOf(content), size: String(content.length), mediaType: 'text/plain' } },
  });
}

const runCli = (args: string[]) => runCliProcess(args, children);

function copyOf(dir: string): string {
  const copy = mkdtempSync(join(tmpdir(), 'retrace-trunc-'));
  dirs.push(copy);
  cpSync(dir, copy, { recursive: true });
  return copy;
}

/** The db's newest .log file (the one the killed process was writing). */
function logFile(dataDir: string): string {
  const logs = readdirSync(join(dataDir, 'db')).filter((f) => f.endsWith('.log')).sort();
  expect(logs.length).toBeGreaterThan(0);
  return join(dataDir, 'db', logs[logs.length - 1] as string);
}

beforeAll(async () => {
  killedDir = mkdtempSync(join(tmpdir(), 'retrace-trunc-base-'));
  const c = await startCoordinatorProcess(killedDir, children);
  const token = readFileSync(join(killedDir, 'auth-token'), 'utf8').trim();
  const channel = createChannel(c.grpc);
  channels.push(channel);
  const client = createClientFactory().create(LineageServiceDefinition, channel, { '*': { metadata: Metadata({ authorization: `Bearer ${token}` }) } });
  for (let b = 0; b < BATCHES; b++) {
    const events = Array.from({ length: PER_BATCH }, (_, i) => event(b * PER_BATCH + i));
    const r = await client.submitEvents(
      (async function* () {
        yield { events };
      })(),
    );
    expect(r.accepted).toBe(String(PER_BATCH));
  }
  // Acknowledged, so durable in the log, and the checkpoint file covers every batch.
  await killChildren(children);
  for (const ch of channels.splice(0)) ch.close();
  expect(readCheckpointFile(killedDir)?.treeSize).toBe(String(BATCHES * PER_BATCH));
}, 30_000);

afterAll(() => {
  if (killedDir) rmSync(killedDir, { recursive: true, force: true });
});

afterEach(async () => {
  for (const ch of channels.splice(0)) ch.close();
  await killChildren(children);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('a truncated LevelDB log', () => {
  it('is reported by verify against checkpoint.jsonl, and the coordinator refuses to start unless --accept-ledger-loss', async () => {
    const dir = copyOf(killedDir);
    const log = logFile(dir);
    const size = statSync(log).size;
    // The entries live only in the log (the process was killed before any flush to a table).
    expect(size).toBeGreaterThan(BATCHES * PER_BATCH * 200);
    truncateSync(log, Math.floor(size / 2));

    const verified = await runCli(['verify', '--data', dir]);
    expect(verified.code, verified.stdout + verified.stderr).toBe(1);
    const m = /ledger truncated\/rewritten: checkpoint signed at size (\d+) \((\d{4}-[^)]+)\), ledger has (\d+)/.exec(verified.stdout);
    expect(m, verified.stdout).not.toBeNull();
    const [, signedSize, , ledgerSize] = m as RegExpExecArray;
    expect(signedSize).toBe(String(BATCHES * PER_BATCH));
    expect(Number(ledgerSize)).toBeGreaterThan(0);
    expect(Number(ledgerSize)).toBeLessThan(BATCHES * PER_BATCH);
    expect(verified.stdout).toContain(`TAMPERED: first bad entry ${ledgerSize}:`);
    const json = await runCli(['verify', '--data', dir, '--json', '--ledger-only']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: false, firstBadSeq: ledgerSize });

    // The coordinator refuses the data dir, saying why and what to do.
    await expect(startCoordinatorProcess(dir, children)).rejects.toThrow(/ledger truncated\/rewritten: checkpoint signed at size \d+ .*ledger has \d+.*--accept-ledger-loss/s);

    // With the override it starts, warns, and resets the file to the ledger it has: verify passes after.
    const c = await startCoordinatorProcess(dir, children, ['--accept-ledger-loss']);
    expect(c.stderr()).toContain('WARNING: ledger truncated/rewritten');
    c.proc.kill('SIGTERM');
    expect((await c.exited).code).toBe(0);
    expect(readCheckpointFile(dir)?.treeSize).toBe(ledgerSize);
    const after = await runCli(['verify', '--data', dir]);
    expect(after.code, after.stdout + after.stderr).toBe(0);
    expect(after.stdout).toContain(`ok: ${ledgerSize} entries`);
    // And an ordinary start works again.
    const again = await startCoordinatorProcess(dir, children);
    again.proc.kill('SIGTERM');
    expect((await again.exited).code).toBe(0);
  }, 30_000);

  it('a data dir without checkpoint.jsonl (an older version) still opens and verifies, and gets the file', async () => {
    const dir = copyOf(killedDir);
    rmSync(join(dir, CHECKPOINT_FILE));
    const verified = await runCli(['verify', '--data', dir, '--ledger-only']);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
    expect(verified.stdout).toContain(`ok: ${BATCHES * PER_BATCH} entries`);
    const c = await startCoordinatorProcess(dir, children);
    expect(readCheckpointFile(dir)?.treeSize).toBe(String(BATCHES * PER_BATCH));
    c.proc.kill('SIGTERM');
    expect((await c.exited).code).toBe(0);
    expect(existsSync(join(dir, CHECKPOINT_FILE))).toBe(true);
  }, 30_000);

  it('a checkpoint.jsonl whose root at its size differs from the ledger (entries rewritten below it), or whose signature is bad, is reported', async () => {
    const dir = copyOf(killedDir);
    const cp = readCheckpointFile(dir) as Checkpoint;
    // Signed with the data dir's own key over another root: the ledger was rewritten below it.
    const forged = loadCheckpointSigner(dir).sign(BigInt(cp.treeSize) - 10n, 'ab'.repeat(32), cp.headHash, BigInt(cp.signedAtNs));
    writeFileSync(join(dir, CHECKPOINT_FILE), JSON.stringify(forged));
    const verified = await runCli(['verify', '--data', dir, '--ledger-only']);
    expect(verified.code, verified.stdout + verified.stderr).toBe(1);
    expect(verified.stdout).toContain(`checkpoint signed at size ${forged.treeSize}`);
    expect(verified.stdout).toContain(`ledger has ${forged.treeSize}; the ledger's Merkle root at size ${forged.treeSize} differs from it`);
    const coordinator = new Coordinator({ dataDir: dir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} });
    await expect(coordinator.start()).rejects.toThrow(/Merkle root at size \d+ differs.*Refusing to start/);

    writeFileSync(join(dir, CHECKPOINT_FILE), JSON.stringify({ ...cp, treeSize: String(BigInt(cp.treeSize) + 1n) }));
    const badSig = await runCli(['verify', '--data', dir, '--ledger-only']);
    expect(badSig.code).toBe(1);
    expect(badSig.stdout).toContain('checkpoint.jsonl (the checkpoint kept outside the database, tree size');
    expect(badSig.stdout).toContain('has a bad signature');
  }, 15_000);

  it('VerifyLedger (online) compares the ledger with checkpoint.jsonl too', async () => {
    const dir = copyOf(killedDir);
    const tc = await startTestCoordinator({ dataDir: dir, quiet: true });
    try {
      const client = tc.client(LineageServiceDefinition);
      expect((await client.verifyLedger({ ledgerOnly: true })).ok).toBe(true);
      const cp = readCheckpointFile(dir) as Checkpoint;
      const forged = loadCheckpointSigner(dir).sign(BigInt(cp.treeSize) - 1n, 'cd'.repeat(32), cp.headHash, BigInt(cp.signedAtNs));
      writeFileSync(join(dir, CHECKPOINT_FILE), JSON.stringify(forged));
      const r = await client.verifyLedger({ ledgerOnly: true });
      expect(r.ok).toBe(false);
      expect(r.problem).toContain(`ledger truncated/rewritten: checkpoint signed at size ${forged.treeSize}`);
    } finally {
      await tc.stop();
    }
  }, 15_000);

  it('an untruncated killed data dir verifies and starts', async () => {
    const dir = copyOf(killedDir);
    const verified = await runCli(['verify', '--data', dir]);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
    const c = await startCoordinatorProcess(dir, children);
    c.proc.kill('SIGTERM');
    expect((await c.exited).code).toBe(0);
  }, 30_000);
});

describe('the checkpoint file writer', () => {
  const cp = (n: number): Checkpoint => ({ treeSize: String(n), rootHash: '', headHash: '', signedAtNs: '0', signature: '', publicKey: '' });

  it('writes one at a time, skips checkpoints a later one covers, and settles every save in order', async () => {
    const written: string[] = [];
    let release: () => void = () => {};
    const writer = createCheckpointFileWriter('/nowhere', async (_dir, c) => {
      written.push(c.treeSize);
      await new Promise<void>((r) => (release = r));
    });
    const settled: number[] = [];
    const saves = [1, 2, 3].map((n) => writer.save(cp(n)).then(() => settled.push(n)));
    await new Promise((r) => setImmediate(r));
    expect(written).toEqual(['1']);
    release();
    await new Promise((r) => setImmediate(r));
    expect(settled).toEqual([1]);
    expect(written).toEqual(['1', '3']);
    release();
    await Promise.all(saves);
    expect(settled).toEqual([1, 2, 3]);
    await writer.flush();
  });

  it('writes the two lines of the file in turn, in place; a reader takes the largest valid line, so a torn line falls back to the other', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'retrace-cpfile-'));
    dirs.push(dir);
    const writer = createCheckpointFileWriter(dir);
    for (const n of [1, 2, 3]) await writer.save(cp(n));
    await writer.close();
    const file = join(dir, CHECKPOINT_FILE);
    expect(statSync(file).size).toBe(2048);
    expect(readCheckpointFile(dir)?.treeSize).toBe('3');
    const lines = readFileSync(file, 'utf8').split('\n');
    expect(lines.map((l) => (JSON.parse(l || 'null') as Checkpoint | null)?.treeSize)).toEqual(['2', '3', undefined]);
    // A power loss tore the line being written (the newest): the other one still counts.
    writeFileSync(file, `${lines[0]}\n${'{"treeSize":"4","rootH'.padEnd(1023)}\n`);
    expect(readCheckpointFile(dir)?.treeSize).toBe('2');
    writeFileSync(file, 'garbage\n');
    expect(() => readCheckpointFile(dir)).toThrow(/holds no checkpoint: it was altered/);
    // A writer finding a file not of two lines replaces it whole.
    const again = createCheckpointFileWriter(dir);
    await again.save(cp(5));
    await again.close();
    expect(statSync(file).size).toBe(2048);
    expect(readCheckpointFile(dir)?.treeSize).toBe('5');
  });

  it('rejects the saves a failed write covered, and goes on with later ones', async () => {
    let fail = true;
    const writer = createCheckpointFileWriter('/nowhere', async () => {
      if (fail) throw new Error('ENOSPC');
    });
    await expect(writer.save(cp(1))).rejects.toThrow('ENOSPC');
    fail = false;
    await expect(writer.save(cp(2))).resolves.toBeUndefined();
  });
});
