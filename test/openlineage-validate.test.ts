import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../common/errors.js';
import {
  isAbsoluteUri,
  isRfc3339DateTime,
  isUuid,
  validateOpenLineageBatch,
  validateOpenLineageEvent,
} from '../common/openlineage/validate.js';

const PRODUCER = 'https://github.com/OpenLineage/OpenLineage/tree/1.23.0/integration/spark';
const facet = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  _producer: PRODUCER,
  _schemaURL: 'https://openlineage.io/spec/facets/1-0-1/SomeFacet.json',
  ...extra,
});

function runEvent(): Record<string, unknown> {
  return {
    eventTime: '2024-10-17T09:18:26.825Z',
    producer: PRODUCER,
    schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent',
    eventType: 'COMPLETE',
    run: {
      runId: '019299c5-1f1e-7c3b-a0c2-2c2d6a0e6f11',
      facets: { parent: facet({ run: { runId: '019299c5-0000-7c3b-a0c2-2c2d6a0e6f11' }, job: { namespace: 'ns', name: 'app' } }) },
    },
    job: { namespace: 'ns', name: 'app.task', facets: { sql: facet({ query: 'SELECT 1' }) } },
    inputs: [
      { namespace: 'postgres://db:5432', name: 'public.a', facets: { schema: facet({ fields: [{ name: 'id', type: 'INT' }] }) } },
      { namespace: 'postgres://db:5432', name: 'public.b' },
      { namespace: 'postgres://db:5432', name: 'public.c', inputFacets: {} },
    ],
    outputs: [{ namespace: 'postgres://db:5432', name: 'public.d', outputFacets: { outputStatistics: facet({ rowCount: 3, size: 120 }) } }],
  };
}

/** The InvalidArgumentError `fn` throws. */
function rejection(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidArgumentError);
    return err as InvalidArgumentError;
  }
  throw new Error('expected an InvalidArgumentError');
}

function fieldOf(value: unknown, formats?: 'strict' | 'lenient'): string | undefined {
  return rejection(() => validateOpenLineageEvent(value, formats ? { formats } : {})).field;
}

function mutated(change: (e: Record<string, any>) => void): Record<string, unknown> {
  const e = runEvent();
  change(e as Record<string, any>);
  return e;
}

