import { InvalidArgumentError } from './errors.js';
import { isContentHash } from './hash.js';
import { tooDeepAt } from './json-depth.js';
import { sortKeys } from './canonical-json.js';
import type { LineageEvent, ObjectRef, ObjectVersion, ObjectVersions, ResourceUsage, Run, Step } from './gen/retrace/v1/provenance.js';

/** Limits on one event; larger input is rejected with INVALID_ARGUMENT, never truncated. */
export const EVENT_LIMITS = {
  maxIdLength: 1024,
  maxRefsPerStep: 10_000,
  maxEventsPerBatch: 50_000,
  maxEventBytes: 1 << 20,
} as const;

/**
 * Event bytes as a front end hands them to the engine (DeferredEvents.decode's `wire`), with
 * `plain[i]` 1 where its decoder found that the event it decoded from wire[i] passes every check
 * of normalizeEventChecked and is left unchanged by it, so that it needs no check again. The
 * flag speaks for the bytes: an event whose bytes were dropped (undefined) is checked in full.
 */
export type CheckedEventBytes = readonly (Uint8Array | undefined)[] & { readonly plain?: Uint8Array };

/**
 * Structural validation of one native event (no store lookups): required fields, hash syntax,
 * int64 ranges, limits. Returns a normalised event (Struct and map keys sorted, so the encoding
 * is canonical; a zero event time replaced by `receivedAtNs`). Errors name the field under `path`.
 */
export function normalizeEvent(event: LineageEvent, path: string, receivedAtNs: string): LineageEvent {
  return normalizeEventChecked(event, path, receivedAtNs).event;
}

/**
 * `normalizeEvent`, also saying whether normalising changed anything. When it did not, the
 * event's wire bytes mean exactly the normalised event, so a store may keep those bytes instead
 * of encoding it again. Parts that need no change are shared with `event`, not copied.
 */
export function normalizeEventChecked(event: LineageEvent, path: string, receivedAtNs: string): { event: LineageEvent; changed: boolean } {
  // Field paths are joined only when a check fails: building them for every valid event was a
  // measurable share of ingest's allocations.
  requireId(event.eventId, path, '.event_id');
  checkNanos(event.eventTimeNs, path, '.event_time_ns');
  const timeMissing = event.eventTimeNs === '0' || event.eventTimeNs === '';
  const body = event.body;
  if (!body) throw new InvalidArgumentError(`${path}.body`, 'one of object_version, step or run is required');
  const ctx: Canon = { changed: timeMissing };
  let value: ObjectVersion | Step | Run;
  switch (body.$case) {
    case 'objectVersion':
      value = normalizeObjectVersion(body.value, path, ctx);
      break;
    case 'step':
      value = normalizeStep(body.value, path, ctx);
      break;
    case 'run':
      value = normalizeRun(body.value, path, ctx);
      break;
    default:
      throw new InvalidArgumentError(`${path}.body`, 'unknown body');
  }
  if (!ctx.changed && value === body.value) return { event, changed: false };
  const eventTimeNs = timeMissing ? receivedAtNs : event.eventTimeNs;
  return { event: { eventId: event.eventId, eventTimeNs, producer: event.producer, body: { ...body, value } as LineageEvent['body'] }, changed: ctx.changed };
}

/** Whether canonicalising changed any part of one event. */
interface Canon {
  changed: boolean;
}

/** `hashChecked`: the content hash is known valid (it equals a reference's that checkRef passed). */
function normalizeObjectVersion(v: ObjectVersion, event: string, ctx: Canon, p = '.object_version', hashChecked = false): ObjectVersion {
  requireId(v.objectId, event, p, '.object_id');
  if (!hashChecked) requireHash(v.contentHash, event, p, '.content_hash');
  checkNonNegative(v.size, event, p, '.size');
  checkNanos(v.createdAtNs, event, p, '.created_at_ns');
  const attributes = canonical(v.attributes, ctx);
  const facets = canonicalOptional(v.facets, ctx, `${event}${p}.facets`);
  return attributes === v.attributes && facets === v.facets ? v : { ...v, attributes, facets };
}

