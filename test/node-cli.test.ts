import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { meshExtension } from '../coordinator/mesh/mesh-extension.js';
import type { NodeMesh } from '../coordinator/mesh/node-mesh.js';
import { spawnAgent, waitFor, type AgentProcess } from './helpers/mesh-server.js';
import { startTestCoordinator, type TestCoordinator } from './helpers/test-coordinator.js';
import { runCli } from './helpers/in-process-cli.js';

const retrace = runCli;

// The mesh inside the real coordinator (as the CLI's coordinator runs it), a real agent started
// through the CLI with --token-file, and the client commands against them.
describe('retrace agent / nodes / forecast against a real coordinator', () => {
  let coord: TestCoordinator;
  let mesh: NodeMesh | undefined;
  let agent: AgentProcess;
  let agentDir: string;
  let outDir: string;
  let nodeId: string;

  beforeAll(async () => {
    coord = await startTestCoordinator({ extensions: [meshExtension({ options: { sweepIntervalMs: 25, suspectAfterIntervals: 5, lostAfterIntervals: 12 }, onMesh: (m) => (mesh = m) })] });
    agentDir = mkdtempSync(join(tmpdir(), 'retrace-agent-'));
    outDir = mkdtempSync(join(tmpdir(), 'retrace-cli-'));
    agent = spawnAgent([
      '--coordinator', coord.grpcAddress,
      '--data', agentDir,
      '--token-file', join(coord.dataDir, 'auth-token'),
      '--report-interval', '200ms',
      '--label', 'zone=test',
      '--advertise', 'gpu=1',
    ]);
    nodeId = (await agent.registered).nodeId;
  });

  afterAll(async () => {
    if (agent.child.exitCode === null) agent.child.kill('SIGKILL');
    await agent.exited;
    await coord.stop();
    rmSync(agentDir, { recursive: true, force: true });
    rmSync(outDir, { recursive: true, force: true });
  });

  const conn = () => ['--coordinator', coord.grpcAddress, '--token', coord.token];

  it('lists nodes as a table and as JSON', async () => {
    expect(mesh?.state).toBe('RUNNING');
    await waitFor(async () => (await retrace(['nodes', ...conn()])).out.includes('%'), 10_000, 'a report in the table');
    const table = await retrace(['nodes', ...conn()]);
    expect(table.code).toBe(0);
    expect(table.out).toMatch(/^ID\s+HOST\s+STATE\s+CPU\s+MEMORY\s+GPU/);
    expect(table.out).toContain(nodeId);
    expect(table.out).toMatch(/READY/);
    expect(table.out).toContain('zone=test');
    expect(table.out).toMatch(/1\*/); // the declared GPU, marked
    const json = await retrace(['nodes', '--json', ...conn()]);
    const parsed = JSON.parse(json.out) as { nodes: { nodeId: string; state: string }[] };
    expect(parsed.nodes[0]).toMatchObject({ nodeId, state: 'NODE_STATE_READY' });
    const shown = await retrace(['nodes', 'show', nodeId, ...conn()]);
    expect(JSON.parse(shown.out)).toMatchObject({ nodeId, labels: { zone: 'test' } });
  });

  it('shows history and a forecast with an SVG plot', async () => {
    await waitFor(async () => (await retrace(['nodes', 'history', nodeId, '--metric', 'cpu', '--since', '1m', '--json', ...conn()])).out.split('timeNs').length > 12, 15_000, 'a dozen samples');
    const hist = await retrace(['nodes', 'history', nodeId, '--metric', 'cpu', '--since', '1m', ...conn()]);
    expect(hist.code).toBe(0);
    expect(hist.out).toMatch(new RegExp(`^# ${nodeId} cpu\\.load \\(\\d+ points\\)`));
    // The history alone, charted: a line over time in the metric's unit.
    const histPlot = join(outDir, 'history.svg');
    const h = await retrace(['nodes', 'history', nodeId, '--metric', 'memory', '--since', '1m', '--plot', histPlot, ...conn()]);
    expect(h.code).toBe(0);
    expect(h.out).toContain(`plot written to ${histPlot}`);
    const histSvg = readFileSync(histPlot, 'utf8');
    expect(histSvg).toMatch(/class="history"[^>]* d="M[\d.]+,[\d.]+L/);
    expect(histSvg).toMatch(/>memory\.used \((MiB|GiB|TiB)\)<\/text>/);
    expect(histSvg).toContain('>time (UTC)</text>');
    const plot = join(outDir, 'cpu.svg');
    const f = await retrace(['forecast', nodeId, '--metric', 'cpu', '--horizon', '2s', '--step', '200ms', '--plot', plot, ...conn()]);
    expect(f.err).toBe('');
    expect(f.code).toBe(0);
    expect(f.out).toMatch(/interval, fitted on \d+ points/);
    expect(f.out.trim().split('\n').length).toBeGreaterThanOrEqual(11);
    // The chart holds the recorded history, the forecast line and its band, with the band's coverage in the legend.
    const svg = readFileSync(plot, 'utf8');
    expect(svg).toMatch(/^<svg/);
    expect(svg).toMatch(/class="history"[^>]* d="M[\d.]+,[\d.]+L/);
    expect(svg).toMatch(/class="forecast"[^>]* d="M[\d.]+,[\d.]+L/);
    expect(svg).toContain('class="interval"');
    expect(svg).toMatch(/\d+% interval/);
    expect(svg).not.toContain('NaN');
    expect(svg).toContain('>cpu.load (%)</text>');
    // Memory in the binary unit the text prints (GiB or MiB), named on the axis; decimal ticks
    // ("2.1G") read 2.0 GiB in the text, and the axis named no unit.
    const memPlot = join(outDir, 'memory.svg');
    const m = await retrace(['forecast', nodeId, '--metric', 'memory', '--horizon', '2s', '--step', '200ms', '--plot', memPlot, ...conn()]);
    expect(m.code).toBe(0);
    const unit = /fitted on[^\n]*\n\S+\s+[\d.]+ (\w+)/.exec(m.out)?.[1];
    expect(['MiB', 'GiB', 'TiB']).toContain(unit);
    const memSvg = readFileSync(memPlot, 'utf8');
    expect(memSvg).toContain(`>memory.used (${unit as string})</text>`);
    const ticks = [...memSvg.matchAll(/<text x="58" [^>]*text-anchor="end"[^>]*>([^<]*)</g)].map((x) => x[1] as string);
    expect(ticks.length).toBeGreaterThan(1);
    for (const tick of ticks) expect(tick).toMatch(/^-?[\d.]+$/);
    const bad = await retrace(['forecast', nodeId, '--metric', 'cpu', '--horizon', '-2h', ...conn()]);
    expect(bad.code).toBe(2);
    const unknown = await retrace(['nodes', 'history', 'no-such-node', '--metric', 'cpu', ...conn()]);
    expect(unknown.code).toBe(1);
    expect(unknown.err).toMatch(/not found/);
  });

  it('watches live and drains a node', async () => {
    const abort = new AbortController();
    const watching = retrace(['nodes', '--watch', ...conn()], abort.signal);
    const drained = await retrace(['nodes', 'drain', nodeId, '--reason', 'maintenance', ...conn()]);
    expect(drained.out).toBe(`${nodeId}: DRAINING (maintenance)\n`);
    await new Promise((r) => setTimeout(r, 800));
    abort.abort();
    const w = await watching;
    // Stopped by its caller's signal, as Ctrl-C stops it: interrupted.
    expect(w.code).toBe(130);
    expect(w.out).toMatch(/DRAINING/);
  });

  it('the agent leaves cleanly on SIGTERM', async () => {
    agent.child.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    const json = JSON.parse((await retrace(['nodes', '--json', ...conn()])).out) as { nodes: { state: string }[] };
    expect(json.nodes[0]?.state).toBe('NODE_STATE_LEFT');
  });
});
