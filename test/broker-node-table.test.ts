import { describe, expect, it } from 'vitest';
import { NodeInfo, NodeState, ReadingSource } from '../common/gen/retrace/v1/node.js';
import { nodeTable } from '../scripts/cli/node-commands.js';

/** `retrace nodes`: a LOST node's load figures are its last readings, marked as such, not shown as if current. */
describe('retrace nodes table', () => {
  const reading = (name: string, value: number) => ({ name, value, text: '', unit: '', source: ReadingSource.READING_SOURCE_MEASURED });
  const node = (nodeId: string, state: NodeState, connected: boolean): NodeInfo =>
    NodeInfo.fromPartial({
      nodeId,
      host: 'h',
      state,
      connected,
      capabilities: [reading('cpu.threads', 2), reading('memory.total', 8 * 2 ** 30)],
      latest: [reading('cpu.load', 31), reading('memory.used', 2 * 2 ** 30)],
      lastReportNs: `${Date.now() - 25_000}000000`,
    });

  it('brackets the last load figures of a LOST node and says why; a READY node shows them plainly', () => {
    const now = Date.now();
    const table = nodeTable([node('a', NodeState.NODE_STATE_READY, true), node('b', NodeState.NODE_STATE_LOST, false)], now);
    const [header, ready, lost, ...footer] = table.trimEnd().split('\n');
    expect(header).toMatch(/^ID\s+HOST\s+STATE\s+CPU\s+MEMORY/);
    expect(ready).toMatch(/^a\s+h\s+READY\s+2 31%\s+2\.0 GiB \/ 8\.0 GiB/);
    expect(lost).toMatch(/^b\s+h\s+LOST\s+2 \(31%\)\s+\(2\.0 GiB\) \/ 8\.0 GiB/);
    expect(footer).toEqual(['(…) the last reading of a node that stopped reporting (see REPORT)']);
    expect(nodeTable([node('a', NodeState.NODE_STATE_READY, true)], now)).not.toContain('(…)');
  });
});

describe('retrace nodes table: bound token', () => {
  const node = (nodeId: string, boundToken: string): NodeInfo => NodeInfo.fromPartial({ nodeId, host: 'h', state: NodeState.NODE_STATE_READY, connected: true, boundToken, labels: { pool: 'x' } });

  it('has a TOKEN column: the bound token\'s name, "-" when unbound, a long name cut to 16 characters', () => {
    const table = nodeTable([node('a', 'agent-a'), node('b', ''), node('c', 'a-very-long-token-name-for-agents')]);
    const [header, a, b, c] = table.split('\n');
    expect(header).toMatch(/\sREPORT\s+TOKEN\s+LABELS$/);
    expect(a).toMatch(/\sagent-a\s+pool=x$/);
    expect(b).toMatch(/\s-\s+pool=x$/);
    expect(c).toMatch(/\sa-very-long-tok…\s+pool=x$/);
    // The column is as wide as its widest cell (16), not as the longest name.
    expect(c?.indexOf('pool=x')).toBe(header?.indexOf('LABELS'));
    expect((header?.indexOf('LABELS') ?? 0) - (header?.indexOf('TOKEN') ?? 0)).toBe(16 + 2);
  });
});

describe('retrace nodes table: declared accelerators', () => {
  const reading = (name: string, value: number, source = ReadingSource.READING_SOURCE_MEASURED) => ({ name, value, text: '', unit: '', source });
  const node = (nodeId: string, capabilities: ReturnType<typeof reading>[]): NodeInfo =>
    NodeInfo.fromPartial({ nodeId, host: 'h', state: NodeState.NODE_STATE_READY, connected: true, capabilities: [reading('cpu.threads', 2), reading('memory.total', 8 * 2 ** 30), ...capabilities] });

  it('shows declared TPUs (they showed as "-") and explains "*" only when a cell shows one', () => {
    const tpu = nodeTable([node('t', [reading('gpu.count', 0), reading('tpu.count', 4, ReadingSource.READING_SOURCE_DECLARED)])]);
    expect(tpu.split('\n')[1]).toMatch(/\s2\s+8\.0 GiB\s+tpu 4\*\s/);
    expect(tpu).toContain('* declared by the operator, not measured');
    // Only a declared link speed, which no column shows: no footer about a '*' nobody sees.
    const net = nodeTable([node('n', [reading('net.speed', 1e10, ReadingSource.READING_SOURCE_DECLARED)])]);
    expect(net).not.toContain('*');
  });
});
