import { canonicalJson } from './canonical-json.js';
import { gpuCount } from './requirements.js';

/**
 * The transform SDK: what a user writes, and the pure conversions the agent's shard worker
 * applies around it. No I/O here.
 *
 * ```ts
 * import { defineTransform } from 'retrace/transform';
 * export default defineTransform({
 *   name: 'clean-orders',
 *   requirements: { cpu: 1, memoryMb: 256 },
 *   run(input, params) {
 *     const order = input.json<{ total: number }>();
 *     return order.total >= Number(params.min ?? 0) ? { json: order } : null;
 *   },
 * });
 * ```
 */

/**
 * A bad definition or output. Kept apart from common/errors.ts on purpose: every bundle carries a
 * copy of this module, and that one would pull the gRPC error types into each bundle. `code` and
 * `field` match RetraceError's, so the agent reports it the same way.
 */
export class TransformError extends Error {
  readonly code = 'INVALID_ARGUMENT';
  readonly field: string;

  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'TransformError';
    this.field = field;
  }
}

/** What a transform asks of the node running it. Every field is optional; absent = no requirement. */
export interface TransformRequirements {
  /** CPU cores (fractions allowed). */
  cpu?: number;
  /** Memory in MiB; also the default heap limit of the worker running the transform. */
  memoryMb?: number;
  /** `true` = one GPU; a number = that many. */
  gpu?: boolean | number;
  /** CPU instruction-set flags the node must have, e.g. `['avx2']`. */
  instructionSets?: string[];
  /** Network bandwidth, Mbit/s. */
  networkMbps?: number;
}

/** One input record of a shard as the transform sees it. */
export interface TransformInput {
  /** Record key (e.g. the order id); outputs default to it. */
  readonly key: string;
  readonly payload: Uint8Array;
  /** The payload decoded as UTF-8. */
  text(): string;
  /** The payload parsed as JSON; throws on malformed JSON. */
  json<T = unknown>(): T;
  /** Event time, nanoseconds since the Unix epoch. */
  readonly eventTimeNs: bigint;
  /** Name of the input as the pipeline step declares it (a source or an upstream step). */
  readonly name: string;
  readonly objectId: string;
  readonly mediaType: string;
  /**
   * Every named input of the shard, by name: this record under its own name, and for each other
   * name the record at the same position among that name's records (or its first one).
   */
  readonly inputs: Readonly<Record<string, TransformInput>>;
}

/** JSON values, as parameters arrive. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** The step's parameters: a plain JSON object (empty when none were given). */
export type TransformParams = { readonly [key: string]: JsonValue };

/** What a run gets besides its input. */
export interface TransformContext {
  readonly shardId: string;
  readonly nodeId: string;
  /** Aborted when the shard is cancelled; long-running transforms should stop early. */
  readonly signal: AbortSignal;
  /** A line for the agent's log, tagged with the shard id. */
  log(message: string): void;
}

/**
 * One output record. Give exactly one of `payload` (bytes or UTF-8 text) and `json` (encoded as
 * canonical JSON, so equal values give equal hashes). `key` defaults to the input's key;
 * `mediaType` to application/octet-stream, text/plain; charset=utf-8 or application/json.
 */
export interface TransformOutput {
  key?: string;
  payload?: Uint8Array | string;
  json?: unknown;
  mediaType?: string;
}

/** A run's result: one output, several, or none (null/undefined drops the input). */
export type TransformResult = TransformOutput | readonly TransformOutput[] | null | undefined | void;

export type TransformRunFn<P extends TransformParams = TransformParams> = (
  input: TransformInput,
  params: P,
  ctx: TransformContext,
) => TransformResult | Promise<TransformResult>;

/** What `defineTransform` takes. */
export interface TransformSpec<P extends TransformParams = TransformParams> {
  /** 1-128 characters of letters, digits and `._:/-`, starting with a letter or digit. */
  name: string;
  requirements?: TransformRequirements;
  run: TransformRunFn<P>;
}

/** Marks definitions, across copies of this module (every bundle carries its own). */
export const TRANSFORM_BRAND = 'retrace.transform/v1';

/** A validated, frozen transform definition; a transform file's default export (or export `transform`). */
export interface TransformDefinition<P extends TransformParams = TransformParams> {
  readonly kind: typeof TRANSFORM_BRAND;
  readonly name: string;
  readonly requirements: Readonly<TransformRequirements>;
  readonly run: TransformRunFn<P>;
}

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

