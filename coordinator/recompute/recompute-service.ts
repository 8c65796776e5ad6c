import { throwIfAborted } from 'abort-controller-x';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, RetraceError } from '../../common/errors.js';
import { keptRows } from '../../common/row-limit.js';
import type { PublishedCode } from '../../common/gen/retrace/v1/code.js';
import type { PipelineVersion } from '../../common/gen/retrace/v1/pipeline.js';
import {
  ChangeKind,
  ChangePolicy,
  ChangeState,
  type Change,
  type ImpactRequest,
  type ImpactResponse,
  type NotifyChangeRequest,
  type NotifyChangeResponse,
  type PathWatch,
  type RecomputeRequest,
  type RecomputeResponse,
} from '../../common/gen/retrace/v1/recompute.js';
import type { NodeInfo } from '../../common/gen/retrace/v1/node.js';
import { contentHashOf, isContentHash } from '../../common/hash.js';
import { MAX_RECOMPUTE_ATTEMPTS, MAX_RECOMPUTE_CONCURRENCY } from '../../common/recompute-policy.js';
import { parseNodeKey, versionKey } from '../../common/lineage-keys.js';
import { declaredRequirements, mergeRequirements } from '../../common/requirements.js';
import { nanosToIso } from '../../common/time.js';
import type { NanoClock } from '../clock.js';
import { crashPointForTests } from '../test-crash-point.js';
import type { JobSubmitter } from '../jobs/job-types.js';
import { nsToMs, type LineageEngine } from '../lineage/lineage-engine.js';
import type { IngestSummary, RecordChange } from '../pipeline/pipeline-runner.js';
import type { CurrentRecord, PipelineStore } from '../pipeline/pipeline-store.js';
import { allocate, toNodeView } from '../scheduler/allocator.js';
import { checkTargetLabels } from '../scheduler/placement-targets.js';
import type { ChangedFile } from './change-detector.js';
import { stepChanges } from './change-detector.js';
import type { ChangeInput, ChangeStore } from './change-store.js';
import { ImpactPages, impactPaging } from './impact-pages.js';
import { collectAffected, hasAffected, toImpactResponse, type AffectedGraph, type AffectedNode, type ImpactRoot } from './impact-analysis.js';
import { planRecompute, rewiredReason, toStepDefinition, type StepDefinition } from './recompute-planner.js';

export interface RecomputerDeps {
  lineage: LineageEngine;
  changes: ChangeStore;
  pipelines: () => { store: PipelineStore; payloads: { put(bytes: Uint8Array): Promise<string> }; runner: { ingest: (p: string, s: string, batches: Iterable<readonly { key: string; payload: Uint8Array }[]>, o: { principal: string }) => Promise<Pick<IngestSummary, 'runId' | 'shardsFailed' | 'firstError'>> } } | undefined;
  jobs: () => JobSubmitter | undefined;
  nodes: () => readonly NodeInfo[];
  /** The code store: `describe` checks a version exists; the follow-up notes are those of PublishCode. */
  code: () => { describe(codeVersion: string): Promise<PublishedCode | undefined>; followUps?(): Promise<{ codeVersion: string; principal: string }[]>; followUpDone?(codeVersion: string): Promise<void> } | undefined;
  clock: NanoClock;
  log: (line: string) => void;
}

const PRODUCER = 'retrace://coordinator/recompute';

/** An auto-policy change no job was submitted for yet (manual ones wait for `Recompute`). */
/** Changes of a pipeline step's code or parameters; the other kinds change an object's content. */
const CODE_KINDS: ReadonlySet<ChangeKind> = new Set([ChangeKind.CHANGE_KIND_CODE_VERSION, ChangeKind.CHANGE_KIND_CODE_PUBLISHED, ChangeKind.CHANGE_KIND_PARAMETERS]);

function awaitsAutoJob(c: Change): boolean {
  return c.policy === ChangePolicy.CHANGE_POLICY_AUTO && c.state === ChangeState.CHANGE_STATE_REPORTED && c.jobIds.length === 0;
}

/** `record:<pipeline>/<dataset>:<key>` → its parts, or undefined. */
function parseRecordId(objectId: string): { pipeline: string; dataset: string; key: string } | undefined {
  const m = /^record:([^/]+)\/([^:]+):(.*)$/s.exec(objectId);
  return m ? { pipeline: m[1] as string, dataset: m[2] as string, key: m[3] as string } : undefined;
}

/**
 * The recompute service's logic: turns detections into recorded changes (and, under the auto
 * policy, into recompute jobs), answers Impact, and plans and submits Recompute jobs.
 */
export class Recomputer {
  /** Auto recomputes being submitted, by change id (see submitAutoOnce). */
  private readonly autoSubmitting = new Map<string, Promise<Change>>();
  /** The answer paged Impact requests are being cut from. */
  private readonly impactPages = new ImpactPages();

  constructor(private readonly deps: RecomputerDeps) {}

  // ---- detection ----

