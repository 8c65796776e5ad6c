/**
 * OpenLineage 2-0-2 events and the facets Retrace reads, written from the core JSON Schema
 * (`OpenLineage.json`) and the standard facet schemas. Only the shape is promised here;
 * `validate.ts` is what checks an unknown value against it.
 *
 * Every object in the spec allows additional properties, so every interface here does too
 * (through the facet index signatures, or by being read through `validate.ts`, which keeps
 * unknown members verbatim).
 */

/** The version of the core spec these types follow. */
export const OPENLINEAGE_SPEC_VERSION = '2-0-2';

/** `schemaURL` Retrace writes on the RunEvents it exports. */
export const OPENLINEAGE_RUN_EVENT_SCHEMA_URL = 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent';

/** Run state transitions a RunEvent may carry. */
export const OPENLINEAGE_EVENT_TYPES = ['START', 'RUNNING', 'COMPLETE', 'ABORT', 'FAIL', 'OTHER'] as const;
export type OpenLineageEventType = (typeof OPENLINEAGE_EVENT_TYPES)[number];

/** Every facet carries who produced it and which schema it follows (both URIs). */
export interface BaseFacet {
  _producer: string;
  _schemaURL: string;
  [field: string]: unknown;
}

/** Job and dataset facets may be tombstones (`_deleted: true`). */
export interface DeletableFacet extends BaseFacet {
  _deleted?: boolean;
}

// ---- run facets -----------------------------------------------------------------------------

/** `parent`: the run (and job) that started this one, e.g. an Airflow DAG run above a task run. */
export interface ParentRunFacet extends BaseFacet {
  run: { runId: string; facets?: Record<string, BaseFacet> };
  job: { namespace: string; name: string; facets?: Record<string, DeletableFacet> };
  root?: {
    run: { runId: string; facets?: Record<string, BaseFacet> };
    job: { namespace: string; name: string; facets?: Record<string, DeletableFacet> };
  };
}

/** `nominalTime`: the scheduled time window of the run. */
export interface NominalTimeRunFacet extends BaseFacet {
  nominalStartTime: string;
  nominalEndTime?: string;
}

/** `errorMessage`: why a run failed. */
export interface ErrorMessageRunFacet extends BaseFacet {
  message: string;
  programmingLanguage: string;
  stackTrace?: string;
}

/** `processing_engine`: the engine (Spark, Airflow...) that ran the job. */
export interface ProcessingEngineRunFacet extends BaseFacet {
  version: string;
  name?: string;
  openlineageAdapterVersion?: string;
}

/** `executionParameters`: parameters passed to the job at run time. */
export interface ExecutionParametersRunFacet extends BaseFacet {
  parameters?: { key: string; name?: string; description?: string; value?: string }[];
}

/**
 * `retrace_resources`: Retrace's own run facet carrying the resources a run used. Integer fields
 * are JSON integers, or decimal strings when they exceed 2^53 - 1; all are optional and mean 0
 * when absent. Times are nanoseconds, sizes bytes, `gpuUtilization` a mean in 0..1.
 */
export interface RetraceResourcesRunFacet extends BaseFacet {
  cpuTimeNs?: number | string;
  peakMemoryBytes?: number | string;
  netBytesIn?: number | string;
  netBytesOut?: number | string;
  diskBytesRead?: number | string;
  diskBytesWritten?: number | string;
  gpuTimeNs?: number | string;
  gpuUtilization?: number;
  wallTimeNs?: number | string;
}

/** Name of the resource-usage run facet, in both directions. */
export const RETRACE_RESOURCES_FACET = 'retrace_resources';

/** Integer fields of the resource facet, in ResourceUsage order. */
export const RETRACE_RESOURCES_INTEGER_FIELDS = [
  'cpuTimeNs',
  'peakMemoryBytes',
  'netBytesIn',
  'netBytesOut',
  'diskBytesRead',
  'diskBytesWritten',
  'gpuTimeNs',
  'wallTimeNs',
] as const;

/** Run facets by name; the ones Retrace reads are typed, the rest kept as base facets. */
export interface RunFacets {
  parent?: ParentRunFacet;
  nominalTime?: NominalTimeRunFacet;
  errorMessage?: ErrorMessageRunFacet;
  processing_engine?: ProcessingEngineRunFacet;
  executionParameters?: ExecutionParametersRunFacet;
  retrace_resources?: RetraceResourcesRunFacet;
  [name: string]: BaseFacet | undefined;
}

// ---- job facets -----------------------------------------------------------------------------

/** `sourceCode`: the code of the job itself. */
export interface SourceCodeJobFacet extends DeletableFacet {
  language: string;
  sourceCode: string;
}

/** `sourceCodeLocation`: where the job's code lives in version control. */
export interface SourceCodeLocationJobFacet extends DeletableFacet {
  type: string;
  url: string;
  repoUrl?: string;
  path?: string;
  version?: string;
  tag?: string;
  branch?: string;
  pullRequestNumber?: string;
}

/** `sql`: the query the job ran. */
export interface SqlJobFacet extends DeletableFacet {
  query: string;
  dialect?: string;
}

/** `jobType`: batch or streaming, and the integration that reported it. */
export interface JobTypeJobFacet extends DeletableFacet {
  processingType: string;
  integration: string;
  jobType?: string;
}

