import { describe, expect, it } from 'vitest';
import { NodeState, type ConnectRequest, type ConnectResponse, type NodeInfo } from '../common/gen/retrace/v1/node.js';
import { ShardStatus, type ShardAssignment } from '../common/gen/retrace/v1/shard.js';
import { createDispatcher } from '../coordinator/scheduler/dispatcher.js';

// `replay start --fault outage:NODE:after=0s:for=30d`, then `replay cancel`: the replay ended, but
// the node's link stayed cut for 30 days, so every later shard (live ingest, other replays) waited
// with "no READY node". Withdrawing a replay's outage must end one already in force.

function node(nodeId: string): NodeInfo {
  return {
    nodeId, host: 'h', labels: {}, state: NodeState.NODE_STATE_READY,
    capabilities: [{ name: 'cpu.threads', value: 4, text: '', unit: '', source: 1 }, { name: 'memory.total', value: 8 * 1024 ** 3, text: '', unit: '', source: 1 }],
    latest: [],
    lastReportNs: '0', registeredNs: '0', firstSeenNs: '0', reportIntervalNs: '0', connected: true, agentVersion: '', codeVersions: [], coordinatorRttMs: 0, transitions: [], drainReason: '', boundToken: '',
  };
}

function shard(id: string): ShardAssignment {
  return { shardId: id, jobId: 'replay-x', stepName: 's', transform: 't', codeVersion: `sha256:${'0'.repeat(64)}`, inputs: [], parameters: undefined, timeoutMs: 0, attempt: 0, memoryLimitMb: 0 } as unknown as ShardAssignment;
}

describe('a replay outage withdrawn while in force', () => {
  it('ends at once: the node takes shards again', async () => {
    const sent: { nodeId: string; msg: ConnectResponse }[] = [];
    const listeners: ((nodeId: string, m: ConnectRequest) => void)[] = [];
    const mesh = {
      nodes: () => [node('a')],
      send: (nodeId: string, msg: ConnectResponse) => (sent.push({ nodeId, msg }), true),
      onMessage: (l: (nodeId: string, m: ConnectRequest) => void) => (listeners.push(l), () => {}),
      on: () => () => {},
    };
    const d = createDispatcher({ mesh: mesh as never, log: () => {}, shardTimeoutMs: 600_000 });
    try {
      const withdraw = d.setLinkOutage('a', Date.now() + 30 * 86_400_000);
      const p = d.run(shard('x'));
      await new Promise((r) => setTimeout(r, 50));
      expect(sent.filter((s) => s.msg.body?.$case === 'assign')).toEqual([]);
      // Its node is READY in `retrace nodes`: the reason says what keeps it from the shard.
      expect(d.waiting().map((w) => w.reason)).toEqual(['no READY node (1 known): a unreachable (link down or agent disconnected)']);
      withdraw();
      await new Promise((r) => setTimeout(r, 50));
      expect(sent.filter((s) => s.msg.body?.$case === 'assign').map((s) => s.nodeId)).toEqual(['a']);
      const outcomes = [{ shardId: 'x', status: ShardStatus.SHARD_STATUS_SUCCEEDED, outputs: [], error: '', startedAtNs: '0', endedAtNs: '0', nodeId: 'a', attempt: 1 }];
      for (const l of listeners) l('a', { body: { $case: 'outcomes', value: { outcomes } } } as unknown as ConnectRequest);
      expect(await p).toMatchObject({ nodeId: 'a', outcome: { status: ShardStatus.SHARD_STATUS_SUCCEEDED } });
    } finally {
      d.stop();
    }
  });
  it('a shard bound to the cut node says that node is unreachable, not only which READY nodes miss the target', async () => {
    const mesh = { nodes: () => [node('a'), node('b')], send: () => true, onMessage: () => () => {}, on: () => () => {} };
    const d = createDispatcher({ mesh: mesh as never, log: () => {}, shardTimeoutMs: 600_000 });
    try {
      d.setLinkOutage('a', Date.now() + 30 * 86_400_000);
      void d.run(shard('y'), { placement: { nodeIds: ['a'] } });
      await new Promise((r) => setTimeout(r, 50));
      expect(d.waiting().map((w) => w.reason)).toEqual(['placement.nodeIds is [a]: no READY node meets it (1 READY node: b); not READY: a unreachable (link down or agent disconnected)']);
    } finally {
      d.stop();
    }
  });
});
