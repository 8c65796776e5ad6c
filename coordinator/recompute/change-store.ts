import { Change, ChangeKind, ChangePolicy, ChangeState, PathWatch, type PolicyEntry } from '../../common/gen/retrace/v1/recompute.js';
import { canonicalJson } from '../../common/canonical-json.js';
import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import { sha256Hex } from '../../common/hash.js';
import type { NanoClock } from '../clock.js';
import type { LineageEngine } from '../lineage/lineage-engine.js';
import type { Database } from '../store/database.js';

/** What a detector reports; the store fills id, time, policy and state. */
export interface ChangeInput {
  kind: ChangeKind;
  objectId?: string;
  oldHash: string;
  newHash: string;
  pipeline?: string;
  source?: string;
  step?: string;
  noticedBy: string;
  detail?: string;
  /**
   * For a change of a pipeline step's definition (code version, parameters): what tells it from
   * the same change made before, `v<the pipeline version it is made from>` (stepChanges). A step
   * moved A -> B, back to A and to B again is a change each time; without it the third apply
   * would be taken for the first and recompute nothing. Not stored: it only goes into the id.
   */
  after?: string;
}

/** The policy that applies where nothing is set: recompute at once, as ingest always did. */
export const DEFAULT_POLICY = ChangePolicy.CHANGE_POLICY_AUTO;

/**
 * Changes, policies and watched paths in the `recompute` sublevel: `changes` (id → Change JSON),
 * `changes-by-time` (`<detected ns, 20 digits>:<id>` → id), `changes-to` (`<pipeline>\0<object>\0<new
 * hash>` → id of the newest content change to that hash), `policies` (`<pipeline>\0<source>` →
 * policy number) and `watches` (id → PathWatch JSON). Every change is also recorded in provenance
 * as a run `change:<id>` whose `retrace.change` facet says what changed, the old and new hash and
 * who noticed. The only code that knows this layout.
 */
export interface ChangeStore {
  /**
   * Records a change (provenance first, then the table). The id is derived from what changed and
   * the two hashes (see idOf), so reporting the same change again returns the stored one
   * (`created` false).
   */
  record(input: ChangeInput): Promise<{ change: Change; created: boolean }>;
  /**
   * The id `record` gives `input`: changeIdOf, and for a content change from a version that an
   * earlier recorded change made current, that change's id too. So a report repeated while the
   * object is still at the old content is the same change, and the same content change made
   * again later (A→B, B→A, A→B) is a change of its own, with its own state and job.
   */
  idOf(input: ChangeInput): Promise<string>;
  /** The change `record` would return, storing nothing (a dry run): the stored one, else a new one not recorded. */
  preview(input: ChangeInput): Promise<{ change: Change; created: boolean }>;
  get(changeId: string): Promise<Change>;
  /** The stored change, or undefined. */
  find(changeId: string): Promise<Change | undefined>;
  /** The newest recorded content change (object, file or record) that made `newHash` the object's content, if any. */
  latestTo(pipeline: string, objectId: string, newHash: string): Promise<Change | undefined>;
  /** The newest recorded content change of an object (by when it was detected), whatever its new content. */
  latestOf(pipeline: string, objectId: string): Promise<Change | undefined>;
  /** Newest first; `pipeline` filters. Page size 1..1000 (default 100). */
  list(options?: { pipeline?: string; pageSize?: number; pageToken?: string }): Promise<{ changes: Change[]; nextPageToken: string }>;
  /** Adds a job id to a change and sets its state. */
  markSubmitted(changeId: string, jobId: string): Promise<Change>;
  /**
   * A reported change the ingest that noticed it recomputed: RECOMPUTED_BY_INGEST (a change in
   * another state keeps it). So are the reported changes without a job before it on the same
   * object (a failed step or a stop left them so, and a newer content came instead of a resend):
   * the ingest brought the downstream to the content now, and their `detail` says which change did.
   */
  markRecomputedByIngest(changeId: string): Promise<void>;
  setPolicy(pipeline: string, source: string, policy: ChangePolicy): Promise<PolicyEntry>;
  /** The source's policy, else the pipeline's, else DEFAULT_POLICY. */
  policyFor(pipeline: string, source: string): Promise<ChangePolicy>;
  policies(): Promise<PolicyEntry[]>;
  putWatch(watch: PathWatch): Promise<void>;
  deleteWatch(watchId: string): Promise<boolean>;
  watches(): Promise<PathWatch[]>;
}

