/**
 * `npm run bench -- recompute [--workflows DIR] [--max-tasks N] [--scale F] [--total-ms T]
 * [--changes K] [--concurrency C] [--only SUBSTRING]`
 *
 * Selective recompute on real workflow shapes (WfCommons WfInstances, `../shared/data/wfinstances`):
 * a real coordinator in this process (the CLI's extensions, LevelDB in a temp dir), two real
 * `retrace agent` processes, each workflow a pipeline of `wf-task` steps (see wf-recompute.ts for
 * the mapping). Per workflow:
 * 1. the first full run (ingest of every source file, through the pipeline runner);
 * 2. a full recompute: every external file changes at once, one recompute job: the baseline;
 * 3. for K external files (the ones with the smallest, median and largest downstream closure):
 *    change the file's body, recompute, and compare the steps executed with the minimal set
 *    computed here from the WfFormat DAG (exactly equal is the goal), and the time with the full
 *    recompute's; then recompute the same change again, revert it and re-apply it (nothing may
 *    execute: memo hits, or steps found up to date);
 * 4. early cutoff: a file read by entry tasks (which ignore a file's last 8 characters) changes
 *    only there; the entry tasks execute and reproduce their outputs, so the rest of the closure
 *    is cut off: steps saved, checked against the minimal set that accounts for it.
 *
 * Cost = recorded runtime (s) × scale ms; by default the scale of each workflow is chosen so its
 * tasks cost `--total-ms` (2000) in all. Workflows: the first instance of each application with
 * at most `--max-tasks` (110) tasks.
 * ratio = steps executed / minimal set, summed over every single-file change (goal: exactly 1).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { Coordinator } from '../coordinator/coordinator.js';
import { coordinatorExtensions, type CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { startLocalAgents, stopLocalAgents, type LocalAgent } from '../scripts/cli/local-agents.js';
import { finish } from './report.js';
import { listWorkflowFiles, loadWorkflow, type Workflow } from './wf-instances.js';
import {
  closureOf,
  connect,
  fileContent,
  flag,
  median,
  minimalSet,
  modelOf,
  notifyFiles,
  publishWfTask,
  recomputeAndWait,
  setUpWorkflow,
  tasksWithOutcome,
  type Clients,
  type JobResult,
  type WfModel,
} from './wf-recompute.js';

interface ChangeRow {
  workflow: string;
  file: string;
  kind: 'body' | 'tail';
  affected: number;
  minimal: number;
  executed: number;
  cached: number;
  cutoff: number;
  exact: boolean;
  ms: number;
  fullMs: number;
  /** The same change recomputed again: of the tasks that executed the first time, those that did not execute again. */
  repeatHits?: number;
  /** ... of which memo hits (the rest were found up to date). */
  repeatCached?: number;
  /** Tasks executed by the repeat, the revert and the re-apply (goal 0). */
  repeatExecuted: number;
  /** Revert and re-apply: of the tasks that executed the first time (counted twice), those that did not execute. */
  revertHits?: number;
  revertTasks?: number;
  repeatTasks?: number;
  repeatMs?: number;
}

/** The first instance (sorted path) of each application directory, with at most maxTasks tasks. */
function pickWorkflows(dir: string, maxTasks: number, only: string): Workflow[] {
  const byApp = new Map<string, Workflow>();
  for (const file of listWorkflowFiles(dir)) {
    if (only && !file.includes(only)) continue;
    const app = `${relative(dir, dirname(file))}/${/^[a-z]+/.exec(file.split('/').pop() ?? '')?.[0] ?? ''}`;
    if (byApp.has(app)) continue;
    const wf = loadWorkflow(file);
    if (wf.tasks.length <= maxTasks) byApp.set(app, wf);
  }
  return [...byApp.values()];
}

/** Up to k files: smallest, median and largest downstream closure first, then evenly between. */
function sampleFiles(m: WfModel, k: number, usable: (f: string) => boolean): string[] {
  const files = [...m.sourceOf.keys()].filter(usable).map((f) => ({ f, n: closureOf(m, m.readers.get(f) ?? []).size }));
  files.sort((a, b) => a.n - b.n || (a.f < b.f ? -1 : 1));
  if (files.length <= k) return files.map((x) => x.f);
  const picks = new Set<number>([0, files.length - 1, Math.floor((files.length - 1) / 2)]);
  for (let i = 1; picks.size < k; i++) picks.add(Math.round((i * (files.length - 1)) / k));
  return [...picks].sort((a, b) => a - b).slice(0, k).map((i) => (files[i] as { f: string }).f);
}

