import { withRoom } from '../../common/buffer-room.js';
import type { Utf8Writer } from '../../common/buffer-natives.js';

/**
 * Interns strings as dense ids 0, 1, 2, … in insertion order, in typed arrays only: the
 * characters in one byte arena (one byte per char for keys whose chars are all below U+0100,
 * the usual case, two bytes per UTF-16 code unit otherwise), an open-addressing hash table of
 * ids. A Map<string, number> holds one heap string per key, which every young-generation
 * collection copies (twice, into the old generation) and every full collection marks again;
 * for the lineage index's millions of keys that was most of ingest's garbage-collection work.
 * Here the collector sees a handful of arrays whatever the number of keys.
 *
 * Removal is last-in, first-out only (`truncate`), which is what rollbacks need; it is exact
 * with linear probing, because a key's probe run can only pass over slots of keys added before
 * it.
 */
export class KeyTable {
  /**
   * The keys' chars, back to back: a byte each, or for a wide key two (low byte first). Bytes
   * past `byteCount` stage the ASCII key being looked up or added (see `stage`).
   */
  private bytes: Buffer = Buffer.allocUnsafe(1 << 16);
  private byteCount = 0;
  /** Key id → offset of its first byte in `bytes`; `starts[count]` is the end of the last key. */
  private starts = new Int32Array(1 << 12);
  /** Key id → 1 when the key has a char above U+00FF (stored two bytes per code unit). */
  private wide = new Uint8Array(1 << 12);
  /** Key id → its hash, so growing the table never reads the keys. */
  private hashes = new Int32Array(1 << 12);
  /** Hash slot → key id + 1 (0: empty). Size a power of two, at most half full. */
  private slots = new Int32Array(1 << 13);
  private count = 0;
  /**
   * The ASCII key whose bytes `get` left staged at `byteCount` (undefined when none), with its
   * length and hash: adding a key right after looking it up in vain, as ingest does with every
   * new node and event id, then costs no second encoding and hashing.
   */
  private stagedKey: string | undefined = undefined;
  private stagedLength = 0;
  private stagedHash = 0;
  /**
   * The staged key before the last `stage` overwrote it, and its hash: adding an object version
   * looks up its object's key between the version's lookup and its addition, and the version's
   * hash (100-odd bytes) then need not be computed again.
   */
  private priorKey: string | undefined = undefined;
  private priorHash = 0;

  get size(): number {
    return this.count;
  }

  /** Bytes held by the arrays. */
  get byteLength(): number {
    return this.bytes.byteLength + this.starts.byteLength + this.wide.byteLength + this.hashes.byteLength + this.slots.byteLength;
  }

