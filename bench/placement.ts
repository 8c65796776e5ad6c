/**
 * `npm run bench -- placement [--workflows DIR] [--seed 1]`: real workflow shapes (WfCommons
 * WfInstances, WfFormat JSON: tasks with parents and measured runtimes, cores and memory) run in
 * a discrete-event simulation on 4 nodes of different declared capacities (16/8/4/2 cores,
 * 64/32/16/8 GiB). Three policies: the real `allocate()` (a global ready queue; a task is placed
 * when a node has room, on the node with the most headroom), round-robin and random (a task is
 * bound to a node that could ever fit it as soon as it is ready and waits in that node's FIFO).
 * ratio = round-robin makespan / allocator makespan (geometric mean over the workflows); goal > 1.
 */
import { relative, resolve } from 'node:path';
import { allocate, type NodeLoad, type NodeView } from '../coordinator/scheduler/allocator.js';
import { finish } from './report.js';
import { listWorkflowFiles, loadWorkflow } from './wf-instances.js';

interface Task { id: string; parents: string[]; runtime: number; cpu: number; memMb: number }
interface SimNode { view: NodeView; freeCpu: number; freeMem: number; fifo: Task[] }

function flag(argv: string[], name: string, def: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? (argv[i + 1] as string) : def;
}

const NODE_SPECS = [
  { id: 'n16', cores: 16, memGiB: 64 },
  { id: 'n8', cores: 8, memGiB: 32 },
  { id: 'n4', cores: 4, memGiB: 16 },
  { id: 'n2', cores: 2, memGiB: 8 },
];

function loadTasks(file: string): Task[] {
  const maxCores = Math.max(...NODE_SPECS.map((n) => n.cores));
  return loadWorkflow(file, { maxCores }).tasks.map((t) => ({ id: t.id, parents: t.parents, runtime: t.runtime, cpu: t.cores, memMb: t.memMb }));
}

function makeNodes(): SimNode[] {
  return NODE_SPECS.map((s) => ({
    view: {
      nodeId: s.id, state: 'READY', labels: {}, cpuCores: s.cores, memoryTotalMb: s.memGiB * 1024, memoryAvailableMb: s.memGiB * 1024,
      cpuFreeCores: s.cores, gpuCount: 0, cpuFlags: new Set(), bandwidthBytesPerSec: undefined, codeVersions: new Set(), cost: 0,
    },
    freeCpu: s.cores,
    freeMem: s.memGiB * 1024,
    fifo: [],
  }));
}

type Policy = 'allocator' | 'round-robin' | 'random';

