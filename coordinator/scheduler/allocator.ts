import { NodeState, type NodeInfo, type ResourceReading } from '../../common/gen/retrace/v1/node.js';
import { effectiveReading } from '../../common/node-resources.js';
import { gpuCount } from '../../common/requirements.js';
import type { TransformRequirements } from '../../common/transform.js';

/**
 * Resource-aware shard placement: pure, no I/O. The dispatcher (dispatcher.ts) keeps one
 * `NodeView` per node (rebuilt from NodeInfo on mesh events) and a load map, and asks
 * `allocate()` for every shard it places.
 */

/** Where a job's shards may go (the policy's placement section). Every field is optional. */
export interface Placement {
  /** Only these nodes. */
  nodeIds?: readonly string[];
  /** Label selector: every pair must match the node's labels. */
  labels?: Readonly<Record<string, string>>;
  /** 'only': nodes with a GPU only; 'none': nodes without one only; 'any' (default). */
  gpu?: 'any' | 'only' | 'none';
  /** The job may use at most this fraction (0..1] of a node's CPU cores (also sent to the agent as a throttle). */
  maxCpuFraction?: number;
  /** The job may reserve at most this much memory on one node, MiB. */
  maxMemoryMb?: number;
}

/** What the allocator knows of one node, in base units (cores, MiB, bytes/s). */
export interface NodeView {
  nodeId: string;
  /** 'READY' | 'SUSPECT' | 'LOST' | 'DRAINING' | 'LEFT' (or 'UNSPECIFIED'). */
  state: string;
  labels: Readonly<Record<string, string>>;
  /** Logical CPUs (declared `cpu` / cpu.threads over measured; else cpu.cores); 0 when unknown. */
  cpuCores: number;
  /** Total memory, MiB (declared over measured); 0 when unknown. */
  memoryTotalMb: number;
  /** Free memory now, MiB: measured memory.available, or declared total minus measured use. */
  memoryAvailableMb: number;
  /** Cores free now: cpuCores × (1 − cpu.load / 100). */
  cpuFreeCores: number;
  gpuCount: number;
  /** Lower-case CPU flags. */
  cpuFlags: ReadonlySet<string>;
  /** Link bandwidth, bytes/s (declared net.speed over the measured min(net.up, net.down)); undefined when unknown. */
  bandwidthBytesPerSec: number | undefined;
  codeVersions: ReadonlySet<string>;
  /** Label `cost` as a number (default 0): relative price of running on this node. */
  cost: number;
}

/** What one shard needs. */
export interface ShardNeed {
  requirements?: Readonly<TransformRequirements>;
  placement?: Readonly<Placement>;
  codeVersion?: string;
  /** Bytes of input the node must receive (0 when unknown). */
  inputBytes?: number;
  /** Nodes that already hold the inputs: no transfer time there. */
  inputsCachedOn?: ReadonlySet<string>;
  /** Nodes that lately could not fetch or verify the shard's code version: not candidates. */
  codeUnavailableOn?: ReadonlySet<string>;
}

/** What the dispatcher has placed on a node and not yet seen finish. */
export interface NodeLoad {
  inFlight: number;
  reservedCpu: number;
  reservedMemMb: number;
}

/** Tuning of `allocate`. */
export interface AllocateOptions {
  /** Shards in flight per node at most (default 64). */
  maxInFlight?: number;
  /** Forecast free capacity of a node (cores, MiB); overrides the latest readings when given. */
  headroom?: (nodeId: string) => { cpuCores: number; memoryMb: number } | undefined;
}

/** A node for the shard, or why none can take it now. */
export type AllocationResult = { nodeId: string } | { waiting: string; busy: boolean };

const MIB = 1024 * 1024;
const STATE_NAMES: Readonly<Record<number, string>> = {
  [NodeState.NODE_STATE_READY]: 'READY',
  [NodeState.NODE_STATE_SUSPECT]: 'SUSPECT',
  [NodeState.NODE_STATE_LOST]: 'LOST',
  [NodeState.NODE_STATE_DRAINING]: 'DRAINING',
  [NodeState.NODE_STATE_LEFT]: 'LEFT',
};

function num(readings: readonly ResourceReading[], name: string): number | undefined {
  const r = effectiveReading(readings, name);
  return r && Number.isFinite(r.value) && (r.value > 0 || r.text === '') ? r.value : undefined;
}

