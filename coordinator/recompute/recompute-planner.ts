import type { PipelineStep } from '../../common/gen/retrace/v1/pipeline.js';
import type { JobSpec, JobTaskSpec, JsonValue } from '../jobs/job-types.js';
import type { AffectedGraph } from './impact-analysis.js';

/** A pipeline step's definition now (the latest pipeline version): what a recompute runs. */
export interface StepDefinition {
  transform: string;
  codeVersion: string;
  parameters: Record<string, unknown>;
  requirements?: { cpu: number; memoryMb: number; gpu: number; instructionSets: string[]; networkMbps: number };
  timeoutMs: number;
  /** The steps or sources it reads, by name. */
  inputs: string[];
}

/** A pipeline version's step as the definition a recompute task runs. */
export function toStepDefinition(s: PipelineStep): StepDefinition {
  const def: StepDefinition = { transform: s.transform, codeVersion: s.codeVersion, parameters: (s.parameters ?? {}) as Record<string, unknown>, timeoutMs: s.timeoutMs, inputs: [...s.inputs] };
  if (s.requirements) def.requirements = s.requirements;
  return def;
}

/**
 * Why a recorded execution of `pipeline/step` (for `key`, over inputs named `recorded`) cannot be
 * recomputed under `def`, a definition that reads other inputs (the step was rewired since it
 * ran), or undefined. A task reruns the execution over the inputs it used, whose versions the
 * recompute updates: over a rewired step's old inputs it would record the new code reading what
 * the definition no longer reads, and move the current record to that. Names recorded without
 * the runner's input map (an object id in their place) are not compared.
 */
export function rewiredReason(pipeline: string, step: string, key: string, recorded: readonly string[], def: StepDefinition | undefined): string | undefined {
  if (!def || recorded.some((n) => n.includes(':'))) return undefined;
  const was = [...new Set(recorded)].sort();
  const now = [...new Set(def.inputs)].sort();
  if (was.length === now.length && was.every((n, i) => n === now[i])) return undefined;
  return `step ${pipeline}/${step} reads ${now.join(', ') || 'nothing'} in the pipeline's current version, but its execution for key ${JSON.stringify(key)} read ${was.join(', ') || 'nothing'}: a recompute reruns executions over the inputs they used, so it cannot recompute a rewired step; ingest the record again to run it as the pipeline is now`;
}

/** One input of a recompute task. */
export interface TaskInput {
  name: string;
  objectId: string;
  /** The version the original execution used. */
  originalHash: string;
  /** A changed object's new version (roots of the recompute). */
  newHash?: string;
  /** The task producing this object in the same job: its result says the version to use. */
  fromTask?: string;
}

/** A recompute task's payload: everything the executor needs, persisted with the job. */
export interface RecomputeTaskPayload {
  originalStepId: string;
  pipeline: string;
  step: string;
  key: string;
  /** Output dataset of a pipeline step (object ids record:<pipeline>/<output>:<key>). */
  output: string;
  transform: string;
  codeVersion: string;
  parameters: Record<string, unknown>;
  originalCodeVersion: string;
  originalParameters: Record<string, unknown>;
  requirements?: StepDefinition['requirements'];
  timeoutMs: number;
  inputs: TaskInput[];
  /** What the original execution generated. */
  outputs: { objectId: string; contentHash: string }[];
}

/** The job-level payload. */
export interface RecomputeJobPayload {
  changeIds: string[];
  principal: string;
  placement: { nodeIds?: string[]; labels?: Record<string, string> };
}

/** What one task's result says (persisted; handed to dependants). */
export interface RecomputeTaskResult {
  /** Object id → content hash now (new, cached or the original's when cut off). */
  outputs: Record<string, string>;
  /** Whether any output differs from the original execution's. */
  changed: boolean;
  stepId: string;
  nodeId: string;
  /** For cached results: the step that recorded the reused outputs. */
  cachedFrom: string;
}

export interface PlanOptions {
  /** Object id → its new version, for the roots of the recompute. */
  newVersions: ReadonlyMap<string, string>;
  /** `<pipeline>/<step>` → the step's definition now; steps without one run as recorded. */
  definitions: ReadonlyMap<string, StepDefinition>;
  changeIds: string[];
  principal: string;
  title: string;
  placement?: RecomputeJobPayload['placement'];
  maxAttempts?: number;
  concurrency?: number;
}

/**
 * Turns the affected graph into a `recompute` JobSpec: one task per affected logical step, in
 * dependency order, `dependsOn` from the graph; each task runs the step's current definition
 * (code version and parameters of the latest pipeline version) over its inputs, where an input is
 * taken from the root's new version or from the upstream task's result. Pure.
 */
export function planRecompute(graph: AffectedGraph, options: PlanOptions): JobSpec {
  const taskOf = new Map<string, string>();
  const producerTask = new Map<string, string>();
  graph.nodes.forEach((n, i) => {
    const id = `t${String(i + 1).padStart(4, '0')}`;
    taskOf.set(n.step.stepId, id);
    for (const g of n.outputs) producerTask.set(g.objectId, id);
  });
  const tasks: JobTaskSpec[] = graph.nodes.map((n) => {
    const id = taskOf.get(n.step.stepId) as string;
    const def = n.pipeline ? options.definitions.get(`${n.pipeline}/${n.stepName}`) : undefined;
    const recordedParams = (n.step.parameters ?? {}) as Record<string, unknown>;
    const inputs: TaskInput[] = n.step.used.map((u, i) => {
      const input: TaskInput = { name: n.inputNames[i] ?? u.objectId, objectId: u.objectId, originalHash: u.contentHash };
      const from = producerTask.get(u.objectId);
      if (from !== undefined && from !== id) input.fromTask = from;
      else {
        const nv = options.newVersions.get(u.objectId);
        if (nv !== undefined) input.newHash = nv;
      }
      return input;
    });
    const payload: RecomputeTaskPayload = {
      originalStepId: n.step.stepId,
      pipeline: n.pipeline,
      step: n.stepName,
      key: n.key,
      output: n.output,
      transform: def?.transform ?? n.step.transform,
      codeVersion: def?.codeVersion ?? n.step.codeVersion,
      parameters: def?.parameters ?? recordedParams,
      originalCodeVersion: n.step.codeVersion,
      originalParameters: recordedParams,
      timeoutMs: def?.timeoutMs ?? 0,
      inputs,
      outputs: n.outputs,
    };
    if (def?.requirements) payload.requirements = def.requirements;
    return {
      id,
      label: n.pipeline ? `${n.pipeline}/${n.stepName} key=${n.key}` : `${n.step.transform} ${n.step.stepId}`,
      dependsOn: n.dependsOn.map((d) => taskOf.get(d)).filter((t): t is string => t !== undefined),
      payload: payload as unknown as JsonValue,
    };
  });
  const jobPayload: RecomputeJobPayload = { changeIds: options.changeIds, principal: options.principal, placement: options.placement ?? {} };
  const spec: JobSpec = { kind: 'recompute', title: options.title, principal: options.principal, tasks, payload: jobPayload as unknown as JsonValue };
  if (options.maxAttempts !== undefined) spec.retry = { maxAttempts: options.maxAttempts };
  if (options.concurrency !== undefined) spec.concurrency = options.concurrency;
  return spec;
}
