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

/** The retrace facet a pipeline step of pipeline `p` carries: its step name and what it read. */
export const pipelineFacet = (step: string, inputs: Record<string, string>) => ({ retrace: { pipeline: 'p', step, inputs } });

/** Event time `s` seconds after the epoch, in ns. */
const atSeconds = (s: bigint): string => (s * 1_000_000_000n).toString();

/**
 * Pipeline p over two records: raw:a (v1) → X → X:a → Y → Y:a and raw:b → X → X:b → Y → Y:b at
 * 2 s; raw:a v2 re-ran X and Y at 5 s, so X:a and Y:a each have a superseded version (xa1, ya1)
 * and a current one (xa2, ya2).
 */
export function twoRecordPipelineEvents(): LineageEvent[] {
  const [facet, at] = [pipelineFacet, atSeconds];
  return [
    runEvent('r', 'run-1'),
    objectEvent('a1', 'record:p/raw:a', 'a1', at(1n)),
    objectEvent('b1', 'record:p/raw:b', 'b1', at(1n)),
    stepEvent('x-a', 'p/X/a1', [ref('record:p/raw:a', 'a1')], [ref('record:p/X:a', 'xa1')], { timeNs: at(2n), facets: facet('X', { raw: 'record:p/raw:a' }) }),
    stepEvent('y-a', 'p/Y/a1', [ref('record:p/X:a', 'xa1')], [ref('record:p/Y:a', 'ya1')], { timeNs: at(2n), facets: facet('Y', { X: 'record:p/X:a' }) }),
    stepEvent('x-b', 'p/X/b1', [ref('record:p/raw:b', 'b1')], [ref('record:p/X:b', 'xb1')], { timeNs: at(2n), facets: facet('X', { raw: 'record:p/raw:b' }) }),
    stepEvent('y-b', 'p/Y/b1', [ref('record:p/X:b', 'xb1')], [ref('record:p/Y:b', 'yb1')], { timeNs: at(2n), facets: facet('Y', { X: 'record:p/X:b' }) }),
    objectEvent('a2', 'record:p/raw:a', 'a2', at(5n)),
    stepEvent('x-a2', 'p/X/a2', [ref('record:p/raw:a', 'a2')], [ref('record:p/X:a', 'xa2')], { timeNs: at(5n), facets: facet('X', { raw: 'record:p/raw:a' }) }),
    stepEvent('y-a2', 'p/Y/a2', [ref('record:p/X:a', 'xa2')], [ref('record:p/Y:a', 'ya2')], { timeNs: at(5n), facets: facet('Y', { X: 'record:p/X:a' }) }),
  ];
}