  /**
   * What a NotifyChange reports, checked, with no side effect: the change it would record, and
   * `unchanged` when the hash is the object's version now (contentNow).
   */
  private async assess(request: NotifyChangeRequest, principal: string, options: { kind?: ChangeKind; field?: string }): Promise<{ input: ChangeInput & { objectId: string; pipeline: string }; unchanged: boolean }> {
    const field = options.field ?? '';
    const objectId = request.objectId;
    if (objectId === '') throw new InvalidArgumentError(`${field}object_id`, 'is required');
    let hash = request.contentHash;
    const payload = request.payload;
    if (hash !== '' && !isContentHash(hash)) throw new InvalidArgumentError(`${field}content_hash`, `expected "sha256:" and 64 lowercase hex digits, got ${JSON.stringify(hash.slice(0, 80))}`);
    if (payload.length > 0) {
      const actual = contentHashOf(payload);
      if (hash !== '' && hash !== actual) throw new InvalidArgumentError(`${field}content_hash`, `${hash} does not match the payload (${actual})`);
      hash = actual;
    }
    if (hash === '') throw new InvalidArgumentError(`${field}content_hash`, 'is required unless a payload is sent');
    const index = this.deps.lineage.index;
    const versions = index.membersOf(`object:${objectId}`);
    const latest = versions[versions.length - 1];
    if (!latest) throw new NotFoundError(`object ${JSON.stringify(objectId)} (provenance has no version of it)`, `${field}object_id`);
    const rec = parseRecordId(objectId);
    const pipes = this.deps.pipelines();
    // After a revert to an older version the index's newest version is the reverted one, and
    // re-applying it is a change.
    const oldHash = (await this.contentNow(objectId)) ?? parseNodeKey(latest).contentHash;
    if (oldHash !== hash && payload.length > 0 && !pipes) throw new FailedPreconditionError('storing the new content needs the pipelines extension (payload store)');
    const input = { kind: options.kind ?? ChangeKind.CHANGE_KIND_OBJECT, objectId, oldHash, newHash: hash, pipeline: rec?.pipeline ?? '', source: rec?.dataset ?? '', noticedBy: request.noticedBy || `notify:${principal}` };
    return { input, unchanged: oldHash === hash };
  }

  /** Stores the bytes of content that is its object's version already (see notify); none: nothing. */
  private async storeReportedBytes(payload: Buffer): Promise<void> {
    if (payload.length > 0) await this.deps.pipelines()?.payloads.put(payload);
  }

  /** The recorded change that made `hash` this object's version, the newest if several did. */
  private changeTo(objectId: string, pipeline: string, hash: string): Promise<Change | undefined> {
    return this.deps.changes.latestTo(pipeline, objectId, hash);
  }

  /**
   * NotifyChange; see the proto for the errors. `submitAuto` false never starts a job (Recompute's
   * own new contents). Content that is the object's version already records nothing: the answer
   * is `unchanged`, with the change that made it so where one did (a repeated report).
   */
  async notify(request: NotifyChangeRequest, principal: string, options: { kind?: ChangeKind; submitAuto?: boolean; field?: string } = {}): Promise<NotifyChangeResponse> {
    const { input, unchanged } = await this.assess(request, principal, options);
    const { objectId, newHash: hash, oldHash, noticedBy } = input;
    const submitAuto = options.submitAuto !== false;
    if (unchanged) {
      // The bytes of a version reported by hash only (a recompute of it fails "content is not
      // stored" until they come): stored now, so the report sent again with them lets the job
      // resume. The hash was checked against them, so nothing else changes.
      await this.storeReportedBytes(request.payload);
      // A repeated report is also how a report a coordinator stop cut short gets finished: its
      // version was written but not its change, or its change but not the auto job.
      const change = (await this.changeTo(objectId, input.pipeline, hash)) ?? (await this.recordCutShort(input));
      return { change: change && submitAuto && awaitsAutoJob(change) ? await this.submitAutoOnce(change, true) : change, unchanged: true };
    }
    const payload = request.payload;
    const rec = parseRecordId(objectId);
    const pipes = this.deps.pipelines();
    if (payload.length > 0) await pipes?.payloads.put(payload);
    const changeId = await this.deps.changes.idOf(input);
    const nowNs = this.deps.clock().toString();
    await this.deps.lineage.submit([
      {
        eventId: `version:${objectId}@${hash}`,
        eventTimeNs: nowNs,
        producer: PRODUCER,
        body: { $case: 'objectVersion', value: { objectId, contentHash: hash, size: String(payload.length), mediaType: request.mediaType, createdAtNs: nowNs, attributes: { change_id: changeId, previous_hash: oldHash, noticed_by: noticedBy, ...(rec ? { pipeline: rec.pipeline, dataset: rec.dataset, key: rec.key } : {}) }, facets: undefined } },
      },
    ]);
    // The change before the current record moves: a stop in between leaves the old content
    // current, so the report sent again is a change still, the same one. In the other order it
    // left the record moved with no change, and the report sent again was `unchanged`.
    const { change, created } = await this.deps.changes.record(input);
    // A pipeline record's new version is its current one from now on (a manual policy leaves its downstream stale until recomputed).
    if (rec && pipes) {
      const cur: CurrentRecord = { objectId, contentHash: hash, size: payload.length, mediaType: request.mediaType, eventTimeNs: nowNs };
      await pipes.store.setCurrent(rec.pipeline, [{ dataset: rec.dataset, key: rec.key, record: cur }]);
    }
    if (submitAuto && awaitsAutoJob(change)) return { change: await this.submitAutoOnce(change, !created), unchanged: false };
    return { change, unchanged: false };
  }

  /**
   * The change a report of the object's current content had started to record when the
   * coordinator stopped: its version (which names the change and the previous hash) was written,
   * the change not. Recorded now, when the repeated report is that change (same kind and hashes).
   */
  private async recordCutShort(input: ChangeInput & { objectId: string }): Promise<Change | undefined> {
    const attributes = (await this.deps.lineage.readVersion(input.objectId, input.newHash))?.attributes ?? {};
    const previous = attributes.previous_hash;
    if (previous === undefined || attributes.change_id !== (await this.deps.changes.idOf({ ...input, oldHash: previous }))) return undefined;
    const { change } = await this.deps.changes.record({ ...input, oldHash: previous, noticedBy: attributes.noticed_by ?? input.noticedBy });
    this.deps.log(`recompute: change ${change.changeId} of ${input.objectId}, cut short by a coordinator stop, recorded on its report sent again`);
    return change;
  }

