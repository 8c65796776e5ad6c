import { readFileSync } from 'node:fs';
import { createFileRegistry, fromBinary, type DescMessage } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { describe, expect, it } from 'vitest';
import { LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { InvalidArgumentError } from '../common/errors.js';
import { checkProtoJson } from '../common/proto-json-check.js';

const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(new URL('../common/gen/descriptor-set.binpb', import.meta.url))));
const EVENT = registry.getMessage('retrace.v1.LineageEvent') as DescMessage;
const H = `sha256:${'a'.repeat(64)}`;

const step = (extra: Record<string, unknown>): Record<string, unknown> => ({ eventId: 'e1', eventTimeNs: '1720000000000000000', producer: 'p', step: { stepId: 's1', transform: 't', used: [{ objectId: 'a', contentHash: H }], ...extra } });

function errorOf(json: unknown): string {
  try {
    checkProtoJson(EVENT, json, 'events[0]');
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidArgumentError);
    return (err as Error).message;
  }
  return 'accepted';
}

describe('checkProtoJson (native events before LineageEvent.fromJSON)', () => {
  it('accepts what toJSON writes, proto names, nulls, 64-bit integers as numbers, enum numbers and any JSON in a Struct', () => {
    const written = LineageEvent.toJSON(LineageEvent.fromPartial({ eventId: 'e1', eventTimeNs: '5', producer: 'p', body: { $case: 'objectVersion', value: { objectId: 'o', contentHash: H, size: '12', attributes: { k: 'v' } } } }));
    expect(errorOf(written)).toBe('accepted');
    expect(errorOf({ event_id: 'e1', event_time_ns: 5, producer: null, object_version: { object_id: 'o', content_hash: H, size: 12 } })).toBe('accepted');
    expect(errorOf(step({ why: { kind: 'TRIGGER_KIND_REPLAY' }, parameters: { a: [1, { b: null }], c: 'x' }, resources: { gpuUtilization: 'NaN', cpuTimeNs: '-3' } }))).toBe('accepted');
    expect(errorOf(step({ why: { kind: 2 } }))).toBe('accepted');
  });

  it.each([
    [{ eventId: 12, producer: 'p' }, 'events[0].eventId: expected a string, got 12'],
    [{ eventId: 'e', producer: { a: 1 } }, 'events[0].producer: expected a string, got an object'],
    [{ eventId: 'e', eventTimeNs: 'soon' }, 'events[0].eventTimeNs: expected an integer from -9223372036854775808 to 9223372036854775807 (int64), got "soon"'],
    [{ eventId: 'e', eventTimeNs: 1.5 }, 'events[0].eventTimeNs: expected an integer from -9223372036854775808 to 9223372036854775807 (int64), got 1.5'],
    // Past 2^53 a JSON number is parsed rounded: an event was refused with "got 1763000000123456800", the digits it was never given.
    [JSON.parse('{"eventId":"e","eventTimeNs":1763000000123456789}') as unknown, 'events[0].eventTimeNs: a JSON number past 2^53 (9007199254740991) cannot be read exactly; give this int64 as a string ("1763000000123456768" is how it was read)'],
    [{ eventId: 'e', objectVersion: 'o' }, 'events[0].objectVersion: expected an object (ObjectVersion), got "o"'],
    [{ eventId: 'e', objectVersion: { objectId: 'o', attributes: { k: 1 } } }, 'events[0].objectVersion.attributes["k"]: expected a string, got 1'],
    [{ eventId: 'e', objectVersion: { objectId: 'o', attributes: ['k'] } }, 'events[0].objectVersion.attributes: expected an object, got an array'],
    [step({ used: { objectId: 'a' } }), 'events[0].step.used: expected an array, got an object'],
    [step({ used: [{ objectId: 'a', contentHash: H }, { objectId: ['b'] }] }), 'events[0].step.used[1].objectId: expected a string, got an array'],
    [step({ why: { kind: 'REPLAY' } }), 'events[0].step.why.kind: expected one of TRIGGER_KIND_UNSPECIFIED, TRIGGER_KIND_EVENT'],
    [step({ parameters: [1] }), 'events[0].step.parameters: expected an object, got an array'],
    [step({ resources: { gpuUtilization: 'high' } }), 'events[0].step.resources.gpuUtilization: expected a number, got "high"'],
    [{ eventId: 'e', eventID: 'typo' }, 'events[0].eventID: unknown field; LineageEvent has eventId, eventTimeNs, producer, objectVersion, step, run'],
    [{ eventId: 'e', objectVersion: {}, run: {} }, 'events[0].run: only one of objectVersion, step, run may be set; objectVersion is set too'],
    [[], 'events[0]: expected an object (LineageEvent), got an array'],
  ])('%j: %s', (json, message) => {
    expect(errorOf(json)).toContain(message);
  });
});
