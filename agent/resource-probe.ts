import { execFile } from 'node:child_process';
import { readFile, readdir, realpath, statfs } from 'node:fs/promises';
import { arch, cpus } from 'node:os';
import { resolve, sep } from 'node:path';
import si from 'systeminformation';
import { ReadingSource, type ResourceReading } from '../common/gen/retrace/v1/node.js';

/**
 * What the agent tells the coordinator about its host. `capabilities()` is probed once at start
 * (slow parts: GPU listing, TF.js backend load); `sample()` is cheap and runs every report
 * interval. Every reading carries its source: MEASURED (probed here), DECLARED (the operator's
 * `--advertise`, passed in as `advertised`, never merged into a measured reading) or UNKNOWN
 * (looked, could not tell).
 */
export interface ResourceProbe {
  /** Measured capabilities followed by the declared ones. Never throws: a failed part reads UNKNOWN. */
  capabilities(): Promise<ResourceReading[]>;
  /** Current load and free capacity. Never throws. Rates (disk, net) appear from the second call on. */
  sample(): Promise<ResourceReading[]>;
}

/** The systeminformation calls the probe uses; tests substitute canned answers. */
export type SystemInfo = Pick<typeof si, 'cpu' | 'cpuFlags' | 'currentLoad' | 'mem' | 'graphics' | 'fsSize' | 'fsStats' | 'networkStats' | 'networkInterfaces' | 'networkInterfaceDefault'>;

export interface ResourceProbeOptions {
  /** The agent's data directory: disk free space is that of its file system. */
  dataDir: string;
  /** Operator-declared readings (source DECLARED), from `parseAdvertise`. */
  advertised?: readonly ResourceReading[];
  /** Load TF.js to learn which backend works (default true; costs ~0.4 s once). */
  probeTfjs?: boolean;
  system?: SystemInfo;
  /** Runs a command, resolving its stdout, or undefined when it is absent or fails. */
  runCommand?: (file: string, args: readonly string[]) => Promise<string | undefined>;
  /** Lists a directory's entries, [] when it does not exist (for /dev scans). */
  listDir?: (dir: string) => Promise<string[]>;
}

/** CPU features a placement decision may hinge on (SIMD width, FMA, crypto, bf16/int8 paths). */
const PLACEMENT_FLAGS = new Set([
  'sse4_1', 'sse4_2', 'avx', 'avx2', 'fma', 'f16c', 'aes', 'bmi2', 'sha_ni', 'amx_tile', 'amx_bf16', 'amx_int8',
  'avx_vnni', 'neon', 'asimd', 'asimdhp', 'asimddp', 'sve', 'sve2', 'bf16', 'i8mm', 'vsx', 'altivec',
]);

/** Picks the flags that matter for placement from a space-separated flag list. */
export function placementFlags(flagList: string): string[] {
  const out = new Set<string>();
  for (const f of flagList.toLowerCase().split(/\s+/)) {
    if (f === '') continue;
    if (PLACEMENT_FLAGS.has(f) || f.startsWith('avx512')) out.add(f);
  }
  // ARM kernels call NEON "asimd"; schedulers ask for "neon".
  if (out.has('asimd')) out.add('neon');
  return [...out].sort();
}

/** Virtual or management display adapters that are not compute devices. */
const NON_COMPUTE_GPU = /cirrus|vmware|virtualbox|aspeed|matrox|qxl|red hat|bochs|hyper-v|microsoft basic|llvmpipe|virtio/i;

const measured = (name: string, value: number, unit: string, text = ''): ResourceReading => ({
  name, value, text, unit, source: ReadingSource.READING_SOURCE_MEASURED,
});
const unknown = (name: string, unit: string): ResourceReading => ({
  name, value: 0, text: '', unit, source: ReadingSource.READING_SOURCE_UNKNOWN,
});
const finite = (v: number | null | undefined): v is number => typeof v === 'number' && Number.isFinite(v);

interface GpuRow {
  model: string;
  memoryBytes: number | undefined;
  utilPercent: number | undefined;
  memoryUsedBytes: number | undefined;
}

