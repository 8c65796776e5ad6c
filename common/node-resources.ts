import { InvalidArgumentError } from './errors.js';
import { ReadingSource, type ResourceReading } from './gen/retrace/v1/node.js';

/**
 * The vocabulary of node readings shared by the agent (which probes them), the coordinator's
 * mesh (which validates and stores them) and the CLI (which prints them). Values are in base
 * units: bytes, bytes/s, bit/s, percent (0..100), ms, MHz, count.
 *
 * Capabilities (sent once at registration):
 *   cpu.model, cpu.vendor, cpu.arch, cpu.flags (text) · cpu.cores, cpu.threads (count) · cpu.speed (MHz)
 *   memory.total, swap.total (bytes) · gpu.count · gpu.<i>.model (text) · gpu.<i>.memory (bytes)
 *   tfjs.backend (text: the package that loaded) · accel.count · accel.<i>.device (text)
 *   disk.total, disk.free (bytes, of the data directory's file system) · net.speed (bit/s)
 * Reports (every interval):
 *   cpu.load, cpu.core.<i>.load (percent) · memory.used, memory.available, swap.used (bytes)
 *   gpu.util, gpu.<i>.util (percent) · gpu.<i>.memory.used (bytes) · disk.read, disk.write (bytes/s)
 *   disk.free (bytes) · net.rx, net.tx (bytes/s) · net.rtt (ms) · net.up, net.down (bytes/s,
 *   the agent's own link to the coordinator, measured by timed transfers)
 */
export const METRIC_ALIASES: Readonly<Record<string, string>> = {
  cpu: 'cpu.load',
  memory: 'memory.used',
  mem: 'memory.used',
  swap: 'swap.used',
  gpu: 'gpu.util',
  disk: 'disk.free',
  'disk-read': 'disk.read',
  'disk-write': 'disk.write',
  net: 'net.rx',
  rx: 'net.rx',
  tx: 'net.tx',
  rtt: 'net.rtt',
  bandwidth: 'net.down',
};

/**
 * The agent's link measurements. They are taken every few minutes and sent once per measurement
 * (one history sample each, not one per report); the coordinator carries the latest forward in
 * a node's live readings until a newer one arrives.
 */
export const LINK_READINGS: ReadonlySet<string> = new Set(['net.rtt', 'net.up', 'net.down']);

const READING_NAME = /^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+){0,7}$/;

/** Longest accepted reading or metric name. */
export const MAX_READING_NAME = 128;

/** True for a well-formed dotted reading name such as `gpu.0.util`. */
export function isReadingName(name: string): boolean {
  return name.length <= MAX_READING_NAME && READING_NAME.test(name);
}

/**
 * Resolves an alias (`cpu`) to its reading name (`cpu.load`); a full name passes through.
 * Throws InvalidArgumentError(field) for a malformed name.
 */
export function resolveMetric(name: string, field = 'metric'): string {
  const trimmed = name.trim();
  const resolved = METRIC_ALIASES[trimmed] ?? trimmed;
  if (!isReadingName(resolved)) {
    throw new InvalidArgumentError(field, `expected a metric such as cpu, memory or gpu.0.util, got ${JSON.stringify(name)}`);
  }
  return resolved;
}

const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Node ids: 1..128 of `[A-Za-z0-9._-]`, starting with a letter or digit. */
export function isNodeId(id: string): boolean {
  return NODE_ID.test(id);
}

const BYTE_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};

const BIT_RATE_UNITS: Readonly<Record<string, number>> = {
  bps: 1, kbps: 1e3, mbps: 1e6, gbps: 1e9, 'kbit/s': 1e3, 'mbit/s': 1e6, 'gbit/s': 1e9,
};

/** Parses "64GiB", "512MB", "1.5T", "1024" (bytes) to bytes; throws InvalidArgumentError. */
export function parseByteSize(text: string, field = 'size'): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  const unit = m ? BYTE_UNITS[(m[2] ?? '').toLowerCase() || 'b'] : undefined;
  if (!m || unit === undefined) throw new InvalidArgumentError(field, `expected a size such as 64GiB or 512MB, got ${JSON.stringify(text)}`);
  return Math.round(Number(m[1]) * unit);
}

/** Formats bytes with binary units, e.g. 68719476736 → "64.0 GiB". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return '?';
  const unit = binaryUnit(Math.abs(bytes));
  const v = Math.abs(bytes) / unit.divisor;
  return `${bytes < 0 ? '-' : ''}${unit.divisor === 1 ? v.toFixed(0) : v.toFixed(1)} ${unit.name}`;
}

const BINARY_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/**
 * The binary unit to show `bytes` (not negative) in: the largest in which the value stays under
 * `below` (1024 for text; a chart's axis takes 1000, so 1010 MiB is 0.99 GiB rather than a
 * "1.01k MiB" tick), and the divisor into it.
 */
