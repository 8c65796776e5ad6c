import { InvalidArgumentError } from './errors.js';
import { isContentHash } from './hash.js';
import { sortKeys } from './canonical-json.js';
import type { LineageEvent, ObjectRef, ObjectVersion, ResourceUsage, Run, Step } from './gen/retrace/v1/provenance.js';

/** Limits on one event; larger input is rejected with INVALID_ARGUMENT, never truncated. */
export const EVENT_LIMITS = {
  maxIdLength: 1024,
  maxRefsPerStep: 10_000,
  maxEventsPerBatch: 50_000,
  maxEventBytes: 1 << 20,
} as const;

const INT64 = /^-?\d{1,19}$/;

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
  requireId(event.eventId, `${path}.event_id`);
  checkNanos(event.eventTimeNs, `${path}.event_time_ns`);
  const timeMissing = event.eventTimeNs === '0' || event.eventTimeNs === '';
  const eventTimeNs = timeMissing ? receivedAtNs : event.eventTimeNs;
  const body = event.body;
  if (!body) throw new InvalidArgumentError(`${path}.body`, 'one of object_version, step or run is required');
  const ctx: Canon = { changed: timeMissing };
  let normalized: LineageEvent['body'];
  switch (body.$case) {
    case 'objectVersion':
      normalized = { $case: 'objectVersion', value: normalizeObjectVersion(body.value, `${path}.object_version`, ctx) };
      break;
    case 'step':
      normalized = { $case: 'step', value: normalizeStep(body.value, `${path}.step`, ctx) };
      break;
    case 'run':
      normalized = { $case: 'run', value: normalizeRun(body.value, `${path}.run`, ctx) };
      break;
    default:
      throw new InvalidArgumentError(`${path}.body`, 'unknown body');
  }
  return { event: { eventId: event.eventId, eventTimeNs, producer: event.producer, body: normalized }, changed: ctx.changed };
}

/** Whether canonicalising changed any part of one event. */
interface Canon {
  changed: boolean;
}

function normalizeObjectVersion(v: ObjectVersion, path: string, ctx: Canon): ObjectVersion {
  requireId(v.objectId, `${path}.object_id`);
  requireHash(v.contentHash, `${path}.content_hash`);
  checkNonNegative(v.size, `${path}.size`);
  checkNanos(v.createdAtNs, `${path}.created_at_ns`);
  const attributes = canonical(v.attributes, ctx);
  const facets = canonicalOptional(v.facets, ctx);
  return attributes === v.attributes && facets === v.facets ? v : { ...v, attributes, facets };
}

function normalizeStep(s: Step, path: string, ctx: Canon): Step {
  requireId(s.stepId, `${path}.step_id`);
  if (s.runId !== '') checkId(s.runId, `${path}.run_id`);
  requireId(s.transform, `${path}.transform`);
  if (s.codeVersion !== '') requireHash(s.codeVersion, `${path}.code_version`);
  checkNanos(s.startedAtNs, `${path}.started_at_ns`);
  checkNanos(s.endedAtNs, `${path}.ended_at_ns`);
  if (s.startedAtNs !== '0' && s.endedAtNs !== '0' && BigInt(s.endedAtNs) < BigInt(s.startedAtNs)) {
    throw new InvalidArgumentError(`${path}.ended_at_ns`, 'is before started_at_ns');
  }
  if (s.used.length + s.generated.length > EVENT_LIMITS.maxRefsPerStep) {
    throw new InvalidArgumentError(`${path}.used`, `more than ${EVENT_LIMITS.maxRefsPerStep} references`);
  }
  s.used.forEach((r, i) => checkRef(r, `${path}.used[${i}]`, true));
  s.generated.forEach((r, i) => checkRef(r, `${path}.generated[${i}]`, false));
  if (s.resources) checkResources(s.resources, `${path}.resources`);
  const parameters = canonicalOptional(s.parameters, ctx);
  const facets = canonicalOptional(s.facets, ctx);
  return parameters === s.parameters && facets === s.facets ? s : { ...s, parameters, facets };
}

function normalizeRun(r: Run, path: string, ctx: Canon): Run {
  requireId(r.runId, `${path}.run_id`);
  if (r.parentRunId !== '') checkId(r.parentRunId, `${path}.parent_run_id`);
  if (r.parentRunId === r.runId) throw new InvalidArgumentError(`${path}.parent_run_id`, 'a run cannot be its own parent');
  checkNanos(r.startedAtNs, `${path}.started_at_ns`);
  checkNanos(r.endedAtNs, `${path}.ended_at_ns`);
  const facets = canonicalOptional(r.facets, ctx);
  return facets === r.facets ? r : { ...r, facets };
}

function checkRef(r: ObjectRef, path: string, allowUnversioned: boolean): void {
  requireId(r.objectId, `${path}.object_id`);
  if (r.unversioned) {
    if (!allowUnversioned) throw new InvalidArgumentError(`${path}.unversioned`, 'a generated object version needs its content hash');
    if (r.contentHash !== '') throw new InvalidArgumentError(`${path}.content_hash`, 'must be empty when unversioned is set');
    return;
  }
  requireHash(r.contentHash, `${path}.content_hash`);
}

function checkResources(u: ResourceUsage, path: string): void {
  for (const [name, value] of Object.entries(u)) {
    if (name === 'gpuUtilization') {
      if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 1) {
        throw new InvalidArgumentError(`${path}.gpu_utilization`, 'must be between 0 and 1');
      }
      continue;
    }
    // The field's path is built only for the error: this runs for every field of every step.
    const text = String(value);
    if (!INT64.test(text) || text.startsWith('-')) checkNonNegative(text, `${path}.${snake(name)}`);
  }
}

function requireId(value: string, path: string): void {
  if (value === '') throw new InvalidArgumentError(path, 'is required');
  checkId(value, path);
}

function checkId(value: string, path: string): void {
  if (value.length > EVENT_LIMITS.maxIdLength) throw new InvalidArgumentError(path, `longer than ${EVENT_LIMITS.maxIdLength} characters`);
  // NUL separates the parts of store keys, so it may not appear in ids.
  if (value.includes('\u0000')) throw new InvalidArgumentError(path, 'contains a NUL character');
}

function requireHash(value: string, path: string): void {
  if (value === '') throw new InvalidArgumentError(path, 'is required (sha256:<64 hex digits>)');
  if (!isContentHash(value)) throw new InvalidArgumentError(path, `malformed hash ${JSON.stringify(value.slice(0, 80))}; expected sha256:<64 lowercase hex digits>`);
}

function checkNanos(value: string, path: string): void {
  if (!INT64.test(value) || value.startsWith('-')) throw new InvalidArgumentError(path, 'must be non-negative nanoseconds since the epoch');
}

function checkNonNegative(value: string, path: string): void {
  if (!INT64.test(value) || value.startsWith('-')) throw new InvalidArgumentError(path, 'must be a non-negative integer');
}

/** `v` itself when its keys are already in canonical order (the usual case); else a sorted copy, noted in `ctx`. */
function canonical<T>(v: T, ctx: Canon): T {
  if (isCanonical(v)) return v;
  ctx.changed = true;
  return sortKeys(v);
}

function canonicalOptional<T>(v: T | undefined, ctx: Canon): T | undefined {
  return v === undefined ? undefined : canonical(v, ctx);
}

/** True when sortKeys(value) would equal `value` member for member, in the same order. */
function isCanonical(value: unknown): boolean {
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