const TOKEN = /^\d{20}:chg-[0-9a-f]{16}$/;

/** Kinds of change that give an object new content, the ones `changes-to` indexes. */
const CONTENT_KINDS: ReadonlySet<ChangeKind> = new Set([ChangeKind.CHANGE_KIND_OBJECT, ChangeKind.CHANGE_KIND_FILE, ChangeKind.CHANGE_KIND_RECORD]);
const toKey = (pipeline: string, objectId: string, newHash: string): string => `${pipeline}\u0000${objectId}\u0000${newHash}`;
/** Set once `changes-to` covers every stored change (data dirs from before it are indexed at first use). */
const TO_INDEX_BUILT = 'changes-to-built';

/**
 * The id of a change: what changed and the two hashes, so equal reports get equal ids; `after`,
 * the change that made the old content current (ChangeStore.idOf), tells a change made again
 * from one made once. Without it the id is as before it existed.
 */
export function changeIdOf(input: Pick<ChangeInput, 'kind' | 'objectId' | 'pipeline' | 'step' | 'oldHash' | 'newHash'>, after = ''): string {
  const fields: unknown[] = [input.kind, input.objectId ?? '', input.pipeline ?? '', input.step ?? '', input.oldHash, input.newHash];
  if (after !== '') fields.push(after);
  return `chg-${sha256Hex(canonicalJson(fields)).slice(0, 16)}`;
}

