import type { Database } from './database.js';

/**
 * Merges concurrent calls into shared ones: `serve` gets the inputs of every call made while the
 * previous `serve` ran (or, when idle, of every call made in the same microtask turn) and answers
 * them together, one output per input. Concurrent record paths then share one LevelDB round trip
 * (one batch write, one getMany) instead of paying one each; a LevelDB call costs tens of µs of
 * CPU however little it carries. Calls are served in order; a `serve` that fails rejects every
 * call it was serving.
 */
export function coalesceCalls<I, O>(serve: (inputs: I[]) => Promise<readonly O[]>): (input: I) => Promise<O> {
  let queue: { input: I; resolve: (o: O) => void; reject: (e: unknown) => void }[] = [];
  let busy = false;
  const drain = async (): Promise<void> => {
    while (queue.length > 0) {
      const group = queue;
      queue = [];
      try {
        const out = await serve(group.map((c) => c.input));
        group.forEach((c, i) => c.resolve(out[i] as O));
      } catch (err) {
        for (const c of group) c.reject(err);
      }
    }
    busy = false;
  };
  return (input) =>
    new Promise<O>((resolve, reject) => {
      queue.push({ input, resolve, reject });
      if (!busy) {
        busy = true;
        queueMicrotask(() => void drain());
      }
    });
}

/**
 * A row for the root of the database: its sublevel's prefix already on the key, the value
 * encoded; a null value deletes the key (in order with the puts queued around it).
 */
export type RootRow = readonly [key: string, value: Uint8Array | null];

/**
 * Writes rows through the database's root, concurrent calls sharing one (unsynced) batch, in the
 * order they were called (a call with no rows resolves once every earlier call's rows are written). Keys
 * carry their sublevel's prefix and values are encoded by the caller: a sublevel batch prefixes
 * and transcodes every entry again, several times the cost of the put itself.
 */
export function coalescedRootWrites(db: Database): (rows: readonly RootRow[]) => Promise<void> {
  const write = coalesceCalls(async (groups: (readonly RootRow[])[]) => {
    const batch = db.batch();
    for (const rows of groups) {
      for (const [key, value] of rows) {
        if (value === null) batch.del(key);
        else batch.put(key, value);
      }
    }
    await batch.write();
    return [];
  });
  return async (rows) => {
    await write(rows);
  };
}