  /**
   * The auto recompute of a change without a job, one submission at a time per change.
   * `resumed`: the change may be left by a coordinator stop, whose job was stored but not noted
   * on it; the change gets that job rather than a second one.
   */
  private submitAutoOnce(change: Change, resumed: boolean): Promise<Change> {
    const running = this.autoSubmitting.get(change.changeId);
    if (running) return running;
    const submitting = (async () => {
      // Only a change with something to recompute can have a job: the plan first, which is
      // cheap, before the scan of every stored job (an object no step reads, reported again and
      // again under auto, would scan them on every report).
      const planned = resumed ? await this.recompute({ changeIds: [change.changeId], objectIds: [], newContents: [], policy: { maxAttempts: 0, concurrency: 0, targetNodeIds: [], targetLabels: {}, dryRun: true } }, 'auto-policy').catch(() => undefined) : undefined;
      const left = planned && planned.tasks.length > 0 ? await this.linkSubmitted([change]) : [change];
      return left.length > 0 ? this.autoRecompute(left) : this.deps.changes.get(change.changeId);
    })().finally(() => this.autoSubmitting.delete(change.changeId));
    this.autoSubmitting.set(change.changeId, submitting);
    return submitting;
  }

  /**
   * The pipeline runner's listener: records a re-ingested record's change, as reported; steps run
   * now only under `auto`, and the change is marked recomputed by the ingest (onRecordRecomputed)
   * only once they succeeded and are durable.
   */
  async onRecordChange(c: RecordChange): Promise<{ runSteps: boolean; changeId: string }> {
    const policy = await this.deps.changes.policyFor(c.pipeline, c.source);
    const { change } = await this.deps.changes.record({
      kind: c.principal.startsWith('watch:') ? ChangeKind.CHANGE_KIND_FILE : ChangeKind.CHANGE_KIND_RECORD,
      objectId: c.objectId,
      oldHash: c.oldHash,
      newHash: c.newHash,
      pipeline: c.pipeline,
      source: c.source,
      noticedBy: `${c.principal} (${c.runId})`,
    });
    return { runSteps: policy === ChangePolicy.CHANGE_POLICY_AUTO, changeId: change.changeId };
  }

  /**
   * The pipeline runner's listener: the newest change that made `contentHash` the record's
   * content, when an ingest noticed it (record or watched-file kind) and it is still reported.
   */
  async reportedRecordChangeTo(pipeline: string, objectId: string, contentHash: string): Promise<string | undefined> {
    const c = await this.changeTo(objectId, pipeline, contentHash);
    const byIngest = c?.kind === ChangeKind.CHANGE_KIND_RECORD || c?.kind === ChangeKind.CHANGE_KIND_FILE;
    return c && byIngest && c.state === ChangeState.CHANGE_STATE_REPORTED ? c.changeId : undefined;
  }

  /** The pipeline runner's listener: the ingest that noticed the change recomputed its record, durably. */
  async onRecordRecomputed(changeId: string): Promise<void> {
    await this.deps.changes.markRecomputedByIngest(changeId);
  }

  /**
   * The pipeline extension's listener: a new version whose steps changed code or parameters. Its
   * follow-up note (stored with the version) is removed once the changes are recorded and the auto
   * ones submitted; it stays when that fails, for the next start to finish. Never throws.
   */
  async onPipelineApplied(e: { previous: PipelineVersion | undefined; current: PipelineVersion; principal: string }, options: { resumed?: boolean } = {}): Promise<void> {
    const name = e.current.pipeline?.name ?? '';
    try {
      const changes: Change[] = [];
      for (const input of stepChanges(e.previous, e.current, `apply:${e.principal}`)) changes.push((await this.deps.changes.record(input)).change);
      if (changes.length > 0) crashPointForTests('apply-changes-recorded');
      // Not only the changes this call created: a run cut short by a crash recorded some and submitted none.
      let auto = changes.filter(awaitsAutoJob);
      if (options.resumed && auto.length > 0) auto = await this.linkSubmitted(auto);
      if (auto.length > 0) await this.autoRecompute(auto);
      await this.deps.pipelines()?.store.followUpDone(name, e.current.version);
    } catch (err) {
      this.deps.log(`recompute: change detection for pipeline ${name} v${e.current.version} failed: ${String(err)}`);
    }
  }

  /**
   * The runner's listener for an ingest that ran on a version a newer apply replaced: the apply's
   * changes (the same change ids: they derive from what changed) now also cover the steps that
   * run recorded after the apply's recompute was planned. Under `auto` they are recomputed again;
   * the memo serves every step already at the new version, so only the run's late steps execute.
   * Under `manual` nothing runs: a later recompute of the change plans from provenance then, late
   * steps included. Never throws.
   */
  async onStaleRun(e: { pipeline: PipelineVersion; runId: string }): Promise<void> {
    const name = e.pipeline.pipeline?.name ?? '';
    try {
      const pipes = this.deps.pipelines();
      const latest = pipes ? await pipes.store.get(name) : undefined;
      if (!latest) return;
      const changes: Change[] = [];
      for (const input of stepChanges(e.pipeline, latest, `ingest:${e.runId}`)) changes.push((await this.deps.changes.record(input)).change);
      const auto = changes.filter((c) => c.policy === ChangePolicy.CHANGE_POLICY_AUTO);
      this.deps.log(`recompute: run ${e.runId} ran ${name} v${e.pipeline.version} while v${latest.version} was applied: ${changes.length} step change(s)${auto.length > 0 ? ', recomputed again' : ''}`);
      if (auto.length > 0) await this.autoRecompute(auto);
    } catch (err) {
      this.deps.log(`recompute: follow-up of run ${e.runId} on ${name} v${e.pipeline.version} failed: ${String(err)}`);
    }
  }

