import * as crypto from 'node:crypto';
import { createHash } from 'node:crypto';

/**
 * Append-only Merkle tree with RFC 6962 (Certificate Transparency) hashing: leaf = H(0x00 ‖ data),
 * node = H(0x01 ‖ left ‖ right). Complete, aligned subtrees are cached per level in flat buffers
 * (32 bytes a hash), so appending is O(1) amortised and a root or an audit path is O(log n).
 */
export class MerkleTree {
  /** levels[k] holds the hashes of the aligned complete subtrees of 2^k leaves. */
  private readonly levels: HashLevel[] = [new HashLevel()];

  get size(): number {
    return (this.levels[0] as HashLevel).count;
  }

  /** Appends a leaf hash (already `leafHash`ed). */
  appendLeafHash(leaf: Uint8Array): void {
    let level = 0;
    let hash: Uint8Array = leaf;
    for (;;) {
      const lv = this.levelAt(level);
      lv.push(hash);
      if (lv.count % 2 === 1) break;
      hash = nodeHash(lv.get(lv.count - 2), lv.get(lv.count - 1));
      level++;
    }
  }

  /**
   * Appends leaf hashes whose interior nodes were computed elsewhere (LedgerHasher), in the order
   * appendLeafHash would compute them; `nodes` must hold exactly those, 32 bytes each.
   */
  appendPrecomputed(leaves: Uint8Array, nodes: Uint8Array): void {
    // Hashes are copied from `leaves` and `nodes` by offset: a subarray each was an allocation a hash.
    let next = 0;
    for (let i = 0; i < leaves.length; i += 32) {
      let level = 0;
      let src = leaves;
      let at = i;
      for (;;) {
        const lv = this.levelAt(level);
        lv.pushFrom(src, at);
        if (lv.count % 2 === 1) break;
        if (next + 32 > nodes.length) throw new RangeError('appendPrecomputed: fewer interior nodes than the leaves complete');
        src = nodes;
        at = next;
        next += 32;
        level++;
      }
    }
    if (next !== nodes.length) throw new RangeError('appendPrecomputed: more interior nodes than the leaves complete');
  }

  /** Per level, the last hash when that level holds an odd count (a left node awaiting its sibling). */
  frontier(): (Uint8Array | undefined)[] {
    return this.levels.map((lv) => (lv.count % 2 === 1 ? lv.get(lv.count - 1).slice() : undefined));
  }

  /** Drops leaves beyond `size` (undo of appends that were never committed). */
  truncate(size: number): void {
    for (let k = 0; k < this.levels.length; k++) (this.levels[k] as HashLevel).truncate(Math.floor(size / 2 ** k));
  }

  leaf(index: number): Uint8Array {
    return (this.levels[0] as HashLevel).get(index);
  }

  /** Root of the first `size` leaves (defaults to all); the empty tree's root is H(""). */
  root(size = this.size): Buffer {
    if (size === 0) return createHash('sha256').digest();
    return Buffer.from(this.subtree(0, size));
  }

  /** RFC 6962 audit path for leaf `index` in the tree of the first `size` leaves, leaf to root. */
  auditPath(index: number, size = this.size): Buffer[] {
    if (index < 0 || index >= size || size > this.size) throw new RangeError(`no leaf ${index} in a tree of ${size}`);
    const path: Buffer[] = [];
    this.path(index, 0, size, path);
    return path;
  }

  private path(m: number, start: number, n: number, out: Buffer[]): void {
    if (n === 1) return;
    const k = largestPowerOfTwoBelow(n);
    if (m < k) {
      this.path(m, start, k, out);
      out.push(Buffer.from(this.subtree(start + k, n - k)));
    } else {
      this.path(m - k, start + k, n - k, out);
      out.push(Buffer.from(this.subtree(start, k)));
    }
  }

  private subtree(start: number, n: number): Uint8Array {
    if ((n & (n - 1)) === 0 && start % n === 0) {
      const level = Math.log2(n);
      const lv = this.levels[level];
      if (lv && start / n < lv.count) return lv.get(start / n);
    }
    const k = largestPowerOfTwoBelow(n);
    return nodeHash(this.subtree(start, k), this.subtree(start + k, n - k));
  }

  private levelAt(k: number): HashLevel {
    let lv = this.levels[k];
    if (!lv) {
      lv = new HashLevel();
      this.levels[k] = lv;
    }
    return lv;
  }
}

/** Verifies an RFC 6962 audit path; true when `leaf` at `index` is in the tree of `size` with `root`. */
export function verifyInclusion(leaf: Uint8Array, index: number, size: number, path: readonly Uint8Array[], root: Uint8Array): boolean {
  if (index < 0 || index >= size) return false;
  let fn = index;
  let sn = size - 1;
  let r: Uint8Array = leaf;
  for (const p of path) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && Buffer.from(r).equals(Buffer.from(root));
}

export function leafHash(data: Uint8Array): Buffer {
  return createHash('sha256').update(LEAF_PREFIX).update(data).digest();
}

/** 0x01 ‖ left ‖ right, reused: nodeHash runs about once per appended leaf. */
const NODE_INPUT = new Uint8Array(65);
NODE_INPUT[0] = 1;
const oneShot = (crypto as { hash?: (algorithm: string, data: Uint8Array, encoding: 'buffer') => Buffer }).hash;

export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  if (!oneShot || left.length !== 32 || right.length !== 32) return createHash('sha256').update(NODE_PREFIX).update(left).update(right).digest();
  NODE_INPUT.set(left, 1);
  NODE_INPUT.set(right, 33);
  return oneShot('sha256', NODE_INPUT, 'buffer');
}

const LEAF_PREFIX = Uint8Array.of(0);
const NODE_PREFIX = Uint8Array.of(1);

function largestPowerOfTwoBelow(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** A growable array of 32-byte hashes in one buffer. */
class HashLevel {
  private buf = new Uint8Array(32 * 1024);
  count = 0;

  push(hash: Uint8Array): void {
    this.pushFrom(hash, 0);
  }

  /** Appends the 32 bytes of `src` from `at`. */
  pushFrom(src: Uint8Array, at: number): void {
    if ((this.count + 1) * 32 > this.buf.length) {
      const next = new Uint8Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    const buf = this.buf;
    const to = this.count * 32;
    for (let j = 0; j < 32; j++) buf[to + j] = src[at + j] as number;
    this.count++;
  }

  get(i: number): Uint8Array {
    return this.buf.subarray(i * 32, i * 32 + 32);
  }

  truncate(count: number): void {
    if (count < this.count) this.count = count;
  }
}
