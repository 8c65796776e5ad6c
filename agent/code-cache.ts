import { randomBytes } from 'node:crypto';
import { readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DataLossError, InvalidArgumentError } from '../common/errors.js';
import type { CodeServiceClient } from '../common/gen/retrace/v1/code.js';
import { contentHashOf, isContentHash } from '../common/hash.js';
import { makeDirectory } from './make-directory.js';

/** A verified bundle on local disk. */
export interface CachedCode {
  /** "sha256:<hex>". */
  codeVersion: string;
  /** `<dir>/<hex>.mjs`. */
  path: string;
  /**
   * File URL of `path`. A shard worker reads the file once, checks it again and imports a private
   * copy of the bytes it checked, never this URL itself (see loadVerified in shard-worker.ts).
   */
  url: string;
  sizeBytes: number;
}

/** Fetches a bundle's bytes by code version (through CodeService.GetCode on a real agent). */
export type CodeFetcher = (codeVersion: string) => Promise<Uint8Array>;

/**
 * A fetcher over CodeService.GetCode on the agent's authenticated channel. Bundles may be up to
 * 32 MiB: the channel must allow messages that large (`'grpc.max_receive_message_length'`; the
 * gRPC default is 4 MiB), or bigger bundles fail with RESOURCE_EXHAUSTED.
 */
export function codeServiceFetcher(client: Pick<CodeServiceClient, 'getCode'>): CodeFetcher {
  return async (codeVersion) => (await client.getCode({ codeVersion })).bundle;
}

export interface CodeCacheOptions {
  /** Folder of the cache, normally `<agent data dir>/code`; created on first write. */
  dir: string;
  fetch: CodeFetcher;
}

/** Transform bundles by code version, fetched on first use and kept on disk. */
export interface CodeCache {
  /**
   * The bundle of `codeVersion` on local disk. The first use in this process reads the cached
   * file, or fetches the bytes when there is none, and checks that they hash to `codeVersion`;
   * later calls answer from memory. Concurrent calls for one version share one fetch; `signal`
   * stops this caller's wait only (the shared fetch goes on for the others). Rejects with
   * InvalidArgumentError for a malformed version, DataLossError when the bytes hash to something
   * else (nothing is cached), or the fetcher's error (not remembered: the next call tries again).
   */
  get(codeVersion: string, signal?: AbortSignal): Promise<CachedCode>;
  /**
   * Drops what `get` remembers of a version: the next `get` reads and checks the cached file
   * again, and fetches the bundle anew when the file no longer hashes to the version.
   */
  forget(codeVersion: string): void;
  /** Code versions with a bundle in the cache folder (not re-verified), sorted. */
  list(): Promise<string[]>;
}

const HEX_FILE = /^([0-9a-f]{64})\.mjs$/;

/** Creates the cache; nothing is read or fetched until `get`. */
export function createCodeCache(options: CodeCacheOptions): CodeCache {
  const { dir, fetch } = options;
  const loaded = new Map<string, Promise<CachedCode>>();

  async function load(codeVersion: string, hex: string): Promise<CachedCode> {
    const path = join(dir, `${hex}.mjs`);
    const cached = await readFile(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (cached !== undefined && contentHashOf(cached) === codeVersion) {
      return { codeVersion, path, url: pathToFileURL(path).href, sizeBytes: cached.byteLength };
    }
    // A cached file that does not verify (a torn write, a changed disk) is fetched again.
    const bytes = await fetch(codeVersion);
    const actual = contentHashOf(bytes);
    if (actual !== codeVersion) throw new DataLossError(`code version ${codeVersion}: the fetched bundle hashes to ${actual}; refused`);
    // Only this agent's user may change what its workers will load.
    await makeDirectory(dir, 0o700);
    // Write then rename, so a crash never leaves a partial bundle under its final name. The
    // temporary name starts with "." so listings skip it.
    const tmp = join(dir, `.${hex}.${randomBytes(6).toString('hex')}.tmp`);
    try {
      await writeFile(tmp, bytes, { mode: 0o600 });
      await rename(tmp, path);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return { codeVersion, path, url: pathToFileURL(path).href, sizeBytes: bytes.byteLength };
  }

  return {
    get(codeVersion, signal) {
      if (typeof codeVersion !== 'string' || !isContentHash(codeVersion)) {
        return Promise.reject(new InvalidArgumentError('code_version', `expected "sha256:" and 64 lowercase hex digits, got ${JSON.stringify(codeVersion)}`));
      }
      let pending = loaded.get(codeVersion);
      if (!pending) {
        const p = load(codeVersion, codeVersion.slice('sha256:'.length));
        loaded.set(codeVersion, p);
        p.catch(() => {
          if (loaded.get(codeVersion) === p) loaded.delete(codeVersion);
        });
        pending = p;
      }
      return signal ? abortable(pending, signal) : pending;
    },

    forget(codeVersion) {
      loaded.delete(codeVersion);
    },

    async list() {
      const names = await readdir(dir).catch(() => [] as string[]);
      return names.flatMap((n) => {
        const m = HEX_FILE.exec(n);
        return m ? [`sha256:${m[1]}`] : [];
      }).sort();
    },
  };
}

function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
