import { describe, expect, it } from 'vitest';
import { canonicalJson } from '../common/canonical-json.js';
import { normalizeEvent } from '../common/event-validation.js';
import { TriggerKind, type LineageEvent, type ObjectVersion, type Run, type Step } from '../common/gen/retrace/v1/provenance.js';
import { contentHashOf } from '../common/hash.js';
import {
  datasetObjectId,
  datasetVersionHash,
  fillStepStarts,
  jobTransformName,
  parseDatasetObjectId,
  parseJobTransformName,
  runOutputHash,
  splitQualifiedName,
  toLineageEvents,
} from '../common/openlineage/to-lineage-events.js';
import { toOpenLineageRunEvent, toRetraceResourcesFacet } from '../common/openlineage/to-openlineage-event.js';
import { validateOpenLineageEvent } from '../common/openlineage/validate.js';

const PRODUCER = 'https://github.com/apache/airflow/tree/providers-openlineage/1.14.0';
const RUN_ID = '01936898-5bd1-7511-9abf-a140907e6cb3';
const PARENT_RUN_ID = '01936898-5bd1-70bf-9ca2-4953116e45e1';
const facet = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  _producer: PRODUCER,
  _schemaURL: 'https://openlineage.io/spec/facets/1-0-1/SomeFacet.json',
  ...extra,
});

function olRunEvent(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    eventTime: '2024-11-26T13:10:46.074886+00:00',
    producer: PRODUCER,
    schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent',
    eventType: 'COMPLETE',
    run: {
      runId: RUN_ID,
      facets: {
        parent: facet({ run: { runId: PARENT_RUN_ID }, job: { namespace: 'airflow', name: 'gcs_hook' } }),
        nominalTime: facet({ nominalStartTime: '2024-11-26T13:00:00Z' }),
      },
    },
    job: {
      namespace: 'airflow',
      name: 'gcs_hook.compose_task',
      facets: {
        sourceCode: facet({ language: 'python', sourceCode: 'def compose(): ...\n' }),
        ownership: facet({ owners: [{ name: 'team:data' }] }),
      },
    },
    inputs: [
      { namespace: 'gs://mock-bucket', name: 'a.txt', facets: {} },
      { namespace: 'gs://mock-bucket', name: 'b.txt', facets: { version: facet({ datasetVersion: 'v7' }) } },
    ],
    outputs: [
      {
        namespace: 'gs://mock-bucket',
        name: 'out.txt',
        facets: { schema: facet({ fields: [{ name: 'line', type: 'STRING' }] }) },
        outputFacets: { outputStatistics: facet({ rowCount: 10, size: 2048 }) },
      },
    ],
    ...overrides,
  };
}

function convert(value: unknown): LineageEvent[] {
  return toLineageEvents(validateOpenLineageEvent(value));
}

function bodies<C extends 'run' | 'step' | 'objectVersion'>(
  events: LineageEvent[],
  $case: C,
): (C extends 'run' ? Run : C extends 'step' ? Step : ObjectVersion)[] {
  return events.flatMap((e) => (e.body?.$case === $case ? [e.body.value as C extends 'run' ? Run : C extends 'step' ? Step : ObjectVersion] : []));
}

