import { constants, watch as fsWatch, type FSWatcher } from 'node:fs';
import { open, readdir, readlink, realpath, stat, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { canonicalJson } from '../../common/canonical-json.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, RetraceError } from '../../common/errors.js';
import type { PipelineVersion } from '../../common/gen/retrace/v1/pipeline.js';
import { ChangeKind, type PathWatch } from '../../common/gen/retrace/v1/recompute.js';
import { contentHashOf, sha256Hex } from '../../common/hash.js';
import type { NanoClock } from '../clock.js';
import type { ChangeInput, ChangeStore } from './change-store.js';

/** One file of a watched path whose content is new since the last scan. */
export interface ChangedFile {
  /** Path relative to the watched directory, with "/" separators (the file name for a watched file). */
  rel: string;
  bytes: Uint8Array;
  hash: string;
}

/** Where a scan's new content goes: ingested into the pipeline source, or reported as objects. */
/**
 * Takes a scan's changed files. Resolves with what went wrong with them that the watch should
 * show (an ingest whose shards failed), '' or nothing when all went well.
 */
export type FileSink = (watch: PathWatch, files: readonly ChangedFile[]) => Promise<string | void>;

const DEFAULT_RESCAN_MS = 5000;
const DEFAULT_DEBOUNCE_MS = 200;
/** Bounds of a watch's timings: below them a watch keeps a core busy (setInterval turns anything above 2^31-1 ms into 1 ms). */
const RESCAN_MS = { min: 100, max: 86_400_000 };
const MAX_DEBOUNCE_MS = 60_000;
/** A file larger than this is not read (it would be one payload, and gRPC messages stop at 64 MiB). */
export const MAX_WATCHED_FILE_BYTES = 32 * 2 ** 20;
/** New content handed to the sink at once: a scan of many files goes in batches of about this much. */
const SINK_BATCH_BYTES = 64 * 2 ** 20;

/** Where watches may point: inside one of `roots`, never at or around the coordinator's own data. */
export interface WatchScope {
  /** Real paths of the directories the operator allowed (`--watch-root`); none: watching is off. */
  roots: readonly string[];
  /** Real path of the coordinator's data dir, or undefined (in-memory). */
  dataDir: string | undefined;
}

/** The first `size` bytes of an open file, or fewer if it shrank: a file growing while it is read is not followed past the size it was checked at. */
async function readAtMost(handle: FileHandle, size: number): Promise<Buffer> {
  const buf = Buffer.alloc(size);
  let got = 0;
  while (got < size) {
    const { bytesRead } = await handle.read(buf, got, size - got, got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got === size ? buf : buf.subarray(0, got);
}

/**
 * Where an open file really is: /proc's link to its descriptor (Linux), whatever its name now
 * leads to; elsewhere the real path of its name (a swap between open and this call goes unseen).
 */
async function openedPath(handle: FileHandle, name: string): Promise<string> {
  try {
    return await readlink(`/proc/self/fd/${handle.fd}`);
  } catch {
    return realpath(name);
  }
}

function inside(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/** Why a real path may not be watched, or undefined when it may. */
function scopeProblem(real: string, scope: WatchScope): RetraceError | undefined {
  if (scope.roots.length === 0) return new FailedPreconditionError('watching files is off: start the coordinator with --watch-root DIR (repeatable) for the directories it may read', 'path');
  if (scope.dataDir !== undefined && (inside(real, scope.dataDir) || inside(scope.dataDir, real))) {
    return new RetraceError('PERMISSION_DENIED', `${JSON.stringify(real)} is or holds the coordinator's data dir (its keys and database)`, { field: 'path' });
  }
  if (!scope.roots.some((r) => inside(real, r))) {
    return new RetraceError('PERMISSION_DENIED', `${JSON.stringify(real)} is outside the coordinator's --watch-root directories (${scope.roots.join(', ')})`, { field: 'path' });
  }
  return undefined;
}

/** Watches one file or directory: fs events (debounced) and a periodic rescan; stat, then sha256 only for files whose size or mtime moved. */
class PathWatcher {
  private fsw: FSWatcher | undefined;
  private interval: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private scanning: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  /** What the sink said went wrong with the files it took last ('' when nothing). */
  private sinkProblem = '';
  /** rel → last seen stat and hash. */
  private readonly seen = new Map<string, { mtimeMs: number; size: number; hash: string }>();

  constructor(
    readonly spec: PathWatch,
    private readonly sink: FileSink,
    private readonly clock: NanoClock,
    private readonly log: (line: string) => void,
    private readonly scope: WatchScope,
  ) {}

  start(): void {
    try {
      this.fsw = fsWatch(this.spec.path, { recursive: true, persistent: false }, () => this.poke());
      this.fsw.on('error', (err) => this.log(`recompute: watch ${this.spec.path}: ${String(err)} (periodic rescans go on)`));
    } catch (err) {
      // Some file systems have no recursive events; the periodic rescan still sees every change.
      this.log(`recompute: watch ${this.spec.path}: no fs events (${String(err)}); rescanning every ${this.spec.rescanIntervalMs} ms`);
    }
    this.interval = setInterval(() => this.poke(0), this.spec.rescanIntervalMs);
    this.interval.unref();
    this.poke(0);
  }

  /** Schedules a scan after the debounce delay (0: at once). */
  poke(delayMs = this.spec.debounceMs): void {
    if (this.stopped) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      void this.scan();
    }, delayMs);
    this.debounce.unref();
  }

  /** One scan at a time; a poke during a scan runs one more after it. */
  scan(): Promise<void> {
    if (this.scanning) {
      this.again = true;
      return this.scanning;
    }
    this.scanning = (async () => {
      do {
        this.again = false;
        try {
          this.spec.lastError = await this.scanOnce();
        } catch (err) {
          this.spec.lastError = err instanceof Error ? err.message : String(err);
          this.log(`recompute: scan of ${this.spec.path} failed: ${this.spec.lastError}`);
        }
      } while (this.again && !this.stopped);
    })().finally(() => (this.scanning = undefined));
    return this.scanning;
  }

  /** One scan; resolves with what it had to leave out ('' when nothing). */
  private async scanOnce(): Promise<string> {
    // Checked again on every scan: the path may since have become a link to somewhere else.
    const root = this.spec.path;
    const real = await realpath(root).catch((err: unknown) => {
      // A watched file or directory deleted: a state to show, not Node's "ENOENT: ..., realpath".
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error('missing (deleted); scanned again until it is back');
      throw err;
    });
    const problem = scopeProblem(real, this.scope);
    if (problem) throw problem;
    const top = await stat(root);
    const files: { abs: string; rel: string }[] = [];
    if (top.isFile()) files.push({ abs: root, rel: root.split(sep).pop() as string });
    else {
      const walk = async (dir: string): Promise<void> => {
        for (const e of await readdir(dir, { withFileTypes: true })) {
          // Dot files are editors' and tools' temporaries; links are not followed (out of scope).
          if (e.name.startsWith('.')) continue;
          const abs = join(dir, e.name);
          if (e.isDirectory()) await walk(abs);
          else if (e.isFile()) files.push({ abs, rel: relative(root, abs).split(sep).join('/') });
        }
      };
      await walk(root);
      // Path order, the same on every scan (readdir's is the file system's own).
      files.sort((x, y) => (x.rel < y.rel ? -1 : x.rel > y.rel ? 1 : 0));
    }
    let changed: ChangedFile[] = [];
    let updates: [string, { mtimeMs: number; size: number; hash: string }][] = [];
    let batchBytes = 0;
    const tooBig: string[] = [];
    const sinkProblems: string[] = [];
    let sank = false;
    const flush = async (): Promise<void> => {
      if (changed.length > 0) {
        const problem = await this.sink(this.spec, changed);
        sank = true;
        if (problem) sinkProblems.push(problem);
      }
      // Only after the sink took them: a failed ingest is retried by the next scan.
      for (const [rel, s] of updates) this.seen.set(rel, s);
      changed = [];
      updates = [];
      batchBytes = 0;
    };
    const outside: string[] = [];
    for (const f of files) {
      // Read through the file opened, not by its name again: between the listing and the read
      // the file (or a directory above it) may have been swapped for a link out of the root.
      let handle: FileHandle;
      try {
        handle = await open(f.abs, constants.O_RDONLY | constants.O_NOFOLLOW);
      } catch (err) {
        // A link now (left out, named), or removed since the listing.
        if ((err as NodeJS.ErrnoException).code === 'ELOOP') outside.push(f.rel);
        continue;
      }
      try {
        if (scopeProblem(await openedPath(handle, f.abs), this.scope)) {
          outside.push(f.rel);
          continue;
        }
        const st = await handle.stat();
        if (!st.isFile()) continue;
        const prev = this.seen.get(f.rel);
        if (prev && prev.mtimeMs === st.mtimeMs && prev.size === st.size) continue;
        if (st.size > MAX_WATCHED_FILE_BYTES) {
          tooBig.push(f.rel);
          continue;
        }
        const bytes = await readAtMost(handle, st.size);
        const hash = contentHashOf(bytes);
        updates.push([f.rel, { mtimeMs: st.mtimeMs, size: st.size, hash }]);
        if (prev?.hash !== hash) {
          changed.push({ rel: f.rel, bytes, hash });
          batchBytes += bytes.byteLength;
        }
      } finally {
        await handle.close();
      }
      if (batchBytes >= SINK_BATCH_BYTES) await flush();
    }
    await flush();
    // What went wrong with the files last taken stays shown until files are taken again: a
    // rescan that finds nothing new does not make a failed ingest look fine.
    if (sank) this.sinkProblem = sinkProblems.join('; ');
    this.spec.files = files.length;
    this.spec.lastScanNs = this.clock().toString();
    const names = (list: string[]): string => `${list.slice(0, 3).join(', ')}${list.length > 3 ? `, and ${list.length - 3} more` : ''}`;
    const left = [
      ...(tooBig.length > 0 ? [`left out ${tooBig.length} file(s) over 32 MiB: ${names(tooBig)}`] : []),
      ...(outside.length > 0 ? [`left out ${outside.length} link(s) or file(s) outside the watch roots: ${names(outside)}`] : []),
      ...(this.sinkProblem !== '' ? [this.sinkProblem] : []),
    ].join('; ');
    if (left !== '') this.log(`recompute: watch ${root}: ${left}`);
    return left;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.fsw?.close();
    if (this.interval) clearInterval(this.interval);
    if (this.debounce) clearTimeout(this.debounce);
    await this.scanning;
  }
}

/**
 * Change detection besides ingest and NotifyChange: watched files and directories (persisted in
 * the change store, watched again by `start`), and the comparison of pipeline versions that turns
 * a step's new code version or parameters into changes.
 */
export class ChangeDetector {
  private readonly watchers = new Map<string, PathWatcher>();
  private state: 'NEW' | 'RUNNING' | 'STOPPED' = 'NEW';

  constructor(
    private readonly deps: {
      changes: ChangeStore;
      sink: FileSink;
      clock: NanoClock;
      log: (line: string) => void;
      /** Checks the target of a watch: the pipeline and source exist. */
      checkTarget?: (pipeline: string, source: string) => Promise<void>;
      /** Directories watches may point into (`--watch-root`); none or absent: watching is off. */
      watchRoots?: readonly string[];
      /** The coordinator's data dir, which no watch may read. */
      dataDir?: string | null;
    },
  ) {}

  private scope: WatchScope = { roots: [], dataDir: undefined };
  /** Persisted watches that the roots no longer allow: listed with why, not watched. */
  private readonly refused = new Map<string, PathWatch>();

  /** Resolves the watch roots, then watches every persisted path again that they still allow. */
  async start(): Promise<void> {
    if (this.state !== 'NEW') throw new Error(`change detector is ${this.state}`);
    const roots: string[] = [];
    for (const r of this.deps.watchRoots ?? []) {
      const real = await realpath(r).catch(() => undefined);
      if (real === undefined || !(await stat(real)).isDirectory()) throw new InvalidArgumentError('watch_roots', `${JSON.stringify(r)} is not a directory`);
      roots.push(real);
    }
    const dataDir = this.deps.dataDir ? await realpath(this.deps.dataDir).catch(() => resolve(this.deps.dataDir as string)) : undefined;
    this.scope = { roots, dataDir };
    this.state = 'RUNNING';
    for (const w of await this.deps.changes.watches()) {
      w.files = 0;
      const problem = await realpath(w.path).then(
        (real) => scopeProblem(real, this.scope),
        () => undefined,
      );
      if (problem) {
        w.lastError = `not watched: ${problem.message}`;
        this.refused.set(w.watchId, w);
        this.deps.log(`recompute: watch ${w.path} ${w.lastError}`);
        continue;
      }
      this.begin(w);
    }
  }

  async stop(): Promise<void> {
    this.state = 'STOPPED';
    await Promise.all([...this.watchers.values()].map((w) => w.stop()));
    this.watchers.clear();
  }

  /**
   * A watch request checked, as `watch` would store it; changes nothing. Errors:
   * InvalidArgumentError (`path`, `pipeline`, `source`, `object_id_prefix`, `rescan_interval_ms`,
   * `debounce_ms`); NotFoundError (`path`); FAILED_PRECONDITION (`path`: no watch roots) and
   * PERMISSION_DENIED (`path`: outside them, or around the data dir).
   */
  async check(request: Omit<PathWatch, 'watchId' | 'files' | 'lastScanNs' | 'lastError'>): Promise<PathWatch> {
    if (request.path === '') throw new InvalidArgumentError('path', 'is required');
    if (!isAbsolute(request.path)) throw new InvalidArgumentError('path', `must be absolute (the coordinator's working directory is not the caller's), got ${JSON.stringify(request.path)}`);
    const path = resolve(request.path);
    const asSource = request.pipeline !== '' || request.source !== '';
    if (asSource && (request.pipeline === '' || request.source === '')) throw new InvalidArgumentError(request.pipeline === '' ? 'pipeline' : 'source', 'a pipeline source needs both pipeline and source');
    if (asSource === (request.objectIdPrefix !== '')) throw new InvalidArgumentError('object_id_prefix', 'give either pipeline and source, or object_id_prefix');
    const rescan = request.rescanIntervalMs || DEFAULT_RESCAN_MS;
    if (rescan < RESCAN_MS.min || rescan > RESCAN_MS.max) throw new InvalidArgumentError('rescan_interval_ms', `must be from ${RESCAN_MS.min} to ${RESCAN_MS.max} ms (0: ${DEFAULT_RESCAN_MS}), got ${request.rescanIntervalMs}`);
    if (request.debounceMs > MAX_DEBOUNCE_MS) throw new InvalidArgumentError('debounce_ms', `must be at most ${MAX_DEBOUNCE_MS} ms (0: ${DEFAULT_DEBOUNCE_MS}), got ${request.debounceMs}`);
    let real: string;
    try {
      real = await realpath(path);
    } catch {
      throw new NotFoundError(`path ${JSON.stringify(path)}`, 'path');
    }
    const problem = scopeProblem(real, this.scope);
    if (problem) throw problem;
    if (asSource) await this.deps.checkTarget?.(request.pipeline, request.source);
    return {
      watchId: `w-${sha256Hex(path).slice(0, 12)}`,
      path,
      pipeline: request.pipeline,
      source: request.source,
      objectIdPrefix: request.objectIdPrefix,
      rescanIntervalMs: rescan,
      debounceMs: request.debounceMs || DEFAULT_DEBOUNCE_MS,
      files: 0,
      lastScanNs: '0',
      lastError: '',
    };
  }

  /** Checks (see `check`) and persists a watch, then starts it (replacing one of the same path). */
  async watch(request: Omit<PathWatch, 'watchId' | 'files' | 'lastScanNs' | 'lastError'>): Promise<PathWatch> {
    const spec = await this.check(request);
    await this.deps.changes.putWatch(spec);
    this.refused.delete(spec.watchId);
    await this.watchers.get(spec.watchId)?.stop();
    this.begin(spec);
    return spec;
  }

  async unwatch(watchId: string): Promise<boolean> {
    const w = this.watchers.get(watchId);
    this.watchers.delete(watchId);
    this.refused.delete(watchId);
    await w?.stop();
    return this.deps.changes.deleteWatch(watchId);
  }

  /** Live watches with their last scan's figures, and persisted ones not watched (with why). */
  list(): PathWatch[] {
    return [...[...this.watchers.values()].map((w) => w.spec), ...this.refused.values()].map((w) => ({ ...w }));
  }

  /** Runs a scan of a watch now and waits for it (tests, `retrace watch --once`). */
  async scanNow(watchId: string): Promise<void> {
    await this.watchers.get(watchId)?.scan();
  }

  private begin(spec: PathWatch): void {
    if (this.state !== 'RUNNING') return;
    const w = new PathWatcher(spec, this.deps.sink, this.deps.clock, this.deps.log, this.scope);
    this.watchers.set(spec.watchId, w);
    w.start();
  }
}

/** The changes between two versions of a pipeline: steps whose code version or parameters differ (one change per step). */
export function stepChanges(previous: PipelineVersion | undefined, current: PipelineVersion, noticedBy: string): ChangeInput[] {
  if (!previous?.pipeline || !current.pipeline) return [];
  const before = new Map(previous.pipeline.steps.map((s) => [s.name, s]));
  // The version the change is made from is part of its id: the same move of a step made again
  // later (A -> B, B -> A, A -> B) is a new change, while the apply, its follow-up after a crash
  // and a stale run's listener (each from the same previous version) still name one change.
  const after = `v${previous.version}`;
  const out: ChangeInput[] = [];
  for (const s of current.pipeline.steps) {
    const b = before.get(s.name);
    if (!b) continue;
    const oldParams = contentHashOf(canonicalJson(b.parameters ?? {}));
    const newParams = contentHashOf(canonicalJson(s.parameters ?? {}));
    const pipeline = current.pipeline.name;
    if (b.codeVersion !== s.codeVersion) {
      out.push({
        kind: ChangeKind.CHANGE_KIND_CODE_VERSION,
        oldHash: b.codeVersion,
        newHash: s.codeVersion,
        pipeline,
        step: s.name,
        noticedBy,
        after,
        detail: `code version of step ${s.name} (v${previous.version} -> v${current.version})${oldParams !== newParams ? ', parameters too' : ''}`,
      });
    } else if (oldParams !== newParams) {
      out.push({ kind: ChangeKind.CHANGE_KIND_PARAMETERS, oldHash: oldParams, newHash: newParams, pipeline, step: s.name, noticedBy, after, detail: `parameters of step ${s.name} (v${previous.version} -> v${current.version}): ${canonicalJson(b.parameters ?? {})} -> ${canonicalJson(s.parameters ?? {})}` });
    }
  }
  return out;
}
