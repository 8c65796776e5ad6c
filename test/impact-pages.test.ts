import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Pipeline, PipelineServiceDefinition } from '../common/gen/retrace/v1/pipeline.js';
import { AffectedStep, ChangeKind, ImpactRequest, ImpactResponse, RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import type { CodeStore } from '../coordinator/code/code-store.js';
import { IMPACT_ANSWERS_KEPT, ImpactPages, impactPaging } from '../coordinator/recompute/impact-pages.js';
import type { CoordinatorServices } from '../scripts/cli/coordinator-extensions.js';
import { toJson } from '../scripts/cli/format.js';
import { responseJson } from '../scripts/cli/proto-json.js';
import { impactJsonPaging } from '../scripts/cli/recompute-commands.js';
import { runCli } from './helpers/in-process-cli.js';
import { applyAndIngest, plainPipeline, startImpactCoordinator } from './helpers/impact-runner.js';
import type { TestCoordinator } from './helpers/test-coordinator.js';

/**
 * Impact in pages (ImpactRequest.page_size, page_token). A whole answer is about 367 B a step:
 * past about 180,000 affected steps it is over the CLI's 64 MiB receive limit, and `retrace
 * impact --json`, which asked for it in one message, failed. Here a few dozen steps are paged
 * in pages of 7.
 */

const RECORDS = 20;
const PAGE = 7;

describe('impact in pages', () => {
  let tc: TestCoordinator;
  let shared: CoordinatorServices;
  let pipeline: Pipeline;
  let changeId = '';

  beforeAll(async () => {
    let code: CodeStore;
    ({ tc, shared, code } = await startImpactCoordinator());
    pipeline = await plainPipeline(code, 'paged');
    await applyAndIngest(tc, pipeline, Array.from({ length: RECORDS }, (_, i) => [`k${i}`, `r${i}`] as const));
    const v2 = await code.publish(new TextEncoder().encode('// plain v2'), { transform: 'plain', requirements: undefined, sourceFile: 'plain.ts', bundler: 'test' });
    await tc.client(PipelineServiceDefinition).applyPipeline({ pipeline: { ...pipeline, steps: pipeline.steps.map((s) => (s.name === 'scale' ? { ...s, codeVersion: v2.code.codeVersion } : s)) } });
    const changes = await tc.client(RecomputeServiceDefinition).listChanges({ pipeline: 'paged', pageSize: 0, pageToken: '' });
    changeId = changes.changes.find((c) => c.kind === ChangeKind.CHANGE_KIND_CODE_VERSION)?.changeId ?? '';
    expect(changeId).not.toBe('');
  }, 30_000);
  afterAll(async () => tc?.stop());

  const summary = (r: ImpactResponse): Partial<ImpactResponse> => ({ ...r, steps: [], objects: [], nextPageToken: '' });

  /** Every page of `request`, first to last. */
  async function allPages(request: Partial<ImpactRequest>, pageSize = PAGE): Promise<ImpactResponse[]> {
    const recompute = tc.client(RecomputeServiceDefinition);
    const pages: ImpactResponse[] = [];
    let pageToken = '';
    do {
      const page = await recompute.impact({ ...request, pageSize, pageToken });
      pages.push(page);
      pageToken = page.nextPageToken;
    } while (pageToken !== '' && pages.length < 100);
    return pages;
  }

  it('pages hold exactly the rows of the whole answer, in its order, each with the same counts, estimates and placements', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const target = { $case: 'changeId' as const, value: changeId };
    const whole = await recompute.impact({ target, asOfNs: '' });
    expect(whole.steps).toHaveLength(2 * RECORDS);
    expect(whole.nextPageToken).toBe('');
    const pages = await allPages({ target, asOfNs: '' });
    const rows = Math.max(whole.steps.length, whole.objects.length);
    expect(pages).toHaveLength(Math.ceil(rows / PAGE));
    expect(pages.flatMap((p) => p.steps)).toEqual(whole.steps);
    expect(pages.flatMap((p) => p.objects)).toEqual(whole.objects);
    for (const p of pages) {
      expect(p.steps.length).toBeLessThanOrEqual(PAGE);
      expect(summary(p)).toEqual(summary(whole));
    }
    expect(pages.at(-1)?.nextPageToken).toBe('');
    // page_size may change between pages.
    const first = await recompute.impact({ target, asOfNs: '', pageSize: PAGE });
    const rest = await recompute.impact({ target, asOfNs: '', pageSize: 1000, pageToken: first.nextPageToken });
    expect([...first.steps, ...rest.steps]).toEqual(whole.steps);
    expect(rest.nextPageToken).toBe('');
    // An answer that fits one page comes whole, without a token.
    const one = await recompute.impact({ target, asOfNs: '', pageSize: 1000 });
    expect(one).toEqual(whole);
  });

  it('refuses bad paging values, naming the field', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const target = { $case: 'changeId' as const, value: changeId };
    const first = await recompute.impact({ target, asOfNs: '', pageSize: PAGE });
    const cases: [Partial<ImpactRequest>, RegExp][] = [
      [{ pageSize: 100_001 }, /INVALID_ARGUMENT.*page_size: at most 100,000/],
      [{ pageSize: PAGE, stepLimit: 5 }, /INVALID_ARGUMENT.*step_limit: .*send one of them/],
      [{ pageToken: first.nextPageToken }, /INVALID_ARGUMENT.*page_size: is required with page_token/],
      [{ pageSize: PAGE, pageToken: 'not-a-token' }, /INVALID_ARGUMENT.*page_token: is not a next_page_token/],
      [{ pageSize: PAGE, pageToken: first.nextPageToken, asOfNs: '1' }, /INVALID_ARGUMENT.*page_token: was issued for a different query/],
      [{ pageSize: PAGE, pageToken: Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(first.nextPageToken, 'base64url').toString()), o: 10_000 })).toString('base64url') }, /INVALID_ARGUMENT.*page_token: starts at row 10000, past the end/],
    ];
    for (const [fields, error] of cases) await expect(recompute.impact({ target, asOfNs: '', ...fields })).rejects.toThrow(error);
    await expect(recompute.impact({ target: { $case: 'stepId', value: 'x' }, asOfNs: '', pageSize: PAGE, pageToken: first.nextPageToken })).rejects.toThrow(/INVALID_ARGUMENT.*page_token: was issued for a different query/);
  });

  it('cuts every page from one answer: steps recorded between pages do not mix in, and an answer that changed where it is no longer kept is refused', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const target = { $case: 'changeId' as const, value: changeId };
    const whole = await recompute.impact({ target, asOfNs: '' });
    const first = await recompute.impact({ target, asOfNs: '', pageSize: PAGE });
    // New records between the pages: the code change now affects their steps too.
    await applyAndIngest(tc, pipeline, [['late1', 'l1']]);
    expect((await recompute.impact({ target, asOfNs: '' })).stepCount).toBe(whole.stepCount + 2);
    let token = first.nextPageToken;
    const steps = [...first.steps];
    while (token !== '') {
      const page = await recompute.impact({ target, asOfNs: '', pageSize: PAGE, pageToken: token });
      expect(summary(page)).toEqual(summary(whole));
      steps.push(...page.steps);
      token = page.nextPageToken;
    }
    expect(steps).toEqual(whole.steps);

    // Other paged queries since, as many as are kept, push it out; so the coordinator computes
    // this one's answer again: it differs.
    const now = await recompute.impact({ target, asOfNs: '', pageSize: PAGE });
    await pushOut();
    await applyAndIngest(tc, pipeline, [['late2', 'l2']]);
    await expect(recompute.impact({ target, asOfNs: '', pageSize: PAGE, pageToken: now.nextPageToken })).rejects.toThrow(/FAILED_PRECONDITION.*page_token: the impact is no longer the answer the earlier pages came from/);
    // Unchanged, it is computed again and paged on.
    const again = await recompute.impact({ target, asOfNs: '', pageSize: PAGE });
    await pushOut();
    const next = await recompute.impact({ target, asOfNs: '', pageSize: PAGE, pageToken: again.nextPageToken });
    const latest = await recompute.impact({ target, asOfNs: '' });
    expect(next.steps).toEqual(latest.steps.slice(PAGE, 2 * PAGE));
  });

  /** First pages of IMPACT_ANSWERS_KEPT other queries, left unfinished: kept, they push out older answers. */
  async function pushOut(): Promise<void> {
    const recompute = tc.client(RecomputeServiceDefinition);
    for (let i = 1; i <= IMPACT_ANSWERS_KEPT; i++) {
      expect((await recompute.impact({ target: { $case: 'objectId', value: `record:paged/raw:k${i}` }, asOfNs: '', pageSize: 1 })).nextPageToken).not.toBe('');
    }
  }

  it('clients paging different queries at once each page their own kept answer, computed once', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const recomputer = (shared.recompute as NonNullable<CoordinatorServices['recompute']>).recomputer;
    const queries: Partial<ImpactRequest>[] = [
      { target: { $case: 'changeId', value: changeId }, asOfNs: '' },
      { target: { $case: 'objectId', value: 'record:paged/raw:k3' }, asOfNs: '' },
    ];
    const wholes = await Promise.all(queries.map((q) => recompute.impact(q)));
    // Each call computing a whole answer (the service's impact is called once per page).
    const computed = vi.spyOn(recomputer as unknown as { wholeImpact: (...args: unknown[]) => Promise<ImpactResponse> }, 'wholeImpact');
    try {
      const steps = queries.map(() => [] as ImpactResponse['steps']);
      const tokens = queries.map(() => '');
      const pageSizes = [PAGE, 1];
      // Turn about, page by page, until both are done.
      for (let turn = 0; turn === 0 || tokens.some((t) => t !== ''); turn++) {
        for (const [i, q] of queries.entries()) {
          if (turn > 0 && tokens[i] === '') continue;
          const page = await recompute.impact({ ...q, pageSize: pageSizes[i], pageToken: tokens[i] });
          steps[i]?.push(...page.steps);
          tokens[i] = page.nextPageToken;
        }
      }
      expect(steps).toEqual(wholes.map((w) => w.steps));
      expect(computed).toHaveBeenCalledTimes(queries.length);
    } finally {
      computed.mockRestore();
    }
  });

  it('retrace impact --json fetches the answer in pages and prints it as one answer, as before', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const target = { $case: 'changeId' as const, value: changeId };
    const whole = await recompute.impact({ target, asOfNs: '' });
    const recomputer = (shared.recompute as NonNullable<CoordinatorServices['recompute']>).recomputer;
    const asked = vi.spyOn(recomputer, 'impact');
    const saved = impactJsonPaging.pageSize;
    impactJsonPaging.pageSize = PAGE;
    try {
      const r = await runCli(['impact', changeId, '--json', '--coordinator', tc.grpcAddress, '--token', tc.token]);
      expect(r.code, r.err).toBe(0);
      const pages = Math.ceil(Math.max(whole.steps.length, whole.objects.length) / PAGE);
      expect(asked.mock.calls).toHaveLength(pages);
      expect(asked.mock.calls.every(([req]) => req.pageSize === PAGE)).toBe(true);
      // The text a single answer printed (protobuf JSON of ImpactResponse, without the token).
      const json = responseJson(RecomputeServiceDefinition, 'impact', whole) as Record<string, unknown>;
      delete json.nextPageToken;
      expect(r.out).toBe(toJson(json));
      // Progress on stderr (not a terminal here: a line at the end).
      expect(r.err).toContain(`${changeId}: ${whole.steps.length}/${whole.stepCount} steps, ${whole.objects.length}/${whole.objectCount} objects`);
    } finally {
      impactJsonPaging.pageSize = saved;
      asked.mockRestore();
    }
  });

  it('retrace impact --json starts over when the answer changed between its pages, and prints the new one', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const target = { $case: 'changeId' as const, value: changeId };
    const recomputer = (shared.recompute as NonNullable<CoordinatorServices['recompute']>).recomputer;
    const impact = recomputer.impact.bind(recomputer);
    let changed = false;
    // Before the CLI's second page: its answer pushed out, and a record ingested that the change affects.
    const asked = vi.spyOn(recomputer, 'impact').mockImplementation(async (request) => {
      if (request.pageToken !== '' && !changed) {
        changed = true;
        await pushOut();
        await applyAndIngest(tc, pipeline, [['late-cli', 'lc']]);
      }
      return impact(request);
    });
    const saved = impactJsonPaging.pageSize;
    impactJsonPaging.pageSize = PAGE;
    try {
      const before = await recompute.impact({ target, asOfNs: '' });
      const r = await runCli(['impact', changeId, '--json', '--coordinator', tc.grpcAddress, '--token', tc.token]);
      expect(r.code, r.err).toBe(0);
      expect(changed).toBe(true);
      expect(r.err).toContain(`${changeId}: the answer changed between its pages (steps recorded meanwhile); starting over`);
      const after = await recompute.impact({ target, asOfNs: '' });
      expect(after.stepCount).toBe(before.stepCount + 2);
      const json = responseJson(RecomputeServiceDefinition, 'impact', after) as Record<string, unknown>;
      delete json.nextPageToken;
      expect(r.out).toBe(toJson(json));
    } finally {
      impactJsonPaging.pageSize = saved;
      asked.mockRestore();
    }
  });

  it('retrace impact --dot of an answer over 64 MiB says it is too large to draw, not "Received message larger than max"', async () => {
    const recompute = tc.client(RecomputeServiceDefinition);
    const whole = await recompute.impact({ target: { $case: 'changeId', value: changeId }, asOfNs: '' });
    const recomputer = (shared.recompute as NonNullable<CoordinatorServices['recompute']>).recomputer;
    // 65 steps with a key of 1 MiB each: an answer the size of one of about 190,000 steps.
    const big = { ...whole, steps: Array.from({ length: 65 }, (_, i) => ({ ...(whole.steps[0] as ImpactResponse['steps'][number]), stepId: `s${i}`, key: 'k'.repeat(1 << 20) })) };
    const huge = vi.spyOn(recomputer, 'impact').mockResolvedValue(big);
    try {
      const r = await runCli(['impact', changeId, '--dot', '--coordinator', tc.grpcAddress, '--token', tc.token]);
      expect(r.code).not.toBe(0);
      expect(r.err).toContain(`the impact of ${changeId} is too large to draw (over the 64 MiB one answer may have): --json fetches it in pages`);
      expect(r.err).not.toContain('Received message larger than max');
    } finally {
      huge.mockRestore();
    }
  });
});

