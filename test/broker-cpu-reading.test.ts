import { describe, expect, it } from 'vitest';
import { createProcCounters } from '../agent/resource-probe.js';

/**
 * /proc/stat's counters run from boot: read once, they give the average load since then. An
 * agent's first CPU reading is taken over a short window of its own instead, so a host that was
 * busy for days and is idle now does not report itself busy (nor the other way round).
 */
describe('CPU load from /proc/stat', () => {
  it('the first reading covers a short window, not the time since boot; later ones the time since the previous', async () => {
    // user nice system idle iowait irq softirq steal, two cores.
    const snapshots = [
      'cpu  5000 0 5000 10000 0 0 0 0\ncpu0 2500 0 2500 5000 0 0 0 0\ncpu1 2500 0 2500 5000 0 0 0 0\n',
      'cpu  5010 0 5000 10090 0 0 0 0\ncpu0 2510 0 2500 5040 0 0 0 0\ncpu1 2500 0 2500 5050 0 0 0 0\n',
      'cpu  5070 0 5010 10110 0 0 0 0\ncpu0 2570 0 2500 5040 0 0 0 0\ncpu1 2500 0 2510 5070 0 0 0 0\n',
    ];
    const paused: number[] = [];
    let i = 0;
    const counters = createProcCounters(
      async (path) => {
        expect(path).toBe('/proc/stat');
        return snapshots[i++] as string;
      },
      async (ms) => {
        paused.push(ms);
      },
    );
    // Since boot the host was 50% busy; over the first window 10 of 100 ticks were busy.
    const first = await counters.cpu();
    expect(paused).toEqual([250]);
    expect(first.total).toBeCloseTo(10);
    expect(first.cores.map((c) => Math.round(c))).toEqual([20, 0]);
    // The next reading: 70 busy of 90 ticks since the previous one, with no wait.
    const second = await counters.cpu();
    expect(paused).toEqual([250]);
    expect(second.total).toBeCloseTo((100 * 70) / 90);
  });

  it('the CPU clock comes from /proc/cpuinfo where systeminformation has none (virtual machines)', async () => {
    const cpuinfo = 'processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2599.998\n\nprocessor\t: 1\ncpu MHz\t\t: 2400.000\n';
    expect(await createProcCounters(async () => cpuinfo).cpuMhz()).toBe(2599.998);
    expect(await createProcCounters(async () => 'processor\t: 0\n').cpuMhz()).toBeUndefined();
  });
});
