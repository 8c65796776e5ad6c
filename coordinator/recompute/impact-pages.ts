import { createHash } from 'node:crypto';
import { FailedPreconditionError, InvalidArgumentError } from '../../common/errors.js';
import { ImpactResponse, type ImpactRequest } from '../../common/gen/retrace/v1/recompute.js';

/** ImpactRequest.page_size at most: 100,000 steps and objects are about 50 MB, under a client's 64 MiB. */
export const MAX_IMPACT_PAGE = 100_000;

/** How long a paged answer is kept after its last page was asked for (ms). */
export const IMPACT_PAGES_KEPT_MS = 60_000;

/**
 * How many paged answers are kept at once, the least recently paged going first, and how many
 * rows (steps or objects, whichever are more) they may hold in all: a step row is about 700 B of
 * heap, so 400,000 are some 300 MB.
 * The answer being paged is kept whatever its size.
 */
export const IMPACT_ANSWERS_KEPT = 4;
export const IMPACT_ROWS_KEPT = 400_000;

/** The paging fields of an ImpactRequest, checked: 0 = no pages. */
export interface ImpactPaging {
  pageSize: number;
  /** The decoded page_token; undefined for a first page. */
  token: ImpactPageToken | undefined;
}

/** Where a page starts (`o`), the query it belongs to (`q`) and the answer it was cut from (`a`). */
interface ImpactPageToken {
  o: number;
  q: string;
  a: string;
}

/**
 * What a page token is tied to: the target and as_of_ns (page_size may change between pages,
 * as in AIP-158). A token of another query would page through another answer.
 */
function queryFingerprint(request: ImpactRequest): string {
  const t = request.target;
  const text = JSON.stringify([t?.$case ?? '', t?.value ?? '', request.asOfNs === '' ? '0' : request.asOfNs]);
  return createHash('sha256').update(text).digest('base64url').slice(0, 16);
}

/**
 * The identity of a whole answer: a hash of its encoding. Two computations of one query give the
 * same only when every row, count, estimate and placement is the same.
 */
function answerFingerprint(response: ImpactResponse): string {
  return createHash('sha256')
    .update(ImpactResponse.encode({ ...response, nextPageToken: '' }).finish())
    .digest('base64url')
    .slice(0, 22);
}

/**
 * Checks the paging fields of `request` (see ImpactRequest.page_size and page_token) and decodes
 * its token. Throws InvalidArgumentError naming the field at fault.
 */
export function impactPaging(request: ImpactRequest): ImpactPaging {
  if (request.pageSize > MAX_IMPACT_PAGE) throw new InvalidArgumentError('page_size', `at most ${MAX_IMPACT_PAGE.toLocaleString('en-US')}, got ${request.pageSize}`);
  if (request.pageSize > 0 && request.stepLimit > 0) {
    throw new InvalidArgumentError('step_limit', 'cuts the answer to the rows a table shows, and page_size pages through every row: send one of them');
  }
  if (request.pageToken === '') return { pageSize: request.pageSize, token: undefined };
  if (request.pageSize === 0) throw new InvalidArgumentError('page_size', 'is required with page_token (1..100,000)');
  let v: { o?: unknown; q?: unknown; a?: unknown };
  try {
    v = JSON.parse(Buffer.from(request.pageToken, 'base64url').toString()) as typeof v;
    if (typeof v.o !== 'number' || !Number.isInteger(v.o) || v.o <= 0 || typeof v.q !== 'string' || typeof v.a !== 'string') throw new Error('bad token');
  } catch {
    throw new InvalidArgumentError('page_token', 'is not a next_page_token of an Impact response');
  }
  if (v.q !== queryFingerprint(request)) {
    throw new InvalidArgumentError('page_token', 'was issued for a different query: send the first page\'s target and as_of_ns with it (only page_size may change), or leave it empty to start over');
  }
  return { pageSize: request.pageSize, token: { o: v.o, q: v.q, a: v.a } };
}

/**
 * The pages of Impact answers. The answer a first page was cut from is kept, so the next pages
 * are slices of it: every page describes the same graph and the analysis runs once. Several are
 * kept (see IMPACT_ANSWERS_KEPT), so clients paging different queries at once do not make each
 * other's answers be computed again. A page whose answer is no longer kept (past
 * IMPACT_PAGES_KEPT_MS, pushed out by others, a restart) is cut from the answer computed again,
 * if that is still the same one.
 */
export class ImpactPages {
  /** By answer fingerprint, least recently paged first. */
  private readonly kept = new Map<string, { q: string; response: ImpactResponse; rows: number; timer: NodeJS.Timeout }>();

  constructor(private readonly limits: { answers: number; rows: number } = { answers: IMPACT_ANSWERS_KEPT, rows: IMPACT_ROWS_KEPT }) {}

  /**
   * The page of `request` (checked into `paging`). `compute` gives the whole answer, and is called
   * only when the kept one is not the request's. Throws FailedPreconditionError (`page_token`)
   * when the answer computed again is not the one the token's pages came from, and
   * InvalidArgumentError (`page_token`) for a token past its end.
   */
  async page(request: ImpactRequest, paging: ImpactPaging, compute: () => Promise<ImpactResponse>): Promise<ImpactResponse> {
    const { pageSize, token } = paging;
    const q = token?.q ?? queryFingerprint(request);
    const kept = token ? this.kept.get(token.a) : undefined;
    let whole: ImpactResponse;
    let a: string;
    if (token && kept && kept.q === token.q) {
      whole = kept.response;
      a = token.a;
    } else {
      whole = await compute();
      const rows = Math.max(whole.steps.length, whole.objects.length);
      // One page holds it all: nothing to keep, no token.
      if (!token && rows <= pageSize) return { ...whole, nextPageToken: '' };
      a = answerFingerprint(whole);
      if (token && a !== token.a) {
        throw new FailedPreconditionError('the impact is no longer the answer the earlier pages came from (steps recorded since, nodes changed, or its pages were not asked for in time): start over from the first page, without page_token', 'page_token');
      }
    }
    const rows = Math.max(whole.steps.length, whole.objects.length);
    const start = token?.o ?? 0;
    if (start >= rows) throw new InvalidArgumentError('page_token', `starts at row ${start}, past the end of the answer (${rows} rows)`);
    const end = Math.min(rows, start + pageSize);
    if (end < rows) this.keep(q, a, whole, rows);
    else this.drop(a);
    return {
      ...whole,
      steps: whole.steps.slice(start, end),
      objects: whole.objects.slice(start, end),
      nextPageToken: end < rows ? Buffer.from(JSON.stringify({ o: end, q, a } satisfies ImpactPageToken)).toString('base64url') : '',
    };
  }

  /** Forgets answer `a`: its last page was given. */
  private drop(a: string): void {
    const k = this.kept.get(a);
    if (!k) return;
    clearTimeout(k.timer);
    this.kept.delete(a);
  }

  private keep(q: string, a: string, response: ImpactResponse, rows: number): void {
    this.drop(a);
    const timer = setTimeout(() => {
      if (this.kept.get(a)?.timer === timer) this.kept.delete(a);
    }, IMPACT_PAGES_KEPT_MS);
    // A kept answer never holds the process open.
    timer.unref();
    this.kept.set(a, { q, response, rows, timer });
    let total = 0;
    for (const k of this.kept.values()) total += k.rows;
    for (const [oldest, k] of this.kept) {
      if (oldest === a || (this.kept.size <= this.limits.answers && total <= this.limits.rows)) break;
      total -= k.rows;
      this.drop(oldest);
    }
  }
}