function setsEqual(a: ReadonlySet<string>, b: ReadonlySet<string>): boolean {
  return a.size === b.size && [...a].every((x) => b.has(x));
}

function describeDiff(m: WfModel, got: ReadonlySet<string>, want: ReadonlySet<string>): string {
  const extra = [...got].filter((x) => !want.has(x)).map((t) => m.stepOf.get(t) ?? t);
  const missing = [...want].filter((x) => !got.has(x)).map((t) => m.stepOf.get(t) ?? t);
  return `extra [${extra.slice(0, 8).join(' ')}] missing [${missing.slice(0, 8).join(' ')}]`;
}

function failedTasks(r: JobResult): string {
  return r.job.tasks.filter((t) => t.error).map((t) => `${t.label}: ${t.error}`).slice(0, 3).join('; ');
}

async function runWorkflow(c: Clients, dir: string, wf: Workflow, index: number, codeVersion: string, o: { scale: number; totalMs: number; changes: number; concurrency: number }, rows: ChangeRow[], log: (s: string) => void): Promise<Record<string, unknown>> {
  const name = relative(dir, wf.file);
  const totalRuntime = wf.tasks.reduce((s, t) => s + t.runtime, 0);
  const scale = o.scale > 0 ? o.scale : o.totalMs / totalRuntime;
  const m = modelOf(wf, `wf${index}`, scale);
  const costTotal = [...m.costMs.values()].reduce((a, b) => a + b, 0);
  const rev = new Map([...m.sourceOf.keys()].map((f) => [f, 0]));
  const tail = new Map([...m.sourceOf.keys()].map((f) => [f, 0]));
  const content = (f: string): Buffer => fileContent(f, rev.get(f) ?? 0, tail.get(f) ?? 0);

  const first = await setUpWorkflow(c, m, wf, codeVersion);
  log(`${name}: ${wf.tasks.length} tasks, ${m.sourceOf.size - m.seeds.size} external files${m.seeds.size ? ` (+${m.seeds.size} seeds of input-less tasks)` : ''}, cost ${costTotal} ms (scale ${scale.toPrecision(3)} ms per recorded s); first run ${first.shardsRun} shards in ${Math.round(first.ms)} ms`);

  // Full recompute: every source changes (seeds of input-less tasks too): every task runs.
  for (const f of m.sourceOf.keys()) rev.set(f, 1);
  const fullIds = await notifyFiles(c, m, [...m.sourceOf.keys()].map((f) => [f, content(f)]));
  const full = await recomputeAndWait(c, fullIds, o.concurrency);
  if (full.job.state !== 3) throw new Error(`${name}: full recompute ${full.job.jobId} ended ${full.job.state}: ${failedTasks(full)}`);
  const fullWant = closureOf(m, [...m.readers.values()].flat());
  const fullGot = tasksWithOutcome(m, full, 'executed');
  log(`  full recompute: ${fullGot.size} executed (all downstream of the sources: ${fullWant.size}) in ${Math.round(full.ms)} ms${setsEqual(fullGot, fullWant) ? '' : `; MISMATCH ${describeDiff(m, fullGot, fullWant)}`}`);

  const one = async (file: string, kind: 'body' | 'tail'): Promise<ChangeRow> => {
    if (kind === 'body') rev.set(file, (rev.get(file) ?? 0) + 1);
    else tail.set(file, (tail.get(file) ?? 0) + 1);
    const ids = await notifyFiles(c, m, [[file, content(file)]]);
    const r = await recomputeAndWait(c, ids, o.concurrency);
    if (r.job.state !== 3) throw new Error(`${name}: recompute ${r.job.jobId} of ${file} ended ${r.job.state}: ${failedTasks(r)}`);
    const want = minimalSet(m, file, kind);
    const executed = tasksWithOutcome(m, r, 'executed');
    const cutoff = tasksWithOutcome(m, r, 'cutoff');
    const exact = setsEqual(executed, want.executed) && r.outcomes.size === want.affected.size;
    const row: ChangeRow = {
      workflow: name,
      file,
      kind,
      affected: want.affected.size,
      minimal: want.executed.size,
      executed: executed.size,
      cached: tasksWithOutcome(m, r, 'cached').size,
      cutoff: cutoff.size,
      exact,
      ms: r.ms,
      fullMs: full.ms,
      repeatExecuted: 0,
    };
    // The same change again: nothing may execute. What executed the first time comes from the memo
    // (cached), or is found up to date (cutoff: its latest execution already used the new inputs,
    // as after a tail change, whose reproduced outputs lead impact to the new executions).
    const again = await recomputeAndWait(c, ids, o.concurrency);
    const cachedAgain = tasksWithOutcome(m, again, 'cached');
    const cutoffAgain = tasksWithOutcome(m, again, 'cutoff');
    row.repeatHits = [...executed].filter((t) => cachedAgain.has(t) || cutoffAgain.has(t)).length;
    row.repeatCached = [...executed].filter((t) => cachedAgain.has(t)).length;
    row.repeatExecuted += tasksWithOutcome(m, again, 'executed').size;
    row.repeatTasks = executed.size;
    row.repeatMs = again.ms;
    // Revert, then re-apply: both states were computed before, so nothing may execute either.
    for (const step of [-1, 1]) {
      if (kind === 'body') rev.set(file, (rev.get(file) ?? 0) + step);
      else tail.set(file, (tail.get(file) ?? 0) + step);
      const back = await recomputeAndWait(c, await notifyFiles(c, m, [[file, content(file)]]), o.concurrency);
      const notRun = [...executed].filter((t) => !tasksWithOutcome(m, back, 'executed').has(t));
      row.revertHits = (row.revertHits ?? 0) + notRun.length;
      row.revertTasks = (row.revertTasks ?? 0) + executed.size;
      row.repeatExecuted += tasksWithOutcome(m, back, 'executed').size;
    }
    log(
      `  ${kind === 'body' ? 'change' : 'tail  '} ${m.sourceOf.get(file)} (${file.slice(0, 40)}): ${row.executed}/${row.minimal} minimal executed` +
        `${kind === 'tail' ? `, ${row.cutoff} cut off of ${row.affected} downstream` : ''}, ${Math.round(r.ms)} ms (${((100 * r.ms) / full.ms).toFixed(0)}% of full); ` +
        `repeat ${row.repeatHits}/${row.repeatTasks} not executed (${row.repeatCached} cached) in ${Math.round(again.ms)} ms, revert + re-apply ${row.revertHits}/${row.revertTasks}${exact ? '' : `; MISMATCH ${describeDiff(m, executed, want.executed)}`}`,
    );
    rows.push(row);
    return row;
  };

  for (const f of sampleFiles(m, o.changes, (f) => !m.seeds.has(f))) await one(f, 'body');
  // Early cutoff: a file some entry task reads whose tail change leaves work to save.
  const cutoffFile = sampleFiles(m, 1_000_000, (f) => {
    if (m.seeds.has(f)) return false;
    const mm = minimalSet(m, f, 'tail');
    return mm.affected.size > mm.executed.size;
  }).pop();
  if (cutoffFile) await one(cutoffFile, 'tail');
  else log('  early cutoff: no external file is read only by entry tasks with work downstream; skipped');
  return { workflow: name, tasks: wf.tasks.length, files: m.sourceOf.size - m.seeds.size, seeds: m.seeds.size, costMs: costTotal, firstRunMs: Math.round(first.ms), fullMs: Math.round(full.ms), fullExecuted: fullGot.size };
}

