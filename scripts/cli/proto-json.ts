import { readFileSync } from 'node:fs';
import { createFileRegistry, fromBinary, toJson, type DescMessage, type FileRegistry, type JsonValue } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';

/**
 * `--json` output of protobuf messages: proto3's JSON mapping as grpcurl prints it with
 * --emit-defaults: enums by name, 64-bit integers as strings, bytes as base64, a oneof as its set
 * member, and every field, those at their default included (a script reading `.summary.failed`
 * gets 0, not null). ts-proto's own toJSON leaves defaults out, and printing the ts-proto object
 * as it is shows enums as numbers and oneofs as `{$case, value}`: neither is protobuf JSON. The
 * message goes through its binary encoding into @bufbuild/protobuf, which reads it against the
 * schema in the committed descriptor set.
 */

const DESCRIPTOR_SET = new URL('../../common/gen/descriptor-set.binpb', import.meta.url);

let registry: FileRegistry | undefined;

function schemas(): FileRegistry {
  registry ??= createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(DESCRIPTOR_SET)));
  return registry;
}

/** The schema of a message type of the protos, e.g. `retrace.v1.LineageEvent`. */
export function messageSchema(typeName: string): DescMessage {
  const desc = schemas().getMessage(typeName);
  if (!desc) throw new Error(`${typeName} is missing from ${DESCRIPTOR_SET.pathname}`);
  return desc;
}

interface Encoder<T> {
  encode(message: T): { finish(): Uint8Array };
}

/** `message` (a ts-proto message of `typeName`, encoded by `fns`) as protobuf JSON, every field present. */
export function messageJson<T>(typeName: string, fns: Encoder<T>, message: T): JsonValue {
  const schema = messageSchema(typeName);
  return toJson(schema, fromBinary(schema, fns.encode(message).finish()), { alwaysEmitImplicit: true });
}

/** A call's response as protobuf JSON: the type comes from the service definition and method. */
export function responseJson<D extends ServiceDefinition, M extends keyof D['methods'] & string>(definition: D, method: M, response: ResponseOf<D['methods'][M]>): JsonValue {
  const m = definition.methods[method] as D['methods'][M];
  const output = schemas()
    .getService(definition.fullName)
    ?.methods.find((x) => x.name === m.name)?.output;
  if (!output) throw new Error(`${definition.fullName}.${m.name} is missing from ${DESCRIPTOR_SET.pathname}`);
  return messageJson(output.typeName, m.responseType as Encoder<ResponseOf<D['methods'][M]>>, response);
}

interface ServiceDefinition {
  fullName: string;
  methods: Record<string, { name: string; responseType: Encoder<any> }>;
}

type ResponseOf<T> = T extends { responseType: Encoder<infer R> } ? R : never;