function normalizeStep(s: Step, event: string, ctx: Canon): Step {
  const p = '.step';
  requireId(s.stepId, event, p, '.step_id');
  if (s.runId !== '') checkId(s.runId, event, p, '.run_id');
  requireId(s.transform, event, p, '.transform');
  if (s.codeVersion !== '') requireHash(s.codeVersion, event, p, '.code_version');
  checkNanos(s.startedAtNs, event, p, '.started_at_ns');
  checkNanos(s.endedAtNs, event, p, '.ended_at_ns');
  if (s.startedAtNs !== '0' && s.endedAtNs !== '0' && decimalLess(s.endedAtNs, s.startedAtNs)) {
    throw new InvalidArgumentError(`${event}${p}.ended_at_ns`, 'is before started_at_ns');
  }
  if (s.used.length + s.generated.length > EVENT_LIMITS.maxRefsPerStep) {
    throw new InvalidArgumentError(`${event}${p}.used`, `more than ${EVENT_LIMITS.maxRefsPerStep} references`);
  }
  for (let i = 0; i < s.used.length; i++) checkRef(s.used[i] as ObjectRef, event, '.step.used', i, true);
  for (let i = 0; i < s.generated.length; i++) checkRef(s.generated[i] as ObjectRef, event, '.step.generated', i, false);
  if (s.resources) checkResources(s.resources, `${event}${p}.resources`);
  const parameters = canonicalOptional(s.parameters, ctx, `${event}${p}.parameters`);
  const facets = canonicalOptional(s.facets, ctx, `${event}${p}.facets`);
  const generatedVersions = s.generatedVersions === undefined ? undefined : normalizeDescribedVersions(s.generatedVersions, s.generated, `${event}.step.generated_versions`, 'generated', ctx);
  const usedVersions = s.usedVersions === undefined ? undefined : normalizeDescribedVersions(s.usedVersions, s.used, `${event}.step.used_versions`, 'used', ctx);
  return parameters === s.parameters && facets === s.facets && generatedVersions === s.generatedVersions && usedVersions === s.usedVersions
    ? s
    : { ...s, parameters, facets, generatedVersions, usedVersions };
}

/**
 * A step's inline object versions (of its outputs or its inputs): each an object version of its
 * own, naming one of the step's `refs`, at most once. The same object untouched when nothing
 * needed sorting.
 */
function normalizeDescribedVersions(g: ObjectVersions, refs: readonly ObjectRef[], path: string, list: string, ctx: Canon): ObjectVersions {
  if (g.versions.length > refs.length) {
    throw new InvalidArgumentError(`${path}.versions`, `${g.versions.length} versions for ${refs.length} ${list} references`);
  }
  let out: ObjectVersion[] | undefined;
  const seen = g.versions.length > 1 ? new Set<string>() : undefined;
  // A scan per version is cheapest for a step's usual one or two refs, quadratic for many.
  const known = g.versions.length > 8 ? new Set(refs.map((r) => `${r.objectId}\u0000${r.contentHash}`)) : undefined;
  for (let i = 0; i < g.versions.length; i++) {
    const v = g.versions[i] as ObjectVersion;
    const at = `${path}.versions[${i}]`;
    const matched = known ? known.has(`${v.objectId}\u0000${v.contentHash}`) : refs.some((r) => !r.unversioned && r.objectId === v.objectId && r.contentHash === v.contentHash);
    // A non-empty hash equal to a reference's was checked with the references (an unversioned
    // one has none): not checked again, one or two of a pipeline step event's four or five hash
    // checks. The errors and their order are as before.
    const n = normalizeObjectVersion(v, at, ctx, '', matched && v.contentHash !== '');
    if (!matched) {
      throw new InvalidArgumentError(at, `${v.objectId}@${v.contentHash} is not among the step's ${list} references`);
    }
    if (seen) {
      const k = `${v.objectId}\u0000${v.contentHash}`;
      if (seen.has(k)) throw new InvalidArgumentError(at, `${v.objectId}@${v.contentHash} is described twice`);
      seen.add(k);
    }
    if (n !== v) (out ??= g.versions.slice())[i] = n;
  }
  return out ? { versions: out } : g;
}

