import { afterEach, describe, expect, it } from 'vitest';
import { ReadingSource, type ResourceReading } from '../common/gen/retrace/v1/node.js';
import { createForecaster } from '../coordinator/forecast/forecaster.js';
import { runCli } from './helpers/in-process-cli.js';
import { rawConnect, registerRequest, startMeshServer, waitFor, type MeshServer } from './helpers/mesh-server.js';

/** The first cpu.load readings (%) of a real agent on a 2-core VM, 2 s apart. */
const AGENT_CPU = [49.7, 28.2, 56.3, 43.0, 20.5, 0.8, 1.0, 8.3, 3.0, 0.8];
const T0 = Date.UTC(2026, 10, 24, 20, 39, 34);

describe('forecast intervals on a short history', () => {
  it('never narrow as the horizon grows, and never collapse onto the forecast', async () => {
    const forecaster = createForecaster({ seed: 1, clock: () => 0 });
    const series = { t: AGENT_CPU.map((_v, i) => T0 + i * 2000), v: AGENT_CPU };
    const fitted = await forecaster.fit(series, 2000);
    const f = forecaster.forecast(fitted, 30, series);
    for (let k = 1; k < 30; k++) {
      expect(f.upper[k]! - f.mean[k]!, `upper offset at step ${k + 1}`).toBeGreaterThanOrEqual(f.upper[k - 1]! - f.mean[k - 1]! - 1e-9);
      expect(f.mean[k]! - f.lower[k]!, `lower offset at step ${k + 1}`).toBeGreaterThanOrEqual(f.mean[k - 1]! - f.lower[k - 1]! - 1e-9);
    }
    // Two 3-step changes, both falls, gave an interval wholly below the forecast (upper = mean)
    // from step 3 on; the last value (0.8 %) can rise as it did one step ahead.
    expect(f.upper[29]! - f.mean[29]!).toBeGreaterThan(1);
  });
});

describe('Forecast RPC on a growing history', () => {
  let server: MeshServer | undefined;
  afterEach(async () => {
    await server?.stop();
    server = undefined;
  });

  const measured = (name: string, value: number): ResourceReading => ({ name, value, text: '', unit: 'percent', source: ReadingSource.READING_SOURCE_MEASURED });

  it('fits again once the history has doubled, and reports the points the fit saw', async () => {
    server = await startMeshServer();
    const s = server;
    const { out } = rawConnect(s);
    out.push(registerRequest('grow-h', '1000000000'));
    const t0 = Date.now() - 40_000;
    const push = (from: number, to: number): void => {
      for (let i = from; i < to; i++) out.push({ body: { $case: 'report', value: { timeNs: `${t0 + i * 1000}000000`, readings: [measured('cpu.load', i)], seq: String(i + 1) } } });
    };
    const request = { nodeId: 'grow-h', metric: 'cpu', horizonNs: '5000000000', stepNs: '1000000000', lookbackNs: '60000000000' };
    push(0, 4);
    await waitFor(async () => (await s.history.count('grow-h', 'cpu.load')) === 4, 5000, '4 samples');
    // The first forecast of a new node (the scheduler's headroom asks this early) fits on 4 points.
    const early = await s.client().forecast(request);
    expect(early.fittedPoints).toBe(4);
    expect(early.points[0]?.mean).toBe(3);
    push(4, 6);
    await waitFor(async () => (await s.history.count('grow-h', 'cpu.load')) === 6, 5000, '6 samples');
    // Not yet doubled: the fit is reused, and says what it was fitted on.
    expect((await s.client().forecast(request)).fittedPoints).toBe(4);
    push(6, 40);
    await waitFor(async () => (await s.history.count('grow-h', 'cpu.load')) === 40, 5000, '40 samples');
    const later = await s.client().forecast(request);
    expect(later.fittedPoints).toBe(40);
    expect(later.points[0]?.mean).toBe(39);
    out.close();
  });

  it('answers a horizon reaching before the epoch from all of the history, not an internal field', async () => {
    server = await startMeshServer();
    const s = server;
    const { out } = rawConnect(s);
    out.push(registerRequest('far-h', '1000000000'));
    out.push({ body: { $case: 'report', value: { timeNs: `${Date.now()}000000`, readings: [measured('cpu.load', 5)], seq: '1' } } });
    await waitFor(async () => (await s.history.count('far-h', 'cpu.load')) === 1, 5000, '1 sample');
    // 9.2e18 ns (292 years): the default lookback of 4 horizons started before 1970 and the
    // history store refused `fromMs`, a name the caller never sent.
    const err = await s.client().forecast({ nodeId: 'far-h', metric: 'cpu', horizonNs: '9223372036854775807', stepNs: '0', lookbackNs: '0' }).catch((e: unknown) => e);
    expect(String((err as Error).message)).not.toMatch(/fromMs/);
    expect(String((err as Error).message)).toMatch(/not enough history of cpu.load on far-h to forecast: \d points at the automatic step of \d+\w+ \(1\/60 of the horizon; a smaller step_ns may find enough\), need 3/);
    out.close();
  });
});

describe('retrace nodes history over a huge range', () => {
  let server: MeshServer | undefined;
  afterEach(async () => {
    await server?.stop();
    server = undefined;
  });

  it('--since longer than the epoch is all of the history, not a negative from_ns', async () => {
    server = await startMeshServer();
    const s = server;
    const { out } = rawConnect(s);
    out.push(registerRequest('old-h', '1000000000'));
    // One sample two hours ago, outside GetHistory's default hour.
    const reading: ResourceReading = { name: 'cpu.load', value: 7, text: '', unit: 'percent', source: ReadingSource.READING_SOURCE_MEASURED };
    out.push({ body: { $case: 'report', value: { timeNs: `${Date.now() - 7_200_000}000000`, readings: [reading], seq: '1' } } });
    await waitFor(async () => (await s.history.count('old-h', 'cpu.load')) === 1, 5000, '1 sample');
    const res = await runCli(['nodes', 'history', 'old-h', '--metric', 'cpu', '--since', '100000d', '--coordinator', s.address, '--token', s.token]);
    expect(res.err).toBe('');
    expect(res.code).toBe(0);
    expect(res.out).toMatch(/\(1 points\)/);
    out.close();
  });
});
