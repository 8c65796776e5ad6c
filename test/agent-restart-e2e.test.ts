import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { contentHashOf } from '../common/hash.js';
import { createDispatcher } from '../coordinator/scheduler/dispatcher.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import type { LocalAgent } from '../scripts/cli/local-agents.js';
import { startAgentCoordinator, type AgentCoordinator } from './helpers/test-coordinator.js';

const SOURCE = `
import { defineTransform } from 'retrace/transform';
export default defineTransform({
  name: 'slow-echo',
  async run(input, params) {
    await new Promise((resolve) => setTimeout(resolve, Number(params.sleepMs ?? 0)));
    return { json: input.json() };
  },
});
`;

describe('an agent SIGKILLed and restarted with the same id (real coordinator, real agent processes)', () => {
  let tc: AgentCoordinator;
  const shared: CoordinatorServices = {};
  let codeVersion = '';

  beforeAll(async () => {
    tc = await startAgentCoordinator({
      tmpPrefix: 'retrace-restart-',
      shared,
      // LOST only after 20 s of silence: the restarted agent is back long before.
      mesh: { minReportIntervalMs: 50, suspectAfterIntervals: 50, lostAfterIntervals: 100 },
      transforms: [{ name: 'slow-echo', source: SOURCE, file: 'echo.ts' }],
      agents: [{ name: 'r' }],
    });
    codeVersion = tc.codeVersions['slow-echo'] ?? '';
  }, 60_000);

  afterAll(async () => {
    await tc?.stop();
  }, 30_000);

  it('its shards are placed again as soon as the new process registers, not after the shard deadline', async () => {
    const mesh = shared.mesh;
    if (!mesh) throw new Error('no mesh');
    const logs: string[] = [];
    const d = createDispatcher({ mesh, log: (_level, event, fields) => logs.push(`${event} ${JSON.stringify(fields)}`), shardTimeoutMs: 60_000 });
    try {
      const payload = Buffer.from('{"n":1}');
      const s: ShardAssignment = {
        shardId: 'restart-1', stepName: 'echo', transform: 'slow-echo', codeVersion, parameters: { sleepMs: 2000 },
        inputs: [{ name: 'in', objectId: 'obj-1', contentHash: contentHashOf(payload), payload, key: 'k1', eventTimeNs: '0', mediaType: 'application/json', cached: false }],
        timeoutMs: 0, memoryLimitMb: 0, jobId: '', attempt: 0,
      };
      const run = d.run(s);
      const victim = tc.agents.pop() as LocalAgent;
      const end = Date.now() + 10_000;
      while ((d.inFlight().get(victim.nodeId) ?? 0) === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 25));
      await new Promise((r) => setTimeout(r, 300)); // it reached the agent
      victim.process.kill('SIGKILL');
      await new Promise((r) => victim.process.once('exit', r));
      const [again] = await tc.startAgents([{ name: 'r' }]);
      expect(again?.nodeId).toBe(victim.nodeId);
      const r = await run;
      expect(r, r.outcome.error).toMatchObject({ nodeId: victim.nodeId, attempts: 2, outcome: { status: ShardStatus.SHARD_STATUS_SUCCEEDED } });
      expect(logs.filter((l) => l.startsWith('shard:reassigned'))).toEqual([expect.stringContaining(`node restarted (node ${victim.nodeId})`)]);
    } finally {
      d.stop();
    }
  }, 40_000);
});