describe('kept impact answers', () => {
  /** Pages `stepId` targets' answers of `rows` steps each; counts the whole answers computed. */
  function pager(limits: { answers: number; rows: number }) {
    const pages = new ImpactPages(limits);
    const computed: string[] = [];
    const page = async (id: string, rows: number, pageToken = ''): Promise<ImpactResponse> => {
      const request = ImpactRequest.fromPartial({ target: { $case: 'stepId', value: id }, pageSize: 1, pageToken });
      return pages.page(request, impactPaging(request), async () => {
        computed.push(id);
        return ImpactResponse.fromPartial({ steps: Array.from({ length: rows }, (_, i) => AffectedStep.fromPartial({ stepId: `${id}/${i}` })), stepCount: rows });
      });
    };
    return { page, computed };
  }

  it('keeps at most `answers` answers and `rows` rows in all, the least recently paged going first; the one being paged stays whatever its size', async () => {
    const { page, computed } = pager({ answers: 2, rows: 10 });
    const a = await page('a', 4);
    const b = await page('b', 4);
    // Both kept: their next pages compute nothing.
    await page('a', 4, a.nextPageToken);
    await page('b', 4, b.nextPageToken);
    expect(computed).toEqual(['a', 'b']);
    // A third answer: 'a' (paged least recently) goes, by count.
    const c = await page('c', 2);
    await page('b', 4, (await page('b', 4, b.nextPageToken)).nextPageToken);
    await page('c', 2, c.nextPageToken);
    await page('a', 4, a.nextPageToken);
    expect(computed).toEqual(['a', 'b', 'c', 'a']);
    // One over the rows in all: every other answer goes; it stays.
    const big = await page('big', 20);
    await page('big', 20, big.nextPageToken);
    await page('b', 4, b.nextPageToken);
    expect(computed).toEqual(['a', 'b', 'c', 'a', 'big', 'b']);
  });

  it('forgets an answer once its last page was given', async () => {
    const { page, computed } = pager({ answers: 2, rows: 10 });
    const a = await page('a', 2);
    const last = await page('a', 2, a.nextPageToken);
    expect(last.nextPageToken).toBe('');
    await page('a', 2, a.nextPageToken);
    expect(computed).toEqual(['a', 'a']);
  });
});
