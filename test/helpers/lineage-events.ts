import { contentHashOf } from '../../common/hash.js';
import type { LineageEvent, ObjectRef, Step } from '../../common/gen/retrace/v1/provenance.js';

/** Small builders for native lineage events in tests. */
export const h = (content: string): string => contentHashOf(content);

export function ref(objectId: string, content: string): ObjectRef {
  return { objectId, contentHash: h(content), unversioned: false };
}

export function objectEvent(eventId: string, objectId: string, content: string, timeNs = '1000'): LineageEvent {
  return {
    eventId,
    eventTimeNs: timeNs,
    producer: 'test',
    body: { $case: 'objectVersion', value: { objectId, contentHash: h(content), size: String(content.length), mediaType: 'text/plain', createdAtNs: '0', attributes: {}, facets: undefined } },
  };
}

export function runEvent(eventId: string, runId: string, timeNs = '1000'): LineageEvent {
  return { eventId, eventTimeNs: timeNs, producer: 'test', body: { $case: 'run', value: { runId, name: `pipeline/${runId}`, parentRunId: '', state: 'COMPLETE', startedAtNs: timeNs, endedAtNs: '0', facets: undefined } } };
}

export function stepEvent(eventId: string, stepId: string, used: ObjectRef[], generated: ObjectRef[], options: Partial<Step> & { timeNs?: string } = {}): LineageEvent {
  const { timeNs = '2000', ...rest } = options;
  return {
    eventId,
    eventTimeNs: timeNs,
    producer: 'test',
    body: {
      $case: 'step',
      value: {
        stepId,
        runId: '',
        transform: 'upper',
        codeVersion: h('code:upper'),
        parameters: { factor: 2 },
        nodeId: 'node-1',
        host: 'host-1',
        startedAtNs: '1500',
        endedAtNs: timeNs,
        why: undefined,
        resources: { cpuTimeNs: '1000000', peakMemoryBytes: '4096', netBytesIn: '0', netBytesOut: '0', diskBytesRead: '10', diskBytesWritten: '20', gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: '2000000' },
        used,
        generated,
        facets: undefined,
        ...rest,
      },
    },
  };
}
