import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import { canonicalJson } from '../../common/canonical-json.js';
import type { PublishedCode } from '../../common/gen/retrace/v1/code.js';
import { Pipeline, PipelineVersion, type PipelineSource } from '../../common/gen/retrace/v1/pipeline.js';
import { contentHashOf, isContentHash } from '../../common/hash.js';
import type { NanoClock } from '../clock.js';
import { coalesceCalls, coalescedRootWrites } from '../store/call-coalescer.js';
import type { Database } from '../store/database.js';

/** What validation needs of the code store (when one is mounted). */
export interface CodeLookup {
  describe(codeVersion: string): Promise<PublishedCode | undefined>;
}

/** The latest known version of one record of a source or step output, for one key. */
export interface CurrentRecord {
  objectId: string;
  contentHash: string;
  size: number;
  mediaType: string;
  eventTimeNs: string;
}

/**
 * Pipeline definitions and their versions, and the current record per (pipeline, dataset, key),
 * in the `pipelines` sublevel: `versions` (`<name>\0<version, 10 digits>` → PipelineVersion JSON),
 * `latest` (name → version number) and `current` (`<pipeline>\0<source or step>\0<key>` →
 * CurrentRecord JSON), `open-runs` (ingest run id → OpenIngestRun JSON while the run goes on) and
 * `followups` (`<name>\0<version, 10 digits>` → ApplyFollowUp JSON until what a new version sets
 * off is done). The only code that knows this layout.
 */
export interface PipelineStore {
  /**
   * Validates and stores a definition; a definition equal to the latest version returns it with
   * created = false. With `followUp` (who applied it), a new version is noted as owing its
   * follow-up in the same batch, so a crash before `followUpDone` leaves the note for the next start.
   */
  apply(pipeline: Pipeline, options?: { followUp?: string }): Promise<{ pipeline: PipelineVersion; created: boolean }>;
  /** The versions whose follow-up was noted and never marked done, oldest first per pipeline. */
  followUps(): Promise<ApplyFollowUp[]>;
  /** Forgets a version's follow-up note (none: nothing happens). */
  followUpDone(name: string, version: number): Promise<void>;
  /** One version (latest when `version` is 0 or absent); NotFoundError (`name` / `version`) when unknown. */
  get(name: string, version?: number): Promise<PipelineVersion>;
  /** Every version number of a pipeline, oldest first (empty when unknown). */
  versions(name: string): Promise<number[]>;
  /** Latest version of every pipeline, by name. */
  list(): Promise<PipelineVersion[]>;
  getCurrent(pipeline: string, dataset: string, key: string): Promise<CurrentRecord | undefined>;
  setCurrent(pipeline: string, entries: readonly { dataset: string; key: string; record: CurrentRecord }[]): Promise<void>;
  /** The content hash of every current record of every pipeline (what the payload sweep keeps). */
  currentHashes(): AsyncIterable<string>;
  /** Notes an ingest run as open before its start is recorded, so a restart can close it should the process die. */
  markRunOpen(run: OpenIngestRun): Promise<void>;
  /** Forgets an open run once its end is recorded. */
  markRunClosed(runId: string): Promise<void>;
  /** Ingest runs noted open and never closed (a process that died during them). */
  openRuns(): Promise<OpenIngestRun[]>;
  /**
   * Every stored version as [name, version number, its JSON text, not parsed], in key order, and
   * every name's latest version number as text (for verify).
   */
  storedVersions(): AsyncIterable<[string, number, string]>;
  storedLatest(): AsyncIterable<[string, string]>;
}

/** A new pipeline version whose follow-up (change detection, auto recompute) is owed. */
export interface ApplyFollowUp {
  pipeline: string;
  version: number;
  principal: string;
}

/** An ingest run as noted open: what its closing event needs. */
export interface OpenIngestRun {
  runId: string;
  pipeline: string;
  source: string;
  pipelineVersion: number;
  principal: string;
  startedAtNs: string;
}

/** Step fields `retries` and `retry_backoff_ms`: bounds, the backoff a 0 stands for, and the cap of a drawn backoff (ms). */
export const STEP_RETRY_LIMITS = { maxRetries: 100, maxBackoffMs: 600_000, defaultBackoffMs: 200, backoffCapMs: 10_000 } as const;

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function checkName(value: string, field: string): void {
  if (!NAME.test(value)) throw new InvalidArgumentError(field, `expected a name of letters, digits, ".", "_" and "-" (at most 128), got ${JSON.stringify(value)}`);
}