function simulate(tasks: Task[], policy: Policy, seed: number): number {
  const nodes = makeNodes();
  const byId = new Map(tasks.map((t) => [t.id, t]));
  const waitingParents = new Map(tasks.map((t) => [t.id, t.parents.filter((p) => byId.has(p)).length]));
  const children = new Map<string, string[]>();
  for (const t of tasks) for (const p of t.parents) if (byId.has(p)) (children.get(p) ?? children.set(p, []).get(p))?.push(t.id);
  const load = new Map<string, NodeLoad>(nodes.map((n) => [n.view.nodeId, { inFlight: 0, reservedCpu: 0, reservedMemMb: 0 }]));
  const running: { end: number; task: Task; node: SimNode }[] = [];
  let ready: Task[] = tasks.filter((t) => waitingParents.get(t.id) === 0);
  let rr = 0;
  let rand = seed >>> 0 || 1;
  const random = (): number => ((rand = (Math.imul(rand, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  let now = 0;
  let done = 0;

  const fitsEver = (n: SimNode, t: Task): boolean => n.view.cpuCores >= t.cpu && n.view.memoryTotalMb >= t.memMb;
  function start(t: Task, n: SimNode): void {
    n.freeCpu -= t.cpu;
    n.freeMem -= t.memMb;
    const l = load.get(n.view.nodeId) as NodeLoad;
    l.inFlight++;
    l.reservedCpu += t.cpu;
    l.reservedMemMb += t.memMb;
    running.push({ end: now + t.runtime, task: t, node: n });
  }
  function dispatch(): void {
    if (policy === 'allocator') {
      const views = nodes.map((n) => n.view);
      const left: Task[] = [];
      for (const t of ready) {
        const res = allocate(views, { requirements: { cpu: t.cpu, memoryMb: t.memMb } }, load, { maxInFlight: 1_000_000 });
        if ('nodeId' in res) start(t, nodes.find((n) => n.view.nodeId === res.nodeId) as SimNode);
        else left.push(t);
      }
      ready = left;
    } else {
      for (const t of ready) {
        const fit = nodes.filter((n) => fitsEver(n, t));
        const n = policy === 'random' ? fit[Math.floor(random() * fit.length)] : fit[rr++ % fit.length];
        n?.fifo.push(t);
      }
      ready = [];
      for (const n of nodes) {
        while (n.fifo[0] && n.fifo[0].cpu <= n.freeCpu && n.fifo[0].memMb <= n.freeMem) start(n.fifo.shift() as Task, n);
      }
    }
  }
  dispatch();
  while (running.length > 0) {
    let i = 0;
    for (let j = 1; j < running.length; j++) if ((running[j]?.end ?? 0) < (running[i]?.end ?? 0)) i = j;
    const ev = running.splice(i, 1)[0] as (typeof running)[number];
    now = ev.end;
    done++;
    ev.node.freeCpu += ev.task.cpu;
    ev.node.freeMem += ev.task.memMb;
    const l = load.get(ev.node.view.nodeId) as NodeLoad;
    l.inFlight--;
    l.reservedCpu -= ev.task.cpu;
    l.reservedMemMb -= ev.task.memMb;
    for (const c of children.get(ev.task.id) ?? []) {
      const left = (waitingParents.get(c) ?? 1) - 1;
      waitingParents.set(c, left);
      if (left === 0) ready.push(byId.get(c) as Task);
    }
    dispatch();
  }
  if (done !== tasks.length) throw new Error(`simulation stalled: ${done}/${tasks.length} tasks ran`);
  return now;
}

export async function main(argv: string[]): Promise<void> {
  const dir = resolve(flag(argv, 'workflows', '../shared/data/wfinstances'));
  const seed = Number(flag(argv, 'seed', '1'));
  const files = listWorkflowFiles(dir);
  const rows: { workflow: string; tasks: number; allocator: number; roundRobin: number; random: number }[] = [];
  for (const f of files) {
    const tasks = loadTasks(f);
    if (tasks.length < 5) continue;
    const a = simulate(tasks, 'allocator', seed);
    const r = simulate(tasks, 'round-robin', seed);
    const x = simulate(tasks, 'random', seed);
    rows.push({ workflow: relative(dir, f), tasks: tasks.length, allocator: a, roundRobin: r, random: x });
    console.log(`${relative(dir, f).padEnd(60)} ${String(tasks.length).padStart(4)} tasks  allocator ${a.toFixed(0).padStart(7)} s  round-robin ${r.toFixed(0).padStart(7)} s  random ${x.toFixed(0).padStart(7)} s`);
  }
  const geo = (xs: number[]): number => Math.exp(xs.reduce((s, v) => s + Math.log(v), 0) / xs.length);
  const vsRr = geo(rows.map((r) => r.roundRobin / r.allocator));
  const vsRandom = geo(rows.map((r) => r.random / r.allocator));
  finish({
    bench: 'placement',
    ratio: Math.round(vsRr * 1000) / 1000,
    goal: '> 1 (round-robin makespan / allocator makespan, geometric mean)',
    randomOverAllocator: Math.round(vsRandom * 1000) / 1000,
    workflows: rows.length,
    tasks: rows.reduce((s, r) => s + r.tasks, 0),
    allocatorWorse: rows.filter((r) => r.allocator > r.roundRobin * 1.0001).map((r) => r.workflow),
    nodes: NODE_SPECS.map((n) => `${n.id}:${n.cores}c/${n.memGiB}GiB`).join(' '),
  });
}
