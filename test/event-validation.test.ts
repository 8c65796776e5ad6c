import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../common/errors.js';
import { normalizeEvent } from '../common/event-validation.js';
import type { ResourceUsage } from '../common/gen/retrace/v1/provenance.js';
import { createRng } from '../common/random.js';
import { stepEvent } from './helpers/lineage-events.js';

/** The error normalizeEvent throws for a step with these times, or undefined. */
function stepTimesError(startedAtNs: string, endedAtNs: string): { field: string | undefined; message: string } | undefined {
  try {
    normalizeEvent(stepEvent('e', 's', [], [], { startedAtNs, endedAtNs }), 'events[0]', '1');
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidArgumentError);
    const e = err as InvalidArgumentError;
    return { field: e.field, message: e.message };
  }
}

describe('event validation', () => {
  it('rejects a step that ends before it starts exactly when the times compare so as integers', () => {
    const values = ['0', '00', '1', '01', '001', '9', '10', '010', '0000000000000000010', '99', '100', '1732476121123456789', '1732476121123456790', '0732476121123456789', '732476121123456789', '9223372036854775807', '999999999999999999', '1000000000000000000'];
    const r = createRng(7);
    for (let i = 0; i < 300; i++) {
      const digits = 1 + Math.floor(r() * 19);
      let s = '';
      for (let d = 0; d < digits; d++) s += String(Math.floor(r() * (d === 0 ? 2 : 10)));
      if (BigInt(s) <= 9223372036854775807n) values.push(s);
    }
    for (const start of values) {
      for (const end of values) {
        const before = start !== '0' && end !== '0' && BigInt(end) < BigInt(start);
        const error = stepTimesError(start, end);
        if (before) expect(error, `${start} → ${end}`).toEqual({ field: 'events[0].step.ended_at_ns', message: 'events[0].step.ended_at_ns: is before started_at_ns' });
        else expect(error, `${start} → ${end}`).toBeUndefined();
      }
    }
  });

  it('names the first bad resource field, in the order the usage object lists them', () => {
    const base = stepEvent('e', 's', [], []);
    const withResources = (patch: Partial<ResourceUsage>) => {
      const step = base.body?.$case === 'step' ? base.body.value : undefined;
      return { ...base, body: { $case: 'step' as const, value: { ...step!, resources: { ...step!.resources!, ...patch } } } };
    };
    expect(() => normalizeEvent(withResources({ peakMemoryBytes: '-1', wallTimeNs: 'x' }), 'events[0]', '1')).toThrow(expect.objectContaining({ field: 'events[0].step.resources.peak_memory_bytes', message: 'events[0].step.resources.peak_memory_bytes: must be a non-negative integer' }));
    expect(() => normalizeEvent(withResources({ gpuUtilization: 2 }), 'events[0]', '1')).toThrow(expect.objectContaining({ field: 'events[0].step.resources.gpu_utilization', message: 'events[0].step.resources.gpu_utilization: must be between 0 and 1' }));
    expect(() => normalizeEvent(withResources({ diskBytesWritten: '9223372036854775808' }), 'events[0]', '1')).toThrow(expect.objectContaining({ field: 'events[0].step.resources.disk_bytes_written' }));
    expect(() => normalizeEvent(withResources({}), 'events[0]', '1')).not.toThrow();
  });
});
