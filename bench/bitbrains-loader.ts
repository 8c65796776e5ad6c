/**
 * Loader for the Bitbrains GWA-T-12 "Rnd" per-VM traces (../shared/data/bitbrains-rnd).
 *
 * Quirks handled here, measured on the files (see the folder's README.txt):
 * - the delimiter is `;` followed by a TAB, one header line, files are gzip;
 * - `Timestamp [ms]` holds epoch SECONDS despite its label;
 * - ~4.8% duplicate timestamps (dropped, first row kept);
 * - ~15.7% rows with 0 CPU capacity / 0 cores: the VM was off, so its usage is not a measurement
 *   (dropped, not read as zero load);
 * - ~1 day gap between month files (left as a gap: the consumer decides how to fill it).
 */
import { readFileSync, existsSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../common/errors.js';

/** One parsed row; throughputs in KB/s and memory in KB exactly as in the trace. */
export interface BitbrainsRow {
  /** Sample time, epoch milliseconds (the file's seconds × 1000). */
  tMs: number;
  cores: number;
  cpuCapacityMhz: number;
  cpuUsageMhz: number;
  cpuUsagePct: number;
  memCapacityKb: number;
  memUsageKb: number;
  diskReadKBs: number;
  diskWriteKBs: number;
  netRxKBs: number;
  netTxKBs: number;
}

/** The metrics the benchmark feeds through the history store, with the store's metric names and units. */
export const BITBRAINS_METRICS = {
  cpu: { metric: 'cpu.usage_pct', unit: '%', get: (r: BitbrainsRow) => r.cpuUsagePct },
  memory: { metric: 'mem.used_bytes', unit: 'B', get: (r: BitbrainsRow) => r.memUsageKb * 1024 },
  'disk-read': { metric: 'disk.read_bytes_per_s', unit: 'B/s', get: (r: BitbrainsRow) => r.diskReadKBs * 1024 },
  'disk-write': { metric: 'disk.write_bytes_per_s', unit: 'B/s', get: (r: BitbrainsRow) => r.diskWriteKBs * 1024 },
  'net-rx': { metric: 'net.rx_bytes_per_s', unit: 'B/s', get: (r: BitbrainsRow) => r.netRxKBs * 1024 },
  'net-tx': { metric: 'net.tx_bytes_per_s', unit: 'B/s', get: (r: BitbrainsRow) => r.netTxKBs * 1024 },
} as const;

/** Short metric name accepted by `--metrics`. */
export type BitbrainsMetric = keyof typeof BITBRAINS_METRICS;

/** One VM's cleaned rows (sorted by time, unique timestamps, VM powered on) and what was dropped. */
export interface BitbrainsVm {
  vm: number;
  rows: BitbrainsRow[];
  dropped: { duplicates: number; poweredOff: number; malformed: number };
}

const COLUMNS = 11;

/**
 * Parses one decompressed trace file. Rows that do not have 11 finite numbers are counted as
 * malformed and skipped rather than failing the whole VM.
 */
export function parseBitbrainsCsv(text: string): { rows: BitbrainsRow[]; malformed: number } {
  const rows: BitbrainsRow[] = [];
  let malformed = 0;
  const lines = text.split('\n');
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    if (line === undefined || line.trim() === '') continue;
    const cells = line.split(';');
    if (cells.length !== COLUMNS) {
      malformed++;
      continue;
    }
    const n = cells.map((c) => Number(c.trim()));
    if (!n.every(Number.isFinite)) {
      malformed++;
      continue;
    }
    rows.push({
      tMs: (n[0] as number) * 1000,
      cores: n[1] as number,
      cpuCapacityMhz: n[2] as number,
      cpuUsageMhz: n[3] as number,
      cpuUsagePct: n[4] as number,
      memCapacityKb: n[5] as number,
      memUsageKb: n[6] as number,
      diskReadKBs: n[7] as number,
      diskWriteKBs: n[8] as number,
      netRxKBs: n[9] as number,
      netTxKBs: n[10] as number,
    });
  }
  return { rows, malformed };
}

/**
 * Reads every month file of one VM under `dir` (`2013-7/<vm>.csv.gz`, ...), merges them and cleans
 * them. Throws NotFoundError when no file exists for the VM.
 */
export function loadBitbrainsVm(dir: string, vm: number): BitbrainsVm {
  if (!Number.isInteger(vm) || vm < 1) throw new InvalidArgumentError('vm', `expected a positive integer, got ${vm}`);
  const all: BitbrainsRow[] = [];
  let malformed = 0;
  let files = 0;
  for (const month of ['2013-7', '2013-8', '2013-9']) {
    const path = join(dir, month, `${vm}.csv.gz`);
    if (!existsSync(path)) continue;
    files++;
    const parsed = parseBitbrainsCsv(gunzipSync(readFileSync(path)).toString('utf8'));
    malformed += parsed.malformed;
    for (const r of parsed.rows) all.push(r);
  }
  if (files === 0) throw new NotFoundError(`Bitbrains trace for VM ${vm} in ${dir}`, 'vm');
  all.sort((a, b) => a.tMs - b.tMs);
  const rows: BitbrainsRow[] = [];
  let duplicates = 0;
  let poweredOff = 0;
  let lastT = Number.NEGATIVE_INFINITY;
  for (const r of all) {
    if (r.tMs === lastT) {
      duplicates++;
      continue;
    }
    lastT = r.tMs;
    if (r.cpuCapacityMhz <= 0 || r.cores <= 0) {
      poweredOff++;
      continue;
    }
    rows.push(r);
  }
  return { vm, rows, dropped: { duplicates, poweredOff, malformed } };
}

/**
 * Turns rows into history-store samples for one metric. Timestamps are snapped to the nearest
 * multiple of `gridMs` because the trace's nominal 300 s cadence jitters by a few seconds, and
 * flooring would leave spurious empty buckets; two rows snapping to one point keep the later one.
 */
export function toSamples(rows: readonly BitbrainsRow[], metric: BitbrainsMetric, gridMs: number): { metric: string; t: number; value: number }[] {
  const spec = BITBRAINS_METRICS[metric];
  return rows.map((r) => ({ metric: spec.metric, t: Math.round(r.tMs / gridMs) * gridMs, value: spec.get(r) }));
}

/** Parses `--vms` values such as `1-40`, `3`, `1,4,7-9`. */
export function parseVmList(text: string): number[] {
  const out = new Set<number>();
  for (const part of text.split(',')) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
    if (!m) throw new InvalidArgumentError('vms', `expected a list like 1-40 or 1,3,5, got ${JSON.stringify(text)}`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (a < 1 || b < a) throw new InvalidArgumentError('vms', `bad range ${JSON.stringify(part)}`);
    for (let v = a; v <= b; v++) out.add(v);
  }
  return [...out].sort((x, y) => x - y);
}
