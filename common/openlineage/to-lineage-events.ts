import { canonicalJson } from '../canonical-json.js';
import { InvalidArgumentError } from '../errors.js';
import { contentHashOf, sha256Hex } from '../hash.js';
import {
  TriggerKind,
  type LineageEvent,
  type ObjectRef,
  type ObjectVersion,
  type ResourceUsage,
  type Run,
  type Step,
} from '../gen/retrace/v1/provenance.js';
import { isoToNanos } from '../time.js';
import {
  RETRACE_RESOURCES_FACET,
  type BaseFacet,
  type JobFacets,
  type OpenLineageDataset,
  type OpenLineageDatasetEvent,
  type OpenLineageOutputDataset,
  type OpenLineageRunEvent,
  type RetraceResourcesRunFacet,
  type RunFacets,
  type ValidatedOpenLineageEvent,
} from './types.js';

/** Prefix of the step id Retrace gives every OpenLineage run: `openlineage:<runId>`. */
export const OPENLINEAGE_STEP_PREFIX = 'openlineage:';

/** The transform (Retrace) / job (Marquez) name of an OpenLineage job: `job:<namespace>:<name>`. */
export function jobTransformName(namespace: string, name: string): string {
  return `job:${namespace}:${name}`;
}

/** The object id of an OpenLineage dataset: `dataset:<namespace>:<name>`. */
export function datasetObjectId(namespace: string, name: string): string {
  return `dataset:${namespace}:${name}`;
}

/** The step id of every event of one OpenLineage run; the store merges their edges. */
export function openLineageStepId(runId: string): string {
  return `${OPENLINEAGE_STEP_PREFIX}${runId}`;
}

/** Synthetic content hash of a dataset version the producer named (`version` facet). */
export function datasetVersionHash(namespace: string, name: string, datasetVersion: string): string {
  return contentHashOf(`openlineage:dataset-version:${namespace}:${name}:${datasetVersion}`);
}

/**
 * Synthetic content hash of what one run wrote to a dataset whose version the producer did not
 * name; `writer` is the runId (RunEvent) or the eventTime (DatasetEvent).
 */
export function runOutputHash(namespace: string, name: string, writer: string): string {
  return contentHashOf(`openlineage:run-output:${namespace}:${name}:${writer}`);
}

/**
 * Splits the `<namespace>:<name>` part of a dataset id or job name. The colon is ambiguous when
 * either part holds one, so a namespace that starts like a URI (`scheme://authority[:port]`, as
 * OpenLineage's naming spec has them) is taken whole, and otherwise the first colon splits.
 * Exact for the namespaces the naming spec describes; a best effort beyond.
 */
export function splitQualifiedName(qualified: string): { namespace: string; name: string } {
  const uri = /^([A-Za-z][A-Za-z0-9+.-]*:\/\/[^/:]*(?::\d+)?):([\s\S]*)$/.exec(qualified);
  if (uri) return { namespace: uri[1] ?? '', name: uri[2] ?? '' };
  const at = qualified.indexOf(':');
  return at < 0 ? { namespace: '', name: qualified } : { namespace: qualified.slice(0, at), name: qualified.slice(at + 1) };
}

/** Namespace and name of a `dataset:<ns>:<name>` object id; undefined for other ids. */
export function parseDatasetObjectId(objectId: string): { namespace: string; name: string } | undefined {
  return objectId.startsWith('dataset:') ? splitQualifiedName(objectId.slice('dataset:'.length)) : undefined;
}

/** Namespace and name of a `job:<ns>:<name>` transform; undefined for other transforms. */
export function parseJobTransformName(transform: string): { namespace: string; name: string } | undefined {
  return transform.startsWith('job:') ? splitQualifiedName(transform.slice('job:'.length)) : undefined;
}

/**
 * ResourceUsage from a validated `retrace_resources` run facet: absent fields are 0, integers
 * become decimal strings.
 */
