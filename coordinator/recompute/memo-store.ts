import { canonicalJson } from '../../common/canonical-json.js';
import { contentHashOf } from '../../common/hash.js';
import type { Database } from '../store/database.js';

/** One output of a memoized step execution. */
export interface MemoOutput {
  objectId: string;
  contentHash: string;
  size: number;
  mediaType: string;
  /**
   * A pipeline step's output key as the transform gave it ('' = the input record's key), so a
   * hit for another record names that record's outputs. Absent in entries from before it.
   */
  key?: string;
}

/** What a step execution with a given cache key produced, and the step that recorded it. */
export interface MemoEntry {
  outputs: MemoOutput[];
  stepId: string;
}

/**
 * A step's cache key: sha256 of the canonical JSON of its code version, parameters and its
 * inputs' (name, content hash) pairs sorted by name. Object ids are left out on purpose: the same
 * code over the same bytes gives the same output whichever record carried them.
 */
export function cacheKeyOf(codeVersion: string, parameters: unknown, inputs: readonly { name: string; contentHash: string }[]): string {
  const sorted = [...inputs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((i) => [i.name, i.contentHash]);
  return contentHashOf(canonicalJson({ codeVersion, parameters: parameters ?? {}, inputs: sorted }));
}

/**
 * Memoized step results in the `recompute/memo` sublevel (cache key → MemoEntry JSON). Entries are
 * never rewritten with other content: a key's first result stays (equal keys give equal bytes for
 * deterministic transforms). The only code that knows this layout.
 */
export interface MemoStore {
  get(cacheKey: string): Promise<MemoEntry | undefined>;
  put(cacheKey: string, entry: MemoEntry): Promise<void>;
}

export function createMemoStore(db: Database): MemoStore {
  const table = db.sublevel('recompute').sublevel<string, MemoEntry>('memo', { valueEncoding: 'json' });
  return {
    get: (cacheKey) => table.get(cacheKey),
    async put(cacheKey, entry) {
      if ((await table.get(cacheKey)) !== undefined) return;
      await table.put(cacheKey, entry);
    },
  };
}