  /**
   * The code extension's listener: a newly published version of a transform that pipeline steps
   * use at another version is one change per step. Under `auto` the pipeline follows the new
   * version (a new pipeline version, whose step changes then recompute as any apply's do); under
   * `manual` the change waits for `Recompute` or an apply. The publication's follow-up note is
   * removed once every pipeline was told; it stays when that fails, for the next start to finish
   * (a step already moved to the new version is skipped then). Never throws.
   */
  async onCodePublished(code: PublishedCode, principal: string): Promise<void> {
    const transform = code.manifest?.transform ?? '';
    const pipes = this.deps.pipelines();
    try {
      for (const pv of pipes && transform !== '' ? await pipes.store.list() : []) {
        const def = pv.pipeline;
        if (!def) continue;
        const autoSteps = new Set<string>();
        for (const s of def.steps) {
          if (s.transform !== transform || s.codeVersion === code.codeVersion) continue;
          const { change } = await this.deps.changes.record({
            kind: ChangeKind.CHANGE_KIND_CODE_PUBLISHED,
            objectId: `code:${transform}`,
            oldHash: s.codeVersion,
            newHash: code.codeVersion,
            pipeline: def.name,
            step: s.name,
            noticedBy: `publish:${principal}`,
            detail: `new code version of transform ${transform}, used by step ${s.name} at ${s.codeVersion}`,
          });
          // Whether or not this call created it: the code is new, so only a run of this follow-up
          // cut short by a crash can have recorded it, and the step is still behind.
          if (change.policy === ChangePolicy.CHANGE_POLICY_AUTO) autoSteps.add(s.name);
        }
        if (autoSteps.size === 0 || !pipes) continue;
        const followUp = `publish:${principal}`;
        const { pipeline: current, created } = await pipes.store.apply({ ...def, steps: def.steps.map((s) => (autoSteps.has(s.name) ? { ...s, codeVersion: code.codeVersion } : s)) }, { followUp });
        if (created) await this.onPipelineApplied({ previous: pv, current, principal: followUp });
        crashPointForTests('publish-pipeline-followed');
      }
      await this.deps.code()?.followUpDone?.(code.codeVersion);
    } catch (err) {
      this.deps.log(`recompute: change detection for published ${transform} ${code.codeVersion} failed: ${String(err)}`);
    }
  }

  /**
   * The changes that no stored job names: a crash between a job's submission and its noting on
   * its changes left the job without them, and they get it now rather than a second job.
   */
  private async linkSubmitted(changes: Change[]): Promise<Change[]> {
    const stored = await this.deps.jobs()?.jobPayloads?.('recompute');
    if (!stored) return changes;
    const jobOf = new Map<string, string>();
    for (const { jobId, payload } of stored) {
      const ids = (payload as { changeIds?: unknown } | null)?.changeIds;
      if (Array.isArray(ids)) for (const id of ids) if (typeof id === 'string' && !jobOf.has(id)) jobOf.set(id, jobId);
    }
    const left: Change[] = [];
    for (const c of changes) {
      const jobId = jobOf.get(c.changeId);
      if (jobId === undefined) left.push(c);
      else {
        await this.deps.changes.markSubmitted(c.changeId, jobId);
        this.deps.log(`recompute: change ${c.changeId} was submitted as job ${jobId} before the coordinator stopped; noted, not submitted again`);
      }
    }
    return left;
  }

  /**
   * Finishes the follow-ups a stopped coordinator left noted (it died between storing a pipeline
   * version or a code bundle and recording and submitting what that sets off): the same listeners
   * again, which record only what is missing and submit only auto changes without a job. Never throws.
   */
  async resumeFollowUps(): Promise<void> {
    try {
      const pipes = this.deps.pipelines();
      for (const f of pipes ? await pipes.store.followUps() : []) {
        const store = (pipes as NonNullable<typeof pipes>).store;
        this.deps.log(`recompute: finishing the follow-up of pipeline ${f.pipeline} v${f.version} (applied by ${f.principal}) a stopped coordinator left undone`);
        const current = await store.get(f.pipeline, f.version);
        const previous = f.version > 1 ? await store.get(f.pipeline, f.version - 1) : undefined;
        await this.onPipelineApplied({ previous, current, principal: f.principal }, { resumed: true });
      }
      const code = this.deps.code();
      for (const f of (await code?.followUps?.()) ?? []) {
        this.deps.log(`recompute: finishing the follow-up of published code ${f.codeVersion} (by ${f.principal}) a stopped coordinator left undone`);
        const published = await code?.describe(f.codeVersion);
        if (published) await this.onCodePublished(published, f.principal);
        else await code?.followUpDone?.(f.codeVersion);
      }
    } catch (err) {
      this.deps.log(`recompute: finishing the follow-ups a stopped coordinator left failed (they are tried again on the next start): ${String(err)}`);
    }
  }

  /**
   * Recomputing a published-code change moves its step to the new version first (a new pipeline
   * version, its step change recorded), so the recompute runs the code the change is about.
   */
  private async adoptPublishedCode(change: Change): Promise<Change[]> {
    const pipes = this.deps.pipelines();
    const pv = pipes ? await pipes.store.get(change.pipeline).catch(() => undefined) : undefined;
    const def = pv?.pipeline;
    const step = def?.steps.find((s) => s.name === change.step);
    if (!pipes || !pv || !def || !step || step.codeVersion === change.newHash) return [];
    const { pipeline: current, created } = await pipes.store.apply({ ...def, steps: def.steps.map((s) => (s.name === change.step ? { ...s, codeVersion: change.newHash } : s)) });
    const recorded: Change[] = [];
    if (created) for (const input of stepChanges(pv, current, change.noticedBy)) recorded.push((await this.deps.changes.record(input)).change);
    return recorded;
  }

