import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { LineageServiceDefinition } from '../common/gen/retrace/v1/lineage.js';
import { LineageEvent } from '../common/gen/retrace/v1/provenance.js';
import { h } from './helpers/lineage-events.js';
import { runCliProcess } from './helpers/coordinator-process.js';
import { startTestCoordinator } from './helpers/test-coordinator.js';

/** Offline `retrace verify` draws a progress bar over the ledger, out of the latest checkpoint's tree size. */

const EVENTS = 10_001;
let dataDir = '';

afterAll(() => {
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

describe('retrace verify --data', () => {
  it('shows its progress through the ledger as a bar, on stderr, and clears it before the verdict', async () => {
    const tc = await startTestCoordinator({ quiet: true });
    dataDir = tc.dataDir;
    try {
      const events = Array.from({ length: EVENTS }, (_, i) =>
        LineageEvent.fromPartial({
          eventId: `obj:${i}`,
          eventTimeNs: String(1_730_000_000_000_000_000n + BigInt(i)),
          producer: 'test://verify-progress',
          body: { $case: 'objectVersion', value: { objectId: `in/${i}`, contentHash: h(`v${i}`), size: '1', mediaType: 'text/plain' } },
        }),
      );
      await tc.client(LineageServiceDefinition).submitEvents(
        (async function* () {
          for (let i = 0; i < events.length; i += 1000) yield { events: events.slice(i, i + 1000) };
        })(),
      );
    } finally {
      await tc.stop({ keepData: true });
    }
    const r = await runCliProcess(['verify', '--data', dataDir, '--ledger-only']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`] 100% 10000/${EVENTS} ledger entries`);
    expect(r.stderr).toMatch(/\[#{30}\]/);
    expect(r.stdout).toBe(`ok: ${EVENTS} entries; chain, Merkle root and indexes match the signed checkpoint at tree size ${EVENTS}\n`);
  }, 60_000);
});