/** Builds the allocator's view of a node from its NodeInfo (declared capacity counts like measured). */
export function toNodeView(info: Pick<NodeInfo, 'nodeId' | 'state' | 'labels' | 'capabilities' | 'latest' | 'codeVersions'>): NodeView {
  const caps = info.capabilities;
  const latest = info.latest;
  const cpuCores = num(caps, 'cpu.threads') ?? num(caps, 'cpu.cores') ?? 0;
  const memTotalBytes = num(caps, 'memory.total') ?? 0;
  const memDeclared = effectiveReading(caps, 'memory.total')?.source === 2; // READING_SOURCE_DECLARED
  const used = num(latest, 'memory.used');
  const available = num(latest, 'memory.available');
  const memAvailBytes = memDeclared
    ? Math.max(0, memTotalBytes - (used ?? 0))
    : (available ?? (used !== undefined ? Math.max(0, memTotalBytes - used) : memTotalBytes));
  const load = num(latest, 'cpu.load') ?? 0;
  const flagsText = effectiveReading(caps, 'cpu.flags')?.text ?? '';
  const netSpeed = effectiveReading(caps, 'net.speed');
  const up = num(latest, 'net.up');
  const down = num(latest, 'net.down');
  let bandwidth: number | undefined;
  if (netSpeed && netSpeed.source === 2 && netSpeed.value > 0) bandwidth = netSpeed.value / 8;
  else if (up !== undefined && down !== undefined) bandwidth = Math.min(up, down);
  else if (down !== undefined || up !== undefined) bandwidth = down ?? up;
  else if (netSpeed && netSpeed.value > 0) bandwidth = netSpeed.value / 8;
  const cost = Number(info.labels.cost ?? 0);
  return {
    nodeId: info.nodeId,
    state: STATE_NAMES[info.state] ?? 'UNSPECIFIED',
    labels: info.labels,
    cpuCores,
    memoryTotalMb: memTotalBytes / MIB,
    memoryAvailableMb: memAvailBytes / MIB,
    cpuFreeCores: Math.max(0, cpuCores * (1 - Math.min(100, Math.max(0, load)) / 100)),
    gpuCount: num(caps, 'gpu.count') ?? 0,
    cpuFlags: new Set(flagsText.split(/[\s,]+/).filter((f) => f !== '').map((f) => f.toLowerCase())),
    bandwidthBytesPerSec: bandwidth,
    codeVersions: new Set(info.codeVersions),
    cost: Number.isFinite(cost) ? cost : 0,
  };
}

/** The first static requirement `node` fails (capacity, labels, state), or undefined when it could run the shard. */
function staticMiss(node: NodeView, need: ShardNeed): string | undefined {
  const r = need.requirements ?? {};
  const p = need.placement ?? {};
  if (node.state !== 'READY') return `not READY (${node.state})`;
  if (need.codeUnavailableOn?.has(node.nodeId)) return 'its code version could not be fetched or verified there lately';
  if (p.nodeIds && p.nodeIds.length > 0 && !p.nodeIds.includes(node.nodeId)) return `placement.nodeIds is [${p.nodeIds.join(', ')}]`;
  if (p.labels) {
    for (const [k, v] of Object.entries(p.labels)) if (node.labels[k] !== v) return `needs label ${k}=${v}`;
  }
  const gpus = r ? gpuCount(r) : 0;
  if (p.gpu === 'only' && node.gpuCount < 1) return 'placement gpu=only: no gpu';
  if (p.gpu === 'none' && node.gpuCount > 0) return 'placement gpu=none: has a gpu';
  if (gpus > 0 && node.gpuCount < gpus) return `needs gpu ≥ ${gpus}`;
  const cpu = r.cpu ?? 0;
  const cpuCap = node.cpuCores * (p.maxCpuFraction ?? 1);
  if (cpu > 0 && cpuCap < cpu) return p.maxCpuFraction !== undefined ? `needs cpu ≥ ${cpu} within maxCpuFraction ${p.maxCpuFraction}` : `needs cpu ≥ ${cpu}`;
  const mem = r.memoryMb ?? 0;
  if (mem > 0 && node.memoryTotalMb < mem) return `needs memory ≥ ${mem} MiB`;
  if (mem > 0 && p.maxMemoryMb !== undefined && p.maxMemoryMb < mem) return `needs memory ≥ ${mem} MiB but placement.maxMemoryMb is ${p.maxMemoryMb}`;
  for (const f of r.instructionSets ?? []) if (!node.cpuFlags.has(f.toLowerCase())) return `needs cpu flag ${f}`;
  const mbps = r.networkMbps ?? 0;
  if (mbps > 0 && (node.bandwidthBytesPerSec === undefined || (node.bandwidthBytesPerSec * 8) / 1e6 < mbps)) return `needs network ≥ ${mbps} Mbit/s`;
  return undefined;
}

/** Why a statically fitting node cannot take the shard now, or undefined. */
function dynamicMiss(node: NodeView, need: ShardNeed, load: NodeLoad | undefined, maxInFlight: number, freeMem: number): string | undefined {
  const r = need.requirements ?? {};
  const p = need.placement ?? {};
  const l = load ?? { inFlight: 0, reservedCpu: 0, reservedMemMb: 0 };
  if (l.inFlight >= maxInFlight) return `in-flight limit ${maxInFlight}`;
  const cpu = r.cpu ?? 0;
  if (cpu > 0 && l.inFlight > 0 && l.reservedCpu + cpu > node.cpuCores * (p.maxCpuFraction ?? 1)) return 'cpu reserved';
  const mem = r.memoryMb ?? 0;
  if (mem > 0 && l.inFlight > 0) {
    if (l.reservedMemMb + mem > freeMem) return 'memory reserved';
    if (p.maxMemoryMb !== undefined && l.reservedMemMb + mem > p.maxMemoryMb) return 'placement.maxMemoryMb reached';
  }
  return undefined;
}