  /** A watched path's new files: ingested into its pipeline source, or reported as objects. */
  async onFiles(watch: PathWatch, files: readonly ChangedFile[]): Promise<string> {
    if (watch.pipeline !== '') {
      const pipes = this.deps.pipelines();
      if (!pipes) throw new FailedPreconditionError('watching a pipeline source needs the pipelines extension');
      const summary = await pipes.runner.ingest(watch.pipeline, watch.source, [files.map((f) => ({ key: f.rel, payload: f.bytes }))], { principal: `watch:${watch.path}` });
      // A step that failed on a file leaves its change reported: the watch says why (retrace watch list).
      return summary.shardsFailed > 0 ? `ingest ${summary.runId}: ${summary.shardsFailed} shard(s) failed: ${summary.firstError}` : '';
    }
    for (const f of files) {
      const objectId = `${watch.objectIdPrefix}${f.rel}`;
      if (this.deps.lineage.index.has(`object:${objectId}`)) {
        await this.notify({ objectId, contentHash: f.hash, payload: Buffer.from(f.bytes), mediaType: '', noticedBy: `watch:${watch.path}` }, 'watch', { kind: ChangeKind.CHANGE_KIND_FILE });
        continue;
      }
      // A file seen for the first time: its first version, so later edits are changes.
      await this.deps.pipelines()?.payloads.put(f.bytes);
      const nowNs = this.deps.clock().toString();
      await this.deps.lineage.submit([{ eventId: `version:${objectId}@${f.hash}`, eventTimeNs: nowNs, producer: PRODUCER, body: { $case: 'objectVersion', value: { objectId, contentHash: f.hash, size: String(f.bytes.length), mediaType: '', createdAtNs: nowNs, attributes: { noticed_by: `watch:${watch.path}` }, facets: undefined } } }]);
    }
    return '';
  }

  private async autoRecompute(changes: Change[]): Promise<Change> {
    try {
      const r = await this.recompute({ changeIds: changes.map((c) => c.changeId), objectIds: [], newContents: [], policy: undefined }, 'auto-policy');
      this.deps.log(`recompute: ${changes.length} change(s) under the auto policy -> job ${r.jobId} (${r.tasks.length} tasks)`);
    } catch (err) {
      this.deps.log(`recompute: auto recompute of ${changes.map((c) => c.changeId).join(', ')} not started: ${err instanceof Error ? err.message : String(err)}`);
    }
    return this.deps.changes.get((changes[0] as Change).changeId);
  }

  // ---- impact ----

  /** The roots of a change. */
  private async rootsOfChange(change: Change, field: string): Promise<ImpactRoot[]> {
    switch (change.kind) {
      case ChangeKind.CHANGE_KIND_CODE_VERSION:
      case ChangeKind.CHANGE_KIND_CODE_PUBLISHED:
      case ChangeKind.CHANGE_KIND_PARAMETERS: {
        const pipes = this.deps.pipelines();
        const pv = pipes ? await pipes.store.get(change.pipeline).catch(() => undefined) : undefined;
        const def = pv?.pipeline?.steps.find((s) => s.name === change.step);
        if (!def) throw new FailedPreconditionError(`step ${change.step} is no longer in pipeline ${change.pipeline}`, field);
        return [{ kind: 'pipelineStep', pipeline: change.pipeline, step: change.step, transform: def.transform }];
      }
      default: {
        // A version no step has read (a change that waited behind another under manual) is
        // behind what read the versions before it: the walk starts from the newest one some
        // step has read, as for an object id.
        const unread = this.deps.lineage.index.consumersOf(versionKey(change.objectId, change.oldHash)).length === 0;
        const oldHash = (unread ? this.newestReadVersion(change.objectId, change.newHash) : undefined) ?? change.oldHash;
        return [{ kind: 'version', objectId: change.objectId, oldHash, newHash: change.newHash }];
      }
    }
  }

  /**
   * An object's content now, where a change of it is no longer the latest (a newer change moved
   * it on before this one was recomputed); undefined otherwise.
   */
  private async movedOnTo(change: Change): Promise<string | undefined> {
    if (CODE_KINDS.has(change.kind)) return undefined;
    const now = await this.contentNow(change.objectId);
    return now !== undefined && now !== change.newHash ? now : undefined;
  }

  /** The content hash of the object's newest version (first seen) that some step read, other than `except`. */
  private newestReadVersion(objectId: string, except: string): string | undefined {
    const index = this.deps.lineage.index;
    const used = [...index.membersOf(`object:${objectId}`)].reverse().find((k) => parseNodeKey(k).contentHash !== except && index.consumersOf(k).length > 0);
    return used === undefined ? undefined : parseNodeKey(used).contentHash;
  }

  /**
   * The content an object is at now where its newest version first seen may not say it:
   * undefined when that version does. A pipeline record's is its current record. Another object's
   * (a producer's dataset) is its newest change's new content, unless a producer reported a
   * version after that change: after a revert (A→B, B→A) the newest version first seen is B.
   */
  async contentNow(objectId: string): Promise<string | undefined> {
    const rec = parseRecordId(objectId);
    const pipes = this.deps.pipelines();
    if (rec && pipes) {
      const current = await pipes.store.getCurrent(rec.pipeline, rec.dataset, rec.key);
      return current?.objectId === objectId ? current.contentHash : undefined;
    }
    const change = await this.deps.changes.latestOf(rec?.pipeline ?? '', objectId);
    if (!change) return undefined;
    // Node ids follow the ledger's order; event times are the producers' and may be anything.
    const index = this.deps.lineage.index;
    const changeNode = index.idOf(`run:change:${change.changeId}`);
    const newest = index.membersOf(`object:${objectId}`).at(-1);
    const newestNode = newest === undefined ? undefined : index.idOf(newest);
    if (changeNode === undefined || (newestNode !== undefined && newestNode > changeNode)) return undefined;
    return change.newHash;
  }

