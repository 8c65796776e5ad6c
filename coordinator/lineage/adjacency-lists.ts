import { GrowableFloat64, GrowableInt32 } from './growable-array.js';

/**
 * Adjacency lists of a growing graph as linked lists in flat typed arrays: per edge its source,
 * target, time (ms since epoch, fractional) and the next edge of the same source; per node the
 * head edge. 20 bytes an edge plus 4 a node, appends O(1), and an append can be undone.
 */
export class AdjacencyLists {
  private head = new GrowableInt32();
  readonly src = new GrowableInt32();
  readonly dst = new GrowableInt32();
  readonly next = new GrowableInt32();
  readonly time = new GrowableFloat64();

  /** Makes room for node ids below `count`. */
  ensureNodes(count: number): void {
    while (this.head.length < count) this.head.push(-1);
  }

  add(from: number, to: number, timeMs: number): void {
    this.ensureNodes(Math.max(from, to) + 1);
    const e = this.src.push(from);
    this.dst.push(to);
    this.time.push(timeMs);
    this.next.push(this.head.data[from] as number);
    this.head.data[from] = e;
  }

  /** First edge of `node`, or -1; follow with `next.data[e]`. */
  first(node: number): number {
    return node < this.head.length ? (this.head.data[node] as number) : -1;
  }

  has(from: number, to: number): boolean {
    for (let e = this.first(from); e !== -1; e = this.next.data[e] as number) if (this.dst.data[e] === to) return true;
    return false;
  }

  get edgeCount(): number {
    return this.src.length;
  }

  /** Removes edges appended after the list had `edgeCount` edges and nodes beyond `nodeCount`. */
  rollback(edgeCount: number, nodeCount: number): void {
    for (let e = this.src.length - 1; e >= edgeCount; e--) this.head.data[this.src.data[e] as number] = this.next.data[e] as number;
    this.src.length = this.dst.length = this.next.length = this.time.length = edgeCount;
    if (this.head.length > nodeCount) this.head.length = nodeCount;
  }

  get byteLength(): number {
    return this.head.byteLength + this.src.byteLength + this.dst.byteLength + this.next.byteLength + this.time.byteLength;
  }
}
