import * as crypto from 'node:crypto';
import { Worker } from 'node:worker_threads';

/** Where the hash chain and the Merkle tree stand: the last entry hash and the tree's right frontier (MerkleTree.frontier()). */
export interface ChainState {
  head: Uint8Array;
  frontier: (Uint8Array | undefined)[];
}

/**
 * Consecutive ledger rows in one shared buffer: row i is bytes [offsets[2i], offsets[2i+1]) of
 * `buf`, 32 bytes of room for its entry hash followed by its body (the canonical bytes).
 */
export interface HashJob {
  buf: SharedArrayBuffer;
  offsets: Int32Array;
  /**
   * The chain and tree before the job's first row. Absent: where this hasher's previous job left
   * them, so a commit group can be hashed in chunks sent while the rest is still being prepared.
   */
  start?: ChainState;
}

export interface HashResult {
  /** RFC 6962 leaf hashes, 32 bytes each, in row order. */
  leaves: Uint8Array;
  /** The interior nodes the leaves complete, in the order MerkleTree.appendPrecomputed takes them. */
  nodes: Uint8Array;
  /** Entry hash of the group's last entry. */
  head: Uint8Array;
}

/**
 * The ledger's hashing for one job, in place: each row's first 32 bytes become its entry hash
 * H(previous entry hash ‖ body); also its leaf hash H(0x00 ‖ body) and the interior nodes
 * H(0x01 ‖ left ‖ right) that complete. `state` starts where the chain and tree stand and is
 * left where they stand after the job. Self-contained (no module scope), because its source is
 * also the hashing worker's: `sha256` is passed in, and answers the digest as a 32-char latin1
 * string (a char a byte): a digest as a Buffer is a new off-heap ArrayBuffer, three a row, and
 * allocating and sweeping those cost the hashing thread twice what the hashing did.
 */
function hashRows(sha256: (data: Uint8Array) => string, job: HashJob, state: ChainState): HashResult {
  const view = new Uint8Array(job.buf);
  const offsets = job.offsets;
  const n = offsets.length / 2;
  const leaves = new Uint8Array(32 * n);
  // Appending n leaves completes fewer than n + log2(size) interior nodes.
  let nodes = new Uint8Array(32 * (n + 64));
  let nodeCount = 0;
  const frontier = state.frontier;
  const nodeInput = new Uint8Array(65);
  nodeInput[0] = 1;
  // Where the previous entry hash is: state.head, then each row's first 32 bytes once hashed.
  let headBytes = state.head;
  let headAt = 0;
  for (let i = 0; i < n; i++) {
    const start = offsets[2 * i] as number;
    for (let j = 0; j < 32; j++) view[start + j] = headBytes[headAt + j] as number;
    const entryHash = sha256(view.subarray(start, offsets[2 * i + 1] as number));
    // The leaf hash reads 0x00 ‖ body from byte 31, where the previous head's last byte was.
    view[start + 31] = 0;
    let hash = sha256(view.subarray(start + 31, offsets[2 * i + 1] as number));
    for (let j = 0; j < 32; j++) leaves[32 * i + j] = hash.charCodeAt(j);
    for (let j = 0; j < 32; j++) view[start + j] = entryHash.charCodeAt(j);
    headBytes = view;
    headAt = start;
    let level = 0;
    for (let left = frontier[level]; left !== undefined; left = frontier[level]) {
      nodeInput.set(left, 1);
      for (let j = 0; j < 32; j++) nodeInput[33 + j] = hash.charCodeAt(j);
      hash = sha256(nodeInput);
      if ((nodeCount + 1) * 32 > nodes.length) {
        const grown = new Uint8Array(nodes.length * 2);
        grown.set(nodes);
        nodes = grown;
      }
      for (let j = 0; j < 32; j++) nodes[32 * nodeCount + j] = hash.charCodeAt(j);
      nodeCount++;
      frontier[level] = undefined;
      level++;
    }
    const kept = new Uint8Array(32);
    for (let j = 0; j < 32; j++) kept[j] = hash.charCodeAt(j);
    frontier[level] = kept;
  }
  state.head = headBytes.slice(headAt, headAt + 32);
  return { leaves, nodes: nodes.slice(0, 32 * nodeCount), head: state.head };
}

