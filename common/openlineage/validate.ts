import { InvalidArgumentError } from '../errors.js';
import { EVENT_LIMITS, MAX_STRUCT_DEPTH } from '../event-validation.js';
import { tooDeepAt } from '../json-depth.js';
import {
  OPENLINEAGE_EVENT_TYPES,
  RETRACE_RESOURCES_FACET,
  RETRACE_RESOURCES_INTEGER_FIELDS,
  type OpenLineageDatasetEvent,
  type OpenLineageJobEvent,
  type OpenLineageRunEvent,
  type ValidatedOpenLineageEvent,
} from './types.js';

/**
 * How strictly the spec's `format` keywords are asserted.
 *
 * - `lenient` (the default, and what the HTTP face uses): `date-time` is asserted (Retrace needs
 *   the time), but `uuid` only requires a non-empty token without whitespace and `uri` a
 *   non-empty URI reference. JSON Schema 2020-12 treats `format` as an annotation unless told
 *   otherwise, and real producers rely on that: OpenLineage's own compatibility suite sends
 *   `"runId": "run_id"` and `"producer": "producer"`.
 * - `strict`: `run.runId` (and the parent facet's runId) must be a UUID and every URI absolute.
 */
export type OpenLineageFormatMode = 'lenient' | 'strict';

export interface OpenLineageValidationOptions {
  /** Defaults to `lenient`. */
  formats?: OpenLineageFormatMode;
}

/** Largest batch the batch validator accepts, so one request cannot hold the server hostage. */
export const MAX_OPENLINEAGE_BATCH = 10_000;

/** Levels of objects and lists an event may nest: a run facet's content then fits a Struct (see MAX_STRUCT_DEPTH). */
export const MAX_OPENLINEAGE_DEPTH = MAX_STRUCT_DEPTH + 2;

/**
 * Validates one unknown JSON value as an OpenLineage 2-0-2 event: the core schema's required
 * fields and types, its `oneOf` between RunEvent, DatasetEvent and JobEvent, `_producer` and
 * `_schemaURL` on every facet, and the fields of the facets Retrace reads (parent, version,
 * outputStatistics, sourceCode, sourceCodeLocation, ownership, executionParameters,
 * retrace_resources). Unknown members and facets are kept, untouched.
 *
 * Returns the same object, typed and tagged with the branch it matched. Throws
 * InvalidArgumentError whose field is a JSON path such as `run.runId`, `inputs[2].namespace` or
 * `run.facets["spark.logicalPlan"]._producer`; `$` names the event itself.
 */
export function validateOpenLineageEvent(value: unknown, options: OpenLineageValidationOptions = {}): ValidatedOpenLineageEvent {
  return new Validator(options.formats ?? 'lenient').event(value, '');
}

/**
 * Validates a JSON array of events, all of them, before anything is done with any. Paths are
 * prefixed with the element index: `[3].run.runId`. Throws on the first invalid element.
 */
export function validateOpenLineageBatch(value: unknown, options: OpenLineageValidationOptions = {}): ValidatedOpenLineageEvent[] {
  if (!Array.isArray(value)) throw new InvalidArgumentError('$', `expected a JSON array of OpenLineage events, got ${describe(value)}`);
  if (value.length > MAX_OPENLINEAGE_BATCH) {
    throw new InvalidArgumentError('$', `a batch holds at most ${MAX_OPENLINEAGE_BATCH} events, got ${value.length}`);
  }
  const validator = new Validator(options.formats ?? 'lenient');
  return value.map((item, i) => validator.event(item, `[${i}]`));
}

/** True for an RFC 3339 date-time (as JSON Schema's `date-time` format), with real calendar values. */
export function isRfc3339DateTime(text: string): boolean {
  const m = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|([+-])(\d{2}):(\d{2}))$/.exec(text);
  if (!m) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return false;
  if (hour > 23 || minute > 59 || second > 60) return false;
  if (m[7] !== undefined && (Number(m[8]) > 23 || Number(m[9]) > 59)) return false;
  return true;
}

/** True for a UUID in its canonical 8-4-4-4-12 hex form (any version, any case). */
export function isUuid(text: string): boolean {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(text);
}

/** True for an absolute URI (RFC 3986: a scheme, then characters a URI may hold). */
export function isAbsoluteUri(text: string): boolean {
  return /^[A-Za-z][A-Za-z0-9+.-]*:/.test(text) && isUriReference(text);
}

