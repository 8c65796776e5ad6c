import { sha256Hex } from '../hash.js';
import type { ObjectRef, ResourceUsage, Run, Step } from '../gen/retrace/v1/provenance.js';
import { nanosToIso } from '../time.js';
import {
  parseDatasetObjectId,
  parseJobTransformName,
  runOutputHash,
} from './to-lineage-events.js';
import {
  OPENLINEAGE_EVENT_TYPES,
  OPENLINEAGE_RUN_EVENT_SCHEMA_URL,
  RETRACE_RESOURCES_FACET,
  type BaseFacet,
  type DeletableFacet,
  type OpenLineageEventType,
  type OpenLineageInputDataset,
  type OpenLineageOutputDataset,
  type OpenLineageRunEvent,
  type RetraceResourcesRunFacet,
} from './types.js';
import { isUuid } from './validate.js';

/** `producer` (and facet `_producer`) Retrace writes on the events it exports. */
export const RETRACE_OPENLINEAGE_PRODUCER = 'urn:retrace:openlineage-export';

/** `_schemaURL` of the `retrace_resources` run facet. */
export const RETRACE_RESOURCES_FACET_SCHEMA_URL = 'urn:retrace:openlineage:facets:RetraceResourcesRunFacet:1-0-0';

/** Namespace given to transforms and objects that did not come from OpenLineage. */
export const RETRACE_DEFAULT_NAMESPACE = 'retrace';

export interface ToOpenLineageOptions {
  /** Defaults to RETRACE_OPENLINEAGE_PRODUCER. */
  producer?: string;
  /** Namespace for transforms and objects without one; defaults to `retrace`. */
  namespace?: string;
}

/**
 * The `retrace_resources` run facet for a ResourceUsage. Integers are JSON numbers while they are
 * safe integers and decimal strings beyond, so no value loses precision.
 */
export function toRetraceResourcesFacet(resources: ResourceUsage, producer = RETRACE_OPENLINEAGE_PRODUCER): RetraceResourcesRunFacet {
  const int = (v: string): number | string => (Number.isSafeInteger(Number(v)) ? Number(v) : v);
  return {
    _producer: producer,
    _schemaURL: RETRACE_RESOURCES_FACET_SCHEMA_URL,
    cpuTimeNs: int(resources.cpuTimeNs),
    peakMemoryBytes: int(resources.peakMemoryBytes),
    netBytesIn: int(resources.netBytesIn),
    netBytesOut: int(resources.netBytesOut),
    diskBytesRead: int(resources.diskBytesRead),
    diskBytesWritten: int(resources.diskBytesWritten),
    gpuTimeNs: int(resources.gpuTimeNs),
    gpuUtilization: resources.gpuUtilization,
    wallTimeNs: int(resources.wallTimeNs),
  };
}

/**
 * A valid OpenLineage 2-0-2 RunEvent (also under strict formats) describing one step, for
 * OpenLineage consumers. What it promises:
 *
 * - job: `job:<ns>:<name>` transforms split back; other transforms go to the default namespace.
 * - run.runId: the step's run id (or the run's) when it is a UUID, otherwise a UUID derived from
 *   it by hashing, so the same step always exports under the same runId.
 * - eventType and eventTime: COMPLETE at the end time when the step (or run) ended (FAIL/ABORT
 *   when the run says so), else START at the start time, else the run's state (or OTHER).
 * - facets: the step's `facets.run` / `facets.job` (as imported from OpenLineage) where they are
 *   well-formed facets, plus `retrace_resources` when the step has resources.
 * - inputs/outputs: `used` / `generated`. A versioned ref exports its content hash as the
 *   `version` facet, except an output whose hash is the synthetic run-output hash, which
 *   re-import derives again; so OpenLineage-born steps round-trip to the same refs.
 */
export function toOpenLineageRunEvent(step: Step, run?: Run, options: ToOpenLineageOptions = {}): OpenLineageRunEvent {
  const producer = options.producer ?? RETRACE_OPENLINEAGE_PRODUCER;
  const namespace = options.namespace ?? RETRACE_DEFAULT_NAMESPACE;
  const job = parseJobTransformName(step.transform) ?? { namespace, name: step.transform };
  const sourceRunId = step.runId || run?.runId || step.stepId;
  const runId = isUuid(sourceRunId) ? sourceRunId : uuidFrom(sourceRunId);

  const ended = nonZero(step.endedAtNs) ?? nonZero(run?.endedAtNs);
  const started = nonZero(step.startedAtNs) ?? nonZero(run?.startedAtNs);
  const runState = (OPENLINEAGE_EVENT_TYPES as readonly string[]).includes(run?.state ?? '') ? (run?.state as OpenLineageEventType) : undefined;
  let eventType: OpenLineageEventType;
  if (ended !== undefined) eventType = runState === 'FAIL' || runState === 'ABORT' ? runState : 'COMPLETE';
  else if (started !== undefined) eventType = 'START';
  else eventType = runState ?? 'OTHER';

  const runFacets: Record<string, BaseFacet> = { ...wellFormedFacets(step.facets?.['run']) };
  if (step.resources !== undefined) runFacets[RETRACE_RESOURCES_FACET] = toRetraceResourcesFacet(step.resources, producer);
  const jobFacets = wellFormedFacets(step.facets?.['job']) as Record<string, DeletableFacet>;

  const dataset = (ref: ObjectRef, output: boolean): OpenLineageInputDataset & OpenLineageOutputDataset => {
    const id = parseDatasetObjectId(ref.objectId) ?? { namespace, name: ref.objectId };
    const versioned = !ref.unversioned && ref.contentHash !== '';
    const derivable = output && ref.contentHash === runOutputHash(id.namespace, id.name, runId);
    if (!versioned || derivable) return { namespace: id.namespace, name: id.name };
    return {
      namespace: id.namespace,
      name: id.name,
      facets: { version: { _producer: producer, _schemaURL: DATASET_VERSION_SCHEMA_URL, datasetVersion: ref.contentHash } },
    };
  };

  return {
    eventTime: nanosToIso(ended ?? started ?? '0'),
    producer,
    schemaURL: OPENLINEAGE_RUN_EVENT_SCHEMA_URL,
    eventType,
    run: { runId, facets: runFacets },
    job: { namespace: job.namespace, name: job.name, facets: jobFacets },
    inputs: step.used.map((ref) => dataset(ref, false)),
    outputs: step.generated.map((ref) => dataset(ref, true)),
  };
}

const DATASET_VERSION_SCHEMA_URL = 'https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet';

function nonZero(ns: string | undefined): string | undefined {
  return ns === undefined || ns === '' || ns === '0' ? undefined : ns;
}

/** A UUID (version 8 layout: custom) from the SHA-256 of a name; the same name, the same UUID. */
function uuidFrom(name: string): string {
  const hex = sha256Hex(`retrace:openlineage-run:${name}`).slice(0, 32).split('');
  hex[12] = '8';
  hex[16] = ((parseInt(hex[16] ?? '0', 16) & 0x3) | 0x8).toString(16);
  const h = hex.join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** The members of a facet map that are well-formed facets (objects with string `_producer` and `_schemaURL`). */
function wellFormedFacets(value: unknown): Record<string, BaseFacet> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return {};
  const out: Record<string, BaseFacet> = {};
  for (const [name, facet] of Object.entries(value as Record<string, unknown>)) {
    if (facet === null || typeof facet !== 'object' || Array.isArray(facet)) continue;
    const f = facet as Record<string, unknown>;
    if (typeof f['_producer'] === 'string' && typeof f['_schemaURL'] === 'string') out[name] = facet as BaseFacet;
  }
  return out;
}
