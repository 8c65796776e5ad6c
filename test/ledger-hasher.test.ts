import { createHash, randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { LedgerHasher } from '../coordinator/ledger/ledger-hasher.js';
import { leafHash, MerkleTree } from '../common/merkle.js';

const sha = (...parts: Uint8Array[]): Buffer => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

/** Rows of `bodies` (32 bytes of room for the entry hash, then the body) in one shared buffer. */
function rowsOf(bodies: Buffer[]): { buf: SharedArrayBuffer; offsets: Int32Array } {
  const total = bodies.reduce((n, b) => n + 32 + b.length, 0);
  const buf = new SharedArrayBuffer(total);
  const view = new Uint8Array(buf);
  const offsets = new Int32Array(2 * bodies.length);
  let pos = 0;
  bodies.forEach((b, i) => {
    offsets[2 * i] = pos;
    view.set(b, pos + 32);
    pos += 32 + b.length;
    offsets[2 * i + 1] = pos;
  });
  return { buf, offsets };
}

describe('ledger hasher', () => {
  let hasher: LedgerHasher | undefined;
  afterEach(async () => {
    await hasher?.stop();
    hasher = undefined;
  });

  for (const [name, inlineBelow] of [['on its worker', 0], ['inline', 1_000_000]] as const) {
    it(`chains entry hashes and extends the Merkle tree exactly as appending one by one (${name})`, async () => {
      hasher = new LedgerHasher({ inlineBelow });
      // A tree of 37 leaves has a frontier at several levels; then three groups of odd sizes.
      const reference = new MerkleTree();
      const tree = new MerkleTree();
      let head: Uint8Array = new Uint8Array(32);
      let refHead: Uint8Array = new Uint8Array(32);
      for (const size of [37, 1, 130, 255]) {
        const bodies = Array.from({ length: size }, () => randomBytes(20 + Math.floor(Math.random() * 300)));
        const rows = rowsOf(bodies);
        const r = await hasher.hash({ ...rows, start: { head, frontier: tree.frontier() } });
        tree.appendPrecomputed(r.leaves, r.nodes);
        head = r.head;
        const view = new Uint8Array(rows.buf);
        bodies.forEach((body, i) => {
          refHead = sha(refHead, body);
          reference.appendLeafHash(leafHash(body));
          const start = rows.offsets[2 * i] as number;
          expect(Buffer.from(view.subarray(start, start + 32)).equals(Buffer.from(refHead))).toBe(true);
          expect(Buffer.from(view.subarray(start + 32, rows.offsets[2 * i + 1])).equals(body)).toBe(true);
        });
        expect(Buffer.from(head).equals(Buffer.from(refHead))).toBe(true);
        expect(tree.size).toBe(reference.size);
        expect(tree.root().equals(reference.root())).toBe(true);
        expect(tree.auditPath(tree.size - 1).map((h) => h.toString('hex'))).toEqual(reference.auditPath(reference.size - 1).map((h) => h.toString('hex')));
      }
    });
  }

  it('refuses interior nodes that do not match the leaves', () => {
    const tree = new MerkleTree();
    tree.appendLeafHash(leafHash(Buffer.from('a')));
    expect(() => tree.appendPrecomputed(leafHash(Buffer.from('b')), new Uint8Array(0))).toThrow(/fewer interior nodes/);
    expect(() => new MerkleTree().appendPrecomputed(leafHash(Buffer.from('b')), new Uint8Array(32))).toThrow(/more interior nodes/);
  });

  it('fails pending jobs when its worker dies, and starts a new one for the next job', async () => {
    hasher = new LedgerHasher({ inlineBelow: 0 });
    const rows = rowsOf([randomBytes(50), randomBytes(60)]);
    await hasher.hash({ ...rows, start: { head: new Uint8Array(32), frontier: [] } });
    const worker = (hasher as unknown as { worker: { terminate(): Promise<number> } }).worker;
    // Long enough (~0.5 s of hashing) that the worker is still busy when it is terminated.
    const pending = hasher.hash({ ...rowsOf(Array.from({ length: 200_000 }, () => Buffer.alloc(10))), start: { head: new Uint8Array(32), frontier: [] } });
    await worker.terminate();
    await expect(pending).rejects.toThrow(/exited|stopped/);
    // The new worker never saw the chain the dead one was in: a job continuing it fails.
    await expect(hasher.hash(rowsOf([Buffer.from('y')]))).rejects.toThrow(/continues a chain this worker did not start/);
    const again = await hasher.hash({ ...rowsOf([Buffer.from('x')]), start: { head: new Uint8Array(32), frontier: [] } });
    expect(Buffer.from(again.head).equals(sha(new Uint8Array(32), Buffer.from('x')))).toBe(true);
  });

  for (const [name, inlineBelow] of [['on its worker', 0], ['inline', 1_000_000], ['started inline, continued inline', 200]] as const) {
    it(`hashes a group in chunks, each continuing where the one before left, as in one job (${name})`, async () => {
      const h = (hasher = new LedgerHasher({ inlineBelow }));
      const tree = new MerkleTree();
      const ref = new MerkleTree();
      let head: Uint8Array = new Uint8Array(32);
      let refHead: Uint8Array = new Uint8Array(32);
      const append = (bodies: Buffer[]): void => {
        for (const body of bodies) {
          refHead = sha(refHead, body);
          ref.appendLeafHash(leafHash(body));
        }
      };
      // One group of 21 rows, then one of 300 in chunks of 100, 1, 150 and 49, all sent before any is awaited.
      const first = Array.from({ length: 21 }, () => randomBytes(40));
      const r0 = await h.hash({ ...rowsOf(first), start: { head, frontier: tree.frontier() } });
      tree.appendPrecomputed(r0.leaves, r0.nodes);
      head = r0.head;
      append(first);
      const bodies = Array.from({ length: 300 }, () => randomBytes(10 + Math.floor(Math.random() * 200)));
      const chunks = [bodies.slice(0, 100), bodies.slice(100, 101), bodies.slice(101, 251), bodies.slice(251)];
      const jobs = chunks.map((c, i) => h.hash({ ...rowsOf(c), ...(i === 0 ? { start: { head, frontier: tree.frontier() } } : {}) }));
      for (const r of await Promise.all(jobs)) {
        tree.appendPrecomputed(r.leaves, r.nodes);
        head = r.head;
      }
      append(bodies);
      expect(Buffer.from(head).equals(Buffer.from(refHead))).toBe(true);
      expect(tree.size).toBe(321);
      expect(tree.root().equals(ref.root())).toBe(true);
    });
  }
});