  get(key: string): number | undefined {
    const n = this.stage(key);
    const mask = this.slots.length - 1;
    if (n < 0) {
      const hash = hashOf(key);
      for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
        const entry = this.slots[slot] as number;
        if (entry === 0) return undefined;
        const id = entry - 1;
        if (this.hashes[id] === hash && this.equals(id, key)) return id;
      }
    }
    const at = this.byteCount;
    const hash = hashBytes(this.bytes, at, at + n);
    this.stagedKey = key;
    this.stagedLength = n;
    this.stagedHash = hash;
    for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
      const entry = this.slots[slot] as number;
      if (entry === 0) return undefined;
      const id = entry - 1;
      if (this.hashes[id] === hash && this.equalsStaged(id, n)) return id;
    }
  }

  has(key: string): boolean {
    return this.get(key) !== undefined;
  }

  /** Adds a key known to be absent; returns its id (the previous size). */
  add(key: string): number {
    const id = this.count;
    if (id + 2 > this.starts.length) {
      this.starts = grown(this.starts, this.starts.length * 2);
      this.hashes = grown(this.hashes, this.hashes.length * 2);
      this.wide = grown(this.wide, this.wide.length * 2);
    }
    if (key === this.stagedKey) return this.commit(id, this.byteCount + this.stagedLength, false, this.stagedHash);
    const staged = this.stage(key);
    if (staged >= 0) {
      // An ASCII key: its bytes are already in place.
      const hash = key === this.priorKey ? this.priorHash : hashBytes(this.bytes, this.byteCount, this.byteCount + staged);
      return this.commit(id, this.byteCount + staged, false, hash);
    }
    const hash = hashOf(key);
    let isWide = false;
    for (let i = 0; i < key.length; i++) {
      if (key.charCodeAt(i) > 0xff) {
        isWide = true;
        break;
      }
    }
    this.reserve(isWide ? 2 * key.length : key.length);
    const bytes = this.bytes;
    let at = this.byteCount;
    if (isWide) {
      for (let i = 0; i < key.length; i++) {
        const c = key.charCodeAt(i);
        bytes[at++] = c & 0xff;
        bytes[at++] = c >>> 8;
      }
    } else {
      for (let i = 0; i < key.length; i++) bytes[at++] = key.charCodeAt(i);
    }
    return this.commit(id, at, isWide, hash);
  }

  /** Makes the bytes from `byteCount` to `end` key `id`'s, and enters it in the hash table. */
  private commit(id: number, end: number, isWide: boolean, hash: number): number {
    this.stagedKey = undefined;
    this.starts[id] = this.byteCount;
    this.byteCount = end;
    this.starts[id + 1] = end;
    this.wide[id] = isWide ? 1 : 0;
    this.hashes[id] = hash;
    this.count = id + 1;
    if (2 * this.count > this.slots.length) this.rehash(this.slots.length * 2);
    else this.place(id, hash);
    return id;
  }

  /**
   * Writes `key` as UTF-8 after the last key, uncommitted, in one native call whatever the
   * string's representation (charCodeAt on a concatenated string, as keys built from parts are,
   * cost a third more per char than on a flat one), and returns its length when every char is
   * ASCII (UTF-8 then writes one byte a char, the bytes a narrow key is stored as), else -1: such
   * keys take the char-by-char path, which keeps lone surrogates apart (UTF-8 would write them
   * all as U+FFFD). Keys from the wire and ids built from them are ASCII in practice.
   */
  private stage(key: string): number {
    if (this.stagedKey !== undefined) {
      this.priorKey = this.stagedKey;
      this.priorHash = this.stagedHash;
      this.stagedKey = undefined;
    }
    if (key.length === 0) return 0;
    const room = 3 * key.length;
    this.reserve(room);
    const written = (this.bytes as unknown as Utf8Writer).utf8Write(key, this.byteCount, room);
    return written === key.length ? written : -1;
  }

  /** Room for `need` more bytes in the arena. */
  private reserve(need: number): void {
    this.bytes = withRoom(this.bytes, this.byteCount, need);
  }

  /** Whether narrow key `id` is the staged ASCII key of `n` bytes. */
  private equalsStaged(id: number, n: number): boolean {
    if (this.wide[id] === 1) return false;
    const start = this.starts[id] as number;
    if ((this.starts[id + 1] as number) - start !== n) return false;
    const bytes = this.bytes;
    const at = this.byteCount;
    for (let i = 0; i < n; i++) if (bytes[start + i] !== bytes[at + i]) return false;
    return true;
  }

  keyOf(id: number): string {
    if (id < 0 || id >= this.count) throw new RangeError(`no key ${id}`);
    const start = this.starts[id] as number;
    const end = this.starts[id + 1] as number;
    // Narrow: a byte a char (latin1). Wide: two bytes a code unit, low byte first (UTF-16LE, which
    // keeps lone surrogates as they were).
    return this.bytes.toString(this.wide[id] === 0 ? 'latin1' : 'utf16le', start, end);
  }

  /** Whether key `id` has `prefix` at char `from`, read from the arena without making the key a string. */
  startsWith(id: number, prefix: string, from = 0): boolean {
    if (id < 0 || id >= this.count) throw new RangeError(`no key ${id}`);
    const bytes = this.bytes;
    const start = this.starts[id] as number;
    const length = (this.starts[id + 1] as number) - start;
    if (this.wide[id] === 1) {
      if (this.lengthOf(id) < from + prefix.length) return false;
      for (let i = 0; i < prefix.length; i++) if (this.unitAt(id, from + i) !== prefix.charCodeAt(i)) return false;
      return true;
    }
    if (length < from + prefix.length) return false;
    for (let i = 0, at = start + from; i < prefix.length; i++, at++) if (bytes[at] !== prefix.charCodeAt(i)) return false;
    return true;
  }

  /** The code-unit order of keys `a` and `b` from char `from` on (as `<` orders their strings), read from the arena. */
  compare(a: number, b: number, from = 0): number {
    if (a < 0 || a >= this.count || b < 0 || b >= this.count) throw new RangeError(`no key ${a} or ${b}`);
    const bytes = this.bytes;
    if (this.wide[a] === 0 && this.wide[b] === 0) {
      const startA = (this.starts[a] as number) + from;
      const startB = (this.starts[b] as number) + from;
      const lengthA = (this.starts[a + 1] as number) - startA;
      const lengthB = (this.starts[b + 1] as number) - startB;
      const common = Math.min(lengthA, lengthB);
      for (let i = 0; i < common; i++) {
        const d = (bytes[startA + i] as number) - (bytes[startB + i] as number);
        if (d !== 0) return d < 0 ? -1 : 1;
      }
      return lengthA < lengthB ? -1 : lengthA > lengthB ? 1 : 0;
    }
    const lengthA = this.lengthOf(a) - from;
    const lengthB = this.lengthOf(b) - from;
    const common = Math.min(lengthA, lengthB);
    for (let i = 0; i < common; i++) {
      const d = this.unitAt(a, from + i) - this.unitAt(b, from + i);
      if (d !== 0) return d < 0 ? -1 : 1;
    }
    return lengthA < lengthB ? -1 : lengthA > lengthB ? 1 : 0;
  }

  /**
   * Whether key `id` from char `from` on, lower-cased, contains `needle` (`key.slice(from).toLowerCase().includes(needle)`).
   * A one-byte key and an ASCII needle are matched in the arena: lower-casing maps A-Z alone to
   * ASCII and every char from U+0080 to U+00FF to one such char, never to an ASCII one.
   */
  includesLowerCase(id: number, needle: string, from = 0): boolean {
    if (id < 0 || id >= this.count) throw new RangeError(`no key ${id}`);
    if (this.wide[id] === 1 || !isAscii(needle)) return this.keyOf(id).slice(from).toLowerCase().includes(needle);
    const bytes = this.bytes;
    const start = (this.starts[id] as number) + from;
    const last = (this.starts[id + 1] as number) - needle.length;
    for (let at = start; at <= last; at++) {
      let i = 0;
      for (; i < needle.length; i++) {
        const c = bytes[at + i] as number;
        if ((c >= 0x41 && c <= 0x5a ? c + 0x20 : c) !== needle.charCodeAt(i)) break;
      }
      if (i === needle.length) return true;
    }
    return false;
  }

  /** Key `id`'s length in UTF-16 code units. */
  private lengthOf(id: number): number {
    const bytes = (this.starts[id + 1] as number) - (this.starts[id] as number);
    return this.wide[id] === 1 ? bytes / 2 : bytes;
  }

  /** Code unit `i` of key `id`. */
  private unitAt(id: number, i: number): number {
    const start = this.starts[id] as number;
    if (this.wide[id] === 0) return this.bytes[start + i] as number;
    return (this.bytes[start + 2 * i] as number) | ((this.bytes[start + 2 * i + 1] as number) << 8);
  }

  /** Removes the keys with ids ≥ `size` (the last ones added). */
  truncate(size: number): void {
    this.stagedKey = undefined;
    const mask = this.slots.length - 1;
    for (let id = this.count - 1; id >= size; id--) {
      for (let slot = (this.hashes[id] as number) & mask; ; slot = (slot + 1) & mask) {
        if (this.slots[slot] === id + 1) {
          this.slots[slot] = 0;
          break;
        }
      }
    }
    if (size < this.count) {
      this.byteCount = this.starts[size] as number;
      this.count = size;
    }
  }

  private equals(id: number, key: string): boolean {
    const start = this.starts[id] as number;
    const length = (this.starts[id + 1] as number) - start;
    const bytes = this.bytes;
    if (this.wide[id] === 1) {
      if (length !== 2 * key.length) return false;
      for (let i = 0, at = start; i < key.length; i++, at += 2) if (((bytes[at] as number) | ((bytes[at + 1] as number) << 8)) !== key.charCodeAt(i)) return false;
      return true;
    }
    if (length !== key.length) return false;
    for (let i = 0; i < key.length; i++) if (bytes[start + i] !== key.charCodeAt(i)) return false;
    return true;
  }

  private place(id: number, hash: number): void {
    const mask = this.slots.length - 1;
    let slot = hash & mask;
    while (this.slots[slot] !== 0) slot = (slot + 1) & mask;
    this.slots[slot] = id + 1;
  }

  /** Rebuilds the table in id order, so later keys still probe past earlier ones (see truncate). */
  private rehash(size: number): void {
    this.slots = new Int32Array(size);
    for (let id = 0; id < this.count; id++) this.place(id, this.hashes[id] as number);
  }
}

