/**
 * Payload locality between the coordinator and its agents. An agent keeps the inputs it was sent
 * and the outputs it made in a bounded cache; the coordinator keeps a mirror of what each agent
 * holds, places a shard where its inputs already are, and sends such an input by reference
 * (`ShardInput.cached`, no bytes). An agent that no longer has one answers
 * SHARD_STATUS_INPUT_NOT_CACHED and gets the bytes. Small payloads always travel: locality
 * cannot pay for its bookkeeping below this size.
 */
export const CACHED_PAYLOAD_MIN_BYTES = 64 * 1024;

/**
 * Least-recently-used entries under a total size: `set` evicts the oldest until the entries fit
 * (an entry larger than the whole capacity is not kept), `get` makes an entry the newest.
 */
export class ByteLru<V> {
  private readonly entries = new Map<string, { value: V; size: number }>();
  private used = 0;

  constructor(private capacityBytes: number) {}

  get capacity(): number {
    return this.capacityBytes;
  }

  get size(): number {
    return this.entries.size;
  }

  get bytes(): number {
    return this.used;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  get(key: string): V | undefined {
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    this.entries.delete(key);
    this.entries.set(key, e);
    return e.value;
  }

  set(key: string, value: V, size: number): void {
    this.delete(key);
    if (size > this.capacityBytes) return;
    this.entries.set(key, { value, size });
    this.used += size;
    this.evict();
  }

  delete(key: string): void {
    const e = this.entries.get(key);
    if (e === undefined) return;
    this.entries.delete(key);
    this.used -= e.size;
  }

  resize(capacityBytes: number): void {
    this.capacityBytes = capacityBytes;
    this.evict();
  }

  private evict(): void {
    for (const [key, e] of this.entries) {
      if (this.used <= this.capacityBytes) return;
      this.entries.delete(key);
      this.used -= e.size;
    }
  }
}