export function fromRetraceResourcesFacet(facet: RetraceResourcesRunFacet): ResourceUsage {
  const int = (v: number | string | undefined): string => (v === undefined ? '0' : typeof v === 'number' ? String(v) : BigInt(v).toString());
  return {
    cpuTimeNs: int(facet.cpuTimeNs),
    peakMemoryBytes: int(facet.peakMemoryBytes),
    netBytesIn: int(facet.netBytesIn),
    netBytesOut: int(facet.netBytesOut),
    diskBytesRead: int(facet.diskBytesRead),
    diskBytesWritten: int(facet.diskBytesWritten),
    gpuTimeNs: int(facet.gpuTimeNs),
    gpuUtilization: facet.gpuUtilization ?? 0,
    wallTimeNs: int(facet.wallTimeNs),
  };
}

/**
 * Converts one validated OpenLineage event to Retrace's native events, deterministically: the
 * same event (same canonical JSON) always yields the same native events with the same ids, so
 * a resent event is a duplicate, not new lineage.
 *
 * - RunEvent: one `run` event; then, when it lists inputs or outputs, one `objectVersion` per
 *   distinct output dataset and per distinct input carrying a `version` facet, and one `step`
 *   (`openlineage:<runId>`, shared by every event of the run so the store accumulates its edges).
 * - DatasetEvent: one `objectVersion`.
 * - JobEvent: nothing (see below).
 *
 * The step's `why.principal` is `options.principal` when given (the name the submitting token is
 * bound to), else the job's first owner (ownership facet), else the producer; the facet itself is
 * kept either way.
 *
 * Throws InvalidArgumentError only for what validation cannot see (an eventTime out of range).
 */
export function toLineageEvents(validated: ValidatedOpenLineageEvent, options: { principal?: string | undefined } = {}): LineageEvent[] {
  const ids = eventIds(validated.event);
  switch (validated.kind) {
    case 'RunEvent':
      return fromRunEvent(validated.event, ids, options.principal);
    case 'DatasetEvent':
      return fromDatasetEvent(validated.event, ids);
    case 'JobEvent':
      // A JobEvent describes a job's design (its declared inputs and outputs), not an
      // execution: no run happened and no data version came into being. Retrace's ledger
      // records what happened, so recording a step or object versions here would invent
      // history. The event is accepted (it is valid OpenLineage) and stores nothing.
      return [];
  }
}

/** Ids of the native events derived from one OpenLineage event: sha256 of its canonical JSON and a part name. */
function eventIds(event: object): (part: string) => string {
  const base = sha256Hex(canonicalJson(event));
  return (part) => sha256Hex(`${base}:${part}`);
}

function eventTimeNs(eventTime: string): string {
  const ns = isoToNanos(eventTime, 'eventTime');
  if (ns < 0n) throw new InvalidArgumentError('eventTime', `must not be before 1970-01-01, got ${JSON.stringify(eventTime)}`);
  // Nanoseconds since the epoch are an int64 (the ledger's event_time_ns).
  if (ns > 0x7fff_ffff_ffff_ffffn) throw new InvalidArgumentError('eventTime', `must not be after 2262-04-11T23:47:16.854775807Z, got ${JSON.stringify(eventTime)}`);
  return ns.toString();
}