  /**
   * Impact; see the proto. With `page_size`, a page of the whole answer (ImpactPages: the pages
   * are cut from one answer, kept between pages); with `step_limit`, the rows a table shows.
   */
  async impact(request: ImpactRequest): Promise<ImpactResponse> {
    const asOfNs = request.asOfNs === '' ? '0' : request.asOfNs;
    if (!/^\d{1,19}$/.test(asOfNs)) throw new InvalidArgumentError('as_of_ns', 'must be non-negative nanoseconds since the epoch');
    const paging = impactPaging(request);
    if (paging.pageSize > 0) return this.impactPages.page(request, paging, () => this.wholeImpact(request, asOfNs));
    const response = await this.wholeImpact(request, asOfNs);
    if (request.stepLimit > 0) {
      // The rows a client shows, not every one: the counts and sums above still cover all.
      response.steps = keptRows(response.steps, request.stepLimit, (s) => s.placementNodeId === '');
      response.objects = response.objects.slice(0, request.stepLimit);
    }
    return response;
  }

  /** The whole answer of an Impact request (every affected step and object); `asOfNs` checked. */
  private async wholeImpact(request: ImpactRequest, asOfNs: string): Promise<ImpactResponse> {
    const asOfMs = asOfNs === '0' ? Number.POSITIVE_INFINITY : nsToMs(BigInt(asOfNs));
    const t = request.target;
    let roots: ImpactRoot[];
    if (!t) throw new InvalidArgumentError('target', 'one of change_id, object_id and step_id is required');
    if (t.$case === 'changeId') roots = await this.rootsOfChange(await this.deps.changes.get(t.value), 'change_id');
    else if (t.$case === 'stepId') roots = [{ kind: 'step', stepId: t.value }];
    else {
      const index = this.deps.lineage.index;
      const all = index.membersOf(`object:${t.value}`);
      const versions = all.filter((k) => index.timeOf(index.idOf(k) as number) <= asOfMs);
      const latest = versions[versions.length - 1];
      if (!latest) {
        const first = all[0];
        if (first !== undefined) {
          const firstIso = new Date(index.timeOf(index.idOf(first) as number)).toISOString();
          throw new RetraceError('NOT_FOUND', `object ${JSON.stringify(t.value)} has no version as of ${nanosToIso(asOfNs)} (its first is from ${firstIso})`, { field: 'object_id' });
        }
        // Clients that take an id of either kind (the CLI) try the object, then the step: when
        // neither exists this is the error to show, and it names both.
        if (!index.has(`step:${t.value}`)) throw new RetraceError('NOT_FOUND', `no object or step has the id ${JSON.stringify(t.value)}`, { field: 'object_id' });
        throw new NotFoundError(`object ${JSON.stringify(t.value)} (a step has that id)`, 'object_id');
      }
      // What consumes the object now: its newest version some step used by then. A version no
      // step has read yet (a change waiting under a manual policy) affects what read the one before.
      // After a revert the object's version now is not its newest version first seen.
      const consumed = (k: string): boolean => index.consumersOf(k).some((c) => index.timeOf(index.idOf(c) as number) <= asOfMs);
      const now = asOfNs === '0' ? await this.contentNow(t.value) : undefined;
      const nowKey = now === undefined ? undefined : versionKey(t.value, now);
      const used = (nowKey !== undefined && consumed(nowKey) ? nowKey : undefined) ?? [...versions].reverse().find(consumed) ?? latest;
      roots = [{ kind: 'version', objectId: t.value, oldHash: parseNodeKey(used).contentHash }];
    }
    const graph = await collectAffected(this.deps.lineage, roots, asOfMs);
    const defs = await this.definitions(graph);
    // Steps of one pipeline step and code version need the same, and the allocator is asked
    // without loads: one placement each, not one per affected step (a code lookup and an
    // allocation over every node, 20,000 times over 20,000 records).
    const placed = new Map<string, Promise<{ nodeId: string } | { waiting: string }>>();
    return toImpactResponse(graph, asOfNs, (n) => {
      const key = `${n.pipeline}/${n.stepName}\u0000${n.step.codeVersion}`;
      let p = placed.get(key);
      if (!p) {
        p = this.place(n, defs);
        placed.set(key, p);
      }
      return p;
    });
  }

  /**
   * Where the allocator would put a node's step now (no loads: a dry run), with what its shards
   * would need: the step's requirements and its transform's declared ones, as the dispatcher
   * merges them.
   */
  private async place(n: AffectedNode, defs: ReadonlyMap<string, StepDefinition>): Promise<{ nodeId: string } | { waiting: string }> {
    const def = defs.get(`${n.pipeline}/${n.stepName}`);
    const codeVersion = def?.codeVersion ?? n.step.codeVersion;
    const need: Parameters<typeof allocate>[1] = { codeVersion };
    const requirements = mergeRequirements(declaredRequirements(await this.deps.code()?.describe(codeVersion)), def?.requirements);
    if (requirements) need.requirements = requirements;
    const result = allocate(this.deps.nodes().map(toNodeView), need, new Map());
    return 'nodeId' in result ? { nodeId: result.nodeId } : { waiting: result.waiting };
  }

  /** Each affected pipeline step's definition in the latest version of its pipeline. */
  private async definitions(graph: AffectedGraph): Promise<Map<string, StepDefinition>> {
    const out = new Map<string, StepDefinition>();
    const pipes = this.deps.pipelines();
    if (!pipes) return out;
    for (const name of new Set(graph.nodes.map((n) => n.pipeline).filter((p) => p !== ''))) {
      const pv = await pipes.store.get(name).catch(() => undefined);
      for (const s of pv?.pipeline?.steps ?? []) out.set(`${name}/${s.name}`, toStepDefinition(s));
    }
    return out;
  }