function isUriReference(text: string): boolean {
  // Characters RFC 3986 never allows unescaped, and '%' not followed by two hex digits.
  return text.length > 0 && !/[\s\u0000-\u001f\u007f<>"{}|\\^`]/.test(text) && !/%(?![0-9A-Fa-f]{2})/.test(text);
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0 ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

function describe(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'string' ? `a string ${JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}...` : value)}` : `a ${typeof value}`;
}

/** `a.b`, or `a["spark.logicalPlan"]` for keys that are not plain identifiers. */
function child(path: string, key: string): string {
  if (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key)) return path === '' ? key : `${path}.${key}`;
  return `${path}[${JSON.stringify(key)}]`;
}

function field(path: string): string {
  return path === '' ? '$' : path;
}

/**
 * Refuses a `__proto__` key anywhere in an event (facets are free-form JSON): the event becomes
 * protobuf Structs held in plain objects, where that key sets the object's prototype instead of
 * adding a field, so the facet was dropped without a word while the event was acknowledged.
 * Called once the depth is known to be bounded.
 */
function refuseProtoKeys(value: unknown, path: string): void {
  if (Array.isArray(value)) {
    value.forEach((v, i) => refuseProtoKeys(v, `${path}[${i}]`));
  } else if (value !== null && typeof value === 'object') {
    for (const [key, v] of Object.entries(value)) {
      const at = child(path, key);
      if (key === '__proto__') throw new InvalidArgumentError(at, 'a key named "__proto__" cannot be stored; rename it');
      refuseProtoKeys(v, at);
    }
  }
}

type JsonRecord = Record<string, unknown>;

function isRecord(value: unknown): value is JsonRecord {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

const INT64_MAX = 9_223_372_036_854_775_807n;

const MAX_ID_LENGTH = EVENT_LIMITS.maxIdLength;
/** Leaves room for the step id's `openlineage:` prefix. */
const MAX_RUN_ID_LENGTH = MAX_ID_LENGTH - 'openlineage:'.length;

class Validator {
  constructor(private readonly formats: OpenLineageFormatMode) {}

  event(value: unknown, path: string): ValidatedOpenLineageEvent {
    // First, and without deep recursion: facets are kept as Structs, which may nest only so far
    // (a run facet sits two levels down), and the checks below recurse.
    const deep = tooDeepAt(value, MAX_OPENLINEAGE_DEPTH, path);
    if (deep !== undefined) throw new InvalidArgumentError(deep, `nested more than ${MAX_OPENLINEAGE_DEPTH} levels of objects and lists deep`);
    refuseProtoKeys(value, path);
    const obj = this.object(value, path);
    this.dateTime(obj, path, 'eventTime');
    this.uri(obj, path, 'producer', true);
    this.uri(obj, path, 'schemaURL', true);

    // The spec's oneOf, decided by which members are present (`required` tests presence):
    // RunEvent needs run and job; JobEvent needs job and no run; DatasetEvent needs dataset and
    // not both job and run.
    const hasRun = 'run' in obj;
    const hasJob = 'job' in obj;
    const hasDataset = 'dataset' in obj;
    if (hasRun && hasJob) {
      this.runEvent(obj, path);
      return { kind: 'RunEvent', event: obj as unknown as OpenLineageRunEvent };
    }
    if (hasJob) {
      if (hasDataset && this.succeeds(() => this.dataset(obj['dataset'], child(path, 'dataset'), 'DatasetFacet'))) {
        throw new InvalidArgumentError(
          field(path),
          'matches both JobEvent and DatasetEvent: an event with job and dataset but no run is ambiguous under the spec (oneOf)',
        );
      }
      this.jobEventBody(obj, path);
      return { kind: 'JobEvent', event: obj as unknown as OpenLineageJobEvent };
    }
    if (hasDataset) {
      this.dataset(obj['dataset'], child(path, 'dataset'), 'DatasetFacet');
      return { kind: 'DatasetEvent', event: obj as unknown as OpenLineageDatasetEvent };
    }
    if (hasRun) throw new InvalidArgumentError(child(path, 'job'), 'required: a RunEvent carries both run and job');
    throw new InvalidArgumentError(
      child(path, 'job'),
      'required: an OpenLineage event carries run and job (RunEvent), job (JobEvent) or dataset (DatasetEvent)',
    );
  }

  private runEvent(obj: JsonRecord, path: string): void {
    if ('eventType' in obj) {
      const type = this.string(obj, path, 'eventType', true);
      if (!(OPENLINEAGE_EVENT_TYPES as readonly string[]).includes(type)) {
        throw new InvalidArgumentError(child(path, 'eventType'), `must be one of ${OPENLINEAGE_EVENT_TYPES.join(', ')}, got ${JSON.stringify(type)}`);
      }
    }
    const runPath = child(path, 'run');
    const run = this.object(obj['run'], runPath);
    this.runId(run, runPath);
    this.facets(run, runPath, 'facets', 'RunFacet');
    this.jobEventBody(obj, path);
  }

  /** job, inputs and outputs: what RunEvent and JobEvent share. */
  private jobEventBody(obj: JsonRecord, path: string): void {
    const jobPath = child(path, 'job');
    const job = this.object(obj['job'], jobPath);
    this.qualifiedName(job, jobPath, 'job');
    this.facets(job, jobPath, 'facets', 'JobFacet');
    for (const [key, facetKind, kind] of [
      ['inputs', 'inputFacets', 'InputDatasetFacet'],
      ['outputs', 'outputFacets', 'OutputDatasetFacet'],
    ] as const) {
      if (!(key in obj)) continue;
      const listPath = child(path, key);
      const list = obj[key];
      if (!Array.isArray(list)) throw new InvalidArgumentError(listPath, `expected an array, got ${describe(list)}`);
      list.forEach((item, i) => {
        const itemPath = `${listPath}[${i}]`;
        const dataset = this.dataset(item, itemPath, 'DatasetFacet');
        this.facets(dataset, itemPath, facetKind, kind);
      });
    }
  }

  private dataset(value: unknown, path: string, kind: 'DatasetFacet'): JsonRecord {
    const dataset = this.object(value, path);
    this.qualifiedName(dataset, path, 'dataset');
    this.facets(dataset, path, 'facets', kind);
    return dataset;
  }

  /**
   * namespace and name, which become the id `<kind>:<namespace>:<name>`; Retrace ids are at
   * most MAX_ID_LENGTH characters and never hold NUL, so say so here, at the OpenLineage path.
   */
  private qualifiedName(obj: JsonRecord, path: string, kind: 'job' | 'dataset'): void {
    const namespace = this.string(obj, path, 'namespace', true);
    const name = this.string(obj, path, 'name', true);
    for (const [key, v] of [['namespace', namespace], ['name', name]] as const) {
      // An empty part makes an id whose namespace or name no Marquez URL can name (`/namespaces//jobs`), so nothing of it could be browsed.
      if (v === '') throw new InvalidArgumentError(child(path, key), 'must not be empty');
      if (v.includes('\u0000')) throw new InvalidArgumentError(child(path, key), 'must not contain a NUL character');
    }
    const length = kind.length + namespace.length + name.length + 2;
    if (length > MAX_ID_LENGTH) {
      throw new InvalidArgumentError(child(path, 'name'), `${kind}:<namespace>:<name> is ${length} characters; the limit is ${MAX_ID_LENGTH}`);
    }
  }

  private runId(run: JsonRecord, path: string): void {
    const runId = this.string(run, path, 'runId', true);
    if (this.formats === 'strict') {
      if (!isUuid(runId)) throw new InvalidArgumentError(child(path, 'runId'), `must be a UUID, got ${describe(runId)}`);
    } else if (runId.length === 0 || runId.length > MAX_RUN_ID_LENGTH || /[\s\u0000-\u001f\u007f]/.test(runId)) {
      throw new InvalidArgumentError(
        child(path, 'runId'),
        `must be a non-empty identifier (a UUID) without whitespace, at most ${MAX_RUN_ID_LENGTH} characters, got ${describe(runId)}`,
      );
    }
  }

  /** A facet map: every value is an object carrying `_producer` and `_schemaURL`. */
  private facets(
    owner: JsonRecord,
    ownerPath: string,
    key: string,
    kind: 'RunFacet' | 'JobFacet' | 'DatasetFacet' | 'InputDatasetFacet' | 'OutputDatasetFacet',
  ): void {
    if (!(key in owner)) return;
    const mapPath = child(ownerPath, key);
    const map = this.object(owner[key], mapPath);
    for (const [name, value] of Object.entries(map)) {
      const facetPath = child(mapPath, name);
      const facet = this.object(value, facetPath);
      this.uri(facet, facetPath, '_producer', true);
      this.uri(facet, facetPath, '_schemaURL', true);
      if ((kind === 'JobFacet' || kind === 'DatasetFacet') && '_deleted' in facet && typeof facet['_deleted'] !== 'boolean') {
        throw new InvalidArgumentError(child(facetPath, '_deleted'), `expected a boolean, got ${describe(facet['_deleted'])}`);
      }
      this.knownFacet(kind, name, facet, facetPath);
    }
  }

  /** Fields of the facets Retrace reads, so that conversion never meets a surprise. */
  private knownFacet(kind: string, name: string, facet: JsonRecord, path: string): void {
    switch (`${kind}:${name}`) {
      case 'RunFacet:parent': {
        const runPath = child(path, 'run');
        const run = this.object(facet['run'], runPath);
        this.runId(run, runPath);
        const jobPath = child(path, 'job');
        const job = this.object(facet['job'], jobPath);
        this.string(job, jobPath, 'namespace', true);
        this.string(job, jobPath, 'name', true);
        return;
      }
      case 'RunFacet:executionParameters': {
        if (!('parameters' in facet)) return;
        const listPath = child(path, 'parameters');
        const list = facet['parameters'];
        if (!Array.isArray(list)) throw new InvalidArgumentError(listPath, `expected an array, got ${describe(list)}`);
        list.forEach((item, i) => {
          const itemPath = `${listPath}[${i}]`;
          const parameter = this.object(item, itemPath);
          this.string(parameter, itemPath, 'key', true);
        });
        return;
      }
      case `RunFacet:${RETRACE_RESOURCES_FACET}`:
        for (const key of RETRACE_RESOURCES_INTEGER_FIELDS) this.int64(facet, path, key);
        if ('gpuUtilization' in facet) {
          const u = facet['gpuUtilization'];
          if (typeof u !== 'number' || !(u >= 0 && u <= 1)) {
            throw new InvalidArgumentError(child(path, 'gpuUtilization'), `expected a number in 0..1, got ${describe(u)}`);
          }
        }
        return;
      case 'JobFacet:sourceCode':
        this.string(facet, path, 'sourceCode', true);
        return;
      case 'JobFacet:sourceCodeLocation':
        this.string(facet, path, 'url', true);
        return;
      case 'JobFacet:ownership':
        if ('owners' in facet) {
          const listPath = child(path, 'owners');
          const list = facet['owners'];
          if (!Array.isArray(list)) throw new InvalidArgumentError(listPath, `expected an array, got ${describe(list)}`);
          list.forEach((item, i) => this.string(this.object(item, `${listPath}[${i}]`), `${listPath}[${i}]`, 'name', true));
        }
        return;
      case 'DatasetFacet:version':
        this.string(facet, path, 'datasetVersion', true);
        return;
      case 'OutputDatasetFacet:outputStatistics':
      case 'DatasetFacet:outputStatistics':
        for (const key of ['rowCount', 'size', 'fileCount']) {
          if (!(key in facet)) continue;
          const v = facet[key];
          if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
            throw new InvalidArgumentError(child(path, key), `expected a non-negative integer, got ${describe(v)}`);
          }
        }
        return;
      default:
        return;
    }
  }

  private object(value: unknown, path: string): JsonRecord {
    if (!isRecord(value)) throw new InvalidArgumentError(field(path), `expected an object, got ${describe(value)}`);
    return value;
  }

  private string(obj: JsonRecord, path: string, key: string, required: boolean): string {
    if (!(key in obj)) {
      if (required) throw new InvalidArgumentError(child(path, key), 'required');
      return '';
    }
    const v = obj[key];
    if (typeof v !== 'string') throw new InvalidArgumentError(child(path, key), `expected a string, got ${describe(v)}`);
    return v;
  }

  private dateTime(obj: JsonRecord, path: string, key: string): void {
    const v = this.string(obj, path, key, true);
    if (!isRfc3339DateTime(v)) throw new InvalidArgumentError(child(path, key), `expected an RFC 3339 date-time, got ${describe(v)}`);
  }

  private uri(obj: JsonRecord, path: string, key: string, required: boolean): void {
    if (!(key in obj) && !required) return;
    const v = this.string(obj, path, key, required);
    const ok = this.formats === 'strict' ? isAbsoluteUri(v) : isUriReference(v);
    if (!ok) throw new InvalidArgumentError(child(path, key), `expected a URI, got ${describe(v)}`);
  }

  private int64(obj: JsonRecord, path: string, key: string): void {
    if (!(key in obj)) return;
    const v = obj[key];
    const ok =
      (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) ||
      (typeof v === 'string' && /^\d{1,19}$/.test(v) && BigInt(v) <= INT64_MAX);
    if (!ok) throw new InvalidArgumentError(child(path, key), `expected a non-negative 64-bit integer, got ${describe(v)}`);
  }

  private succeeds(check: () => void): boolean {
    try {
      check();
      return true;
    } catch (err) {
      if (err instanceof InvalidArgumentError) return false;
      throw err;
    }
  }
}