function normalizeRun(r: Run, event: string, ctx: Canon): Run {
  const p = '.run';
  requireId(r.runId, event, p, '.run_id');
  if (r.parentRunId !== '') checkId(r.parentRunId, event, p, '.parent_run_id');
  if (r.parentRunId === r.runId) throw new InvalidArgumentError(`${event}${p}.parent_run_id`, 'a run cannot be its own parent');
  checkNanos(r.startedAtNs, event, p, '.started_at_ns');
  checkNanos(r.endedAtNs, event, p, '.ended_at_ns');
  const facets = canonicalOptional(r.facets, ctx, `${event}${p}.facets`);
  return facets === r.facets ? r : { ...r, facets };
}

function checkRef(r: ObjectRef, event: string, list: string, i: number, allowUnversioned: boolean): void {
  if (r.objectId === '' || r.objectId.length > EVENT_LIMITS.maxIdLength || r.objectId.includes('\u0000')) requireId(r.objectId, `${event}${list}[${i}]`, '.object_id');
  if (r.unversioned) {
    if (!allowUnversioned) throw new InvalidArgumentError(`${event}${list}[${i}].unversioned`, 'a generated object version needs its content hash');
    if (r.contentHash !== '') throw new InvalidArgumentError(`${event}${list}[${i}].content_hash`, 'must be empty when unversioned is set');
    return;
  }
  if (!isContentHash(r.contentHash)) requireHash(r.contentHash, `${event}${list}[${i}]`, '.content_hash');
}

function checkResources(u: ResourceUsage, path: string): void {
  // Keys, not entries: no pair array per field of every step.
  for (const name of Object.keys(u)) {
    const value = u[name as keyof ResourceUsage];
    if (name === 'gpuUtilization') {
      if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 1) {
        throw new InvalidArgumentError(`${path}.gpu_utilization`, 'must be between 0 and 1');
      }
      continue;
    }
    // The field's path is built only for the error: this runs for every field of every step.
    const text = String(value);
    if (!isNonNegativeInt64(text)) checkNonNegative(text, path, `.${snake(name)}`);
  }
}

/** The checks below name the field as the concatenation of their path parts, joined only on failure. */
function requireId(value: string, a: string, b = '', c = ''): void {
  if (value === '') throw new InvalidArgumentError(a + b + c, 'is required');
  checkId(value, a, b, c);
}

/**
 * What is wrong with an id, or undefined: at most `maxLength` characters and no NUL. Ids that
 * are built from a caller's string (a record key inside an object id) check that string with
 * the room the id leaves it.
 */
export function idProblem(value: string, maxLength: number = EVENT_LIMITS.maxIdLength): string | undefined {
  // NUL separates the parts of store keys, so it may not appear in ids.
  if (value.includes('\u0000')) return 'contains a NUL character';
  if (value.length > maxLength) return `longer than ${maxLength} characters`;
  return undefined;
}

function checkId(value: string, a: string, b = '', c = ''): void {
  const problem = idProblem(value);
  if (problem !== undefined) throw new InvalidArgumentError(a + b + c, problem);
}

function requireHash(value: string, a: string, b = '', c = ''): void {
  if (value === '') throw new InvalidArgumentError(a + b + c, 'is required (sha256:<64 hex digits>)');
  if (!isContentHash(value)) throw new InvalidArgumentError(a + b + c, `malformed hash ${JSON.stringify(value.slice(0, 80))}; expected sha256:<64 lowercase hex digits>`);
}

function checkNanos(value: string, a: string, b = '', c = ''): void {
  if (!isNonNegativeInt64(value)) throw new InvalidArgumentError(a + b + c, 'must be non-negative nanoseconds since the epoch');
}

