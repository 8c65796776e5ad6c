/**
 * What the `recompute` and `resume` benchmarks share: a WfFormat workflow expressed as a Retrace
 * pipeline of `wf-task` steps, the minimal recompute sets computed from the WfFormat DAG alone
 * (never from what the coordinator says), and the gRPC calls that drive a coordinator through a
 * change and a recompute job.
 *
 * Mapping (one pipeline per workflow, every record under the key `wf`):
 * - each external input file (read by a task, produced by none) is a pipeline source `fNNNN`
 *   holding one record: the file as an object;
 * - a task with no inputs at all reads a seed source of its own (a pseudo file `seed:<task id>`),
 *   changed only by the full recompute (it is no file of the workflow);
 * - each task is a step `tNNNN` whose inputs are its external files' sources and the steps of the
 *   tasks it depends on (producers of its input files, and its WfFormat parents); its output
 *   record stands for all the files it writes (wf-task's digest depends on every input, so they
 *   all change together: bundling them changes no minimal set);
 * - cost = recorded runtime × scale, burnt as CPU by wf-task;
 * - entry tasks (whose inputs are all external files) ignore the last SUFFIX_LEN characters of
 *   their inputs (`ignoreInputSuffix`): a change of a file's suffix only leaves their outputs
 *   unchanged, the early-cutoff scenario.
 */
