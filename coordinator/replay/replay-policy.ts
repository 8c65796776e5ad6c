import { InvalidArgumentError } from '../../common/errors.js';
import { GpuMode, type RecordSelector, type ReplayPolicy } from '../../common/gen/retrace/v1/replay.js';
import { isContentHash } from '../../common/hash.js';

/** Where replayed shards may run; the dispatcher's placement constraints. */
export interface ReplayPlacement {
  nodeIds?: string[];
  labels?: Record<string, string>;
  gpu?: 'any' | 'only' | 'none';
  maxCpuFraction?: number;
  maxMemoryMb?: number;
}

/** A policy validated and defaulted once, at StartReplay. */
export interface CompiledReplayPolicy {
  /** Factor on recorded inter-arrival times; 0 = as fast as possible. */
  readonly speed: number;
  readonly placement: ReplayPlacement;
  /** The fault seed, a uint64 in decimal (what faultDraw hashes). */
  readonly seed: string;
  readonly outages: readonly { nodeId: string; startAfterMs: number; durationMs: number }[];
  readonly linkOutageProbability: number;
  readonly corruptInputProbability: number;
  readonly stepFailureProbability: number;
  readonly addedLatencyMs: number;
  /** What-if parameters per step name, merged over the recorded ones (a "+" opt-in prefix removed). */
  readonly stepParameters: Readonly<Record<string, Record<string, unknown>>>;
  /**
   * Per step name, the what-if parameters given with the "+" prefix (`step_parameters[s]["+name"]`):
   * the caller's explicit opt-in to add a parameter the recorded step does not have.
   */
  readonly addedParameters: Readonly<Record<string, readonly string[]>>;
  readonly codeVersions: Readonly<Record<string, string>>;
  readonly principal: string;
  /** Any fault at all: differences are then expected, not non-determinism. */
  readonly injectsFaults: boolean;
  readonly overrides: boolean;
}

/**
 * The slowest pacing a replay takes: 0.001x (a recorded second lasts 1000 s). Below it a replay of
 * a day's records would run for years; a factor of 1e-9 is a typo, not a plan.
 */
export const MIN_REPLAY_SPEED = 0.001;