/** Creates a probe of this host. */
export function createResourceProbe(options: ResourceProbeOptions): ResourceProbe {
  const system: SystemInfo = options.system ?? si;
  const runCommand = options.runCommand ?? defaultRunCommand;
  const listDir = options.listDir ?? defaultListDir;
  const advertised = [...(options.advertised ?? [])].map((r) => ({ ...r, source: ReadingSource.READING_SOURCE_DECLARED }));
  let dataDirReal: string | undefined;
  let nvidiaSmi: boolean | undefined;
  let gpuCount = 0;

  async function dataMount(): Promise<{ size: number; available: number } | undefined> {
    dataDirReal ??= await realpath(resolve(options.dataDir)).catch(() => resolve(options.dataDir));
    const mounts = await system.fsSize();
    let best: { mount: string; size: number; available: number } | undefined;
    for (const m of mounts) {
      const mount = m.mount;
      const inside = dataDirReal === mount || dataDirReal.startsWith(mount.endsWith(sep) ? mount : mount + sep);
      if (inside && (!best || mount.length > best.mount.length)) best = { mount, size: m.size, available: m.available };
    }
    return best;
  }

  async function queryNvidia(): Promise<GpuRow[] | undefined> {
    if (nvidiaSmi === false) return undefined;
    const out = await runCommand('nvidia-smi', [
      '--query-gpu=index,name,memory.total,memory.used,utilization.gpu',
      '--format=csv,noheader,nounits',
    ]);
    nvidiaSmi = out !== undefined;
    if (out === undefined) return undefined;
    const mib = (s: string | undefined): number | undefined => (s !== undefined && finite(Number(s)) && s.trim() !== '' ? Number(s) * 2 ** 20 : undefined);
    return out
      .split('\n')
      .map((line) => line.split(',').map((c) => c.trim()))
      .filter((cols) => cols.length >= 5)
      .map((cols) => ({
        model: cols[1] ?? '',
        memoryBytes: mib(cols[2]),
        memoryUsedBytes: mib(cols[3]),
        utilPercent: cols[4] !== undefined && cols[4] !== '' && finite(Number(cols[4])) ? Number(cols[4]) : undefined,
      }));
  }

  async function listGpus(): Promise<GpuRow[]> {
    const fromSmi = await queryNvidia();
    if (fromSmi) return fromSmi;
    const g = await system.graphics();
    return g.controllers
      .filter((c) => !NON_COMPUTE_GPU.test(`${c.vendor} ${c.model}`))
      .map((c) => ({
        model: c.model || c.name || c.vendor,
        memoryBytes: finite(c.memoryTotal) ? c.memoryTotal * 2 ** 20 : finite(c.vram) ? c.vram * 2 ** 20 : undefined,
        utilPercent: finite(c.utilizationGpu) ? c.utilizationGpu : undefined,
        memoryUsedBytes: finite(c.memoryUsed) ? c.memoryUsed * 2 ** 20 : undefined,
      }));
  }

  async function cpuCapabilities(): Promise<ResourceReading[]> {
    const c = await system.cpu();
    const flags = placementFlags((await system.cpuFlags()) || c.flags);
    // Virtual machines often report no frequency to systeminformation (nor to os.cpus()), while
    // /proc/cpuinfo still has the clock the hypervisor shows.
    const speedMhz =
      finite(c.speedMax) && c.speedMax > 0 ? c.speedMax * 1000 : finite(c.speed) && c.speed > 0 ? c.speed * 1000 : await proc?.cpuMhz().catch(() => undefined);
    return [
      measured('cpu.model', 0, '', `${c.manufacturer} ${c.brand}`.trim() || (cpus()[0]?.model ?? '')),
      measured('cpu.vendor', 0, '', c.vendor),
      measured('cpu.arch', 0, '', arch()),
      measured('cpu.flags', flags.length, 'count', flags.join(',')),
      measured('cpu.cores', c.physicalCores, 'count'),
      measured('cpu.threads', c.cores, 'count'),
      speedMhz === undefined ? unknown('cpu.speed', 'MHz') : measured('cpu.speed', speedMhz, 'MHz'),
    ];
  }

  async function memoryCapabilities(): Promise<ResourceReading[]> {
    const m = await system.mem();
    return [measured('memory.total', m.total, 'bytes'), measured('swap.total', m.swaptotal, 'bytes')];
  }

  async function gpuCapabilities(): Promise<ResourceReading[]> {
    const gpus = await listGpus();
    gpuCount = gpus.length;
    const out = [measured('gpu.count', gpus.length, 'count')];
    gpus.forEach((g, i) => {
      out.push(measured(`gpu.${i}.model`, 0, '', g.model));
      out.push(g.memoryBytes === undefined ? unknown(`gpu.${i}.memory`, 'bytes') : measured(`gpu.${i}.memory`, g.memoryBytes, 'bytes'));
    });
    return out;
  }

  async function acceleratorCapabilities(): Promise<ResourceReading[]> {
    // Linux's accel subsystem (/dev/accel*, e.g. TPU v4+ and NPUs), TPU VMs' VFIO groups, and
    // AWS Neuron devices. Which chip sits behind a node is not knowable here, so only the count.
    const dev = await listDir('/dev');
    const devices = [
      ...dev.filter((d) => /^accel\d+$/.test(d)).map((d) => `/dev/${d}`),
      ...dev.filter((d) => /^neuron\d+$/.test(d)).map((d) => `/dev/${d}`),
      ...(await listDir('/dev/vfio')).filter((d) => /^\d+$/.test(d)).map((d) => `/dev/vfio/${d}`),
    ];
    const out = [measured('accel.count', devices.length, 'count')];
    devices.forEach((d, i) => out.push(measured(`accel.${i}.device`, 0, '', d)));
    return out;
  }

  async function diskCapabilities(): Promise<ResourceReading[]> {
    const m = await dataMount();
    if (!m) return [unknown('disk.total', 'bytes'), unknown('disk.free', 'bytes')];
    return [measured('disk.total', m.size, 'bytes'), measured('disk.free', m.available, 'bytes')];
  }

  async function netCapabilities(): Promise<ResourceReading[]> {
    const iface = await system.networkInterfaceDefault();
    const all = await system.networkInterfaces();
    const info = (Array.isArray(all) ? all : [all]).find((i) => i.iface === iface);
    const speed = info?.speed;
    return [
      measured('net.iface', 0, '', iface),
      finite(speed) && speed > 0 ? measured('net.speed', speed * 1e6, 'bit/s') : unknown('net.speed', 'bit/s'),
    ];
  }

  async function tfjsCapability(): Promise<ResourceReading[]> {
    if (options.probeTfjs === false) return [unknown('tfjs.backend', '')];
    // The native bindings are optional installs; the pure-JS package always works. The order is
    // the order of preference: a node that loads tfjs-node-gpu can run GPU kernels.
    for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node', '@tensorflow/tfjs']) {
      try {
        const mod = (await import(pkg)) as { default?: TfLike } & TfLike;
        const tf = mod.default ?? mod;
        await tf.ready();
        return [measured('tfjs.backend', 0, '', `${pkg}:${tf.getBackend()}`)];
      } catch {
        // Not installed or its native library failed to load: try the next one.
      }
    }
    return [unknown('tfjs.backend', '')];
  }

  async function guarded(part: () => Promise<ResourceReading[]>, fallback: ResourceReading[]): Promise<ResourceReading[]> {
    try {
      return await part();
    } catch {
      return fallback;
    }
  }

  // On a real Linux host the per-report counters come straight from /proc: systeminformation
  // starts child processes for them (lsblk, cat, ...), which cost an agent ~170 ms of CPU per
  // report on a loaded 2-core machine.
  const proc = options.system === undefined && process.platform === 'linux' ? createProcCounters() : undefined;

  async function sampleCpu(): Promise<ResourceReading[]> {
    const fromProc = await proc?.cpu().catch(() => undefined);
    if (fromProc) {
      const out = [measured('cpu.load', fromProc.total, 'percent')];
      fromProc.cores.forEach((c, i) => out.push(measured(`cpu.core.${i}.load`, c, 'percent')));
      return out;
    }
    const l = await system.currentLoad();
    const out = [measured('cpu.load', l.currentLoad, 'percent')];
    l.cpus.forEach((c, i) => out.push(measured(`cpu.core.${i}.load`, c.load, 'percent')));
    return out;
  }

  async function sampleMemory(): Promise<ResourceReading[]> {
    const m = await system.mem();
    return [
      measured('memory.used', m.total - m.available, 'bytes'),
      measured('memory.available', m.available, 'bytes'),
      measured('swap.used', m.swapused, 'bytes'),
    ];
  }

  async function sampleGpus(): Promise<ResourceReading[]> {
    if (gpuCount === 0) return [];
    const gpus = await listGpus();
    const out: ResourceReading[] = [];
    const utils: number[] = [];
    gpus.forEach((g, i) => {
      if (g.utilPercent === undefined) out.push(unknown(`gpu.${i}.util`, 'percent'));
      else {
        utils.push(g.utilPercent);
        out.push(measured(`gpu.${i}.util`, g.utilPercent, 'percent'));
      }
      if (g.memoryUsedBytes !== undefined) out.push(measured(`gpu.${i}.memory.used`, g.memoryUsedBytes, 'bytes'));
    });
    out.push(utils.length === 0 ? unknown('gpu.util', 'percent') : measured('gpu.util', utils.reduce((a, b) => a + b, 0) / utils.length, 'percent'));
    return out;
  }

  async function sampleDisk(): Promise<ResourceReading[]> {
    const out: ResourceReading[] = [];
    const disk = await proc?.disk().catch(() => undefined);
    const s = disk !== undefined ? disk : await system.fsStats();
    // The first call has no previous counters, hence no rate.
    if (s && finite(s.rx_sec)) out.push(measured('disk.read', s.rx_sec, 'bytes/s'));
    if (s && finite(s.wx_sec)) out.push(measured('disk.write', s.wx_sec, 'bytes/s'));
    const m = await freeOnDataMount();
    out.push(m ? measured('disk.free', m.available, 'bytes') : unknown('disk.free', 'bytes'));
    return out;
  }

  /**
   * Free space of the data dir's file system for every report: one statfs(2) on the real host
   * (systeminformation's fsSize runs `df` synchronously, the costliest part of a report).
   */
  async function freeOnDataMount(): Promise<{ available: number } | undefined> {
    if (options.system) return dataMount();
    try {
      const st = await statfs(options.dataDir);
      return { available: st.bavail * st.bsize };
    } catch {
      return dataMount();
    }
  }

  // Looked up once: without a name, every networkStats() call runs `ip route` synchronously
  // (systeminformation), the largest cost of a report on the agent's event loop.
  let defaultIface: Promise<string> | undefined;
  async function sampleNet(): Promise<ResourceReading[]> {
    defaultIface ??= system.networkInterfaceDefault().catch(() => '');
    const iface = await defaultIface;
    const net = iface === '' ? undefined : await proc?.net(iface).catch(() => undefined);
    const stats = net !== undefined ? [net] : await (iface === '' ? system.networkStats() : system.networkStats(iface));
    const s = stats[0];
    const out: ResourceReading[] = [];
    if (s && finite(s.rx_sec)) out.push(measured('net.rx', s.rx_sec, 'bytes/s'));
    if (s && finite(s.tx_sec)) out.push(measured('net.tx', s.tx_sec, 'bytes/s'));
    return out;
  }

  return {
    async capabilities() {
      const parts = await Promise.all([
        guarded(cpuCapabilities, [unknown('cpu.model', ''), measured('cpu.threads', cpus().length, 'count')]),
        guarded(memoryCapabilities, [unknown('memory.total', 'bytes')]),
        guarded(gpuCapabilities, [unknown('gpu.count', 'count')]),
        guarded(acceleratorCapabilities, [unknown('accel.count', 'count')]),
        guarded(diskCapabilities, [unknown('disk.free', 'bytes')]),
        guarded(netCapabilities, [unknown('net.speed', 'bit/s')]),
        guarded(tfjsCapability, [unknown('tfjs.backend', '')]),
      ]);
      return [...parts.flat(), ...advertised];
    },
    async sample() {
      const parts = await Promise.all([
        guarded(sampleCpu, [unknown('cpu.load', 'percent')]),
        guarded(sampleMemory, [unknown('memory.available', 'bytes')]),
        guarded(sampleGpus, [unknown('gpu.util', 'percent')]),
        guarded(sampleDisk, [unknown('disk.free', 'bytes')]),
        guarded(sampleNet, []),
      ]);
      return parts.flat().filter((r) => Number.isFinite(r.value));
    },
  };
}

