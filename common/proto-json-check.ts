import { ScalarType, type DescEnum, type DescField, type DescMessage } from '@bufbuild/protobuf';
import { InvalidArgumentError } from './errors.js';

/**
 * Checks that `json` is a `desc` message in protobuf's JSON form, with every value of its field's
 * type, before a ts-proto `fromJSON` turns it into a message: `fromJSON` coerces whatever it gets
 * (`"eventId": 12` becomes "12", an object where a string belongs "[object Object]", `"size": "abc"`
 * is kept until the encoder throws). Throws InvalidArgumentError whose field is the path below
 * `path` as written in the input (`events[0].eventId`), saying what was expected.
 *
 * Follows the proto3 JSON mapping as ts-proto reads it: a field is named by its JSON name or its
 * proto name; null is the field's default; 64-bit integers may be strings or numbers; enums are
 * their value names or numbers; bytes are base64; Struct, Value and ListValue hold any JSON of
 * their shape. A member the message does not have, or two members of one oneof, are refused too.
 */
export function checkProtoJson(desc: DescMessage, json: unknown, path: string): void {
  checkMessage(desc, json, path);
}

function checkMessage(desc: DescMessage, json: unknown, path: string): void {
  switch (desc.typeName) {
    case 'google.protobuf.Value':
      return;
    case 'google.protobuf.Struct':
      if (!isPlainObject(json)) fail(path, `expected an object, got ${describe(json)}`);
      return;
    case 'google.protobuf.ListValue':
      if (!Array.isArray(json)) fail(path, `expected an array, got ${describe(json)}`);
      return;
  }
  if (!isPlainObject(json)) fail(path, `expected an object (${desc.name}), got ${describe(json)}`);
  const oneofs = new Map<string, string>();
  for (const [key, value] of Object.entries(json)) {
    const field = desc.fields.find((f) => f.jsonName === key || f.name === key);
    const at = `${path}.${key}`;
    if (!field) fail(at, `unknown field; ${desc.name} has ${desc.fields.map((f) => f.jsonName).join(', ')}`);
    if (value === null && !(field.fieldKind === 'message' && field.message.typeName === 'google.protobuf.Value')) continue;
    if (field.oneof) {
      const other = oneofs.get(field.oneof.name);
      if (other !== undefined) fail(at, `only one of ${field.oneof.fields.map((f) => f.jsonName).join(', ')} may be set; ${other} is set too`);
      oneofs.set(field.oneof.name, key);
    }
    checkField(field, value, at);
  }
}

function checkField(field: DescField, value: unknown, path: string): void {
  switch (field.fieldKind) {
    case 'scalar':
      return checkScalar(field.scalar, value, path);
    case 'enum':
      return checkEnum(field.enum, value, path);
    case 'message':
      return checkMessage(field.message, value, path);
    case 'list': {
      if (!Array.isArray(value)) fail(path, `expected an array, got ${describe(value)}`);
      value.forEach((v: unknown, i) => {
        const at = `${path}[${i}]`;
        if (field.listKind === 'scalar') checkScalar(field.scalar, v, at);
        else if (field.listKind === 'enum') checkEnum(field.enum, v, at);
        else checkMessage(field.message, v, at);
      });
      return;
    }
    case 'map': {
      if (!isPlainObject(value)) fail(path, `expected an object, got ${describe(value)}`);
      for (const [k, v] of Object.entries(value)) {
        const at = `${path}[${JSON.stringify(k)}]`;
        checkMapKey(field.mapKey, k, at);
        if (field.mapKind === 'scalar') checkScalar(field.scalar, v, at);
        else if (field.mapKind === 'enum') checkEnum(field.enum, v, at);
        else checkMessage(field.message, v, at);
      }
      return;
    }
  }
}