  /**
   * Inputs that neither this request changes nor an affected step produces are taken at their
   * content now, not as the recorded execution used them: a recompute served from
   * the memo (a reverted change) moves a record back without recording a step, so the latest
   * recorded execution can name a version that is no longer current.
   */
  private async addCurrentInputs(graph: AffectedGraph, newVersions: Map<string, string>): Promise<void> {
    const pipes = this.deps.pipelines();
    if (!pipes) return;
    const produced = new Set(graph.nodes.flatMap((n) => n.outputs.map((o) => o.objectId)));
    for (const n of graph.nodes) {
      for (const u of n.step.used) {
        if (produced.has(u.objectId) || newVersions.has(u.objectId)) continue;
        const cur = await this.contentNow(u.objectId);
        if (cur !== undefined && cur !== u.contentHash) newVersions.set(u.objectId, cur);
      }
    }
  }

  // ---- recompute ----

  /**
   * Plans and submits a recompute job (or only plans: `policy.dry_run`). `signal` is the caller's
   * call: once it is cancelled (Ctrl-C while `retrace recompute --watch` plans), nothing more is
   * recorded and no job is submitted, so a caller told "interrupted" has not started a job it
   * never learnt the id of; changes recorded before that stay `reported`.
   */
  async recompute(request: RecomputeRequest, principal: string, signal?: AbortSignal): Promise<RecomputeResponse> {
    const policy = request.policy;
    if (request.changeIds.length + request.objectIds.length + request.newContents.length === 0) throw new InvalidArgumentError('change_ids', 'name at least one change, object or new content');
    if (policy && policy.maxAttempts > MAX_RECOMPUTE_ATTEMPTS) throw new InvalidArgumentError('policy.max_attempts', `at most ${MAX_RECOMPUTE_ATTEMPTS}`);
    if (policy && policy.concurrency > MAX_RECOMPUTE_CONCURRENCY) throw new InvalidArgumentError('policy.concurrency', `at most ${MAX_RECOMPUTE_CONCURRENCY} steps at once (0: the default, 16), got ${policy.concurrency}`);
    const known = new Set(this.deps.nodes().map((n) => n.nodeId));
    policy?.targetNodeIds.forEach((id, i) => {
      if (!known.has(id)) throw new InvalidArgumentError(`policy.target_node_ids[${i}]`, `unknown node ${JSON.stringify(id)}`);
    });
    if (policy) checkTargetLabels(policy.targetLabels, this.deps.nodes(), 'policy.target_labels');
    const changes: Change[] = [];
    for (const [i, id] of request.changeIds.entries()) {
      // Named twice, it is one change of the job.
      if (changes.some((c) => c.changeId === id)) continue;
      try {
        changes.push(await this.deps.changes.get(id));
      } catch (err) {
        if (err instanceof NotFoundError) throw new NotFoundError(`change ${JSON.stringify(id)}`, `change_ids[${i}]`);
        throw err;
      }
    }
    // Validate every object before recording anything.
    const index = this.deps.lineage.index;
    const objectRoots: ChangeInput[] = [];
    const objectRecorded: Change[] = [];
    for (const [i, objectId] of request.objectIds.entries()) {
      const versions = index.membersOf(`object:${objectId}`);
      const latest = versions[versions.length - 1];
      if (!latest) throw new NotFoundError(`object ${JSON.stringify(objectId)}`, `object_ids[${i}]`);
      // The object's version now (after a revert, not the newest first seen).
      const newHash = (await this.contentNow(objectId)) ?? parseNodeKey(latest).contentHash;
      // The newest other version some step used: what the consumers are behind on.
      const oldHash = this.newestReadVersion(objectId, newHash);
      if (oldHash === undefined) throw new FailedPreconditionError(`no step used an older version of ${objectId}: nothing is behind its latest version`, `object_ids[${i}]`);
      const rec = parseRecordId(objectId);
      // A change already recorded for exactly this step (a re-ingest under a manual policy, a
      // notify) is the one to recompute, not a second change of the same two hashes.
      const recorded = await this.changeTo(objectId, rec?.pipeline ?? '', newHash);
      if (recorded && recorded.oldHash === oldHash) objectRecorded.push(recorded);
      else objectRoots.push({ kind: ChangeKind.CHANGE_KIND_OBJECT, objectId, oldHash, newHash, pipeline: rec?.pipeline ?? '', source: rec?.dataset ?? '', noticedBy: `recompute:${principal}` });
    }
    request.newContents.forEach((n, i) => {
      if (n.objectId === '') throw new InvalidArgumentError(`new_contents[${i}].object_id`, 'is required');
      if (!index.has(`object:${n.objectId}`)) throw new NotFoundError(`object ${JSON.stringify(n.objectId)}`, `new_contents[${i}].object_id`);
    });
    // Each new content as a change; content that is its object's version already stands for the
    // change that made it so (a repeated request), and is refused where none did.
    const contents: { request: NotifyChangeRequest; field: string; change: Change; recorded: boolean }[] = [];
    for (const [i, n] of request.newContents.entries()) {
      const req: NotifyChangeRequest = { objectId: n.objectId, contentHash: '', payload: n.payload, mediaType: n.mediaType, noticedBy: `recompute:${principal}` };
      const field = `new_contents[${i}].`;
      const { input, unchanged } = await this.assess(req, principal, { field });
      const change = unchanged ? await this.changeTo(input.objectId, input.pipeline, input.newHash) : (await this.deps.changes.preview(input)).change;
      if (!change) throw new FailedPreconditionError(`this is the latest version of ${n.objectId} already, and no recorded change made it so: nothing changed`, `${field}payload`);
      contents.push({ request: req, field, change, recorded: unchanged });
    }
    // New content nothing downstream has read would be recorded (a change, its payload, a
    // version) only for the request to fail with nothing to recompute: refuse it first.
    for (const c of contents) {
      if (c.recorded) continue;
      if (!(await hasAffected(this.deps.lineage, await this.rootsOfChange(c.change, `${c.field}object_id`)))) throw new FailedPreconditionError(`no step has read a version of ${c.request.objectId}: nothing to recompute (retrace notify records new content without recomputing)`, `${c.field}object_id`);
    }
    // A dry run stores nothing: no change, no payload, no version in provenance, no current
    // record moved, no pipeline version adopted. It plans from the changes as they would be.
    const dryRun = policy?.dryRun === true;
    if (signal) throwIfAborted(signal);
    for (const c of objectRecorded) if (!changes.some((x) => x.changeId === c.changeId)) changes.push(c);
    for (const r of objectRoots) changes.push((await (dryRun ? this.deps.changes.preview(r) : this.deps.changes.record(r))).change);
    for (const c of contents) {
      if (c.recorded && !dryRun) await this.storeReportedBytes(c.request.payload);
      const change = dryRun || c.recorded ? c.change : (await this.notify(c.request, principal, { submitAuto: false, field: c.field })).change;
      if (change) changes.push(change);
    }
    // The new pipeline version an adoption applies records its step's code change too: the job
    // recomputing the published code is that change's job (else it stays `reported`, as if
    // still to do, after the job ran it).
    const adopted: Change[] = [];
    if (!dryRun) for (const c of changes) if (c.kind === ChangeKind.CHANGE_KIND_CODE_PUBLISHED) adopted.push(...(await this.adoptPublishedCode(c)));
    // A record that newer changes moved on is recomputed at its content now, not at the one this
    // change named (that would leave its downstream behind the record); the reported change
    // that made the content current is recomputed by the same job.
    const movedOn = new Map<string, string>();
    for (const c of [...changes]) {
      const now = await this.movedOnTo(c);
      if (now === undefined) continue;
      movedOn.set(c.objectId, now);
      const newer = await this.changeTo(c.objectId, c.pipeline, now);
      if (newer && newer.state === ChangeState.CHANGE_STATE_REPORTED && !changes.some((x) => x.changeId === newer.changeId)) changes.push(newer);
    }
    const roots: ImpactRoot[] = [];
    for (const [i, c] of changes.entries()) roots.push(...(await this.rootsOfChange(c, `change_ids[${i}]`)));
    const newVersions = new Map<string, string>();
    for (const r of roots) if (r.kind === 'version' && r.newHash) newVersions.set(r.objectId, movedOn.get(r.objectId) ?? r.newHash);
    const graph = await collectAffected(this.deps.lineage, roots);
    await this.addCurrentInputs(graph, newVersions);
    const definitions = await this.definitions(graph);
    for (const n of graph.nodes) {
      const rewired = n.pipeline === '' ? undefined : rewiredReason(n.pipeline, n.stepName, n.key, n.inputNames, definitions.get(`${n.pipeline}/${n.stepName}`));
      if (rewired) throw new FailedPreconditionError(rewired, 'change_ids');
    }
    // What adopting a published code version would make each such step run.
    if (dryRun) {
      for (const c of changes) {
        const def = c.kind === ChangeKind.CHANGE_KIND_CODE_PUBLISHED ? definitions.get(`${c.pipeline}/${c.step}`) : undefined;
        if (def) definitions.set(`${c.pipeline}/${c.step}`, { ...def, codeVersion: c.newHash });
      }
    }
    const code = this.deps.code();
    if (code) {
      for (const n of graph.nodes) {
        const cv = definitions.get(`${n.pipeline}/${n.stepName}`)?.codeVersion ?? n.step.codeVersion;
        if (cv !== '' && (await code.describe(cv)) === undefined) throw new NotFoundError(`code version ${cv} of step ${n.pipeline}/${n.stepName} (publish it with "retrace publish")`, 'code_version');
      }
    }
    const changeIds = changes.map((c) => c.changeId);
    const placement: { nodeIds?: string[]; labels?: Record<string, string> } = {};
    if (policy?.targetNodeIds.length) placement.nodeIds = policy.targetNodeIds;
    if (policy && Object.keys(policy.targetLabels).length > 0) placement.labels = policy.targetLabels;
    const planOptions: Parameters<typeof planRecompute>[1] = {
      newVersions,
      definitions,
      changeIds,
      principal,
      title: `recompute ${changeIds.slice(0, 3).join(', ')}${changeIds.length > 3 ? ` and ${changeIds.length - 3} more` : ''}`,
      placement,
    };
    if (policy?.maxAttempts) planOptions.maxAttempts = policy.maxAttempts;
    if (policy?.concurrency) planOptions.concurrency = policy.concurrency;
    const spec = planRecompute(graph, planOptions);
    const tasks = spec.tasks.map((t) => ({ taskId: t.id, label: t.label, originalStepId: (t.payload as { originalStepId: string }).originalStepId, dependsOn: t.dependsOn }));
    // A dry run answers what the real run would: with nothing downstream, the same refusal.
    if (spec.tasks.length === 0) throw new FailedPreconditionError(`no recorded step used the changed versions (${graph.roots.join(', ')}): nothing to recompute`, 'change_ids');
    if (dryRun) return { jobId: '', tasks, changeIds };
    const jobs = this.deps.jobs();
    if (!jobs) throw new FailedPreconditionError('recompute needs the job manager (start the coordinator with the jobs extension)');
    if (signal) throwIfAborted(signal);
    const { jobId } = await jobs.submit(spec);
    for (const c of changeIds) await this.deps.changes.markSubmitted(c, jobId);
    for (const c of adopted) if (c.state === ChangeState.CHANGE_STATE_REPORTED && !changeIds.includes(c.changeId)) await this.deps.changes.markSubmitted(c.changeId, jobId);
    return { jobId, tasks, changeIds };
  }
}