/**
 * Validates a transform and returns its frozen definition. Pure: no I/O, nothing registered.
 * Throws TransformError naming the field (`name`, `run`, `requirements.cpu`...).
 */
export function defineTransform<P extends TransformParams = TransformParams>(spec: TransformSpec<P>): TransformDefinition<P> {
  if (typeof spec !== 'object' || spec === null) throw new TransformError('spec', 'must be an object');
  if (typeof spec.name !== 'string' || !NAME_PATTERN.test(spec.name)) {
    throw new TransformError('name', `must match ${NAME_PATTERN.source}, got ${JSON.stringify(spec.name)}`);
  }
  if (typeof spec.run !== 'function') throw new TransformError('run', 'must be a function');
  return Object.freeze({
    kind: TRANSFORM_BRAND,
    name: spec.name,
    requirements: compileRequirements(spec.requirements ?? {}),
    run: spec.run,
  });
}

function compileRequirements(r: TransformRequirements): Readonly<TransformRequirements> {
  if (typeof r !== 'object' || r === null) throw new TransformError('requirements', 'must be an object');
  const out: TransformRequirements = {};
  const nonNegative = (field: keyof TransformRequirements, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw new TransformError(`requirements.${field}`, `must be a non-negative number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  if (r.cpu !== undefined) out.cpu = nonNegative('cpu', r.cpu);
  if (r.memoryMb !== undefined) {
    out.memoryMb = nonNegative('memoryMb', r.memoryMb);
    if (!Number.isInteger(out.memoryMb)) throw new TransformError('requirements.memoryMb', 'must be a whole number of MiB');
  }
  if (r.gpu !== undefined) {
    if (typeof r.gpu !== 'boolean') {
      out.gpu = nonNegative('gpu', r.gpu);
      if (!Number.isInteger(out.gpu)) throw new TransformError('requirements.gpu', 'must be a boolean or a whole number');
    } else out.gpu = r.gpu;
  }
  if (r.networkMbps !== undefined) out.networkMbps = nonNegative('networkMbps', r.networkMbps);
  if (r.instructionSets !== undefined) {
    if (!Array.isArray(r.instructionSets) || r.instructionSets.some((s) => typeof s !== 'string' || s.trim() === '')) {
      throw new TransformError('requirements.instructionSets', 'must be an array of non-empty strings');
    }
    out.instructionSets = Object.freeze([...r.instructionSets]) as string[];
  }
  return Object.freeze(out);
}

/** Whether `value` is a definition made by `defineTransform` (any copy of this module). */
export function isTransformDefinition(value: unknown): value is TransformDefinition {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Partial<TransformDefinition>;
  return v.kind === TRANSFORM_BRAND && typeof v.name === 'string' && typeof v.run === 'function';
}

/**
 * The definition exported by a loaded transform module: its default export, or else its export
 * named `transform`. Throws TransformError when neither is a definition.
 */
export function transformOfModule(module: Record<string, unknown>): TransformDefinition {
  if (isTransformDefinition(module.default)) return module.default;
  if (isTransformDefinition(module.transform)) return module.transform;
  throw new TransformError('bundle', 'exports no transform: make `export default defineTransform({...})` (or `export const transform = ...`)');
}

/** Requirements as the CodeService manifest carries them (zeros for absent fields, gpu as a count). */
export function toRequirementsMessage(r: Readonly<TransformRequirements>): {
  cpu: number;
  memoryMb: number;
  gpu: number;
  instructionSets: string[];
  networkMbps: number;
} {
  return {
    cpu: r.cpu ?? 0,
    memoryMb: r.memoryMb ?? 0,
    gpu: gpuCount(r),
    instructionSets: [...(r.instructionSets ?? [])],
    networkMbps: r.networkMbps ?? 0,
  };
}

/** One input record of a shard as the worker receives it. */
export interface ShardRecord {
  name: string;
  objectId: string;
  key: string;
  payload: Uint8Array;
  /** Decimal nanoseconds since the epoch (the proto's int64 as a string). */
  eventTimeNs: string;
  mediaType: string;
}

const decoder = new TextDecoder('utf-8');
const encoder = new TextEncoder();

function toInput(r: ShardRecord, inputs: Record<string, TransformInput>): TransformInput {
  let eventTimeNs: bigint;
  try {
    eventTimeNs = BigInt(r.eventTimeNs || '0');
  } catch {
    eventTimeNs = 0n;
  }
  return Object.freeze({
    key: r.key,
    payload: r.payload,
    text: () => decoder.decode(r.payload),
    json: <T = unknown>(): T => JSON.parse(decoder.decode(r.payload)) as T,
    eventTimeNs,
    name: r.name,
    objectId: r.objectId,
    mediaType: r.mediaType,
    inputs,
  });
}

/**
 * The calls a shard makes: `run` is called once per record of the shard's primary input (the
 * name of its first record), in order. A shard of records of one name is a batch (one call per
 * record); a shard of one record per name is a join (one call, every record under `inputs`).
 * For each other name, `inputs[name]` is that name's record at the same position, or its first.
 */
export function toTransformInputs(records: readonly ShardRecord[]): TransformInput[] {
  const first = records[0];
  if (!first) return [];
  const byName = new Map<string, ShardRecord[]>();
  for (const r of records) {
    const list = byName.get(r.name) ?? [];
    list.push(r);
    byName.set(r.name, list);
  }
  const primary = byName.get(first.name) ?? [];
  // Pushed, not `primary.map`: map's builtin returns a packed array and TurboFan's inlined map a
  // holey one, so the array changed its map once this function was optimized, and the shard
  // worker's loop over it (optimized before) was thrown away and compiled again (~50-150 ms).
  const calls: TransformInput[] = [];
  for (let i = 0; i < primary.length; i++) {
    const inputs: Record<string, TransformInput> = {};
    const self = toInput(primary[i] as ShardRecord, inputs);
    for (const [name, list] of byName) {
      if (name === first.name) continue;
      const other = list[i] ?? list[0];
      if (other) inputs[name] = toInput(other, inputs);
    }
    inputs[first.name] = self;
    Object.freeze(inputs);
    calls.push(self);
  }
  return calls;
}

/** An output record as the worker hands it back: key, bytes (a fresh copy) and media type. */
export interface NormalizedOutput {
  key: string;
  payload: Uint8Array;
  mediaType: string;
}

/** Limits of `normalizeOutputs`. */
export interface NormalizeLimits {
  /**
   * Characters of JSON text (and of string payloads) the outputs of one call may come to, in all
   * (default: no limit). A worker sets it from the heap it has left: V8 cannot stop a
   * `JSON.stringify` that outgrows a worker's heap limit, and aborts the whole process instead.
   */
  maxChars?: number;
  /** The worker's heap limit in MiB, named in the error when `maxChars` is passed. */
  heapLimitMb?: number;
}

/**
 * Turns a run's result into output records. `defaultKey` is the input's key. Throws
 * TransformError naming the offending output (`outputs[1].json`...) for a result that is
 * not an output, an array of outputs, null or undefined; for a `json` value JSON cannot hold as
 * it is (NaN or ±Infinity, which JSON would write as null; a BigInt; a Map or Set, which it would
 * write as {}; a cycle), naming where in it; and for outputs past `limits.maxChars`. Values with
 * a `toJSON` method (a Date) are written as `JSON.stringify` writes them.
 */
export function normalizeOutputs(result: unknown, defaultKey: string, field = 'outputs', limits: NormalizeLimits = {}): NormalizedOutput[] {
  if (result === null || result === undefined) return [];
  const budget: Budget = { left: limits.maxChars ?? Infinity, max: limits.maxChars ?? Infinity, heapLimitMb: limits.heapLimitMb };
  if (Array.isArray(result)) return result.flatMap((r, i) => normalizeOne(r, defaultKey, `${field}[${i}]`, budget));
  return normalizeOne(result, defaultKey, field, budget);
}

interface Budget {
  left: number;
  readonly max: number;
  readonly heapLimitMb: number | undefined;
}

function spend(budget: Budget, chars: number, field: string): void {
  budget.left -= chars;
  if (budget.left >= 0) return;
  const mib = (n: number): string => `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  const heap = budget.heapLimitMb !== undefined ? ` of its ${budget.heapLimitMb} MiB heap` : '';
  throw new TransformError(field, `too large: more than ${mib(budget.max)} of text, what the worker can still hold while serialising it${heap}; return a Uint8Array payload or raise the step's memoryMb`);
}

/**
 * Checks `value` as JSON text would hold it, counting its size against `budget`; returns it, or
 * a copy where a `toJSON` method (a Date's) was applied. `path` names where it sits.
 */
function checkJson(value: unknown, path: string, budget: Budget, ancestors: Set<object>, key: string, applyToJson = true): unknown {
  switch (typeof value) {
    case 'string':
      spend(budget, value.length + 2, path);
      return value;
    case 'number':
      if (!Number.isFinite(value)) throw new TransformError(path, `${value} is not a JSON number (JSON would write it as null)`);
      spend(budget, 24, path);
      return value;
    case 'boolean':
      spend(budget, 5, path);
      return value;
    case 'bigint':
      throw new TransformError(path, 'a BigInt is not JSON: convert it to a string or a number');
    case 'object': {
      if (value === null) {
        spend(budget, 4, path);
        return value;
      }
      if (applyToJson && typeof (value as { toJSON?: unknown }).toJSON === 'function') {
        return checkJson((value as { toJSON: (key: string) => unknown }).toJSON(key), path, budget, ancestors, key, false);
      }
      if (value instanceof Map || value instanceof Set) throw new TransformError(path, `a ${value instanceof Map ? 'Map' : 'Set'} is not JSON (JSON would write it as {}): convert it to an object or an array`);
      if (ancestors.has(value)) throw new TransformError(path, 'refers back to itself (a cycle): JSON cannot hold it');
      ancestors.add(value);
      let copy: unknown;
      if (Array.isArray(value)) {
        spend(budget, 2 + value.length, path);
        let arr: unknown[] | undefined;
        for (let i = 0; i < value.length; i++) {
          const v: unknown = value[i];
          const c = checkJson(v, `${path}[${i}]`, budget, ancestors, String(i));
          if (c !== v) (arr ??= value.slice())[i] = c;
        }
        copy = arr;
      } else if (value instanceof Uint8Array) {
        // Written as {"0":n,...}: up to 10 characters a byte.
        spend(budget, 2 + 10 * value.length, path);
      } else {
        spend(budget, 2, path);
        const obj = value as Record<string, unknown>;
        let rec: Record<string, unknown> | undefined;
        for (const k of Object.keys(obj)) {
          const v = obj[k];
          if (v === undefined) continue;
          spend(budget, k.length + 4, path);
          const c = checkJson(v, `${path}.${k}`, budget, ancestors, k);
          if (c !== v) (rec ??= { ...obj })[k] = c;
        }
        copy = rec;
      }
      ancestors.delete(value);
      return copy ?? value;
    }
    default:
      // undefined, functions and symbols: dropped from objects as JSON.stringify drops them.
      return value;
  }
}

function normalizeOne(out: unknown, defaultKey: string, field: string, budget: Budget): NormalizedOutput[] {
  if (out === null || out === undefined) return [];
  if (typeof out !== 'object' || Array.isArray(out) || out instanceof Uint8Array) {
    throw new TransformError(field, 'must be an object { key?, payload? | json?, mediaType? }');
  }
  const o = out as TransformOutput;
  if (o.key !== undefined && typeof o.key !== 'string') throw new TransformError(`${field}.key`, 'must be a string');
  if (o.mediaType !== undefined && typeof o.mediaType !== 'string') throw new TransformError(`${field}.mediaType`, 'must be a string');
  const hasPayload = o.payload !== undefined;
  const hasJson = o.json !== undefined;
  if (hasPayload === hasJson) throw new TransformError(field, 'needs exactly one of payload and json');
  let payload: Uint8Array;
  let mediaType: string;
  if (hasJson) {
    const json = checkJson(o.json, `${field}.json`, budget, new Set(), '');
    let text: string | undefined;
    try {
      text = canonicalJson(json);
    } catch (err) {
      throw new TransformError(`${field}.json`, `is not JSON-serialisable: ${(err as Error).message}`);
    }
    if (text === undefined) throw new TransformError(`${field}.json`, 'is not JSON-serialisable');
    payload = encoder.encode(text);
    mediaType = 'application/json';
  } else if (typeof o.payload === 'string') {
    spend(budget, o.payload.length, `${field}.payload`);
    payload = encoder.encode(o.payload);
    mediaType = 'text/plain; charset=utf-8';
  } else if (o.payload instanceof Uint8Array) {
    // A copy: the run may reuse its buffer, and the copy owns a transferable ArrayBuffer.
    payload = new Uint8Array(o.payload);
    mediaType = 'application/octet-stream';
  } else {
    throw new TransformError(`${field}.payload`, 'must be a Uint8Array or a string');
  }
  return [{ key: o.key ?? defaultKey, payload, mediaType: o.mediaType ?? mediaType }];
}