const INTEGER_RANGES: Partial<Record<ScalarType, { min: bigint; max: bigint }>> = {
  [ScalarType.INT32]: { min: -(2n ** 31n), max: 2n ** 31n - 1n },
  [ScalarType.SINT32]: { min: -(2n ** 31n), max: 2n ** 31n - 1n },
  [ScalarType.SFIXED32]: { min: -(2n ** 31n), max: 2n ** 31n - 1n },
  [ScalarType.UINT32]: { min: 0n, max: 2n ** 32n - 1n },
  [ScalarType.FIXED32]: { min: 0n, max: 2n ** 32n - 1n },
  [ScalarType.INT64]: { min: -(2n ** 63n), max: 2n ** 63n - 1n },
  [ScalarType.SINT64]: { min: -(2n ** 63n), max: 2n ** 63n - 1n },
  [ScalarType.SFIXED64]: { min: -(2n ** 63n), max: 2n ** 63n - 1n },
  [ScalarType.UINT64]: { min: 0n, max: 2n ** 64n - 1n },
  [ScalarType.FIXED64]: { min: 0n, max: 2n ** 64n - 1n },
};

const BASE64 = /^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?$/;

function checkScalar(type: ScalarType, value: unknown, path: string): void {
  switch (type) {
    case ScalarType.STRING:
      if (typeof value !== 'string') fail(path, `expected a string, got ${describe(value)}`);
      return;
    case ScalarType.BOOL:
      if (typeof value !== 'boolean') fail(path, `expected true or false, got ${describe(value)}`);
      return;
    case ScalarType.BYTES:
      if (typeof value !== 'string' || !BASE64.test(value)) fail(path, `expected base64 bytes, got ${describe(value)}`);
      return;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      if (typeof value === 'number' || (typeof value === 'string' && (['NaN', 'Infinity', '-Infinity'].includes(value) || (value.trim() !== '' && Number.isFinite(Number(value)))))) return;
      fail(path, `expected a number, got ${describe(value)}`);
  }
  const range = INTEGER_RANGES[type] as { min: bigint; max: bigint };
  // A JSON number past 2^53 was parsed rounded (1763000000123456789 as ...768): refused as before,
  // saying why and what to write instead, which proto JSON allows for every 64-bit integer.
  if (typeof value === 'number' && Number.isInteger(value) && !Number.isSafeInteger(value) && BigInt(value) >= range.min && BigInt(value) <= range.max) {
    fail(path, `a JSON number past 2^53 (${Number.MAX_SAFE_INTEGER}) cannot be read exactly; give this ${ScalarType[type].toLowerCase()} as a string ("${BigInt(value)}" is how it was read)`);
  }
  const n = typeof value === 'number' && Number.isSafeInteger(value) ? BigInt(value) : typeof value === 'string' && /^-?\d+$/.test(value) ? BigInt(value) : undefined;
  if (n === undefined || n < range.min || n > range.max) fail(path, `expected an integer from ${range.min} to ${range.max} (${ScalarType[type].toLowerCase()}), got ${describe(value)}`);
}

function checkEnum(desc: DescEnum, value: unknown, path: string): void {
  if (typeof value === 'number' && Number.isInteger(value) && desc.values.some((v) => v.number === value)) return;
  if (typeof value === 'string' && desc.values.some((v) => v.name === value)) return;
  fail(path, `expected one of ${desc.values.map((v) => v.name).join(', ')}, got ${describe(value)}`);
}

function checkMapKey(type: ScalarType, key: string, path: string): void {
  if (type === ScalarType.STRING) return;
  if (type === ScalarType.BOOL) {
    if (key !== 'true' && key !== 'false') fail(path, 'expected a key true or false');
    return;
  }
  checkScalar(type, key, path);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A short account of a value for an error message. */
function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  const text = JSON.stringify(v);
  return text.length <= 40 ? text : `${text.slice(0, 37)}...`;
}

function fail(path: string, message: string): never {
  throw new InvalidArgumentError(path, message);
}
