import type { AbstractSublevel } from 'abstract-level';
import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import type { CodeManifest, PublishedCode } from '../../common/gen/retrace/v1/code.js';
import { contentHashOf, isContentHash } from '../../common/hash.js';
import type { NanoClock } from '../clock.js';
import type { Database } from '../store/database.js';

/** Largest bundle the store accepts, bytes (32 MiB). */
export const MAX_BUNDLE_BYTES = 32 * 1024 * 1024;

/** The stored version and whether this call created it. */
export interface PublishResult {
  code: PublishedCode;
  created: boolean;
}

/** A page of versions, newest first; `nextPageToken` is empty on the last page. */
export interface CodePage {
  versions: PublishedCode[];
  nextPageToken: string;
}

/**
 * Content-addressed transform code, in the `code` sublevel of the coordinator's database:
 * `bundles` (hex → bytes), `versions` (hex → PublishedCode JSON), `published`
 * (`<published_at_ns, 20 digits>:<hex>` → hex, the listing order) and `followups` (hex → who
 * published it, until what the publication sets off is done). Nothing but follow-up notes is
 * ever deleted, so every version stays fetchable. The only code that knows this layout.
 */
export interface CodeStore {
  /**
   * Stores `bundle` under "sha256:<hex>" of its bytes, with `manifest`, in one atomic batch.
   * Publishing bytes already stored returns the stored version (`created: false`) and writes
   * nothing. With `followUp` (who published), a new version is noted in that batch as owing its
   * follow-up, so a crash before `followUpDone` leaves the note for the next start. Throws
   * InvalidArgumentError (`bundle`, `manifest.transform`...) on bad input.
   */
  publish(bundle: Uint8Array, manifest: CodeManifest, options?: { followUp?: string }): Promise<PublishResult>;
  /** The versions whose follow-up was noted and never marked done. */
  followUps(): Promise<{ codeVersion: string; principal: string }[]>;
  /** Forgets a version's follow-up note (none: nothing happens). */
  followUpDone(codeVersion: string): Promise<void>;
  /** The version and its bytes; NotFoundError (`code_version`) when unknown. */
  get(codeVersion: string): Promise<{ code: PublishedCode; bundle: Uint8Array }>;
  /** The version's record without its bytes, or undefined. */
  describe(codeVersion: string): Promise<PublishedCode | undefined>;
  /** Versions newest first; `transform` filters by manifest name. Page size 1..1000 (default 100). */
  list(options?: { transform?: string; pageSize?: number; pageToken?: string }): Promise<CodePage>;
  /** Every stored bundle as [hex of its key, bytes], in key order, read as it goes (for verify). */
  storedBundles(): AsyncIterable<[string, Uint8Array]>;
  /** Every version record as [hex of its key, its JSON text, not parsed], in key order (for verify). */
  storedVersions(): AsyncIterable<[string, string]>;
}

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;
const PAGE_TOKEN_PATTERN = /^\d{20}:[0-9a-f]{64}$/;

