import { InvalidArgumentError } from '../../common/errors.js';

/**
 * What a guarded decoder hands grpc-js for request bytes that do not decode: grpc-js answers a
 * decoder that throws with its own INTERNAL "Error deserializing request" before any middleware
 * runs, so the failure travels as a value to the error middleware, which refuses the call with
 * INVALID_ARGUMENT (`rejectUndecodable`).
 */
export class UndecodableRequest {
  constructor(
    /** Full protobuf name of the expected message, e.g. `retrace.v1.GetNodeRequest`. */
    readonly typeName: string,
    readonly reason: string,
  ) {}

  toError(field: string): InvalidArgumentError {
    return new InvalidArgumentError(field, `not a valid ${this.typeName} message: ${this.reason}`);
  }
}

interface TsProtoMethod {
  name: string;
  requestType: { decode(input: Uint8Array, length?: number): unknown };
}

/**
 * A copy of a ts-proto service definition whose request decoders return an UndecodableRequest
 * instead of throwing. `requestTypeName` gives the full name of a method's request message (the
 * descriptors know it); the method's name stands in when it returns undefined.
 */
export function guardRequestDecoding<D extends { fullName: string; methods: Record<string, TsProtoMethod> }>(definition: D, requestTypeName: (methodName: string) => string | undefined): D {
  const methods: Record<string, TsProtoMethod> = {};
  for (const [key, method] of Object.entries(definition.methods)) {
    const typeName = requestTypeName(method.name) ?? `${definition.fullName}.${method.name} request`;
    const { decode } = method.requestType;
    methods[key] = {
      ...method,
      requestType: {
        ...method.requestType,
        decode(input: Uint8Array, length?: number): unknown {
          try {
            return decode(input, length);
          } catch (err) {
            return new UndecodableRequest(typeName, err instanceof Error ? err.message : String(err));
          }
        },
      },
    };
  }
  return { ...definition, methods };
}

/** The request, or the InvalidArgumentError (field `request`) of one that did not decode. */
export function rejectUndecodable<R>(request: R): R {
  if (request instanceof UndecodableRequest) throw request.toError('request');
  return request;
}

/**
 * The request stream, throwing the InvalidArgumentError (field `requests[i]`) of the first message
 * that did not decode, when the handler reads it; the messages before it are handled as usual.
 */
export function rejectUndecodableStream<R>(requests: AsyncIterable<R>): AsyncIterable<R> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<R> {
      const it = requests[Symbol.asyncIterator]();
      let index = 0;
      return {
        async next(): Promise<IteratorResult<R>> {
          const r = await it.next();
          if (!r.done && r.value instanceof UndecodableRequest) {
            const error = r.value.toError(`requests[${index}]`);
            await it.return?.();
            throw error;
          }
          if (!r.done) index++;
          return r;
        },
        async return(value?: unknown): Promise<IteratorResult<R>> {
          return (await it.return?.(value)) ?? { done: true, value: undefined };
        },
      };
    },
  };
}