/**
 * At apply only (stored versions are not checked again): `cpu` and `networkMbps` are doubles, and
 * a step asking for -1 CPU or NaN Mbit/s was stored and placed as if it asked for less than nothing.
 */
function checkStepRequirements(p: Pipeline): void {
  p.steps.forEach((s, i) => {
    const r = s.requirements;
    if (!r) return;
    for (const [key, field] of [['cpu', 'cpu'], ['networkMbps', 'network_mbps']] as const) {
      const v = r[key];
      if (!Number.isFinite(v) || v < 0) throw new InvalidArgumentError(`steps[${i}].requirements.${field}`, `expected a number ≥ 0, got ${v}`);
    }
  });
}

/**
 * At apply only (stored versions are not checked again, so one stored before keeps running): a
 * definition with no steps runs nothing on what it ingests, and two steps writing one output
 * dataset (`output`, or the step's name where it sets none) would mix their records under one
 * name. Both were stored. Errors name `steps` and the later step's `output` (the earlier one's
 * where only it set one).
 */
function checkStepsAndOutputs(p: Pipeline): void {
  if (p.steps.length === 0) throw new InvalidArgumentError('steps', 'at least one step is required: a pipeline without steps runs nothing on what it ingests');
  const writer = new Map<string, number>();
  p.steps.forEach((s, i) => {
    const output = s.output || s.name;
    const first = writer.get(output);
    if (first !== undefined) {
      const field = s.output !== '' ? `steps[${i}].output` : `steps[${first}].output`;
      throw new InvalidArgumentError(field, `output dataset ${JSON.stringify(output)} is written by both steps[${first}] (${JSON.stringify(p.steps[first]?.name)}) and steps[${i}] (${JSON.stringify(s.name)}); each step needs an output of its own`);
    }
    writer.set(output, i);
  });
}

/**
 * Structural validation of a definition (no I/O): names, unknown inputs, duplicates, cycles,
 * code version syntax. Returns the steps' indexes in dependency order. Errors name the field.
 */
export function validatePipeline(p: Pipeline): number[] {
  checkName(p.name, 'pipeline.name');
  if (p.sources.length === 0) throw new InvalidArgumentError('pipeline.sources', 'at least one source is required');
  const owner = new Map<string, string>();
  p.sources.forEach((s, i) => {
    checkName(s.name, `sources[${i}].name`);
    if (owner.has(s.name)) throw new InvalidArgumentError(`sources[${i}].name`, `duplicate name ${JSON.stringify(s.name)} (also ${owner.get(s.name)})`);
    owner.set(s.name, `sources[${i}]`);
  });
  const stepIndex = new Map<string, number>();
  p.steps.forEach((s, i) => {
    checkName(s.name, `steps[${i}].name`);
    if (owner.has(s.name)) throw new InvalidArgumentError(`steps[${i}].name`, `duplicate name ${JSON.stringify(s.name)} (also ${owner.get(s.name)})`);
    owner.set(s.name, `steps[${i}]`);
    stepIndex.set(s.name, i);
    if (s.transform === '') throw new InvalidArgumentError(`steps[${i}].transform`, 'is required');
    if (!isContentHash(s.codeVersion)) {
      throw new InvalidArgumentError(`steps[${i}].code_version`, `malformed code version ${JSON.stringify(s.codeVersion.slice(0, 80))}; expected sha256:<64 lowercase hex digits>`);
    }
    if (s.output !== '') checkName(s.output, `steps[${i}].output`);
    if (s.retries > STEP_RETRY_LIMITS.maxRetries) throw new InvalidArgumentError(`steps[${i}].retries`, `at most ${STEP_RETRY_LIMITS.maxRetries}, got ${s.retries}`);
    if (s.retryBackoffMs > STEP_RETRY_LIMITS.maxBackoffMs) throw new InvalidArgumentError(`steps[${i}].retry_backoff_ms`, `at most ${STEP_RETRY_LIMITS.maxBackoffMs}, got ${s.retryBackoffMs}`);
  });
  p.steps.forEach((s, i) => {
    if (s.inputs.length === 0) throw new InvalidArgumentError(`steps[${i}].inputs`, 'at least one input is required');
    const seen = new Set<string>();
    s.inputs.forEach((name, j) => {
      if (!owner.has(name)) throw new InvalidArgumentError(`steps[${i}].inputs[${j}]`, `unknown input ${JSON.stringify(name)}: not a source or step of the pipeline`);
      if (name === s.name) throw new InvalidArgumentError(`steps[${i}].inputs[${j}]`, 'a step cannot use its own output (cycle)');
      if (seen.has(name)) throw new InvalidArgumentError(`steps[${i}].inputs[${j}]`, `duplicate input ${JSON.stringify(name)}`);
      seen.add(name);
    });
  });
  // Depth-first topological order; a back edge is a cycle, reported at the input that closes it.
  const state = new Map<number, 'visiting' | 'done'>();
  const order: number[] = [];
  const visit = (i: number): void => {
    state.set(i, 'visiting');
    const step = p.steps[i];
    step?.inputs.forEach((name, j) => {
      const dep = stepIndex.get(name);
      if (dep === undefined) return;
      const st = state.get(dep);
      if (st === 'visiting') throw new InvalidArgumentError(`steps[${i}].inputs[${j}]`, `cycle: ${JSON.stringify(step.name)} depends on ${JSON.stringify(name)}, which depends on it`);
      if (st === undefined) visit(dep);
    });
    state.set(i, 'done');
    order.push(i);
  };
  p.steps.forEach((_, i) => {
    if (!state.has(i)) visit(i);
  });
  return order;
}