function fromRunEvent(event: OpenLineageRunEvent, id: (part: string) => string, principal: string | undefined): LineageEvent[] {
  const runId = event.run.runId;
  const transform = jobTransformName(event.job.namespace, event.job.name);
  const runFacets: RunFacets = event.run.facets ?? {};
  const jobFacets: JobFacets = event.job.facets ?? {};
  const timeNs = eventTimeNs(event.eventTime);
  const state = event.eventType ?? '';
  const startedAtNs = state === 'START' ? timeNs : '0';
  const endedAtNs = state === 'COMPLETE' || state === 'FAIL' || state === 'ABORT' ? timeNs : '0';
  // An empty map is left out: the store folds a run's events by replacing facet keys, and a
  // COMPLETE without facets must not erase what its START said.
  const facets: Record<string, unknown> = {};
  if (Object.keys(runFacets).length > 0) facets['run'] = runFacets;
  if (Object.keys(jobFacets).length > 0) facets['job'] = jobFacets;

  const run: Run = {
    runId,
    name: transform,
    // The store refuses a run that is its own parent; a producer saying so means "no parent".
    parentRunId: runFacets.parent?.run.runId === runId ? '' : (runFacets.parent?.run.runId ?? ''),
    state,
    startedAtNs,
    endedAtNs,
    facets,
  };
  const out: LineageEvent[] = [
    { eventId: id('run'), eventTimeNs: timeNs, producer: event.producer, body: { $case: 'run', value: run } },
  ];

  const inputs = distinctDatasets(event.inputs ?? []);
  const outputs = distinctDatasets(event.outputs ?? []);
  if (inputs.length === 0 && outputs.length === 0) return out;

  const generated: ObjectRef[] = [];
  for (const output of outputs) {
    const version = outputVersion(output, runId, timeNs);
    generated.push({ objectId: version.objectId, contentHash: version.contentHash, unversioned: false });
    out.push({
      eventId: id(`output:${version.objectId}`),
      eventTimeNs: timeNs,
      producer: event.producer,
      body: { $case: 'objectVersion', value: version },
    });
  }
  const used: ObjectRef[] = inputs.map((input) => {
    const objectId = datasetObjectId(input.namespace, input.name);
    const datasetVersion = liveFacet(input.facets?.version)?.datasetVersion;
    if (datasetVersion === undefined) return { objectId, contentHash: '', unversioned: true };
    const contentHash = datasetVersionHash(input.namespace, input.name, datasetVersion);
    // The store accepts a versioned input only once the version is known, and a version the
    // producer named may have been written by something that never reported it. Recording it
    // here is harmless when it is known: versions of one object and hash fold together.
    out.push({
      eventId: id(`input:${objectId}`),
      eventTimeNs: timeNs,
      producer: event.producer,
      body: {
        $case: 'objectVersion',
        value: {
          objectId,
          contentHash,
          size: '0',
          mediaType: '',
          // When the input version came into being is unknown; the store then uses the event time.
          createdAtNs: '0',
          attributes: { hashKind: 'synthetic', 'openlineage.namespace': input.namespace, 'openlineage.name': input.name },
          facets: { ...(input.facets ?? {}) },
        },
      },
    });
    return { objectId, contentHash, unversioned: false };
  });

  const resourcesFacet = runFacets[RETRACE_RESOURCES_FACET] as RetraceResourcesRunFacet | undefined;
  const step: Step = {
    stepId: openLineageStepId(runId),
    runId,
    transform,
    codeVersion: codeVersionOf(jobFacets),
    parameters: parametersOf(runFacets, jobFacets),
    nodeId: '',
    host: '',
    startedAtNs,
    endedAtNs,
    why: { kind: TriggerKind.TRIGGER_KIND_EVENT, id: runId, principal: principal ?? principalOf(event, jobFacets) },
    resources: resourcesFacet === undefined ? undefined : fromRetraceResourcesFacet(resourcesFacet),
    used,
    generated,
    facets,
  };
  out.push({ eventId: id('step'), eventTimeNs: timeNs, producer: event.producer, body: { $case: 'step', value: step } });
  return out;
}

/** What the store already holds of an OpenLineage run, for fillStepStarts. */
export interface StoredRunStart {
  /** When the run started ('0' when no START was stored). */
  runStartedAtNs: string;
  /** Whether the run's step is stored with a start already. */
  stepStarted: boolean;
  /** Whether the run's step is stored at all. */
  stepStored?: boolean;
}

/**
 * Gives an OpenLineage run's step the run's start where no event of the step carries one. A
 * START that names no datasets (the usual Airflow case) makes no step, so the step first made by
 * a later event (the COMPLETE with its outputs) would have no start time. Such a step takes the
 * earliest START among the run events of `events` and the stored run (`stored`). A step that
 * another event of `events` or the store already starts is left as converted, so runs whose START
 * named datasets are encoded as before. Returns the events, the filled steps as copies.
 *
 * The other order: producers emit asynchronously, so such a START may come after the COMPLETE
 * whose step is stored without a start. Then one more event of that step, carrying only the start
 * (no edges, no facets: the later COMPLETE's values win in the fold), is added after the run
 * event, its id derived from the run event's so a resent START is a duplicate.
 */