/** Opens the code store on `db` (creates the sublevels; writes nothing). `clock` stamps publications. */
export function createCodeStore(db: Database, clock: NanoClock): CodeStore {
  const root = db.sublevel('code');
  const bundles: AbstractSublevel<typeof root, string | Uint8Array, string, Uint8Array> = root.sublevel<string, Uint8Array>('bundles', { valueEncoding: 'view' });
  const versions: AbstractSublevel<typeof root, string | Uint8Array, string, PublishedCode> = root.sublevel<string, PublishedCode>('versions', { valueEncoding: 'json' });
  const published = root.sublevel<string, string>('published', { valueEncoding: 'utf8' });
  const followUps = root.sublevel<string, { principal: string }>('followups', { valueEncoding: 'json' });
  // Publications are serialised so two concurrent publishes of the same bytes store one version.
  let tail: Promise<unknown> = Promise.resolve();

  function hexOf(codeVersion: string, field: string): string {
    if (typeof codeVersion !== 'string' || !isContentHash(codeVersion)) {
      throw new InvalidArgumentError(field, `expected "sha256:" and 64 lowercase hex digits, got ${JSON.stringify(codeVersion)}`);
    }
    return codeVersion.slice('sha256:'.length);
  }

  async function publishNow(bundle: Uint8Array, manifest: CodeManifest, followUp: string | undefined): Promise<PublishResult> {
    const codeVersion = contentHashOf(bundle);
    const hex = codeVersion.slice('sha256:'.length);
    const existing = await versions.get(hex);
    if (existing !== undefined) return { code: existing, created: false };
    const publishedAtNs = clock().toString();
    const code: PublishedCode = {
      codeVersion,
      manifest: {
        transform: manifest.transform,
        requirements: manifest.requirements ?? { cpu: 0, memoryMb: 0, gpu: 0, instructionSets: [], networkMbps: 0 },
        sourceFile: manifest.sourceFile,
        bundler: manifest.bundler,
      },
      sizeBytes: String(bundle.byteLength),
      publishedAtNs,
    };
    const batch = root
      .batch()
      .put<string, Uint8Array>(hex, bundle, { sublevel: bundles })
      .put<string, PublishedCode>(hex, code, { sublevel: versions })
      .put(`${publishedAtNs.padStart(20, '0')}:${hex}`, hex, { sublevel: published });
    if (followUp !== undefined) batch.put(hex, { principal: followUp }, { sublevel: followUps });
    await batch.write();
    return { code, created: true };
  }

  return {
    publish(bundle, manifest, options = {}) {
      validatePublish(bundle, manifest);
      const run = tail.then(() => publishNow(bundle, manifest, options.followUp));
      tail = run.catch(() => {});
      return run;
    },

    async followUps() {
      const out: { codeVersion: string; principal: string }[] = [];
      for await (const [hex, v] of followUps.iterator()) out.push({ codeVersion: `sha256:${hex}`, principal: v.principal });
      return out;
    },

    async followUpDone(codeVersion) {
      await followUps.del(hexOf(codeVersion, 'code_version'));
    },

    async get(codeVersion) {
      const hex = hexOf(codeVersion, 'code_version');
      const [code, bundle] = await Promise.all([versions.get(hex), bundles.get(hex)]);
      if (code === undefined || bundle === undefined) throw new NotFoundError(`code version ${codeVersion}`, 'code_version');
      return { code, bundle };
    },

    async describe(codeVersion) {
      return versions.get(hexOf(codeVersion, 'code_version'));
    },

    async list(options = {}) {
      const pageSize = options.pageSize === undefined || options.pageSize === 0 ? 100 : options.pageSize;
      if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 1000) throw new InvalidArgumentError('page_size', `must be 1..1000, got ${pageSize}`);
      const token = options.pageToken ?? '';
      if (token !== '' && !PAGE_TOKEN_PATTERN.test(token)) throw new InvalidArgumentError('page_token', 'is not a token from a previous response');
      const filter = options.transform ?? '';
      const out: PublishedCode[] = [];
      let last = '';
      for await (const [key, hex] of published.iterator(token === '' ? { reverse: true } : { reverse: true, lt: token })) {
        const code = await versions.get(hex);
        if (code === undefined || (filter !== '' && code.manifest?.transform !== filter)) continue;
        if (out.length === pageSize) return { versions: out, nextPageToken: last };
        out.push(code);
        last = key;
      }
      return { versions: out, nextPageToken: '' };
    },

    storedBundles() {
      return bundles.iterator();
    },

    storedVersions() {
      // As text: a record that no longer parses is reported by verify, not thrown mid-scan.
      return versions.iterator<string, string>({ valueEncoding: 'utf8' });
    },
  };
}

function validatePublish(bundle: Uint8Array, manifest: CodeManifest | undefined): asserts manifest is CodeManifest {
  if (!(bundle instanceof Uint8Array) || bundle.byteLength === 0) throw new InvalidArgumentError('bundle', 'must not be empty');
  if (bundle.byteLength > MAX_BUNDLE_BYTES) {
    throw new InvalidArgumentError('bundle', `is ${bundle.byteLength} bytes; the limit is ${MAX_BUNDLE_BYTES} (32 MiB)`);
  }
  if (manifest === undefined) throw new InvalidArgumentError('manifest', 'is required');
  if (!NAME_PATTERN.test(manifest.transform)) {
    throw new InvalidArgumentError('manifest.transform', `must match ${NAME_PATTERN.source}, got ${JSON.stringify(manifest.transform)}`);
  }
  const r = manifest.requirements;
  if (r) {
    for (const [field, v] of [['cpu', r.cpu], ['network_mbps', r.networkMbps]] as const) {
      if (!Number.isFinite(v) || v < 0) throw new InvalidArgumentError(`manifest.requirements.${field}`, `must be a non-negative number, got ${v}`);
    }
    if (r.instructionSets.some((s) => s.trim() === '' || s.length > 64)) {
      throw new InvalidArgumentError('manifest.requirements.instruction_sets', 'must be non-empty flags of at most 64 characters');
    }
  }
  if (manifest.sourceFile.length > 256) throw new InvalidArgumentError('manifest.source_file', 'must be at most 256 characters');
  if (manifest.bundler.length > 128) throw new InvalidArgumentError('manifest.bundler', 'must be at most 128 characters');
}
