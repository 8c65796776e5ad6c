import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from '../../common/errors.js';
import { ReadingSource, type AgentRegistration, type ResourceReading, type ResourceReport } from '../../common/gen/retrace/v1/node.js';
import { isNodeId, isReadingName } from '../../common/node-resources.js';
import { parseNanos } from '../../common/time.js';
import type { Registration } from './node-registry.js';

/** Most readings in one registration or report. */
export const MAX_READINGS = 1024;

const KNOWN_SOURCES = new Set<number>([
  ReadingSource.READING_SOURCE_MEASURED,
  ReadingSource.READING_SOURCE_DECLARED,
  ReadingSource.READING_SOURCE_UNKNOWN,
]);

/**
 * Checks readings in place (no copy: this runs for every report); throws InvalidArgumentError
 * naming `${field}[i].<part>`.
 */
export function validateReadings(readings: ResourceReading[], field: string): ResourceReading[] {
  if (readings.length > MAX_READINGS) throw new InvalidArgumentError(field, `at most ${MAX_READINGS} readings, got ${readings.length}`);
  for (let i = 0; i < readings.length; i++) {
    const r = readings[i] as ResourceReading;
    if (!isReadingName(r.name)) throw new InvalidArgumentError(`${field}[${i}].name`, `expected a dotted lowercase name such as cpu.load, got ${JSON.stringify(r.name)}`);
    if (!Number.isFinite(r.value)) throw new InvalidArgumentError(`${field}[${i}].value`, `must be finite, got ${r.value}`);
    if (!KNOWN_SOURCES.has(r.source)) throw new InvalidArgumentError(`${field}[${i}].source`, 'must be MEASURED, DECLARED or UNKNOWN');
    if (r.text.length > 1024) throw new InvalidArgumentError(`${field}[${i}].text`, 'longer than 1024 characters');
    if (r.unit.length > 32) throw new InvalidArgumentError(`${field}[${i}].unit`, 'longer than 32 characters');
  }
  return readings;
}

/**
 * Checks a registration and applies the coordinator's interval bounds. An empty node id gets a
 * fresh one (`node-<12 hex>`), which the agent persists from the ack.
 */
export function validateRegistration(
  reg: AgentRegistration,
  bounds: { defaultReportIntervalMs: number; minReportIntervalMs: number; maxReportIntervalMs: number },
): Registration {
  const f = 'register';
  const nodeId = reg.nodeId === '' ? `node-${randomBytes(6).toString('hex')}` : reg.nodeId;
  if (!isNodeId(nodeId)) throw new InvalidArgumentError(`${f}.node_id`, `expected 1..128 of [A-Za-z0-9._-], got ${JSON.stringify(reg.nodeId)}`);
  const host = reg.host.trim();
  if (host === '' || host.length > 253) throw new InvalidArgumentError(`${f}.host`, 'must be 1..253 characters');
  const labelKeys = Object.keys(reg.labels);
  if (labelKeys.length > 64) throw new InvalidArgumentError(`${f}.labels`, 'at most 64 labels');
  for (const k of labelKeys) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/.test(k)) throw new InvalidArgumentError(`${f}.labels`, `bad key ${JSON.stringify(k)}`);
    if ((reg.labels[k] ?? '').length > 256) throw new InvalidArgumentError(`${f}.labels.${k}`, 'value longer than 256 characters');
  }
  if (reg.codeVersions.length > 10_000) throw new InvalidArgumentError(`${f}.code_versions`, 'at most 10000 entries');
  reg.codeVersions.forEach((v, i) => {
    if (v.length === 0 || v.length > 200) throw new InvalidArgumentError(`${f}.code_versions[${i}]`, 'must be 1..200 characters');
  });
  if (reg.agentVersion.length > 64) throw new InvalidArgumentError(`${f}.agent_version`, 'longer than 64 characters');
  if (reg.processId.length > 64) throw new InvalidArgumentError(`${f}.process_id`, 'longer than 64 characters');
  const askedMs = Number(parseNanos(reg.reportIntervalNs || '0', `${f}.report_interval_ns`)) / 1e6;
  // The coordinator holds the agent to an interval within its bounds rather than refusing it:
  // an agent configured for 10 ms still joins, at the minimum rate.
  const reportIntervalMs = askedMs === 0 ? bounds.defaultReportIntervalMs : Math.min(bounds.maxReportIntervalMs, Math.max(bounds.minReportIntervalMs, askedMs));
  return {
    nodeId,
    host,
    labels: { ...reg.labels },
    capabilities: validateReadings(reg.capabilities, `${f}.capabilities`),
    codeVersions: [...reg.codeVersions],
    agentVersion: reg.agentVersion,
    reportIntervalMs,
    draining: reg.draining,
    processId: reg.processId,
    // Whatever an agent claims, the coordinator's mirror of it never holds more than 64 GiB.
    payloadCacheBytes: Math.min(Number(reg.payloadCacheBytes) || 0, 64 * 2 ** 30),
  };
}

/** Checks a report; resolves its time (ms) and readings. */
export function validateReport(report: ResourceReport): { timeMs: number; readings: ResourceReading[] } {
  const timeNs = parseNanos(report.timeNs, 'report.time_ns');
  if (timeNs === 0n) throw new InvalidArgumentError('report.time_ns', 'must be set');
  return { timeMs: Number(timeNs / 1_000_000n), readings: validateReadings(report.readings, 'report.readings') };
}