export function fillStepStarts(events: readonly LineageEvent[], stored: (runId: string) => StoredRunStart | undefined = () => undefined): LineageEvent[] {
  const { runStart, started, stepped } = startsIn(events);
  return events.flatMap((e): LineageEvent[] => {
    if (e.body?.$case === 'run') {
      const run = e.body.value;
      if (run.startedAtNs === '0' || stepped.has(run.runId)) return [e];
      const known = stored(run.runId);
      if (!known?.stepStored || known.stepStarted) return [e];
      stepped.add(run.runId);
      const startOnly: Step = { stepId: openLineageStepId(run.runId), runId: run.runId, transform: run.name, codeVersion: '', parameters: undefined, nodeId: '', host: '', startedAtNs: run.startedAtNs, endedAtNs: '0', why: undefined, resources: undefined, used: [], generated: [], facets: undefined };
      return [e, { eventId: sha256Hex(`${e.eventId}:step-start`), eventTimeNs: e.eventTimeNs, producer: e.producer, body: { $case: 'step', value: startOnly } }];
    }
    if (e.body?.$case !== 'step') return [e];
    const step = e.body.value;
    if (step.startedAtNs !== '0' || !step.stepId.startsWith(OPENLINEAGE_STEP_PREFIX) || started.has(step.stepId)) return [e];
    const known = stored(step.runId);
    if (known?.stepStarted) return [e];
    let start = runStart.get(step.runId);
    if (known && known.runStartedAtNs !== '0' && (start === undefined || BigInt(known.runStartedAtNs) < start)) start = BigInt(known.runStartedAtNs);
    if (start === undefined) return [e];
    return [{ ...e, body: { $case: 'step', value: { ...step, startedAtNs: start.toString() } } }];
  });
}

/**
 * The runs whose stored state can change what fillStepStarts makes of `events`, so a caller
 * reads only those: the runs of OpenLineage steps that no event of `events` starts, and the runs
 * of START events that make no step.
 */
export function runsNeedingStoredStart(events: readonly LineageEvent[]): Set<string> {
  const { runStart, started, stepped } = startsIn(events);
  const out = new Set<string>();
  for (const e of events) {
    if (e.body?.$case === 'run' && e.body.value.startedAtNs !== '0' && !stepped.has(e.body.value.runId)) out.add(e.body.value.runId);
    if (e.body?.$case !== 'step') continue;
    const step = e.body.value;
    if (step.startedAtNs === '0' && step.runId !== '' && step.stepId.startsWith(OPENLINEAGE_STEP_PREFIX) && !started.has(step.stepId) && !runStart.has(step.runId)) out.add(step.runId);
  }
  return out;
}

/** What `events` themselves say of starts: each run's earliest START, the steps started, the runs with a step event. */
function startsIn(events: readonly LineageEvent[]): { runStart: Map<string, bigint>; started: Set<string>; stepped: Set<string> } {
  const runStart = new Map<string, bigint>();
  const started = new Set<string>();
  const stepped = new Set<string>();
  for (const e of events) {
    if (e.body?.$case === 'run' && e.body.value.startedAtNs !== '0') {
      const t = BigInt(e.body.value.startedAtNs);
      const prev = runStart.get(e.body.value.runId);
      if (prev === undefined || t < prev) runStart.set(e.body.value.runId, t);
    }
    if (e.body?.$case === 'step') {
      stepped.add(e.body.value.runId);
      if (e.body.value.startedAtNs !== '0') started.add(e.body.value.stepId);
    }
  }
  return { runStart, started, stepped };
}

function fromDatasetEvent(event: OpenLineageDatasetEvent, id: (part: string) => string): LineageEvent[] {
  const timeNs = eventTimeNs(event.eventTime);
  // A DatasetEvent has no run; its eventTime stands in for the writer of an unnamed version.
  const version = outputVersion(event.dataset, event.eventTime, timeNs);
  return [{ eventId: id('dataset'), eventTimeNs: timeNs, producer: event.producer, body: { $case: 'objectVersion', value: version } }];
}