/** `ownership`: who owns the job (owner names are URNs such as `team:data`). */
export interface OwnershipJobFacet extends DeletableFacet {
  owners?: { name: string; type?: string }[];
}

/** `documentation`: a description of the job. */
export interface DocumentationJobFacet extends DeletableFacet {
  description: string;
  contentType?: string;
}

/** Job facets by name. */
export interface JobFacets {
  sourceCode?: SourceCodeJobFacet;
  sourceCodeLocation?: SourceCodeLocationJobFacet;
  sql?: SqlJobFacet;
  jobType?: JobTypeJobFacet;
  ownership?: OwnershipJobFacet;
  documentation?: DocumentationJobFacet;
  [name: string]: DeletableFacet | undefined;
}

// ---- dataset facets -------------------------------------------------------------------------

/** One field (column) of a dataset's schema; struct fields nest. */
export interface SchemaField {
  name: string;
  type?: string;
  description?: string;
  ordinal_position?: number;
  fields?: SchemaField[];
  [key: string]: unknown;
}

/** `schema`: the dataset's fields. */
export interface SchemaDatasetFacet extends DeletableFacet {
  fields?: SchemaField[];
}

/** `version`: the version of the dataset the producer saw or wrote. */
export interface DatasetVersionDatasetFacet extends DeletableFacet {
  datasetVersion: string;
}

/** One input column a field (or the whole dataset) depends on. */
export interface ColumnLineageInputField {
  namespace: string;
  name: string;
  field: string;
  transformations?: { type: string; subtype?: string; description?: string; masking?: boolean }[];
}

/** `columnLineage`: which input columns each output column was computed from. */
export interface ColumnLineageDatasetFacet extends DeletableFacet {
  fields: Record<string, { inputFields: ColumnLineageInputField[]; transformationDescription?: string; transformationType?: string }>;
  dataset?: ColumnLineageInputField[];
}

/** `dataSource`: the data source the dataset lives in. */
export interface DatasourceDatasetFacet extends DeletableFacet {
  name?: string;
  uri?: string;
}

/** Dataset facets by name. */
export interface DatasetFacets {
  schema?: SchemaDatasetFacet;
  version?: DatasetVersionDatasetFacet;
  columnLineage?: ColumnLineageDatasetFacet;
  dataSource?: DatasourceDatasetFacet;
  [name: string]: DeletableFacet | undefined;
}

/** `outputStatistics` (an output dataset facet): what the run wrote. */
export interface OutputStatisticsOutputDatasetFacet extends BaseFacet {
  rowCount?: number;
  size?: number;
  fileCount?: number;
}

/** Output dataset facets by name. */
export interface OutputDatasetFacets {
  outputStatistics?: OutputStatisticsOutputDatasetFacet;
  [name: string]: BaseFacet | undefined;
}

/** Input dataset facets by name. */
export type InputDatasetFacets = Record<string, BaseFacet>;

// ---- core objects ---------------------------------------------------------------------------

export interface OpenLineageRun {
  /** A UUID per the spec (see `validate.ts` for how strictly that is checked). */
  runId: string;
  facets?: RunFacets;
}

export interface OpenLineageJob {
  namespace: string;
  name: string;
  facets?: JobFacets;
}

export interface OpenLineageDataset {
  namespace: string;
  name: string;
  facets?: DatasetFacets;
}

export interface OpenLineageInputDataset extends OpenLineageDataset {
  inputFacets?: InputDatasetFacets;
}

export interface OpenLineageOutputDataset extends OpenLineageDataset {
  outputFacets?: OutputDatasetFacets;
}

/** Fields every event carries. `eventTime` is an RFC 3339 date-time; the other two are URIs. */
export interface OpenLineageBaseEvent {
  eventTime: string;
  producer: string;
  schemaURL: string;
}

/** A run of a job changed state (`eventType`), reading `inputs` and writing `outputs`. */
export interface OpenLineageRunEvent extends OpenLineageBaseEvent {
  eventType?: OpenLineageEventType;
  run: OpenLineageRun;
  job: OpenLineageJob;
  inputs?: OpenLineageInputDataset[];
  outputs?: OpenLineageOutputDataset[];
}

/** Static metadata about a dataset, outside any run. Carries no job and run together. */
export interface OpenLineageDatasetEvent extends OpenLineageBaseEvent {
  dataset: OpenLineageDataset;
}

/** Static metadata about a job (its design-time inputs and outputs), outside any run. */
export interface OpenLineageJobEvent extends OpenLineageBaseEvent {
  job: OpenLineageJob;
  inputs?: OpenLineageInputDataset[];
  outputs?: OpenLineageOutputDataset[];
}

/** Which of the spec's three `oneOf` branches an event matched. */
export type OpenLineageEventKind = 'RunEvent' | 'DatasetEvent' | 'JobEvent';

/** A validated event, tagged with the branch it matched so callers need not re-discriminate. */
export type ValidatedOpenLineageEvent =
  | { kind: 'RunEvent'; event: OpenLineageRunEvent }
  | { kind: 'DatasetEvent'; event: OpenLineageDatasetEvent }
  | { kind: 'JobEvent'; event: OpenLineageJobEvent };

/** Any of the three events, untagged. */
export type OpenLineageEvent = OpenLineageRunEvent | OpenLineageDatasetEvent | OpenLineageJobEvent;