describe('toLineageEvents: RunEvent', () => {
  const events = convert(olRunEvent());
  const ns = '1732626646074886000';

  it('emits run, then object versions, then the step; every one passes native validation', () => {
    expect(events.map((e) => e.body?.$case)).toEqual(['run', 'objectVersion', 'objectVersion', 'step']);
    events.forEach((e, i) => expect(() => normalizeEvent(e, `events[${i}]`, '1')).not.toThrow());
    for (const e of events) {
      expect(e.eventTimeNs).toBe(ns);
      expect(e.producer).toBe(PRODUCER);
    }
    expect(new Set(events.map((e) => e.eventId)).size).toBe(events.length);
  });

  it('maps the run', () => {
    const [run] = bodies(events, 'run');
    expect(run).toMatchObject({
      runId: RUN_ID,
      name: 'job:airflow:gcs_hook.compose_task',
      parentRunId: PARENT_RUN_ID,
      state: 'COMPLETE',
      startedAtNs: '0',
      endedAtNs: ns,
    });
    const source = olRunEvent() as { run: { facets: unknown }; job: { facets: unknown } };
    expect(run?.facets).toEqual({ run: source.run.facets, job: source.job.facets });
  });

  it('maps the step', () => {
    const [step] = bodies(events, 'step');
    expect(step).toMatchObject({
      stepId: `openlineage:${RUN_ID}`,
      runId: RUN_ID,
      transform: jobTransformName('airflow', 'gcs_hook.compose_task'),
      codeVersion: contentHashOf('def compose(): ...\n'),
      startedAtNs: '0',
      endedAtNs: ns,
      why: { kind: TriggerKind.TRIGGER_KIND_EVENT, id: RUN_ID, principal: 'team:data' },
      resources: undefined,
      parameters: undefined,
    });
    expect(step?.used).toEqual([
      { objectId: 'dataset:gs://mock-bucket:a.txt', contentHash: '', unversioned: true },
      { objectId: 'dataset:gs://mock-bucket:b.txt', contentHash: datasetVersionHash('gs://mock-bucket', 'b.txt', 'v7'), unversioned: false },
    ]);
    expect(step?.generated).toEqual([
      { objectId: 'dataset:gs://mock-bucket:out.txt', contentHash: runOutputHash('gs://mock-bucket', 'out.txt', RUN_ID), unversioned: false },
    ]);
    expect(Object.keys(step?.facets ?? {})).toEqual(['run', 'job']);
  });

  it('maps outputs to object versions with synthetic hashes, statistics and verbatim facets', () => {
    const [out, input] = bodies(events, 'objectVersion');
    expect(out).toMatchObject({
      objectId: 'dataset:gs://mock-bucket:out.txt',
      contentHash: contentHashOf(`openlineage:run-output:gs://mock-bucket:out.txt:${RUN_ID}`),
      size: '2048',
      createdAtNs: ns,
      attributes: { hashKind: 'synthetic', rowCount: '10', 'openlineage.namespace': 'gs://mock-bucket', 'openlineage.name': 'out.txt' },
    });
    expect(out?.facets?.['schema']).toEqual(facet({ fields: [{ name: 'line', type: 'STRING' }] }));
    expect(out?.facets?.['outputFacets']).toEqual({ outputStatistics: facet({ rowCount: 10, size: 2048 }) });
    // A versioned input is recorded too, so the store knows the version the step used.
    expect(input).toMatchObject({
      objectId: 'dataset:gs://mock-bucket:b.txt',
      contentHash: contentHashOf('openlineage:dataset-version:gs://mock-bucket:b.txt:v7'),
      attributes: { hashKind: 'synthetic' },
    });
  });

  it('is deterministic: the same event yields the same ids; key order does not matter', () => {
    const again = convert(JSON.parse(JSON.stringify(olRunEvent())));
    expect(again).toEqual(events);
    const reordered = Object.fromEntries(Object.entries(olRunEvent()).reverse());
    expect(convert(reordered).map((e) => e.eventId)).toEqual(events.map((e) => e.eventId));
    const other = convert(olRunEvent({ eventTime: '2024-11-26T13:10:47Z' }));
    expect(other.map((e) => e.eventId).some((id) => events.some((e) => e.eventId === id))).toBe(false);
  });

  it('gives every event of a run the same step id, and START its start time', () => {
    const start = convert(olRunEvent({ eventType: 'START', eventTime: '2024-11-26T13:10:40Z' }));
    const [step] = bodies(start, 'step');
    const [run] = bodies(start, 'run');
    expect(step?.stepId).toBe(`openlineage:${RUN_ID}`);
    expect(step?.startedAtNs).toBe('1732626640000000000');
    expect(step?.endedAtNs).toBe('0');
    expect(run?.state).toBe('START');
    for (const type of ['FAIL', 'ABORT']) expect(bodies(convert(olRunEvent({ eventType: type })), 'run')[0]?.endedAtNs).toBe(ns);
    for (const type of ['RUNNING', 'OTHER']) {
      const [r] = bodies(convert(olRunEvent({ eventType: type })), 'run');
      expect([r?.startedAtNs, r?.endedAtNs, r?.state]).toEqual(['0', '0', type]);
    }
  });

  it('emits only the run when there are no inputs or outputs', () => {
    const only = convert(olRunEvent({ inputs: [], outputs: [] }));
    expect(only.map((e) => e.body?.$case)).toEqual(['run']);
    const { inputs: _i, outputs: _o, ...bare } = olRunEvent();
    const none = convert(bare);
    expect(none.map((e) => e.body?.$case)).toEqual(['run']);
  });

  it('fillStepStarts: a START naming no datasets starts the step a later event makes; a started step is left alone', () => {
    const start = convert(olRunEvent({ eventType: 'START', eventTime: '2024-11-26T13:10:40Z', inputs: [], outputs: [] }));
    const complete = convert(olRunEvent());
    expect(bodies(complete, 'step')[0]?.startedAtNs).toBe('0');
    // In one file or batch, in either order.
    expect(bodies(fillStepStarts([...complete, ...start]), 'step')[0]?.startedAtNs).toBe('1732626640000000000');
    // Against what the store holds: a stored START, or a step stored with its start already.
    expect(bodies(fillStepStarts(complete, () => ({ runStartedAtNs: '1732626640000000000', stepStarted: false })), 'step')[0]?.startedAtNs).toBe('1732626640000000000');
    expect(fillStepStarts(complete, () => ({ runStartedAtNs: '1732626640000000000', stepStarted: true }))).toEqual(complete);
    // A START naming datasets starts the step itself: the COMPLETE's step stays as converted.
    const startWith = convert(olRunEvent({ eventType: 'START', eventTime: '2024-11-26T13:10:40Z' }));
    expect(fillStepStarts([...startWith, ...complete])).toEqual([...startWith, ...complete]);
  });

  it('leaves empty facet maps out, so a bare COMPLETE does not erase what START said when the store folds them', () => {
    const bare = convert(olRunEvent({ run: { runId: RUN_ID, facets: {} }, job: { namespace: 'airflow', name: 'j' } }));
    expect(bodies(bare, 'run')[0]?.facets).toEqual({});
    expect(bodies(bare, 'step')[0]?.facets).toEqual({});
  });

  it('lists a dataset once even when the producer repeats it', () => {
    const out = { namespace: 'n', name: 'o' };
    const events2 = convert(olRunEvent({ inputs: [{ namespace: 'n', name: 'i' }, { namespace: 'n', name: 'i' }], outputs: [out, out] }));
    const [step] = bodies(events2, 'step');
    expect(step?.used).toHaveLength(1);
    expect(step?.generated).toHaveLength(1);
    expect(bodies(events2, 'objectVersion')).toHaveLength(1);
  });

  it('uses the producer as principal without an ownership facet; the source location when there is no source code', () => {
    const location = facet({ type: 'git', url: 'https://github.com/o/r/blob/abc/dag.py', version: 'abc' });
    const e = convert(olRunEvent({ job: { namespace: 'airflow', name: 'j', facets: { sourceCodeLocation: location } } }));
    const [step] = bodies(e, 'step');
    expect(step?.why?.principal).toBe(PRODUCER);
    expect(step?.codeVersion).toBe(contentHashOf(canonicalJson({ type: 'git', url: 'https://github.com/o/r/blob/abc/dag.py', version: 'abc' })));
    const plain = bodies(convert(olRunEvent({ job: { namespace: 'airflow', name: 'j' } })), 'step')[0];
    expect(plain?.codeVersion).toBe('');
  });

  it('reads parameters from the executionParameters run facet', () => {
    const source = olRunEvent() as { run: { facets: Record<string, unknown> } };
    source.run.facets['executionParameters'] = facet({ parameters: [{ key: 'date', value: '2024-11-26' }, { key: 'dry' }] });
    const [step] = bodies(convert(source), 'step');
    expect(step?.parameters).toEqual({ date: '2024-11-26', dry: null });
  });

  it('reads the retrace_resources run facet into the step resources', () => {
    const source = olRunEvent() as { run: { facets: Record<string, unknown> } };
    source.run.facets['retrace_resources'] = facet({ cpuTimeNs: 1_500_000_000, peakMemoryBytes: '9007199254740993', gpuUtilization: 0.25 });
    const [step] = bodies(convert(source), 'step');
    expect(step?.resources).toEqual({
      cpuTimeNs: '1500000000',
      peakMemoryBytes: '9007199254740993',
      netBytesIn: '0',
      netBytesOut: '0',
      diskBytesRead: '0',
      diskBytesWritten: '0',
      gpuTimeNs: '0',
      gpuUtilization: 0.25,
      wallTimeNs: '0',
    });
  });

  it('drops a parent that is the run itself (the store refuses it)', () => {
    const source = olRunEvent() as { run: { facets: { parent: { run: { runId: string } } } } };
    source.run.facets.parent.run.runId = RUN_ID;
    expect(bodies(convert(source), 'run')[0]?.parentRunId).toBe('');
  });
});