function isAscii(text: string): boolean {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) > 0x7f) return false;
  return true;
}

/** A copy of `a` in a new array of `size` elements. */
function grown<T extends Int32Array | Uint8Array>(a: T, size: number): T {
  const next = new (a.constructor as new (n: number) => T)(size);
  next.set(a);
  return next;
}

/**
 * Per process, as V8 seeds its own string hashes: keys come from clients, and a fixed hash would
 * let one choose keys that all land in one probe run.
 */
const SEED = (Math.random() * 0x100000000) | 0;

/**
 * xxHash32's round over words of four code units (four bytes of an ASCII key, the usual case)
 * from a seeded accumulator, a round per unit where a unit of the four is above 0xFF and for the
 * last ones, then murmur3's finaliser so low bits mix well. A round a word, its multiply off the
 * dependency chain, hashed a 97-byte key in 74 ns against FNV-1a's 92 (a round per byte); the
 * rotations carry every bit to the low ones, which a word-wide FNV would not.
 */
function hashOf(key: string): number {
  // ToNumber flattens a concatenated (cons) string once, so charCodeAt below indexes flat chars.
  void Number(key);
  const n = key.length;
  let h = SEED + n;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const c0 = key.charCodeAt(i);
    const c1 = key.charCodeAt(i + 1);
    const c2 = key.charCodeAt(i + 2);
    const c3 = key.charCodeAt(i + 3);
    // Packing wide units into a word would drop their high bits, whatever the seed.
    if ((c0 | c1 | c2 | c3) > 0xff) h = unitRound(unitRound(unitRound(unitRound(h, c0), c1), c2), c3);
    else h = round(h, c0 | (c1 << 8) | (c2 << 16) | (c3 << 24));
  }
  for (; i < n; i++) h = unitRound(h, key.charCodeAt(i));
  return finalise(h);
}

/** hashOf of an ASCII key from its bytes (one byte a code unit, so the same value). */
function hashBytes(bytes: Uint8Array, start: number, end: number): number {
  let h = SEED + (end - start);
  let i = start;
  for (; i + 4 <= end; i += 4) {
    const w = (bytes[i] as number) | ((bytes[i + 1] as number) << 8) | ((bytes[i + 2] as number) << 16) | ((bytes[i + 3] as number) << 24);
    h = round(h, w);
  }
  for (; i < end; i++) h = unitRound(h, bytes[i] as number);
  return finalise(h);
}

function round(h: number, w: number): number {
  const a = (h + Math.imul(w, 0x85ebca77)) | 0;
  return Math.imul((a << 13) | (a >>> 19), 0x9e3779b1);
}

function unitRound(h: number, c: number): number {
  const a = (h + Math.imul(c, 0x165667b1)) | 0;
  return Math.imul((a << 11) | (a >>> 21), 0x9e3779b1);
}

function finalise(hash: number): number {
  let h = hash;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) | 0;
}
