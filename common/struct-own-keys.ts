import { BinaryReader } from '@bufbuild/protobuf/wire';
import { Struct, Struct_FieldsEntry } from './gen/google/protobuf/struct.js';

/**
 * Keeps a google.protobuf.Struct key `__proto__` (a step parameter, a facet member) as an own
 * property. The generated Struct code assigns keys (`fields[key] = v`), and assigning
 * `__proto__` sets the object's prototype instead: the key was dropped (or, for an object
 * value, turned into inherited members). Importing this module (for its effect, once, before
 * any message is decoded: the coordinator, the CLI's client and the agent do) replaces the
 * generated Struct's decode, wrap, unwrap and fromPartial with ones that define every key as an
 * own data property: nothing reaches a prototype, so this opens no prototype pollution.
 * common/gen is generated and stays untouched.
 */

/** Sets `key` of `target` as an own enumerable property, `__proto__` included. */
export function setOwn(target: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  else target[key] = value;
}

/** The depth counter the generated decoders share on a reader (their recursion limit, 100). */
type DepthReader = BinaryReader & { __tsProtoDecodeDepth?: number };

Struct.decode = (input: BinaryReader | Uint8Array, length?: number): Struct => {
  const reader = (input instanceof BinaryReader ? input : new BinaryReader(input)) as DepthReader;
  const previousDepth = reader.__tsProtoDecodeDepth ?? 0;
  if (previousDepth >= 100) throw new Error('protobuf decode recursion limit exceeded');
  reader.__tsProtoDecodeDepth = previousDepth + 1;
  try {
    const end = length === undefined ? reader.len : reader.pos + length;
    const message: Struct = { fields: {} };
    while (reader.pos < end) {
      const tag = reader.uint32();
      if (tag === 10) {
        const entry = Struct_FieldsEntry.decode(reader, reader.uint32());
        if (entry.value !== undefined) setOwn(message.fields, entry.key, entry.value);
        continue;
      }
      if ((tag & 7) === 4 || tag === 0) break;
      reader.skip(tag & 7);
    }
    return message;
  } finally {
    reader.__tsProtoDecodeDepth = previousDepth;
  }
};

Struct.wrap = (object: Record<string, unknown> | undefined): Struct => {
  const struct: Struct = { fields: {} };
  if (object !== undefined) for (const key of Object.keys(object)) setOwn(struct.fields, key, object[key]);
  return struct;
};

Struct.unwrap = (message: Struct): Record<string, unknown> => {
  const object: Record<string, unknown> = {};
  for (const key of Object.keys(message.fields)) setOwn(object, key, message.fields[key]);
  return object;
};

Struct.fromPartial = (object: { fields?: Record<string, unknown> }): Struct => {
  const struct: Struct = { fields: {} };
  for (const [key, value] of Object.entries(object.fields ?? {})) if (value !== undefined) setOwn(struct.fields, key, value);
  return struct;
};
