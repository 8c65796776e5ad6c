import type { BinaryWriter } from '@bufbuild/protobuf/wire';
import { ConnectRequest, ConnectResponse, NodeServiceDefinition } from './gen/retrace/v1/node.js';

/**
 * Encodes a message as it is, without nice-grpc's `fromPartial` deep copy first: on the Connect
 * stream every assignment and outcome frame went through that copy (a few µs per shard). Both
 * ends build complete messages (the types require every field); one that is not, and makes the
 * generated encoder throw, is encoded from `fromPartial` as before.
 */
function encodeAsIs<T>(type: { encode(m: T, w?: BinaryWriter): BinaryWriter; fromPartial(m: never): T }): (m: T) => BinaryWriter {
  return (m) => {
    try {
      return type.encode(m);
    } catch {
      return type.encode(type.fromPartial(m as never));
    }
  };
}

/**
 * NodeServiceDefinition whose Connect stream encodes messages without the `fromPartial` copy
 * (see encodeAsIs); the bytes on the wire are the same. The agent's client and the coordinator's
 * server use it; the other methods are unchanged.
 */
export const NodeServiceConnectWireDefinition = {
  ...NodeServiceDefinition,
  methods: {
    ...NodeServiceDefinition.methods,
    connect: {
      ...NodeServiceDefinition.methods.connect,
      requestType: { ...ConnectRequest, encode: encodeAsIs(ConnectRequest), fromPartial: undefined },
      responseType: { ...ConnectResponse, encode: encodeAsIs(ConnectResponse), fromPartial: undefined },
    },
  },
} as const;