/**
 * The latest version of `pipeline` for a request that names it and, unless `source` is
 * undefined, one of its sources: NotFoundError naming `pipeline`, or InvalidArgumentError naming
 * `source` and listing the pipeline's sources.
 */
export async function latestWithSource(store: Pick<PipelineStore, 'get'>, pipeline: string, source: string | undefined): Promise<{ pv: PipelineVersion; source: PipelineSource | undefined }> {
  let pv: PipelineVersion;
  try {
    pv = await store.get(pipeline);
  } catch (err) {
    if (err instanceof NotFoundError) throw new NotFoundError(`pipeline ${JSON.stringify(pipeline)}`, 'pipeline');
    throw err;
  }
  if (source === undefined) return { pv, source: undefined };
  const sources = pv.pipeline?.sources ?? [];
  const found = sources.find((s) => s.name === source);
  if (!found) throw new InvalidArgumentError('source', `pipeline ${JSON.stringify(pipeline)} has no source ${JSON.stringify(source)} (sources: ${sources.map((s) => s.name).join(', ')})`);
  return { pv, source: found };
}

/** Canonical JSON form of a definition, with defaults filled so equal definitions hash equal. */
function canonicalDefinition(p: Pipeline): string {
  return canonicalJson(Pipeline.toJSON(p));
}