// 'binary' is Node's name for latin1 among the digest encodings.
const oneShot = (crypto as { hash?: (algorithm: string, data: Uint8Array, encoding: 'binary') => string }).hash;
const sha256 = oneShot ? (data: Uint8Array): string => oneShot('sha256', data, 'binary') : (data: Uint8Array): string => crypto.createHash('sha256').update(data).digest('binary');

/** The worker's source: hashRows, the chain its jobs continue, and a loop answering jobs by id. */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const crypto = require('node:crypto');
const sha256 = crypto.hash ? (d) => crypto.hash('sha256', d, 'binary') : (d) => crypto.createHash('sha256').update(d).digest('binary');
const hashRows = ${hashRows.toString()};
let state;
parentPort.on('message', ({ id, job }) => {
  try {
    if (job.start) state = { head: job.start.head, frontier: job.start.frontier.slice() };
    else if (!state) throw new Error('a job continues a chain this worker did not start (it was replaced)');
    const r = hashRows(sha256, job, state);
    parentPort.postMessage({ id, result: r }, [r.leaves.buffer, r.nodes.buffer]);
  } catch (err) {
    parentPort.postMessage({ id, error: String(err && err.stack || err) });
  }
});
`;

export interface LedgerHasherOptions {
  /** Jobs that start a chain with fewer rows are hashed on the calling thread: a worker round trip costs more. */
  inlineBelow?: number;
}

/**
 * Hashes ledger rows on a worker thread, so the committer's thread validates and indexes the
 * rest of a group (and the next group) meanwhile: hashing is about a tenth of ingest's CPU.
 * A job that starts a chain carries the chain head and Merkle frontier, so a rolled-back group
 * needs no reset on the worker; the jobs that continue it take the state the one before left
 * (jobs run in the order they were sent). A worker that died is replaced on the next job, and a
 * job continuing a chain the new worker never saw fails.
 */
export class LedgerHasher {
  private readonly inlineBelow: number;
  private worker: Worker | undefined;
  private readonly pending = new Map<number, { resolve: (r: HashResult) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private stopped = false;
  /** The chain the last job left, when it ran inline (undefined: it ran on the worker, which holds it). */
  private inlineState: ChainState | undefined;

  constructor(options: LedgerHasherOptions = {}) {
    this.inlineBelow = options.inlineBelow ?? 128;
  }

  hash(job: HashJob): Promise<HashResult> {
    if (this.stopped) return Promise.reject(new Error('ledger hasher stopped'));
    const inline = job.start ? job.offsets.length / 2 < this.inlineBelow : this.inlineState !== undefined;
    if (inline) {
      try {
        const state = job.start ? { head: job.start.head, frontier: job.start.frontier.slice() } : (this.inlineState as ChainState);
        this.inlineState = state;
        return Promise.resolve(hashRows(sha256, job, state));
      } catch (err) {
        return Promise.reject(err instanceof Error ? err : new Error(String(err)));
      }
    }
    this.inlineState = undefined;
    const worker = this.ensureWorker();
    const id = this.nextId++;
    return new Promise<HashResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, job });
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const w = this.worker;
    this.worker = undefined;
    if (w) await w.terminate();
    this.failAll(new Error('ledger hasher stopped'));
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(WORKER_SOURCE, { eval: true, env: {}, argv: [], execArgv: [] });
    w.unref();
    w.on('message', (m: { id: number; result?: HashResult; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.result) p.resolve(m.result);
      else p.reject(new Error(`ledger hasher: ${m.error ?? 'no result'}`));
    });
    const lost = (err: Error): void => {
      if (this.worker !== w) return;
      this.worker = undefined;
      this.failAll(err);
    };
    w.on('error', (err) => lost(err));
    w.on('exit', (code) => lost(new Error(`ledger hasher worker exited with code ${code}`)));
    this.worker = w;
    return w;
  }

  private failAll(err: Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(err);
  }
}
