import { parseDatasetObjectId } from '../../common/openlineage/to-lineage-events.js';
import type { ObjectTable } from '../lineage/lineage-api.js';
import { datasetNodeId, NATIVE_NAMESPACE } from './marquez-ids.js';
import { compare } from './openlineage-routes.js';

/** The start of a Marquez id in the native namespace: an object id with it is its own Marquez id. */
const NATIVE_DATASET_PREFIX = `dataset:${NATIVE_NAMESPACE}:`;

/**
 * The datasets of the Marquez face (one per Marquez id, see marquez-ids.ts) over the graph's
 * objects, each named by its place in the ObjectTable. A plain native object (an id that starts
 * neither with `dataset:` nor with `//`) is in the `retrace` namespace under its own id, so only
 * the others are parsed and only they hold strings here: a namespace list over 20,000 records
 * of a 3-step pipeline made an entry, a Marquez id, a parse and a map slot for each of 80,000
 * objects, 130 ms a call. (`dataset:retrace:x` parses as `retrace`/`x` unless `x` starts with
 * `//`: a namespace like `retrace://host` is taken whole.)
 */
export class MarquezDatasets {
  /** The objects served, in the order the routes list datasets when unsorted (see `of`). */
  readonly places: Int32Array;
  /** Namespace and name of each object served that is not plain native, by place. */
  private readonly parsed = new Map<number, { namespace: string; name: string }>();
  /** See byName. */
  private names: Map<string, number[]> | undefined;

  private constructor(readonly objects: ObjectTable) {
    const n = objects.length;
    // Each object in the order first seen; where `dataset:retrace:x` and a native `x` share a
    // Marquez id, the OpenLineage one is served in the place of whichever was seen first.
    const order = new Int32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    let served = n;
    for (let i = 0; i < n; i++) {
      if (this.isPlain(i)) continue;
      const id = objects.objectId(i);
      this.parsed.set(i, parseDatasetObjectId(datasetNodeId(id)) as { namespace: string; name: string });
      if (!id.startsWith(NATIVE_DATASET_PREFIX)) continue;
      const native = id.slice(NATIVE_DATASET_PREFIX.length);
      // A `dataset:` id is its own Marquez id: no native object has `dataset:retrace:dataset:…`.
      const shadowed = native.startsWith('dataset:') ? undefined : objects.indexOf(native);
      if (shadowed === undefined) continue;
      order[Math.min(i, shadowed)] = i;
      order[Math.max(i, shadowed)] = -1;
      served--;
    }
    this.places = new Int32Array(served);
    for (let i = 0, p = 0; i < n; i++) if ((order[i] as number) >= 0) this.places[p++] = order[i] as number;
  }

  static of(objects: ObjectTable): MarquezDatasets {
    return new MarquezDatasets(objects);
  }

  /** Whether object `i` is plain native: in the `retrace` namespace, its id its name. */
  isPlain(i: number): boolean {
    return !this.objects.idStartsWith(i, 'dataset:') && !this.objects.idStartsWith(i, '//');
  }

  namespaceOf(i: number): string {
    return this.parsed.get(i)?.namespace ?? NATIVE_NAMESPACE;
  }

  nameOf(i: number): string {
    return this.parsed.get(i)?.name ?? this.objects.objectId(i);
  }

  /** The places served in `namespace`, in `places` order. */
  inNamespace(namespace: string): number[] {
    const out: number[] = [];
    if (namespace === NATIVE_NAMESPACE) {
      for (const i of this.places) if (this.isPlain(i) || this.namespaceOf(i) === namespace) out.push(i);
    } else {
      for (const i of this.places) if (this.parsed.get(i)?.namespace === namespace) out.push(i);
    }
    return out;
  }

  /** The place served as `name` in `namespace`, if any. */
  find(namespace: string, name: string): number | undefined {
    if (namespace === NATIVE_NAMESPACE) {
      const i = this.objects.indexOf(name);
      // A plain native object is served unless an OpenLineage one has its Marquez id.
      if (i !== undefined && this.isPlain(i) && this.objects.indexOf(`${NATIVE_DATASET_PREFIX}${name}`) === undefined) return i;
    }
    for (const i of this.byName().get(`${namespace}\u0000${name}`) ?? []) if (this.isServed(i)) return i;
    return undefined;
  }

