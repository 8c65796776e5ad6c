import type { LogFn } from '../../common/log.js';
import type { NodeStateName } from './node-record-store.js';

/** Events of the node mesh, by name (`noun:verb`). Times are ms since the epoch. */
export interface MeshEvents {
  /**
   * A node registered on a Connect stream; `rejoined` when its id was known, `restarted` when
   * it was known and this is another agent process than the last one (or one that does not say).
   */
  /** `payloadCacheBytes`: what the agent process keeps for shards to use by reference (0: nothing). */
  'node:registered': { nodeId: string; rejoined: boolean; restarted: boolean; atMs: number; payloadCacheBytes: number };
  /** Any state change, including the first (from null). */
  'node:transition': { nodeId: string; from: NodeStateName | null; to: NodeStateName; reason: string; atMs: number };
  /** A report was validated and its samples appended to the history store. */
  'node:reported': { nodeId: string; reportTimeMs: number; receivedAtMs: number; storedAtMs: number; readings: number };
  /**
   * A node's Connect stream ended without a leave (agent killed, network cut): its state is left
   * to the missed-report timers, but `connected` is now false.
   */
  'node:disconnected': { nodeId: string; reason: string; atMs: number };
  /** A node went LOST: work placed on it is to be given up (the scheduler listens). */
  'node:lost': { nodeId: string; atMs: number };
}

/** Name of a mesh event. */
export type MeshEventName = keyof MeshEvents;

/** A synchronous typed emitter; a throwing listener is logged and does not stop the others. */
export class MeshEmitter {
  private readonly listeners = new Map<MeshEventName, Set<(payload: never) => void>>();

  constructor(private readonly log: LogFn) {}

  /** Adds a listener; returns the function that removes it. */
  on<E extends MeshEventName>(event: E, listener: (payload: MeshEvents[E]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as (payload: never) => void);
    return () => {
      set.delete(listener as (payload: never) => void);
    };
  }

  emit<E extends MeshEventName>(event: E, payload: MeshEvents[E]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const l of [...set]) {
      try {
        (l as (p: MeshEvents[E]) => void)(payload);
      } catch (err) {
        this.log('error', 'mesh:listener-failed', { event, error: String(err) });
      }
    }
  }
}