/** Validates a policy; errors name the field (`policy.speed`, `policy.faults.outages[0].node_id`...). */
export function compileReplayPolicy(p: ReplayPolicy | undefined, knownNodes: ReadonlySet<string> | undefined): CompiledReplayPolicy {
  const policy = p ?? ({} as Partial<ReplayPolicy>);
  // 0 stands for "as fast as possible" inside the engine; on the wire that is an unset speed.
  const speed = policy.speed ?? 0;
  if (policy.speed !== undefined && (!Number.isFinite(speed) || speed <= 0)) {
    throw new InvalidArgumentError('policy.speed', 'must be a positive factor (0.5, 1, 2...); leave it unset for as fast as possible');
  }
  if (policy.speed !== undefined && speed < MIN_REPLAY_SPEED) {
    throw new InvalidArgumentError('policy.speed', `${speed} is slower than the slowest pacing, ${MIN_REPLAY_SPEED}x (a recorded second lasting ${1 / MIN_REPLAY_SPEED} s); leave it unset for as fast as possible`);
  }
  const probability = (v: number | undefined, field: string): number => {
    const x = v ?? 0;
    if (!Number.isFinite(x) || x < 0 || x > 1) throw new InvalidArgumentError(field, 'must be a probability between 0 and 1');
    return x;
  };
  const cpu = policy.maxCpuFraction ?? 0;
  if (!Number.isFinite(cpu) || cpu < 0 || cpu > 1) throw new InvalidArgumentError('policy.max_cpu_fraction', 'must be between 0 and 1 (0 = no cap)');
  const nodeIds = policy.targetNodeIds ?? [];
  nodeIds.forEach((id, i) => {
    if (knownNodes && !knownNodes.has(id)) throw new InvalidArgumentError(`policy.target_node_ids[${i}]`, `unknown node ${JSON.stringify(id)}`);
  });
  const faults = policy.faults;
  const outages = (faults?.outages ?? []).map((o, i) => {
    if (!o.nodeId) throw new InvalidArgumentError(`policy.faults.outages[${i}].node_id`, 'is required');
    if (knownNodes && !knownNodes.has(o.nodeId)) throw new InvalidArgumentError(`policy.faults.outages[${i}].node_id`, `unknown node ${JSON.stringify(o.nodeId)}`);
    if (o.durationMs === 0) throw new InvalidArgumentError(`policy.faults.outages[${i}].duration_ms`, 'must be > 0');
    return { nodeId: o.nodeId, startAfterMs: o.startAfterMs, durationMs: o.durationMs };
  });
  const codeVersions = { ...(policy.codeVersions ?? {}) };
  for (const [transform, version] of Object.entries(codeVersions)) {
    if (!isContentHash(version)) throw new InvalidArgumentError(`policy.code_versions[${transform}]`, 'must be sha256:<64 hex digits>');
  }
  const stepParameters: Record<string, Record<string, unknown>> = {};
  const addedParameters: Record<string, string[]> = {};
  for (const [step, params] of Object.entries(policy.stepParameters ?? {})) {
    const merged: Record<string, unknown> = {};
    for (const [key, value] of Object.entries((params ?? {}) as Record<string, unknown>)) {
      // "+name" adds a parameter the recorded step lacks; a bare name must be one it has
      // (checked against the replayed steps in StartReplay), so a typo is not replayed unchanged.
      const name = key.startsWith('+') ? key.slice(1) : key;
      if (name === '' || name.startsWith('+')) throw new InvalidArgumentError(`policy.step_parameters[${step}]`, `${JSON.stringify(key)} is not a parameter name`);
      if (Object.hasOwn(merged, name)) throw new InvalidArgumentError(`policy.step_parameters[${step}]`, `parameter ${JSON.stringify(name)} is given both with and without "+"`);
      merged[name] = value;
      if (name !== key) (addedParameters[step] ??= []).push(name);
    }
    stepParameters[step] = merged;
  }
  const gpu = policy.gpu === GpuMode.GPU_MODE_ONLY ? 'only' : policy.gpu === GpuMode.GPU_MODE_NONE ? 'none' : 'any';
  const placement: ReplayPlacement = { gpu };
  if (nodeIds.length > 0) placement.nodeIds = [...nodeIds];
  if (policy.targetLabels && Object.keys(policy.targetLabels).length > 0) placement.labels = { ...policy.targetLabels };
  if (cpu > 0) placement.maxCpuFraction = cpu;
  if (policy.maxMemoryMb) placement.maxMemoryMb = policy.maxMemoryMb;
  const compiled = {
    speed,
    placement,
    // All 64 bits, as decimal: cut to 32, seed 4294967296 drew the same faults as seed 0.
    seed: BigInt.asUintN(64, BigInt(faults?.seed || 0)).toString(),
    outages,
    linkOutageProbability: probability(faults?.linkOutageProbability, 'policy.faults.link_outage_probability'),
    corruptInputProbability: probability(faults?.corruptInputProbability, 'policy.faults.corrupt_input_probability'),
    stepFailureProbability: probability(faults?.stepFailureProbability, 'policy.faults.step_failure_probability'),
    addedLatencyMs: faults?.addedLatencyMs ?? 0,
    stepParameters,
    addedParameters,
    codeVersions,
    principal: policy.principal || 'replay',
  };
  return Object.freeze({
    ...compiled,
    injectsFaults: outages.length > 0 || compiled.linkOutageProbability > 0 || compiled.corruptInputProbability > 0 || compiled.stepFailureProbability > 0,
    overrides: Object.keys(stepParameters).length > 0 || Object.keys(codeVersions).length > 0,
  });
}

/** Checks the selector's shape; which records it names is resolved against the store later. */
export function checkSelector(selector: RecordSelector | undefined): NonNullable<RecordSelector['selector']> {
  const s = selector?.selector;
  if (!s) throw new InvalidArgumentError('selector', 'one of record_ids, window, last or run_id is required');
  switch (s.$case) {
    case 'recordIds':
      if (s.value.objectIds.length === 0) throw new InvalidArgumentError('selector.record_ids.object_ids', 'at least one record is required');
      // Named twice, a record would be replayed twice under the same replayed step ids.
      s.value.objectIds.forEach((id, i) => {
        const first = s.value.objectIds.indexOf(id);
        if (first !== i) throw new InvalidArgumentError(`selector.record_ids.object_ids[${i}]`, `record ${JSON.stringify(id)} is already selected (object_ids[${first}]); name each record once`);
      });
      break;
    case 'window':
      if (!s.value.pipeline || !s.value.source) throw new InvalidArgumentError('selector.window', 'pipeline and source are required');
      if (BigInt(s.value.toNs) <= BigInt(s.value.fromNs)) throw new InvalidArgumentError('selector.window.to_ns', 'must be after from_ns');
      break;
    case 'last':
      if (!s.value.pipeline || !s.value.source) throw new InvalidArgumentError('selector.last', 'pipeline and source are required');
      if (!(s.value.minutes > 0)) throw new InvalidArgumentError('selector.last.minutes', 'must be > 0');
      break;
    case 'runId':
      if (!s.value) throw new InvalidArgumentError('selector.run_id', 'is required');
      break;
  }
  return s;
}