/** Opens the pipeline store on `db`. `code`, when given, must know every step's code version. */
export function createPipelineStore(db: Database, clock: NanoClock, code?: CodeLookup): PipelineStore {
  const root = db.sublevel('pipelines');
  const versions = root.sublevel<string, unknown>('versions', { valueEncoding: 'json' });
  const latest = root.sublevel<string, string>('latest', { valueEncoding: 'utf8' });
  const current = root.sublevel<string, CurrentRecord>('current', { valueEncoding: 'json' });
  const openRuns = root.sublevel<string, OpenIngestRun>('open-runs', { valueEncoding: 'json' });
  const followUps = root.sublevel<string, { principal: string }>('followups', { valueEncoding: 'json' });
  let tail: Promise<unknown> = Promise.resolve();
  const cache = new Map<string, PipelineVersion>();

  // Every ingested record reads and writes its current records: concurrent records share one
  // getMany and one batch.
  const currentKey = (pipeline: string, dataset: string, key: string): string => `${pipeline}\u0000${dataset}\u0000${key}`;
  // Keys go to the root with the sublevel's prefix already on them and values are encoded here:
  // sublevel batches and getMany pay per-entry prefixing and transcoding several times over.
  const currentPrefix = current.prefix;
  const readCurrent = coalesceCalls(async (keys: string[]): Promise<(CurrentRecord | undefined)[]> => {
    const values = await db.getMany(keys.map((k) => currentPrefix + k));
    return values.map((v) => (v === undefined ? undefined : (JSON.parse(Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('utf8')) as CurrentRecord)));
  });
  const writeCurrent = coalescedRootWrites(db);
  const versionKey = (name: string, v: number): string => `${name}\u0000${String(v).padStart(10, '0')}`;

  async function read(name: string, v: number): Promise<PipelineVersion | undefined> {
    const key = versionKey(name, v);
    const hit = cache.get(key);
    if (hit) return hit;
    const raw = await versions.get(key);
    if (raw === undefined) return undefined;
    const pv = PipelineVersion.fromJSON(raw);
    cache.set(key, pv);
    return pv;
  }

  async function latestVersion(name: string): Promise<number> {
    const v = await latest.get(name);
    return v === undefined ? 0 : Number(v);
  }

  async function applyNow(input: Pipeline, followUp: string | undefined): Promise<{ pipeline: PipelineVersion; created: boolean }> {
    const pipeline = Pipeline.fromJSON(Pipeline.toJSON(input));
    validatePipeline(pipeline);
    checkStepsAndOutputs(pipeline);
    checkStepRequirements(pipeline);
    if (code) {
      for (const [i, s] of pipeline.steps.entries()) {
        const found = await code.describe(s.codeVersion);
        if (!found) throw new NotFoundError(`code version ${s.codeVersion} (publish it with "retrace publish")`, `steps[${i}].code_version`);
        const published = found.manifest?.transform;
        if (published !== undefined && published !== '' && published !== s.transform) {
          throw new InvalidArgumentError(`steps[${i}].transform`, `code version ${s.codeVersion} is transform ${JSON.stringify(published)}, not ${JSON.stringify(s.transform)}`);
        }
      }
    }
    const definitionHash = contentHashOf(canonicalDefinition(pipeline));
    const last = await latestVersion(pipeline.name);
    if (last > 0) {
      const prev = await read(pipeline.name, last);
      if (prev && prev.definitionHash === definitionHash) return { pipeline: prev, created: false };
    }
    const pv: PipelineVersion = { pipeline, version: last + 1, definitionHash, createdAtNs: clock().toString() };
    const batch = root.batch();
    batch.put(versionKey(pipeline.name, pv.version), PipelineVersion.toJSON(pv), { sublevel: versions });
    batch.put(pipeline.name, String(pv.version), { sublevel: latest });
    if (followUp !== undefined) batch.put(versionKey(pipeline.name, pv.version), { principal: followUp }, { sublevel: followUps });
    await batch.write();
    cache.set(versionKey(pipeline.name, pv.version), pv);
    return { pipeline: pv, created: true };
  }

  return {
    apply(pipeline, options = {}) {
      const p = tail.then(() => applyNow(pipeline, options.followUp));
      tail = p.catch(() => undefined);
      return p;
    },
    async followUps() {
      const out: ApplyFollowUp[] = [];
      for await (const [key, v] of followUps.iterator()) {
        const [pipeline = '', version = '0'] = key.split('\u0000');
        out.push({ pipeline, version: Number(version), principal: v.principal });
      }
      return out;
    },
    async followUpDone(name, version) {
      await followUps.del(versionKey(name, version));
    },
    async get(name, version = 0) {
      const v = version > 0 ? version : await latestVersion(name);
      if (v === 0) throw new NotFoundError(`pipeline ${JSON.stringify(name)}`, 'name');
      const pv = await read(name, v);
      if (!pv) throw new NotFoundError(`version ${v} of pipeline ${JSON.stringify(name)}`, 'version');
      return pv;
    },
    async versions(name) {
      const last = await latestVersion(name);
      return Array.from({ length: last }, (_, i) => i + 1);
    },
    async list() {
      const out: PipelineVersion[] = [];
      for await (const [name, v] of latest.iterator()) {
        const pv = await read(name, Number(v));
        if (pv) out.push(pv);
      }
      return out;
    },
    async getCurrent(pipeline, dataset, key) {
      return readCurrent(currentKey(pipeline, dataset, key));
    },
    async setCurrent(pipeline, entries) {
      if (entries.length === 0) return;
      await writeCurrent(entries.map((e) => [currentPrefix + currentKey(pipeline, e.dataset, e.key), Buffer.from(JSON.stringify(e.record))] as const));
    },
    async *currentHashes() {
      for await (const record of current.values()) yield record.contentHash;
    },
    async markRunOpen(run) {
      await openRuns.put(run.runId, run);
    },
    async markRunClosed(runId) {
      await openRuns.del(runId);
    },
    async openRuns() {
      return openRuns.values().all();
    },
    async *storedVersions() {
      // As text: a record that no longer parses is reported by verify, not thrown mid-scan.
      for await (const [key, text] of versions.iterator<string, string>({ valueEncoding: 'utf8' })) {
        const cut = key.lastIndexOf('\u0000');
        yield [key.slice(0, cut), Number(key.slice(cut + 1)), text];
      }
    },
    storedLatest() {
      return latest.iterator();
    },
  };
}