export async function main(argv: string[]): Promise<void> {
  const dir = resolve(flag(argv, 'workflows', '../shared/data/wfinstances'));
  const maxTasks = Number(flag(argv, 'max-tasks', '110'));
  const o = { scale: Number(flag(argv, 'scale', '0')), totalMs: Number(flag(argv, 'total-ms', '2000')), changes: Number(flag(argv, 'changes', '3')), concurrency: Number(flag(argv, 'concurrency', '4')) };
  const workflows = pickWorkflows(dir, maxTasks, flag(argv, 'only', ''));
  if (workflows.length === 0) throw new Error(`no workflow with at most ${maxTasks} tasks under ${dir}`);
  const log = (s: string): void => console.log(s);
  log(`recompute: ${workflows.length} workflows from ${dir} (first instance per application, <= ${maxTasks} tasks), ${o.changes} single-file changes each + one early-cutoff change; job concurrency ${o.concurrency}; 2 local agents`);

  const data = mkdtempSync(join(tmpdir(), 'retrace-bench-recompute-'));
  const shared: CoordinatorServices = {};
  const coordinator = new Coordinator({ dataDir: join(data, 'coordinator'), grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: () => {} }, coordinatorExtensions(shared));
  let agents: LocalAgent[] = [];
  let c: Clients | undefined;
  const rows: ChangeRow[] = [];
  const perWorkflow: Record<string, unknown>[] = [];
  const t0 = performance.now();
  try {
    const addresses = await coordinator.start();
    agents = await startLocalAgents(addresses.grpc, coordinator.authToken, data, [
      { name: 'a1', reportInterval: '500ms' },
      { name: 'a2', reportInterval: '500ms' },
    ]);
    c = connect(addresses.grpc, coordinator.authToken);
    const codeVersion = await publishWfTask(c);
    for (const [i, wf] of workflows.entries()) perWorkflow.push(await runWorkflow(c, dir, wf, i + 1, codeVersion, o, rows, log));
  } finally {
    c?.close();
    await stopLocalAgents(agents);
    await coordinator.stop();
    rmSync(data, { recursive: true, force: true });
  }

  const executed = rows.reduce((s, r) => s + r.executed, 0);
  const minimal = rows.reduce((s, r) => s + r.minimal, 0);
  const body = rows.filter((r) => r.kind === 'body');
  const tails = rows.filter((r) => r.kind === 'tail');
  const hits = rows.reduce((s, r) => s + (r.repeatHits ?? 0), 0);
  const repeated = rows.reduce((s, r) => s + (r.repeatTasks ?? 0), 0);
  const timeRatios = body.map((r) => r.ms / r.fullMs);
  const stepRatios = body.map((r) => r.executed / Math.max(1, fullExecutedOf(perWorkflow, r.workflow)));
  const summary = {
    bench: 'recompute',
    ratio: minimal === 0 ? Number.NaN : executed / minimal,
    goal: '1 (exactly the minimal set)',
    changes: rows.length,
    exactSets: rows.filter((r) => r.exact).length,
    stepsExecuted: executed,
    stepsMinimal: minimal,
    cacheHitRatioOnRepeat: repeated === 0 ? Number.NaN : hits / repeated,
    cacheHitGoal: 1,
    repeatMemoHits: rows.reduce((s, r) => s + (r.repeatCached ?? 0), 0),
    repeatUpToDate: hits - rows.reduce((s, r) => s + (r.repeatCached ?? 0), 0),
    repeatExecuted: rows.reduce((s, r) => s + r.repeatExecuted, 0),
    revertReapplyHitRatio: rows.reduce((s, r) => s + (r.revertHits ?? 0), 0) / Math.max(1, rows.reduce((s, r) => s + (r.revertTasks ?? 0), 0)),
    medianTimeVsFull: median(timeRatios),
    medianStepsVsFull: median(stepRatios),
    medianChangeMs: Math.round(median(body.map((r) => r.ms))),
    medianFullMs: Math.round(median(perWorkflow.map((w) => w.fullMs as number))),
    medianRepeatMs: Math.round(median(rows.map((r) => r.repeatMs ?? 0))),
    cutoff: {
      changes: tails.length,
      downstreamSteps: tails.reduce((s, r) => s + r.affected, 0),
      executed: tails.reduce((s, r) => s + r.executed, 0),
      cutOff: tails.reduce((s, r) => s + r.cutoff, 0),
      medianMs: Math.round(median(tails.map((r) => r.ms))),
    },
    workflows: perWorkflow,
    wallS: Math.round((performance.now() - t0) / 1000),
    note: 'shared 2-core machine: times are noisy; step counts and cache hits are exact',
  };
  log(
    `\nsteps executed ${executed} / minimal ${minimal} (${summary.exactSets}/${rows.length} changes exactly the minimal set); not executed again on repeat ${hits}/${repeated} (revert + re-apply ${Math.round(100 * summary.revertReapplyHitRatio)}%, executed by repeats ${summary.repeatExecuted}); ` +
      `single-file change vs full recompute: median ${(100 * summary.medianTimeVsFull).toFixed(0)}% of the time for ${(100 * summary.medianStepsVsFull).toFixed(0)}% of the steps; ` +
      `early cutoff saved ${summary.cutoff.cutOff} of ${summary.cutoff.downstreamSteps} downstream steps`,
  );
  finish(summary);
}

function fullExecutedOf(perWorkflow: Record<string, unknown>[], workflow: string): number {
  return (perWorkflow.find((w) => w.workflow === workflow)?.fullExecuted as number | undefined) ?? 1;
}
