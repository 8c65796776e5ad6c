/**
 * Reads WfCommons WfInstances (WfFormat 1.5 JSON, `../shared/data/wfinstances`): the real
 * workflow shapes the placement, recompute and resume benchmarks run. Each task keeps its parents,
 * input and output files and the measured runtime, cores and memory.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

export interface WfTask {
  id: string;
  name: string;
  parents: string[];
  inputFiles: string[];
  outputFiles: string[];
  /** Seconds, as measured (at least 1 ms). */
  runtime: number;
  cores: number;
  memMb: number;
}

export interface Workflow {
  file: string;
  tasks: WfTask[];
  /** File id → size in bytes (0 when the trace has none). */
  fileSizes: Map<string, number>;
}

/** Every `.json` under `dir`, sorted. */
export function listWorkflowFiles(dir: string): string[] {
  const walk = (d: string): string[] =>
    readdirSync(d).flatMap((n) => {
      const p = join(d, n);
      return statSync(p).isDirectory() ? walk(p) : n.endsWith('.json') ? [p] : [];
    });
  return walk(dir).sort();
}

interface RawFile {
  workflow: {
    specification: {
      tasks: { id: string; name?: string; parents?: string[]; inputFiles?: string[]; outputFiles?: string[] }[];
      files?: { id: string; sizeInBytes?: number }[];
    };
    execution: { tasks: { id: string; runtimeInSeconds?: number; coreCount?: number; avgCPU?: number; memoryInBytes?: number }[] };
  };
}

/** Cores are clamped to [1, maxCores], memory to [1 MiB, maxMemMb]. */
export function loadWorkflow(file: string, limits: { maxCores?: number; maxMemMb?: number } = {}): Workflow {
  const wf = JSON.parse(readFileSync(file, 'utf8')) as RawFile;
  const exec = new Map(wf.workflow.execution.tasks.map((t) => [t.id, t]));
  const maxCores = limits.maxCores ?? 16;
  const maxMemMb = limits.maxMemMb ?? 8 * 1024;
  const tasks = wf.workflow.specification.tasks.map((t): WfTask => {
    const e = exec.get(t.id);
    return {
      id: t.id,
      name: t.name ?? t.id,
      parents: t.parents ?? [],
      inputFiles: t.inputFiles ?? [],
      outputFiles: t.outputFiles ?? [],
      runtime: Math.max(0.001, e?.runtimeInSeconds ?? 1),
      cores: Math.min(maxCores, Math.max(1, Math.round(e?.coreCount ?? (e?.avgCPU ?? 100) / 100))),
      memMb: Math.min(maxMemMb, Math.max(1, Math.round((e?.memoryInBytes ?? 0) / 2 ** 20))),
    };
  });
  const fileSizes = new Map((wf.workflow.specification.files ?? []).map((f) => [f.id, f.sizeInBytes ?? 0]));
  return { file, tasks, fileSizes };
}