/**
 * Picks the node for one shard. Filters: state READY, `placement` (nodeIds, labels, gpu,
 * maxCpuFraction, maxMemoryMb), requirements (cpu cores, memory, gpus, cpu flags, link bandwidth)
 * and, per node, the in-flight limit and what is already reserved. Among the nodes left, the
 * lowest score wins: transfer time of the inputs (inputBytes / bandwidth; 0 where cached)
 * + queue depth (in flight per core) − headroom (free cpu and memory after reservations, as
 * fractions) + cost (label `cost`) − a small bonus when the code version is cached. Ties go to
 * the lower node id. `{ waiting }` names the requirement no node meets (`busy` when nodes fit but
 * are all saturated now).
 */
export function allocate(candidates: readonly NodeView[], need: ShardNeed, load: ReadonlyMap<string, NodeLoad>, options: AllocateOptions = {}): AllocationResult {
  const maxInFlight = options.maxInFlight ?? 64;
  const r = need.requirements ?? {};
  let best: NodeView | undefined;
  let bestScore = Number.POSITIVE_INFINITY;
  const ready: string[] = [];
  const misses = new Map<string, string[]>();
  let busy = 0;
  for (const node of candidates) {
    if (node.state === 'READY') ready.push(node.nodeId);
    const miss = staticMiss(node, need);
    if (miss !== undefined) {
      const key = miss.startsWith('not READY') ? 'not READY' : miss;
      let list = misses.get(key);
      if (!list) misses.set(key, (list = []));
      list.push(node.nodeId);
      continue;
    }
    const head = options.headroom?.(node.nodeId);
    const freeCpu = head?.cpuCores ?? node.cpuFreeCores;
    const freeMem = head?.memoryMb ?? node.memoryAvailableMb;
    const l = load.get(node.nodeId);
    if (dynamicMiss(node, need, l, maxInFlight, freeMem) !== undefined) {
      busy++;
      continue;
    }
    const inFlight = l?.inFlight ?? 0;
    const cores = Math.max(1, node.cpuCores);
    const cpuHeadroom = Math.max(-1, (freeCpu - (l?.reservedCpu ?? 0) - (r.cpu ?? 0)) / cores);
    const memHeadroom = node.memoryTotalMb > 0 ? Math.max(-1, (freeMem - (l?.reservedMemMb ?? 0) - (r.memoryMb ?? 0)) / node.memoryTotalMb) : 0;
    const bytes = need.inputBytes ?? 0;
    const transferSec = bytes <= 0 || need.inputsCachedOn?.has(node.nodeId) ? 0 : bytes / (node.bandwidthBytesPerSec ?? 12_500_000);
    const score =
      transferSec +
      inFlight / cores -
      0.5 * (cpuHeadroom + memHeadroom) +
      node.cost -
      (need.codeVersion !== undefined && node.codeVersions.has(need.codeVersion) ? 0.01 : 0);
    if (score < bestScore || (score === bestScore && best !== undefined && node.nodeId < best.nodeId)) {
      best = node;
      bestScore = score;
    }
  }
  if (best) return { nodeId: best.nodeId };
  const readyText = `${ready.length} READY node${ready.length === 1 ? '' : 's'}${ready.length > 0 ? `: ${ready.slice(0, 8).join(', ')}${ready.length > 8 ? ', …' : ''}` : ''}`;
  if (busy > 0) return { waiting: `all ${busy} fitting node${busy === 1 ? ' is' : 's are'} at capacity (in-flight limit or reserved cpu/memory)`, busy: true };
  if (ready.length === 0) {
    // Each known node's state: a node whose link is cut (a replay's injected outage) or whose agent
    // disconnected is READY in `retrace nodes`, and "no READY node" alone read as a contradiction.
    const states = candidates.slice(0, 8).map(stateOf);
    return { waiting: `no READY node (${candidates.length} known)${states.length > 0 ? `: ${states.join(', ')}${candidates.length > 8 ? ', …' : ''}` : ''}`, busy: false };
  }
  // The requirement that excluded the most READY nodes names the problem.
  let worst: [string, string[]] | undefined;
  for (const entry of misses) if (entry[0] !== 'not READY' && (!worst || entry[1].length > worst[1].length)) worst = entry;
  const what = worst?.[0] ?? 'no fitting node';
  // A target node whose link is cut is left out of the READY ones: say so, or the reason read as if
  // the target did not fit.
  const notReady = candidates.filter((n) => n.state !== 'READY');
  const notReadyText = notReady.length > 0 ? `; not READY: ${notReady.slice(0, 8).map(stateOf).join(', ')}${notReady.length > 8 ? ', …' : ''}` : '';
  return { waiting: `${what}: no READY node meets it (${readyText})${notReadyText}`, busy: false };
}

/** `vm-2 LOST`, `vm-3 unreachable (link down or agent disconnected)`: a node and its state, for a waiting reason. */
function stateOf(n: NodeView): string {
  return `${n.nodeId} ${n.state === 'UNREACHABLE' ? 'unreachable (link down or agent disconnected)' : n.state}`;
}