/** A rate over the time since the previous reading; null on the first. */
interface Rates {
  rx_sec: number | null;
  wx_sec?: number | null;
  tx_sec: number | null;
}

/** How long the first CPU reading looks at the counters (later ones cover the time since the previous). */
const FIRST_CPU_WINDOW_MS = 250;

/**
 * Counters of this host read from /proc (Linux): CPU busy % since the previous call (over the
 * first FIRST_CPU_WINDOW_MS on the first: the counters alone give the average since boot, which
 * an agent started on a busy or idle host reported as its load), the CPU clock, disk and network
 * bytes/s since the previous call. Each method rejects when its file cannot be read or parsed (the caller falls
 * back to systeminformation). `readText` and `pause` are replaced in tests.
 */
export function createProcCounters(
  readText: (path: string) => Promise<string> = (path) => readFile(path, 'utf8'),
  pause: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
): { cpu(): Promise<{ total: number; cores: number[] }>; cpuMhz(): Promise<number | undefined>; disk(): Promise<Rates>; net(iface: string): Promise<Rates> } {
  let lastCpu: Map<string, { busy: number; total: number }> | undefined;
  const cpuCounters = async (): Promise<Map<string, { busy: number; total: number }>> => {
    const text = await readText('/proc/stat');
    const now = new Map<string, { busy: number; total: number }>();
    for (const line of text.split('\n')) {
      if (!line.startsWith('cpu')) continue;
      const [name, ...rest] = line.trim().split(/\s+/);
      const v = rest.map(Number);
      // user nice system idle iowait irq softirq steal (guest time is inside user already).
      const total = v.slice(0, 8).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
      const idle = (v[3] ?? 0) + (v[4] ?? 0);
      if (name) now.set(name, { busy: total - idle, total });
    }
    if (!now.has('cpu')) throw new Error('no cpu line in /proc/stat');
    return now;
  };
  let lastDisk: { read: number; written: number; atMs: number } | undefined;
  let lastNet: { iface: string; rx: number; tx: number; atMs: number } | undefined;
  return {
    async cpu() {
      if (!lastCpu) {
        lastCpu = await cpuCounters();
        await pause(FIRST_CPU_WINDOW_MS);
      }
      const now = await cpuCounters();
      const pct = (name: string): number => {
        const n = now.get(name);
        if (!n) return 0;
        const p = lastCpu?.get(name);
        const dt = n.total - (p?.total ?? 0);
        return dt > 0 ? (100 * (n.busy - (p?.busy ?? 0))) / dt : 0;
      };
      const cores: number[] = [];
      for (let i = 0; now.has(`cpu${i}`); i++) cores.push(pct(`cpu${i}`));
      const total = pct('cpu');
      lastCpu = now;
      return { total, cores };
    },
    /** The highest `cpu MHz` of /proc/cpuinfo (the clock now, not a rated maximum); undefined when none is there. */
    async cpuMhz() {
      let most: number | undefined;
      for (const m of (await readText('/proc/cpuinfo')).matchAll(/^cpu MHz\s*:\s*([\d.]+)/gm)) {
        const mhz = Number(m[1]);
        if (mhz > 0 && (most === undefined || mhz > most)) most = mhz;
      }
      return most;
    },
    async disk() {
      const text = await readText('/proc/diskstats');
      let read = 0;
      let written = 0;
      for (const line of text.split('\n')) {
        const f = line.trim().split(/\s+/);
        const name = f[2] ?? '';
        // Whole disks only (partitions would count twice); no loop, ram or device-mapper devices.
        if (!/^(sd[a-z]+|vd[a-z]+|xvd[a-z]+|hd[a-z]+|nvme\d+n\d+|mmcblk\d+)$/.test(name)) continue;
        read += Number(f[5]) * 512;
        written += Number(f[9]) * 512;
      }
      const atMs = Date.now();
      const prev = lastDisk;
      lastDisk = { read, written, atMs };
      if (!prev || atMs <= prev.atMs) return { rx_sec: null, wx_sec: null, tx_sec: null };
      const sec = (atMs - prev.atMs) / 1000;
      return { rx_sec: (read - prev.read) / sec, wx_sec: (written - prev.written) / sec, tx_sec: null };
    },
    async net(iface) {
      const text = await readText('/proc/net/dev');
      const line = text.split('\n').find((l) => l.trim().startsWith(`${iface}:`));
      if (!line) throw new Error(`no ${iface} in /proc/net/dev`);
      const f = line.slice(line.indexOf(':') + 1).trim().split(/\s+/).map(Number);
      const rx = f[0] ?? 0;
      const tx = f[8] ?? 0;
      const atMs = Date.now();
      const prev = lastNet;
      lastNet = { iface, rx, tx, atMs };
      if (!prev || prev.iface !== iface || atMs <= prev.atMs) return { rx_sec: null, tx_sec: null };
      const sec = (atMs - prev.atMs) / 1000;
      return { rx_sec: (rx - prev.rx) / sec, tx_sec: (tx - prev.tx) / sec };
    },
  };
}

interface TfLike {
  ready(): Promise<void>;
  getBackend(): string;
}

function defaultRunCommand(file: string, args: readonly string[]): Promise<string | undefined> {
  return new Promise((resolveOut) => {
    execFile(file, [...args], { timeout: 3000, windowsHide: true }, (err, stdout) => resolveOut(err ? undefined : String(stdout)));
  });
}

async function defaultListDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch {
    return [];
  }
}