import { createChannel, createClientFactory, Metadata, type Channel, type Client, type CompatServiceDefinition } from 'nice-grpc';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { JobServiceDefinition, JobState, TaskState, type Job } from '../common/gen/retrace/v1/job.js';
import { PipelineServiceDefinition, type Pipeline } from '../common/gen/retrace/v1/pipeline.js';
import { ChangePolicy, RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import { bundleTransform } from '../scripts/cli/publish-command.js';
import type { Workflow } from './wf-instances.js';

export const WF_TASK_FILE = new URL('../scripts/examples/transforms/wf-task.ts', import.meta.url).pathname;
export const RECORD_KEY = 'wf';
export const SUFFIX_LEN = 8;

/** One workflow as a pipeline, with the DAG the minimal sets are computed on. */
export interface WfModel {
  pipeline: string;
  /** Task id → step name, and back. */
  stepOf: Map<string, string>;
  taskOf: Map<string, string>;
  /** External file id → source name. */
  sourceOf: Map<string, string>;
  /** Task id → ids of the tasks it depends on. */
  deps: Map<string, string[]>;
  /** Task id → ids of the tasks that depend on it. */
  dependents: Map<string, string[]>;
  /** External file id → ids of the tasks that read it. */
  readers: Map<string, string[]>;
  /** Tasks whose inputs are all external files (they ignore the suffix of their inputs). */
  entry: Set<string>;
  /** Task id → cost in ms. */
  costMs: Map<string, number>;
  /** The pseudo files of tasks without inputs (in sourceOf and readers too). */
  seeds: Set<string>;
}

function pad(i: number): string {
  return String(i).padStart(4, '0');
}

/** Builds the model; `scale` multiplies recorded runtimes in seconds into ms of cost (≥ 1 ms). */
export function modelOf(wf: Workflow, pipeline: string, scale: number): WfModel {
  const producer = new Map<string, string>();
  for (const t of wf.tasks) for (const f of t.outputFiles) producer.set(f, t.id);
  const stepOf = new Map<string, string>();
  const taskOf = new Map<string, string>();
  wf.tasks.forEach((t, i) => {
    stepOf.set(t.id, `t${pad(i + 1)}`);
    taskOf.set(`t${pad(i + 1)}`, t.id);
  });
  const ids = new Set(wf.tasks.map((t) => t.id));
  const sourceOf = new Map<string, string>();
  const readers = new Map<string, string[]>();
  const deps = new Map<string, string[]>();
  const dependents = new Map<string, string[]>(wf.tasks.map((t) => [t.id, []]));
  const entry = new Set<string>();
  const seeds = new Set<string>();
  const costMs = new Map<string, number>();
  for (const t of wf.tasks) {
    const d = new Set<string>();
    for (const p of t.parents) if (ids.has(p) && p !== t.id) d.add(p);
    for (const f of t.inputFiles) {
      const p = producer.get(f);
      if (p !== undefined) {
        if (p !== t.id) d.add(p);
      } else {
        if (!sourceOf.has(f)) sourceOf.set(f, `f${pad(sourceOf.size + 1)}`);
        const r = readers.get(f) ?? [];
        if (!r.includes(t.id)) r.push(t.id);
        readers.set(f, r);
      }
    }
    deps.set(t.id, [...d]);
    for (const p of d) dependents.get(p)?.push(t.id);
    if (d.size === 0 && !t.inputFiles.some((f) => !producer.has(f))) {
      const seed = `seed:${t.id}`;
      seeds.add(seed);
      sourceOf.set(seed, `f${pad(sourceOf.size + 1)}`);
      readers.set(seed, [t.id]);
    }
    if (d.size === 0) entry.add(t.id);
    costMs.set(t.id, Math.max(1, Math.round(t.runtime * scale)));
  }
  return { pipeline, stepOf, taskOf, sourceOf, deps, dependents, readers, entry, costMs, seeds };
}

/** The pipeline definition of a model, every step running `wf-task` at `codeVersion`. */
export function pipelineOf(m: WfModel, wf: Workflow, codeVersion: string): Pipeline {
  const sources = [...m.sourceOf.values()].map((name) => ({ name, mediaType: 'text/plain', description: '' }));
  const steps = wf.tasks.map((t) => {
    const inputs = new Set<string>();
    for (const f of t.inputFiles) {
      const s = m.sourceOf.get(f);
      if (s) inputs.add(s);
    }
    for (const d of m.deps.get(t.id) ?? []) inputs.add(m.stepOf.get(d) as string);
    const seed = m.sourceOf.get(`seed:${t.id}`);
    if (seed) inputs.add(seed);
    // `task` makes each task its own computation: without it, tasks with the same inputs (fan-outs
    // that read one bundled parent output) would be the same computation and share memo entries.
    const parameters: Record<string, unknown> = { task: t.id, costMs: m.costMs.get(t.id) ?? 1 };
    if (m.entry.has(t.id)) parameters.ignoreInputSuffix = SUFFIX_LEN;
    return { name: m.stepOf.get(t.id) as string, transform: 'wf-task', codeVersion, parameters, requirements: undefined, inputs: [...inputs], output: '', timeoutMs: 0 };
  });
  // Steps must come after their inputs (topological order of the DAG).
  const order = topo(m, wf.tasks.map((t) => t.id));
  const byName = new Map(steps.map((s) => [s.name, s]));
  return { name: m.pipeline, sources, steps: order.map((id) => byName.get(m.stepOf.get(id) as string)) } as Pipeline;
}

function topo(m: WfModel, ids: readonly string[]): string[] {
  const indeg = new Map(ids.map((id) => [id, (m.deps.get(id) ?? []).length]));
  const ready = ids.filter((id) => indeg.get(id) === 0);
  const out: string[] = [];
  while (ready.length > 0) {
    const id = ready.shift() as string;
    out.push(id);
    for (const d of m.dependents.get(id) ?? []) {
      const n = (indeg.get(d) as number) - 1;
      indeg.set(d, n);
      if (n === 0) ready.push(d);
    }
  }
  if (out.length !== ids.length) throw new Error(`workflow ${m.pipeline} has a dependency cycle`);
  return out;
}

/**
 * A source file's bytes: the body (which `rev` changes) and a SUFFIX_LEN-character tail (which
 * `tail` changes; entry tasks do not look at it).
 */
export function fileContent(fileId: string, rev: number, tail = 0): Buffer {
  return Buffer.from(`${fileId}\nrev=${rev}\n${`t${tail}`.padStart(SUFFIX_LEN, '_')}`);
}

/** Every task downstream of the tasks in `start` (included). */
export function closureOf(m: WfModel, start: Iterable<string>): Set<string> {
  const out = new Set<string>();
  const stack = [...start];
  while (stack.length > 0) {
    const id = stack.pop() as string;
    if (out.has(id)) continue;
    out.add(id);
    stack.push(...(m.dependents.get(id) ?? []));
  }
  return out;
}

/**
 * The minimal set of steps a recompute must execute after `file` changed:
 * - body change: every reader and everything downstream (every wf-task output depends on all of
 *   its inputs' content, so each of them changes);
 * - tail change: every reader executes (its input changed), but an entry task's output cannot
 *   change (it ignores the tail), so only the non-entry readers' downstream executes; the rest of
 *   the closure is cut off.
 */
export function minimalSet(m: WfModel, file: string, kind: 'body' | 'tail'): { affected: Set<string>; executed: Set<string> } {
  const readers = m.readers.get(file) ?? [];
  const affected = closureOf(m, readers);
  if (kind === 'body') return { affected, executed: affected };
  const changing = readers.filter((t) => !m.entry.has(t));
  const executed = closureOf(m, changing);
  for (const r of readers) executed.add(r);
  return { affected, executed };
}

/** gRPC clients of one coordinator; close() releases the channel. */
export interface Clients {
  code: Client<typeof CodeServiceDefinition>;
  pipelines: Client<typeof PipelineServiceDefinition>;
  recompute: Client<typeof RecomputeServiceDefinition>;
  jobs: Client<typeof JobServiceDefinition>;
  close(): void;
}

export function connect(address: string, token: string): Clients {
  const channel: Channel = createChannel(address);
  const factory = createClientFactory();
  const metadata = Metadata({ authorization: `Bearer ${token}` });
  const make = <S extends CompatServiceDefinition>(d: S): Client<S> => factory.create(d, channel, { '*': { metadata } }) as Client<S>;
  return {
    code: make(CodeServiceDefinition),
    pipelines: make(PipelineServiceDefinition),
    recompute: make(RecomputeServiceDefinition),
    jobs: make(JobServiceDefinition),
    close: () => channel.close(),
  };
}

/** Publishes wf-task; resolves with its code version. */
export async function publishWfTask(c: Clients): Promise<string> {
  const bundle = await bundleTransform(WF_TASK_FILE);
  const r = await c.code.publishCode({ bundle: Buffer.from(bundle.bytes), manifest: { transform: 'wf-task', sourceFile: 'wf-task.ts', bundler: bundle.bundler } });
  return r.code?.codeVersion ?? '';
}

/**
 * Applies the workflow's pipeline (manual change policy: the bench starts each recompute itself)
 * and ingests every source once (rev 0): the first full run, through the pipeline runner.
 * Resolves with the shards run and the wall time.
 */
export async function setUpWorkflow(c: Clients, m: WfModel, wf: Workflow, codeVersion: string): Promise<{ shardsRun: number; ms: number }> {
  await c.pipelines.applyPipeline({ pipeline: pipelineOf(m, wf, codeVersion) });
  await c.recompute.setChangePolicy({ pipeline: m.pipeline, source: '', policy: ChangePolicy.CHANGE_POLICY_MANUAL });
  const t0 = performance.now();
  let shardsRun = 0;
  for (const [file, source] of m.sourceOf) {
    const payload = fileContent(file, 0);
    const r = await c.pipelines.ingest(
      (async function* () {
        yield { pipeline: m.pipeline, source, records: [{ key: RECORD_KEY, payload, eventTimeNs: '0', mediaType: 'text/plain' }] };
      })(),
    );
    if (Number(r.shardsFailed) > 0) throw new Error(`ingest ${m.pipeline}/${source}: ${r.firstError}`);
    shardsRun += Number(r.shardsRun);
  }
  return { shardsRun, ms: performance.now() - t0 };
}

/** The object id of a source file's record. */
export function fileObjectId(m: WfModel, file: string): string {
  return `record:${m.pipeline}/${m.sourceOf.get(file) as string}:${RECORD_KEY}`;
}

/** Reports new contents of files (NotifyChange) and resolves with their change ids. */
export async function notifyFiles(c: Clients, m: WfModel, contents: readonly [string, Buffer][]): Promise<string[]> {
  const ids: string[] = [];
  for (const [file, payload] of contents) {
    const r = await c.recompute.notifyChange({ objectId: fileObjectId(m, file), contentHash: '', payload, mediaType: 'text/plain', noticedBy: 'bench' });
    if (r.unchanged || !r.change) throw new Error(`${file}: NotifyChange saw no change`);
    ids.push(r.change.changeId);
  }
  return ids;
}

/** A finished job with its per-task outcome. */
export interface JobResult {
  job: Job;
  /** Task label → outcome (executed, cached, cutoff) or its state when it did not succeed. */
  outcomes: Map<string, string>;
  /** Created → ended, from the job's own timestamps, ms. */
  ms: number;
}

/** Starts a recompute of the changes and waits for the job to end. */
export async function recomputeAndWait(c: Clients, changeIds: string[], concurrency: number): Promise<JobResult> {
  const r = await c.recompute.recompute({ changeIds, objectIds: [], newContents: [], policy: { maxAttempts: 3, concurrency, targetNodeIds: [], targetLabels: {}, dryRun: false } });
  return waitForJob(c, r.jobId);
}

export async function waitForJob(c: Clients, jobId: string, timeoutMs = 600_000): Promise<JobResult> {
  const deadline = Date.now() + timeoutMs;
  const ended = new Set([JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED]);
  for (;;) {
    const job = (await c.jobs.getJob({ jobId })).job;
    if (job && ended.has(job.state)) {
      const outcomes = new Map(job.tasks.map((t) => [t.label, t.state === TaskState.TASK_STATE_SUCCEEDED ? t.outcome : TaskState[t.state]]));
      return { job, outcomes, ms: (Number(job.endedAtNs) - Number(job.createdAtNs)) / 1e6 };
    }
    if (Date.now() > deadline) throw new Error(`job ${jobId} did not end within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The step name in a task label (`<pipeline>/<step> key=wf`). */
export function stepOfLabel(label: string): string {
  const m = /^[^/]+\/(\S+) key=/.exec(label);
  return m ? (m[1] as string) : label;
}

/** Task ids (WfFormat) of the tasks with the given outcome. */
export function tasksWithOutcome(m: WfModel, r: JobResult, outcome: string): Set<string> {
  const out = new Set<string>();
  for (const [label, o] of r.outcomes) if (o === outcome) out.add(m.taskOf.get(stepOfLabel(label)) ?? label);
  return out;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export function flag(argv: readonly string[], name: string, def: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? (argv[i + 1] as string) : def;
}