describe('toLineageEvents: DatasetEvent and JobEvent', () => {
  const base = { eventTime: '2024-01-01T00:00:00Z', producer: PRODUCER, schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json' };

  it('a DatasetEvent becomes one object version, hashed by its eventTime unless it names a version', () => {
    const events = convert({ ...base, dataset: { namespace: 'ns', name: 't', facets: { schema: facet({ fields: [] }) } } });
    expect(events).toHaveLength(1);
    const [v] = bodies(events, 'objectVersion');
    expect(v?.objectId).toBe(datasetObjectId('ns', 't'));
    expect(v?.contentHash).toBe(contentHashOf('openlineage:run-output:ns:t:2024-01-01T00:00:00Z'));
    expect(v?.facets).toEqual({ schema: facet({ fields: [] }) });
    const versioned = convert({ ...base, dataset: { namespace: 'ns', name: 't', facets: { version: facet({ datasetVersion: '42' }) } } });
    expect(bodies(versioned, 'objectVersion')[0]?.contentHash).toBe(datasetVersionHash('ns', 't', '42'));
  });

  it('a JobEvent is accepted and records nothing', () => {
    expect(convert({ ...base, job: { namespace: 'ns', name: 'j' }, inputs: [{ namespace: 'ns', name: 't' }] })).toEqual([]);
  });
});

describe('qualified names', () => {
  it('splits ids at the colon after a URI-like namespace, else at the first colon', () => {
    expect(splitQualifiedName('gs://mock-bucket:compose_result.txt')).toEqual({ namespace: 'gs://mock-bucket', name: 'compose_result.txt' });
    expect(splitQualifiedName('postgres://db.host:5432:public.orders')).toEqual({ namespace: 'postgres://db.host:5432', name: 'public.orders' });
    expect(splitQualifiedName('food_delivery:public.menus')).toEqual({ namespace: 'food_delivery', name: 'public.menus' });
    expect(splitQualifiedName('bigquery:p.d.t')).toEqual({ namespace: 'bigquery', name: 'p.d.t' });
    expect(parseDatasetObjectId('record:x')).toBeUndefined();
    expect(parseJobTransformName('job:airflow:dag.task')).toEqual({ namespace: 'airflow', name: 'dag.task' });
  });
});

describe('toOpenLineageRunEvent', () => {
  const resources = {
    cpuTimeNs: '1200000000',
    peakMemoryBytes: '104857600',
    netBytesIn: '10',
    netBytesOut: '20',
    diskBytesRead: '30',
    diskBytesWritten: '9223372036854775807',
    gpuTimeNs: '0',
    gpuUtilization: 0.5,
    wallTimeNs: '2000000000',
  };

  it('round-trips an OpenLineage-born step: edges, ids, facets and resources survive', () => {
    const source = olRunEvent({ inputs: [{ namespace: 'gs://mock-bucket', name: 'a.txt' }] }) as { run: { facets: Record<string, unknown> } };
    source.run.facets['retrace_resources'] = toRetraceResourcesFacet(resources);
    const events = convert(source);
    const [step] = bodies(events, 'step');
    const [run] = bodies(events, 'run');
    if (!step || !run) throw new Error('no step');
    const exported = toOpenLineageRunEvent(step, run);
    // Valid even under strict formats, which OpenLineage consumers such as Marquez expect.
    expect(validateOpenLineageEvent(exported, { formats: 'strict' }).kind).toBe('RunEvent');
    expect(exported.eventType).toBe('COMPLETE');
    expect(exported.job).toMatchObject({ namespace: 'airflow', name: 'gcs_hook.compose_task' });
    expect(exported.run.facets?.parent).toEqual((source.run.facets as { parent: unknown }).parent);
    const [back] = bodies(convert(exported), 'step');
    expect(back?.stepId).toBe(step.stepId);
    expect(back?.transform).toBe(step.transform);
    expect(back?.resources).toEqual(resources);
    expect(back?.used).toEqual(step.used);
    expect(back?.generated).toEqual(step.generated);
    expect(back?.endedAtNs).toBe(step.endedAtNs);
    expect(back?.codeVersion).toBe(step.codeVersion);
  });

  it('exports a native step: derived UUID, default namespace, content hashes as dataset versions', () => {
    const step: Step = {
      stepId: 'clean-orders#17',
      runId: 'nightly-2024-11-26',
      transform: 'clean-orders',
      codeVersion: contentHashOf('code'),
      parameters: undefined,
      nodeId: 'n1',
      host: 'h1',
      startedAtNs: '1732626640000000000',
      endedAtNs: '0',
      why: undefined,
      resources,
      used: [{ objectId: 'record:orders:42', contentHash: contentHashOf('in'), unversioned: false }],
      generated: [{ objectId: 'dataset:warehouse:public.orders', contentHash: contentHashOf('out'), unversioned: false }],
      facets: { note: 'not an OpenLineage facet' },
    };
    const exported = toOpenLineageRunEvent(step);
    expect(validateOpenLineageEvent(exported, { formats: 'strict' }).kind).toBe('RunEvent');
    expect(exported.eventType).toBe('START');
    expect(exported.eventTime).toBe('2024-11-26T13:10:40Z');
    expect(exported.job).toEqual({ namespace: 'retrace', name: 'clean-orders', facets: {} });
    expect(exported.run.runId).toEqual(toOpenLineageRunEvent(step).run.runId);
    expect(exported.inputs?.[0]).toMatchObject({ namespace: 'retrace', name: 'record:orders:42', facets: { version: { datasetVersion: contentHashOf('in') } } });
    expect(exported.outputs?.[0]).toMatchObject({ namespace: 'warehouse', name: 'public.orders', facets: { version: { datasetVersion: contentHashOf('out') } } });
    expect(exported.run.facets?.retrace_resources).toMatchObject({ cpuTimeNs: 1_200_000_000, diskBytesWritten: '9223372036854775807', gpuUtilization: 0.5 });
    const [back] = bodies(convert(exported), 'step');
    expect(back?.resources).toEqual(resources);
  });

  it('reports a failed run as FAIL at its end time', () => {
    const [step] = bodies(convert(olRunEvent({ eventType: 'FAIL' })), 'step');
    const [run] = bodies(convert(olRunEvent({ eventType: 'FAIL' })), 'run');
    if (!step || !run) throw new Error('no step');
    expect(toOpenLineageRunEvent(step, run).eventType).toBe('FAIL');
  });
});