  /**
   * The parsed places by namespace and name, each list in place order; made on first use. A
   * lineage graph dates each of its datasets by `find`, which looked through every parsed object
   * for each: a graph of n OpenLineage datasets cost n² steps.
   */
  private byName(): Map<string, number[]> {
    if (this.names === undefined) {
      this.names = new Map();
      for (const [i, p] of this.parsed) {
        const key = `${p.namespace}\u0000${p.name}`;
        const list = this.names.get(key);
        if (list) list.push(i);
        else this.names.set(key, [i]);
      }
    }
    return this.names;
  }

  /** Every namespace served with its datasets' earliest first sighting and latest change (ms). */
  spans(): Map<string, { first: number; last: number }> {
    const spans = new Map<string, { first: number; last: number }>();
    const objects = this.objects;
    let first = Number.POSITIVE_INFINITY;
    let last = Number.NEGATIVE_INFINITY;
    for (const i of this.places) {
      const p = this.parsed.get(i);
      if (p === undefined) {
        first = Math.min(first, objects.firstSeenMs(i));
        last = Math.max(last, objects.lastChangedMs(i));
      } else {
        widen(spans, p.namespace, objects.firstSeenMs(i), objects.lastChangedMs(i));
      }
    }
    if (first !== Number.POSITIVE_INFINITY) widen(spans, NATIVE_NAMESPACE, first, last);
    return spans;
  }

  /** The code-unit order of two places' names, with no string made where both are plain. */
  compareNames(a: number, b: number): number {
    const pa = this.parsed.get(a);
    const pb = this.parsed.get(b);
    if (pa === undefined && pb === undefined) return this.objects.compareIds(a, b);
    return compare(pa?.name ?? this.objects.objectId(a), pb?.name ?? this.objects.objectId(b));
  }

  private isServed(i: number): boolean {
    const id = this.objects.objectId(i);
    if (id.startsWith('dataset:')) return true;
    // A `//` native one is served unless `dataset:retrace:<id>` is stored.
    return this.objects.indexOf(`${NATIVE_DATASET_PREFIX}${id}`) === undefined;
  }
}

/** Adds a span to a namespace's (first the earliest, last the latest). */
export function widen(spans: Map<string, { first: number; last: number }>, namespace: string, first: number, last: number): void {
  const s = spans.get(namespace);
  if (!s) spans.set(namespace, { first, last });
  else {
    s.first = Math.min(s.first, first);
    s.last = Math.max(s.last, last);
  }
}

/**
 * The first `k` of `items` in `order`, which must be total (no two items equal), sorted: a page
 * of a list without sorting the 80,000 datasets of a namespace (a bounded heap when `k` is a
 * small part of the list).
 */
export function firstInOrder(items: readonly number[], k: number, order: (a: number, b: number) => number): number[] {
  if (k <= 0) return [];
  if (4 * k >= items.length) return [...items].sort(order).slice(0, k);
  // A max-heap of the k first so far: its root is the one to beat.
  const heap: number[] = [];
  for (const x of items) {
    if (heap.length < k) {
      let at = heap.length;
      heap.push(x);
      while (at > 0) {
        const up = (at - 1) >> 1;
        if (order(heap[up] as number, x) >= 0) break;
        heap[at] = heap[up] as number;
        at = up;
      }
      heap[at] = x;
    } else if (order(x, heap[0] as number) < 0) {
      let at = 0;
      for (;;) {
        const left = 2 * at + 1;
        if (left >= k) break;
        const right = left + 1;
        const child = right < k && order(heap[right] as number, heap[left] as number) > 0 ? right : left;
        if (order(heap[child] as number, x) <= 0) break;
        heap[at] = heap[child] as number;
        at = child;
      }
      heap[at] = x;
    }
  }
  return heap.sort(order);
}