export function binaryUnit(bytes: number, below = 1024): { name: string; divisor: number } {
  let v = bytes;
  let i = 0;
  while (v >= below && i < BINARY_UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return { name: BINARY_UNITS[i] as string, divisor: 1024 ** i };
}

/** Advertise keys that are shorthands; any other key must be a full reading name. */
const ADVERTISE_KEYS: Readonly<Record<string, { name: string; kind: 'count' | 'bytes' | 'bitrate' | 'mhz' }>> = {
  cpu: { name: 'cpu.threads', kind: 'count' },
  cpus: { name: 'cpu.threads', kind: 'count' },
  cores: { name: 'cpu.cores', kind: 'count' },
  gpu: { name: 'gpu.count', kind: 'count' },
  gpus: { name: 'gpu.count', kind: 'count' },
  memory: { name: 'memory.total', kind: 'bytes' },
  mem: { name: 'memory.total', kind: 'bytes' },
  swap: { name: 'swap.total', kind: 'bytes' },
  disk: { name: 'disk.free', kind: 'bytes' },
  tpu: { name: 'tpu.count', kind: 'count' },
  accel: { name: 'accel.count', kind: 'count' },
  net: { name: 'net.speed', kind: 'bitrate' },
};

/**
 * Parses operator-declared capacity, `gpu=1,memory=64GiB,cpu=8,gpu.0.model=A100`, into
 * DECLARED readings. Shorthand keys: cpu (threads), cores, gpu, memory, swap, disk, tpu, accel,
 * net (bit rate: 10Gbps). Other keys must be reading names; their value is a number, a byte size
 * or, failing both, text. Several `--advertise` flags may be given; a later key wins. Errors name
 * the key after `field`: "--advertise memory: expected a size ..." (`field` a flag) or
 * "advertise.memory: ..." (a field name).
 */
export function parseAdvertise(specs: readonly string[], field = 'advertise'): ResourceReading[] {
  const byName = new Map<string, ResourceReading>();
  for (const spec of specs) {
    for (const part of spec.split(',')) {
      const item = part.trim();
      if (item === '') continue;
      const eq = item.indexOf('=');
      if (eq <= 0) throw new InvalidArgumentError(field, `expected key=value, got ${JSON.stringify(item)}`);
      const key = item.slice(0, eq).trim().toLowerCase();
      const raw = item.slice(eq + 1).trim();
      // Every error about one key reads alike: "--advertise memory: ..." (a flag) or
      // "advertise.memory: ..." (a field).
      const keyField = field.startsWith('--') ? `${field} ${key}` : `${field}.${key}`;
      const known = ADVERTISE_KEYS[key];
      const name = known?.name ?? key;
      if (!isReadingName(name)) throw new InvalidArgumentError(keyField, 'unknown key');
      const reading: ResourceReading = { name, value: 0, text: '', unit: '', source: ReadingSource.READING_SOURCE_DECLARED };
      const kind = known?.kind ?? (/^\d+(\.\d+)?$/.test(raw) ? 'count' : /^\d+(\.\d+)?\s*[kmgt]i?b?$/i.test(raw) ? 'bytes' : undefined);
      if (kind === 'count') {
        const n = Number(raw);
        if (!/^\d+(\.\d+)?$/.test(raw) || !Number.isFinite(n)) throw new InvalidArgumentError(keyField, `expected a number, got ${JSON.stringify(raw)}`);
        reading.value = n;
        reading.unit = 'count';
      } else if (kind === 'bytes') {
        reading.value = parseByteSize(raw, keyField);
        reading.unit = 'bytes';
      } else if (kind === 'bitrate') {
        const m = /^(\d+(?:\.\d+)?)\s*([a-z/]+)$/i.exec(raw);
        const mult = m ? BIT_RATE_UNITS[(m[2] ?? '').toLowerCase()] : undefined;
        if (!m || mult === undefined) throw new InvalidArgumentError(keyField, `expected a bit rate such as 10Gbps, got ${JSON.stringify(raw)}`);
        reading.value = Number(m[1]) * mult;
        reading.unit = 'bit/s';
      } else {
        reading.text = raw;
      }
      byName.set(name, reading);
    }
  }
  return [...byName.values()];
}

/** Parses `k=v` label flags; keys are 1..63 of `[A-Za-z0-9._/-]`. */
export function parseLabels(items: readonly string[], field = 'label'): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const item of items) {
    for (const part of item.split(',')) {
      if (part.trim() === '') continue;
      const eq = part.indexOf('=');
      const key = eq > 0 ? part.slice(0, eq).trim() : '';
      if (!/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/.test(key)) throw new InvalidArgumentError(field, `expected key=value, got ${JSON.stringify(part)}`);
      labels[key] = part.slice(eq + 1).trim();
    }
  }
  return labels;
}

const SOURCE_RANK: Readonly<Record<number, number>> = {
  [ReadingSource.READING_SOURCE_DECLARED]: 3,
  [ReadingSource.READING_SOURCE_MEASURED]: 2,
  [ReadingSource.READING_SOURCE_UNKNOWN]: 1,
};

/**
 * The reading that counts for placement when several carry the same name: the operator's
 * declared value over a measured one (the operator may know better, e.g. a GPU the probe cannot
 * see), a measured one over an unknown one.
 */
export function effectiveReading(readings: readonly ResourceReading[], name: string): ResourceReading | undefined {
  let best: ResourceReading | undefined;
  for (const r of readings) {
    if (r.name !== name) continue;
    if (!best || (SOURCE_RANK[r.source] ?? 0) > (SOURCE_RANK[best.source] ?? 0)) best = r;
  }
  return best;
}

/** Short tag for a reading's source: "" measured, "declared", "unknown". */
export function sourceTag(source: ReadingSource): string {
  switch (source) {
    case ReadingSource.READING_SOURCE_DECLARED:
      return 'declared';
    case ReadingSource.READING_SOURCE_UNKNOWN:
      return 'unknown';
    case ReadingSource.READING_SOURCE_MEASURED:
      return 'measured';
    default:
      return 'unspecified';
  }
}