describe('validateOpenLineageEvent', () => {
  it('accepts a full RunEvent and returns it, tagged, unchanged', () => {
    const e = runEvent();
    const copy = structuredClone(e);
    const v = validateOpenLineageEvent(e);
    expect(v.kind).toBe('RunEvent');
    expect(v.event).toBe(e);
    expect(e).toEqual(copy);
  });

  it('accepts the minimal RunEvent (eventType, facets, inputs and outputs are optional)', () => {
    const v = validateOpenLineageEvent({
      eventTime: '2024-01-01T00:00:00Z',
      producer: PRODUCER,
      schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json',
      run: { runId: '3f5e83fa-3480-44ff-99c5-ff943904e5e8' },
      job: { namespace: 'n', name: 'j' },
    });
    expect(v.kind).toBe('RunEvent');
  });

  it('names the missing base fields', () => {
    expect(fieldOf(mutated((e) => delete e.eventTime))).toBe('eventTime');
    expect(fieldOf(mutated((e) => delete e.producer))).toBe('producer');
    expect(fieldOf(mutated((e) => delete e.schemaURL))).toBe('schemaURL');
    expect(fieldOf(mutated((e) => (e.producer = 42)))).toBe('producer');
  });

  it('checks eventTime as an RFC 3339 date-time', () => {
    expect(fieldOf(mutated((e) => (e.eventTime = 'yesterday')))).toBe('eventTime');
    expect(fieldOf(mutated((e) => (e.eventTime = '2024-02-30T00:00:00Z')))).toBe('eventTime');
    expect(fieldOf(mutated((e) => (e.eventTime = '2024-01-01T00:00:00')))).toBe('eventTime');
    expect(validateOpenLineageEvent(mutated((e) => (e.eventTime = '2024-11-26T13:05:23.809955+00:00'))).kind).toBe('RunEvent');
  });

  it('checks eventType against the enum', () => {
    const err = rejection(() => validateOpenLineageEvent(mutated((e) => (e.eventType = 'DONE'))));
    expect(err.field).toBe('eventType');
    expect(err.message).toContain('START');
  });

  it('names run and job fields precisely', () => {
    expect(fieldOf(mutated((e) => delete e.run.runId))).toBe('run.runId');
    expect(fieldOf(mutated((e) => (e.run.runId = 7)))).toBe('run.runId');
    expect(fieldOf(mutated((e) => (e.run = 'x')))).toBe('run');
    expect(fieldOf(mutated((e) => delete e.job.namespace))).toBe('job.namespace');
    expect(fieldOf(mutated((e) => (e.job.name = null)))).toBe('job.name');
  });

  it('names dataset fields with their index', () => {
    expect(fieldOf(mutated((e) => delete e.inputs[2].namespace))).toBe('inputs[2].namespace');
    expect(fieldOf(mutated((e) => (e.outputs[0].name = 1)))).toBe('outputs[0].name');
    expect(fieldOf(mutated((e) => (e.inputs = {})))).toBe('inputs');
    expect(fieldOf(mutated((e) => (e.inputs[1] = 'public.b')))).toBe('inputs[1]');
  });

  it('requires _producer and _schemaURL on every facet', () => {
    expect(fieldOf(mutated((e) => delete e.job.facets.sql._producer))).toBe('job.facets.sql._producer');
    expect(fieldOf(mutated((e) => delete e.inputs[0].facets.schema._schemaURL))).toBe('inputs[0].facets.schema._schemaURL');
    expect(fieldOf(mutated((e) => (e.run.facets['spark.logicalPlan'] = { plan: [] })))).toBe('run.facets["spark.logicalPlan"]._producer');
    expect(fieldOf(mutated((e) => delete e.outputs[0].outputFacets.outputStatistics._producer))).toBe(
      'outputs[0].outputFacets.outputStatistics._producer',
    );
    expect(fieldOf(mutated((e) => (e.run.facets.nominalTime = 'today')))).toBe('run.facets.nominalTime');
    expect(fieldOf(mutated((e) => (e.job.facets = [])))).toBe('job.facets');
    expect(fieldOf(mutated((e) => (e.job.facets.sql._deleted = 'yes')))).toBe('job.facets.sql._deleted');
  });

  it('checks the fields of the facets Retrace reads', () => {
    expect(fieldOf(mutated((e) => delete e.run.facets.parent.run.runId))).toBe('run.facets.parent.run.runId');
    expect(fieldOf(mutated((e) => delete e.run.facets.parent.job.name))).toBe('run.facets.parent.job.name');
    expect(fieldOf(mutated((e) => (e.outputs[0].facets = { version: facet({ datasetVersion: 3 }) })))).toBe('outputs[0].facets.version.datasetVersion');
    expect(fieldOf(mutated((e) => (e.outputs[0].outputFacets.outputStatistics.rowCount = -1)))).toBe(
      'outputs[0].outputFacets.outputStatistics.rowCount',
    );
    expect(fieldOf(mutated((e) => (e.job.facets.sourceCode = facet({ language: 'python' }))))).toBe('job.facets.sourceCode.sourceCode');
    expect(fieldOf(mutated((e) => (e.run.facets.retrace_resources = facet({ cpuTimeNs: -5 }))))).toBe('run.facets.retrace_resources.cpuTimeNs');
    expect(fieldOf(mutated((e) => (e.run.facets.retrace_resources = facet({ gpuUtilization: 1.5 }))))).toBe(
      'run.facets.retrace_resources.gpuUtilization',
    );
    expect(validateOpenLineageEvent(mutated((e) => (e.run.facets.retrace_resources = facet({ cpuTimeNs: '9223372036854775807' })))).kind).toBe(
      'RunEvent',
    );
  });

  it('discriminates RunEvent, DatasetEvent and JobEvent as the spec oneOf does', () => {
    const base = { eventTime: '2024-01-01T00:00:00Z', producer: PRODUCER, schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json' };
    const dataset = { namespace: 'ns', name: 'd', facets: { schema: facet({ fields: [] }) } };
    const job = { namespace: 'ns', name: 'j' };
    const run = { runId: '3f5e83fa-3480-44ff-99c5-ff943904e5e8' };
    expect(validateOpenLineageEvent({ ...base, dataset }).kind).toBe('DatasetEvent');
    expect(validateOpenLineageEvent({ ...base, job, inputs: [dataset] }).kind).toBe('JobEvent');
    // run + dataset, no job: only DatasetEvent's "not both job and run" holds.
    expect(validateOpenLineageEvent({ ...base, run, dataset }).kind).toBe('DatasetEvent');
    // run + job (+ dataset): a RunEvent; dataset is an extra member.
    expect(validateOpenLineageEvent({ ...base, run, job, dataset }).kind).toBe('RunEvent');
    // job + valid dataset, no run: both JobEvent and DatasetEvent match, which oneOf forbids.
    expect(fieldOf({ ...base, job, dataset })).toBe('$');
    expect(fieldOf({ ...base, run })).toBe('job');
    expect(fieldOf(base)).toBe('job');
    expect(fieldOf({ ...base, dataset: { namespace: 'ns' } })).toBe('dataset.name');
    expect(fieldOf({ ...base, dataset: { namespace: 'ns', name: 'd', facets: { x: {} } } })).toBe('dataset.facets.x._producer');
  });

  it('rejects what is not an object', () => {
    expect(fieldOf(null)).toBe('$');
    expect(fieldOf([runEvent()])).toBe('$');
    expect(fieldOf('{}')).toBe('$');
  });

  it('keeps ids within what the store accepts', () => {
    expect(fieldOf(mutated((e) => (e.outputs[0].name = 'x'.repeat(1100))))).toBe('outputs[0].name');
    expect(fieldOf(mutated((e) => (e.job.namespace = 'a\u0000b')))).toBe('job.namespace');
    expect(fieldOf(mutated((e) => (e.run.runId = 'has space')))).toBe('run.runId');
  });

  describe('formats', () => {
    it('lenient (default) accepts a non-UUID runId and a relative producer, as real producers send', () => {
      const e = mutated((x) => {
        x.run.runId = 'run_id';
        x.producer = 'producer';
      });
      expect(validateOpenLineageEvent(e).kind).toBe('RunEvent');
      expect(fieldOf(e, 'strict')).toBe('producer');
      expect(fieldOf(mutated((x) => (x.run.runId = 'run_id')), 'strict')).toBe('run.runId');
      expect(fieldOf(mutated((x) => (x.run.facets.parent.run.runId = 'p')), 'strict')).toBe('run.facets.parent.run.runId');
    });

    it('both modes reject URIs with characters a URI never holds', () => {
      expect(fieldOf(mutated((x) => (x.schemaURL = 'https://exa mple.com')))).toBe('schemaURL');
      expect(fieldOf(mutated((x) => (x.job.facets.sql._schemaURL = '')))).toBe('job.facets.sql._schemaURL');
      expect(fieldOf(mutated((x) => (x.producer = 'https://x/%zz')))).toBe('producer');
    });

    it('format helpers', () => {
      expect(isUuid('019299C5-1F1E-7C3B-A0C2-2C2D6A0E6F11')).toBe(true);
      expect(isUuid('019299c5-1f1e-7c3b-a0c2-2c2d6a0e6f1')).toBe(false);
      expect(isAbsoluteUri('https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent')).toBe(true);
      expect(isAbsoluteUri('urn:retrace:x')).toBe(true);
      expect(isAbsoluteUri('producer')).toBe(false);
      expect(isRfc3339DateTime('2024-02-29T23:59:60.5-07:30')).toBe(true);
      expect(isRfc3339DateTime('2023-02-29T00:00:00Z')).toBe(false);
      expect(isRfc3339DateTime('2024-01-01T24:00:00Z')).toBe(false);
      expect(isRfc3339DateTime('2024-01-01T00:00:00+25:00')).toBe(false);
    });
  });
});

describe('validateOpenLineageBatch', () => {
  it('validates every element and prefixes paths with the index', () => {
    const good = runEvent();
    const bad = mutated((e) => delete e.inputs[2].namespace);
    expect(validateOpenLineageBatch([good, good])).toHaveLength(2);
    expect(rejection(() => validateOpenLineageBatch([good, bad])).field).toBe('[1].inputs[2].namespace');
    expect(rejection(() => validateOpenLineageBatch([good, 5])).field).toBe('[1]');
    expect(rejection(() => validateOpenLineageBatch(good)).field).toBe('$');
    expect(validateOpenLineageBatch([])).toEqual([]);
  });
});