function checkNonNegative(value: string, a: string, b = '', c = ''): void {
  if (!isNonNegativeInt64(value)) throw new InvalidArgumentError(a + b + c, 'must be a non-negative integer');
}

const INT64_MAX = '9223372036854775807';

/**
 * 1–19 decimal digits, no sign, at most 2^63 − 1: checked without a regex or a BigInt. Past the
 * range the protobuf encoder throws, which surfaced as INTERNAL (HTTP 500) instead of the field.
 */
/** A decimal string of an int64 that is not negative (what int64 nanosecond and size fields hold). */
export function isNonNegativeInt64(value: string): boolean {
  const n = value.length;
  if (n === 0 || n > 19) return false;
  for (let i = 0; i < n; i++) {
    const c = value.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  // Equal lengths compare as numbers do; leading zeros keep a shorter value's digits in range.
  return n < 19 || value <= INT64_MAX;
}

/**
 * a < b for two decimal strings that isNonNegativeInt64 accepts, without a BigInt each: digit
 * strings of one length compare as their values do, leading zeros aside.
 */
function decimalLess(a: string, b: string): boolean {
  if (a.length !== b.length) {
    a = withoutLeadingZeros(a);
    b = withoutLeadingZeros(b);
    if (a.length !== b.length) return a.length < b.length;
  }
  return a < b;
}

function withoutLeadingZeros(s: string): string {
  let i = 0;
  while (i < s.length - 1 && s.charCodeAt(i) === 48) i++;
  return i === 0 ? s : s.slice(i);
}

/** `v` itself when its keys are already in canonical order (the usual case); else a sorted copy, noted in `ctx`. */
function canonical<T>(v: T, ctx: Canon): T {
  if (isCanonical(v)) return v;
  ctx.changed = true;
  return sortKeys(v);
}

/**
 * Levels of objects and lists a Struct field (facets, parameters) may nest. Each level costs the
 * protobuf decoder three of its 100 nested messages; an event nested past that limit would be
 * stored and then fail to decode, leaving a ledger the coordinator cannot load at its next start.
 */
export const MAX_STRUCT_DEPTH = 24;

function canonicalOptional<T>(v: T | undefined, ctx: Canon, field: string): T | undefined {
  if (v === undefined) return undefined;
  // The usual Struct passes both checks in one walk; only one that fails either takes the two
  // below, which name the first member too deep or sort a copy. Two walks (and the depth check's
  // trail) were a third of a pipeline step event's normalisation.
  if (canonicalWithin(v, MAX_STRUCT_DEPTH)) return v;
  const deep = tooDeepAt(v, MAX_STRUCT_DEPTH, field);
  if (deep !== undefined) throw new InvalidArgumentError(deep, `nested more than ${MAX_STRUCT_DEPTH} levels of objects and lists deep`);
  return canonical(v, ctx);
}

/**
 * True when `isCanonical(value)` and `tooDeepAt(value, levels)` finds nothing: the same members
 * visited, in one walk. False says only that one of them fails.
 */
function canonicalWithin(value: unknown, levels: number): boolean {
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array) return true;
  if (levels === 0) return false;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) if (!canonicalWithin(value[i], levels - 1)) return false;
    return true;
  }
  let previous: string | undefined;
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    if (previous !== undefined && !(previous < key)) return false;
    const v = (value as Record<string, unknown>)[key];
    if (v === undefined || !canonicalWithin(v, levels - 1)) return false;
    previous = key;
  }
  return true;
}

/** True when sortKeys(value) would equal `value` member for member, in the same order. */
export function isCanonical(value: unknown): boolean {
  if (Array.isArray(value)) return value.every(isCanonical);
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array) return true;
  let previous: string | undefined;
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    if (previous !== undefined && !(previous < key)) return false;
    const v = (value as Record<string, unknown>)[key];
    if (v === undefined || !isCanonical(v)) return false;
    previous = key;
  }
  return true;
}

function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}
