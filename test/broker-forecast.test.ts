import { describe, expect, it } from 'vitest';
import { createForecaster } from '../coordinator/forecast/forecaster.js';

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
