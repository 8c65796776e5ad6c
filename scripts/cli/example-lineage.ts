import { hostname } from 'node:os';
import { contentHashOf } from '../../common/hash.js';
import { TriggerKind, type LineageEvent, type ResourceUsage, type Step } from '../../common/gen/retrace/v1/provenance.js';

/**
 * The quick start's example: a tiny order pipeline run for real in this process, its lineage
 * recorded at record level. parse → enrich (with a currency table) → aggregate into a daily
 * report. Each step's CPU time, wall time and heap growth are measured while it runs. Event
 * ids are derived from content, so running the example twice stores nothing new.
 */
export function buildExampleLineage(options: { orders?: number; nodeId?: string } = {}): { events: LineageEvent[]; report: string; firstOrder: string; secondOrder: string; runEventId: string } {
  const n = options.orders ?? 12;
  const nodeId = options.nodeId ?? 'local';
  const host = hostname();
  const events: LineageEvent[] = [];
  const runId = `example-run-${n}`;
  const base = 1_767_225_600_000_000_000n; // 2026-01-01T00:00:00Z: fixed, so the example is reproducible
  let clock = base;
  const tick = (ms: number): bigint => (clock += BigInt(ms) * 1_000_000n);
  const code = (fn: (...a: never[]) => unknown): string => contentHashOf(fn.toString());
  const orderId = (i: number): string => `record:orders:${i}`;

  events.push({ eventId: `example:${runId}`, eventTimeNs: tick(1).toString(), producer: 'retrace-example', body: { $case: 'run', value: { runId, name: 'example/orders-daily', parentRunId: '', state: 'COMPLETE', startedAtNs: base.toString(), endedAtNs: '0', facets: undefined } } });

  const currency = JSON.stringify({ EUR: 1.08, GBP: 1.27, USD: 1 });
  const currencyHash = contentHashOf(currency);
  events.push(objectEvent('dataset:reference:currency', currency, tick(1)));

  const enrichedRefs: { objectId: string; contentHash: string; unversioned: boolean }[] = [];
  const totals = new Map<string, number>();
  const parse = (raw: string): { id: number; amount: number; currency: string } => JSON.parse(raw) as { id: number; amount: number; currency: string };
  const enrich = (o: { id: number; amount: number; currency: string }, rates: Record<string, number>): { id: number; usd: number } => ({ id: o.id, usd: Math.round(o.amount * (rates[o.currency] ?? 1) * 100) / 100 });
  for (let i = 1; i <= n; i++) {
    const raw = JSON.stringify({ id: i, amount: 10 * i + (i % 3), currency: ['EUR', 'GBP', 'USD'][i % 3] });
    const rawId = orderId(i);
    events.push(objectEvent(rawId, raw, tick(5), 'application/json'));
    const parsed = measure(() => JSON.stringify(parse(raw)));
    events.push(stepEvent({ stepId: `${runId}/parse/${i}`, runId, transform: 'parse-order', codeVersion: code(parse), parameters: { strict: true }, nodeId, host, startedAtNs: tick(1).toString(), endedAtNs: tick(2).toString(), resources: parsed.resources, used: [{ objectId: rawId, contentHash: contentHashOf(raw), unversioned: false }], generated: [{ objectId: `record:parsed:${i}`, contentHash: contentHashOf(parsed.value), unversioned: false }] }));
    const enriched = measure(() => JSON.stringify(enrich(parse(parsed.value), JSON.parse(currency) as Record<string, number>)));
    const ref = { objectId: `record:enriched:${i}`, contentHash: contentHashOf(enriched.value), unversioned: false };
    enrichedRefs.push(ref);
    events.push(stepEvent({ stepId: `${runId}/enrich/${i}`, runId, transform: 'enrich-currency', codeVersion: code(enrich), parameters: { target: 'USD' }, nodeId, host, startedAtNs: tick(1).toString(), endedAtNs: tick(3).toString(), resources: enriched.resources, used: [{ objectId: `record:parsed:${i}`, contentHash: contentHashOf(parsed.value), unversioned: false }, { objectId: 'dataset:reference:currency', contentHash: currencyHash, unversioned: false }], generated: [ref] }));
    const day = `2026-01-0${1 + (i % 2)}`;
    totals.set(day, (totals.get(day) ?? 0) + (JSON.parse(enriched.value) as { usd: number }).usd);
  }
  const report = measure(() => JSON.stringify(Object.fromEntries([...totals].sort())));
  const reportId = 'dataset:reports:daily-revenue';
  events.push(stepEvent({ stepId: `${runId}/aggregate`, runId, transform: 'aggregate-daily', codeVersion: contentHashOf('aggregate-daily:v1'), parameters: { window: '1d' }, nodeId, host, startedAtNs: tick(1).toString(), endedAtNs: tick(10).toString(), resources: report.resources, used: enrichedRefs, generated: [{ objectId: reportId, contentHash: contentHashOf(report.value), unversioned: false }] }));
  return { events, report: reportId, firstOrder: orderId(1), secondOrder: orderId(2), runEventId: `example:${runId}` };
}

function objectEvent(objectId: string, content: string, time: bigint, mediaType = 'application/json'): LineageEvent {
  const contentHash = contentHashOf(content);
  return { eventId: `example:${objectId}@${contentHash}`, eventTimeNs: time.toString(), producer: 'retrace-example', body: { $case: 'objectVersion', value: { objectId, contentHash, size: Buffer.byteLength(content).toString(), mediaType, createdAtNs: time.toString(), attributes: { source: 'example' }, facets: undefined } } };
}

function stepEvent(s: Omit<Step, 'why' | 'facets'>): LineageEvent {
  const step: Step = { ...s, why: { kind: TriggerKind.TRIGGER_KIND_EVENT, id: s.runId, principal: 'example' }, facets: undefined };
  return { eventId: `example:${s.stepId}:${contentHashOf(JSON.stringify(s.generated))}`, eventTimeNs: s.endedAtNs, producer: 'retrace-example', body: { $case: 'step', value: step } };
}

/** Runs fn and measures what it cost: CPU time, wall time, heap growth (a lower bound of peak memory). */
function measure(fn: () => string): { value: string; resources: ResourceUsage } {
  const cpu0 = process.cpuUsage();
  const heap0 = process.memoryUsage().heapUsed;
  const t0 = process.hrtime.bigint();
  const value = fn();
  const wall = process.hrtime.bigint() - t0;
  const cpu = process.cpuUsage(cpu0);
  const heap = Math.max(0, process.memoryUsage().heapUsed - heap0);
  return {
    value,
    resources: { cpuTimeNs: String((cpu.user + cpu.system) * 1000), peakMemoryBytes: String(heap), netBytesIn: '0', netBytesOut: '0', diskBytesRead: '0', diskBytesWritten: String(Buffer.byteLength(value)), gpuTimeNs: '0', gpuUtilization: 0, wallTimeNs: wall.toString() },
  };
}
