import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import type { Step } from '../common/gen/retrace/v1/provenance.js';
import { ChangeKind, RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import type { CodeStore } from '../coordinator/code/code-store.js';
import { topoOrder, type AffectedNode } from '../coordinator/recompute/impact-analysis.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { runCli } from './helpers/in-process-cli.js';
import { applyAndIngest, plainPipeline, startImpactCoordinator } from './helpers/impact-runner.js';
import type { TestCoordinator } from './helpers/test-coordinator.js';

/**
 * Impact over many steps. A code change of a step run over 20,000 records took `retrace impact`
 * 19.5 s: Kahn's order sorted its whole ready list again each time a step became ready, and
 * each affected step looked its code up and ran the allocator over every node again; each step
 * was then read alone, a scan of the steps table and a ledger read. Work is counted here
 * (comparisons, code lookups, store reads), not timed; and the CLI said nothing while it worked.
 */

const RECORDS = 60;

describe('impact over many steps', () => {
  let tc: TestCoordinator;
  let shared: CoordinatorServices;
  let pipeline: Pipeline;
  let changeId = '';

  beforeAll(async () => {
    let code: CodeStore;
    ({ tc, shared, code } = await startImpactCoordinator());
    pipeline = await plainPipeline(code, 'many');
    await applyAndIngest(tc, pipeline, Array.from({ length: RECORDS }, (_, i) => [`k${i}`, `r${i}`] as const));
  }, 30_000);
  afterAll(async () => tc?.stop());

  it("a code change's impact looks each step's code up once, not once per affected step", async () => {
    const code = shared.code as CodeStore;
    const v2 = await code.publish(new TextEncoder().encode('// plain v2'), { transform: 'plain', requirements: undefined, sourceFile: 'plain.ts', bundler: 'test' });
    await tc.client(PipelineServiceDefinition).applyPipeline({ pipeline: { ...pipeline, steps: pipeline.steps.map((s) => (s.name === 'scale' ? { ...s, codeVersion: v2.code.codeVersion } : s)) } });
    const recompute = tc.client(RecomputeServiceDefinition);
    const change = (await recompute.listChanges({ pipeline: 'many', pageSize: 0, pageToken: '' })).changes.find((c) => c.kind === ChangeKind.CHANGE_KIND_CODE_VERSION);
    expect(change).toBeDefined();
    const describeSpy = vi.spyOn(code, 'describe');
    const store = tc.coordinator.lineage.store;
    const scans = vi.spyOn(store, 'entitySeqs');
    const reads = vi.spyOn(store, 'getEntries');
    const impact = await recompute.impact({ target: { $case: 'changeId', value: change?.changeId ?? '' }, asOfNs: '' });
    // Each step here has one event, which the index locates: no scan of the steps table, and the
    // steps read a batch at a time (one read each took 60,000 steps about 15 s), not one by one.
    expect(scans).not.toHaveBeenCalled();
    expect(reads.mock.calls.length).toBeLessThanOrEqual(4);
    scans.mockRestore();
    reads.mockRestore();
    expect(impact.stepCount).toBe(2 * RECORDS);
    expect(impact.placements).toEqual({ 'cpu-node': 2 * RECORDS });
    expect(impact.steps.every((s) => s.placementNodeId === 'cpu-node')).toBe(true);
    // One lookup per pipeline step (scale at v2, classify at v1), not 120.
    expect(describeSpy.mock.calls.length).toBeLessThanOrEqual(2);
    describeSpy.mockRestore();
    changeId = change?.changeId ?? '';
  });

  it('retrace impact says on stderr that it is still working when the answer is long in coming', async () => {
    const recomputer = (shared.recompute as NonNullable<CoordinatorServices['recompute']>).recomputer;
    const original = recomputer.impact.bind(recomputer);
    // An impact that takes 2.5 s, as one over many thousand steps does.
    const slow = vi.spyOn(recomputer, 'impact').mockImplementation(async (request) => {
      await new Promise((r) => setTimeout(r, 2500));
      return original(request);
    });
    try {
      const r = await runCli(['impact', changeId, '--limit', '3', '--coordinator', tc.grpcAddress, '--token', tc.token]);
      expect(r.code, r.err).toBe(0);
      expect(r.err).toMatch(new RegExp(`^computing the impact of ${changeId}: still working \\(2 s\\)\n`));
      expect(r.out).toContain(`${2 * RECORDS} steps`);
    } finally {
      slow.mockRestore();
    }
  });

  it('a cut answer (step_limit) keeps the rows a table shows and counts every step; retrace impact asks for only the rows it prints', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const target = { $case: 'changeId' as const, value: changeId };
    const full = await recompute.impact({ target, asOfNs: '' });
    const cut = await recompute.impact({ target, asOfNs: '', stepLimit: 5 });
    // None waits for a node here: the first five in dependency order, and the five nearest objects.
    expect(cut.steps.map((s) => s.stepId)).toEqual(full.steps.slice(0, 5).map((s) => s.stepId));
    expect(cut.objects).toEqual(full.objects.slice(0, 5));
    expect({ ...cut, steps: [], objects: [] }).toEqual({ ...full, steps: [], objects: [] });
    expect(full.steps).toHaveLength(2 * RECORDS);

    const recomputer = (shared.recompute as NonNullable<CoordinatorServices['recompute']>).recomputer;
    const asked = vi.spyOn(recomputer, 'impact');
    try {
      const conn = ['--coordinator', tc.grpcAddress, '--token', tc.token];
      const r = await runCli(['impact', changeId, '--limit', '3', ...conn]);
      expect(r.code, r.err).toBe(0);
      expect(asked.mock.calls.at(-1)?.[0].stepLimit).toBe(3);
      expect(r.out).toContain(`: ${2 * RECORDS} steps`);
      expect(r.out).toContain(`3 of ${2 * RECORDS} steps shown (--limit N, 0 for all)`);
      expect(r.out.split('\n').filter((l) => /^\d+ +many\//.test(l))).toHaveLength(3);
      // --json and the drawings take every step.
      const j = await runCli(['impact', changeId, '--json', ...conn]);
      expect(asked.mock.calls.at(-1)?.[0].stepLimit).toBe(0);
      expect((JSON.parse(j.out) as { steps: unknown[] }).steps).toHaveLength(2 * RECORDS);
    } finally {
      asked.mockRestore();
    }
  });

  it('orders thousands of affected steps with O(n log n) comparisons, in the order it always had', () => {
    const CHAINS = 400;
    let reads = 0;
    const node = (stepId: string, depth: number, dependsOn: string[]): AffectedNode => {
      const step = {} as Step;
      // Every comparison reads both step ids: counting the reads counts the work.
      Object.defineProperty(step, 'stepId', { get: () => (reads++, stepId) });
      return { step, pipeline: 'p', stepName: 's', key: '', output: '', outputs: [], inputNames: [], depth, dependsOn };
    };
    const nodes: AffectedNode[] = [];
    for (let i = 0; i < CHAINS; i++) {
      const id = (s: string): string => `${s}/${String(i).padStart(4, '0')}`;
      nodes.push(node(id('c-tag'), 3, [id('b-classify')]), node(id('b-classify'), 2, [id('a-scale')]), node(id('a-scale'), 1, []));
    }
    reads = 0;
    const ordered = topoOrder(nodes).map((n) => n.step.stepId);
    // The old order: every scale step (depth 1, by id), then classify, then tag.
    const expected = ['a-scale', 'b-classify', 'c-tag'].flatMap((s) => Array.from({ length: CHAINS }, (_, i) => `${s}/${String(i).padStart(4, '0')}`));
    expect(ordered).toEqual(expected);
    // 1,200 steps: a heap reads ids some 60,000 times; sorting the ready list each time, millions.
    expect(reads).toBeLessThan(150_000);
  });
});