/** The object version a run (or a DatasetEvent) wrote; its hash is synthetic, see the hash helpers. */
function outputVersion(dataset: OpenLineageDataset | OpenLineageOutputDataset, writer: string, createdAtNs: string): ObjectVersion {
  const { namespace, name } = dataset;
  const facets: Record<string, unknown> = { ...(dataset.facets ?? {}) };
  const datasetVersion = liveFacet(dataset.facets?.version)?.datasetVersion;
  const attributes: Record<string, string> = { hashKind: 'synthetic', 'openlineage.namespace': namespace, 'openlineage.name': name };
  let size = '0';
  const outputFacets = 'outputFacets' in dataset ? dataset.outputFacets : undefined;
  // Producers put statistics in outputFacets (the spec) or, older ones, among the dataset facets.
  const stats = outputFacets?.outputStatistics ?? (dataset.facets?.['outputStatistics'] as BaseFacet | undefined);
  if (stats !== undefined) {
    if (typeof stats['size'] === 'number') size = String(stats['size']);
    if (typeof stats['rowCount'] === 'number') attributes['rowCount'] = String(stats['rowCount']);
    if (typeof stats['fileCount'] === 'number') attributes['fileCount'] = String(stats['fileCount']);
  }
  // Output facets live in their own namespace in OpenLineage; keep them apart from dataset facets.
  if (outputFacets !== undefined && Object.keys(outputFacets).length > 0) facets['outputFacets'] = outputFacets;
  return {
    objectId: datasetObjectId(namespace, name),
    contentHash: datasetVersion === undefined ? runOutputHash(namespace, name, writer) : datasetVersionHash(namespace, name, datasetVersion),
    size,
    mediaType: '',
    createdAtNs,
    attributes,
    facets,
  };
}

/** First occurrence of each dataset, so a dataset listed twice yields one edge and one version. */
function distinctDatasets<T extends OpenLineageDataset>(datasets: readonly T[]): T[] {
  const seen = new Set<string>();
  return datasets.filter((d) => {
    const key = datasetObjectId(d.namespace, d.name);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** A facet unless it is a tombstone (`_deleted: true`). */
function liveFacet<F extends { _deleted?: boolean }>(facet: F | undefined): F | undefined {
  return facet === undefined || facet._deleted === true ? undefined : facet;
}

/**
 * The code that ran: the hash of the source text when the job carries its source code,
 * otherwise of the source location (canonical JSON of its fields, `_` members left out, so the
 * hash does not change with the producer's version).
 */
function codeVersionOf(jobFacets: JobFacets): string {
  const sourceCode = liveFacet(jobFacets.sourceCode);
  if (sourceCode !== undefined) return contentHashOf(sourceCode.sourceCode);
  const location = liveFacet(jobFacets.sourceCodeLocation);
  if (location !== undefined) return contentHashOf(canonicalJson(withoutBaseFields(location)));
  return '';
}

/**
 * Parameters, from the first of: the `executionParameters` run facet (key → value), a
 * `parameters` run facet, a `parameters` job facet (their fields, `_` members left out).
 */
function parametersOf(runFacets: RunFacets, jobFacets: JobFacets): Record<string, unknown> | undefined {
  const execution = runFacets.executionParameters;
  if (execution?.parameters !== undefined) {
    return Object.fromEntries(execution.parameters.map((p) => [p.key, p.value ?? null]));
  }
  const runParameters = runFacets['parameters'];
  if (runParameters !== undefined) return withoutBaseFields(runParameters);
  const jobParameters = liveFacet(jobFacets['parameters']);
  if (jobParameters !== undefined) return withoutBaseFields(jobParameters);
  return undefined;
}

/** Who caused the run: the job's first owner when the ownership facet names one, else the producer. */
function principalOf(event: OpenLineageRunEvent, jobFacets: JobFacets): string {
  return liveFacet(jobFacets.ownership)?.owners?.[0]?.name ?? event.producer;
}

function withoutBaseFields(facet: BaseFacet): Record<string, unknown> {
  return Object.fromEntries(Object.entries(facet).filter(([key]) => !key.startsWith('_')));
}