export function createChangeStore(db: Database, lineage: Pick<LineageEngine, 'submit'>, clock: NanoClock): ChangeStore {
  const root = db.sublevel('recompute');
  const changes = root.sublevel<string, unknown>('changes', { valueEncoding: 'json' });
  const byTime = root.sublevel<string, string>('changes-by-time', { valueEncoding: 'utf8' });
  const policies = root.sublevel<string, number>('policies', { valueEncoding: 'json' });
  const watches = root.sublevel<string, unknown>('watches', { valueEncoding: 'json' });
  const changesTo = root.sublevel<string, string>('changes-to', { valueEncoding: 'utf8' });
  const meta = root.sublevel<string, string>('meta', { valueEncoding: 'utf8' });
  // Serialised so two reports of one change store it once.
  let tail: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = tail.then(fn);
    tail = p.catch(() => undefined);
    return p;
  };

  async function read(changeId: string): Promise<Change | undefined> {
    const raw = await changes.get(changeId);
    return raw === undefined ? undefined : Change.fromJSON(raw);
  }

  async function policyFor(pipeline: string, source: string): Promise<ChangePolicy> {
    if (pipeline === '') return DEFAULT_POLICY;
    if (source !== '') {
      const p = await policies.get(`${pipeline}\u0000${source}`);
      if (p !== undefined) return p;
    }
    return (await policies.get(`${pipeline}\u0000`)) ?? DEFAULT_POLICY;
  }

  let toIndexReady: Promise<void> | undefined;
  /** Indexes the changes a data dir holds from before `changes-to`, once; the newest per key wins. */
  function ensureToIndex(): Promise<void> {
    toIndexReady ??= serial(async () => {
      if ((await meta.get(TO_INDEX_BUILT)) !== undefined) return;
      const newest = new Map<string, { id: string; at: bigint }>();
      for await (const raw of changes.values()) {
        const c = Change.fromJSON(raw);
        if (!CONTENT_KINDS.has(c.kind)) continue;
        const key = toKey(c.pipeline, c.objectId, c.newHash);
        const at = BigInt(c.detectedAtNs);
        const seen = newest.get(key);
        if (!seen || at > seen.at) newest.set(key, { id: c.changeId, at });
      }
      const batch = root.batch();
      for (const [key, { id }] of newest) batch.put(key, id, { sublevel: changesTo });
      await batch.put(TO_INDEX_BUILT, '1', { sublevel: meta }).write();
    }).catch((err: unknown) => {
      toIndexReady = undefined;
      throw err;
    });
    return toIndexReady;
  }

  /** See ChangeStore.idOf; call after ensureToIndex. */
  async function idOf(input: ChangeInput): Promise<string> {
    if (!CONTENT_KINDS.has(input.kind) || !input.objectId || input.oldHash === '') return changeIdOf(input, input.after ?? '');
    const after = await changesTo.get(toKey(input.pipeline ?? '', input.objectId, input.oldHash));
    return changeIdOf(input, after ?? '');
  }

  async function build(input: ChangeInput, changeId: string): Promise<Change> {
    return {
      changeId,
      kind: input.kind,
      objectId: input.objectId ?? '',
      oldHash: input.oldHash,
      newHash: input.newHash,
      pipeline: input.pipeline ?? '',
      source: input.source ?? '',
      step: input.step ?? '',
      noticedBy: input.noticedBy,
      detectedAtNs: clock().toString(),
      policy: await policyFor(input.pipeline ?? '', input.source ?? ''),
      state: ChangeState.CHANGE_STATE_REPORTED,
      jobIds: [],
      detail: input.detail ?? '',
    };
  }

  return {
    async record(input) {
      // Outside serial(): the first use builds the index through it.
      await ensureToIndex();
      return serial(async () => {
        const id = await idOf(input);
        const existing = await read(id);
        if (existing) return { change: existing, created: false };
        const change = await build(input, id);
        const { changeId, detectedAtNs } = change;
        const json = Change.toJSON(change) as Record<string, unknown>;
        await lineage.submit([
          {
            eventId: `change:${changeId}`,
            eventTimeNs: detectedAtNs,
            producer: 'retrace://coordinator/recompute',
            body: {
              $case: 'run',
              value: { runId: `change:${changeId}`, name: `change/${ChangeKind[input.kind].replace('CHANGE_KIND_', '').toLowerCase()}`, parentRunId: '', state: 'COMPLETE', startedAtNs: detectedAtNs, endedAtNs: detectedAtNs, facets: { retrace: { change: json } } },
            },
          },
        ]);
        const batch = root
          .batch()
          .put(changeId, json, { sublevel: changes })
          .put(`${detectedAtNs.padStart(20, '0')}:${changeId}`, changeId, { sublevel: byTime });
        if (CONTENT_KINDS.has(change.kind)) batch.put(toKey(change.pipeline, change.objectId, change.newHash), changeId, { sublevel: changesTo });
        await batch.write();
        return { change, created: true };
      });
    },
    async preview(input) {
      await ensureToIndex();
      const id = await idOf(input);
      const existing = await read(id);
      return existing ? { change: existing, created: false } : { change: await build(input, id), created: true };
    },
    async idOf(input) {
      await ensureToIndex();
      return idOf(input);
    },
    find: read,
    async latestTo(pipeline, objectId, newHash) {
      await ensureToIndex();
      const id = await changesTo.get(toKey(pipeline, objectId, newHash));
      return id === undefined ? undefined : read(id);
    },
    async latestOf(pipeline, objectId) {
      await ensureToIndex();
      // One `changes-to` row per content the object was changed to: few, even for a busy object.
      const prefix = toKey(pipeline, objectId, '');
      let newest: Change | undefined;
      for await (const id of changesTo.values({ gte: prefix, lt: `${prefix.slice(0, -1)}\u0001` })) {
        const c = await read(id);
        if (c && (!newest || BigInt(c.detectedAtNs) > BigInt(newest.detectedAtNs))) newest = c;
      }
      return newest;
    },
    async get(changeId) {
      const c = await read(changeId);
      if (!c) throw new NotFoundError(`change ${JSON.stringify(changeId)}`, 'change_id');
      return c;
    },
    async list(options = {}) {
      const pageSize = options.pageSize === undefined || options.pageSize === 0 ? 100 : options.pageSize;
      if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 1000) throw new InvalidArgumentError('page_size', `must be 1..1000, got ${pageSize}`);
      const token = options.pageToken ?? '';
      if (token !== '' && !TOKEN.test(token)) throw new InvalidArgumentError('page_token', 'is not a token from a previous response');
      const out: Change[] = [];
      let last = '';
      for await (const [key, id] of byTime.iterator(token === '' ? { reverse: true } : { reverse: true, lt: token })) {
        const c = await read(id);
        if (!c || (options.pipeline && c.pipeline !== options.pipeline)) continue;
        if (out.length === pageSize) return { changes: out, nextPageToken: last };
        out.push(c);
        last = key;
      }
      return { changes: out, nextPageToken: '' };
    },
    async markRecomputedByIngest(changeId) {
      // Outside serial(): the first use builds the index through it.
      await ensureToIndex();
      return serial(async () => {
        const c = await read(changeId);
        if (!c) throw new NotFoundError(`change ${JSON.stringify(changeId)}`, 'change_id');
        if (c.state !== ChangeState.CHANGE_STATE_REPORTED) return;
        c.state = ChangeState.CHANGE_STATE_RECOMPUTED_BY_INGEST;
        const batch = root.batch().put(changeId, Change.toJSON(c), { sublevel: changes });
        // Back along the object's changes while they wait, reported with no job.
        const seen = new Set([changeId]);
        for (let at = c; CONTENT_KINDS.has(at.kind); ) {
          const id = await changesTo.get(toKey(at.pipeline, at.objectId, at.oldHash));
          const before = id === undefined || seen.has(id) ? undefined : await read(id);
          if (!before || before.state !== ChangeState.CHANGE_STATE_REPORTED || before.jobIds.length > 0) break;
          seen.add(before.changeId);
          before.state = ChangeState.CHANGE_STATE_RECOMPUTED_BY_INGEST;
          before.detail = `superseded by change ${changeId}, whose ingest brought the downstream to the content now${before.detail ? `; ${before.detail}` : ''}`;
          batch.put(before.changeId, Change.toJSON(before), { sublevel: changes });
          at = before;
        }
        await batch.write();
      });
    },
    markSubmitted(changeId, jobId) {
      return serial(async () => {
        const c = await read(changeId);
        if (!c) throw new NotFoundError(`change ${JSON.stringify(changeId)}`, 'change_id');
        if (!c.jobIds.includes(jobId)) c.jobIds.push(jobId);
        c.state = ChangeState.CHANGE_STATE_RECOMPUTE_SUBMITTED;
        await changes.put(changeId, Change.toJSON(c));
        return c;
      });
    },
    async setPolicy(pipeline, source, policy) {
      if (pipeline === '') throw new InvalidArgumentError('pipeline', 'is required');
      if (policy !== ChangePolicy.CHANGE_POLICY_AUTO && policy !== ChangePolicy.CHANGE_POLICY_MANUAL) throw new InvalidArgumentError('policy', 'must be CHANGE_POLICY_AUTO or CHANGE_POLICY_MANUAL');
      await policies.put(`${pipeline}\u0000${source}`, policy);
      return { pipeline, source, policy };
    },
    policyFor,
    async policies() {
      const out: PolicyEntry[] = [];
      for await (const [key, policy] of policies.iterator()) {
        const [pipeline = '', source = ''] = key.split('\u0000');
        out.push({ pipeline, source, policy });
      }
      return out;
    },
    async putWatch(watch) {
      await watches.put(watch.watchId, PathWatch.toJSON(watch));
    },
    async deleteWatch(watchId) {
      if ((await watches.get(watchId)) === undefined) return false;
      await watches.del(watchId);
      return true;
    },
    async watches() {
      const out: PathWatch[] = [];
      for await (const raw of watches.values()) out.push(PathWatch.fromJSON(raw));
      return out;
    },
  };
}
