import { setMaxListeners } from 'node:events';
import { statSync, unwatchFile, watchFile, type Stats } from 'node:fs';
import { bearerTokenCheck, bearerTokenMatcher } from './bearer-token.js';
import { OWNER_NAME, readTokenFile, tokensFilePath, type Role, type TokenEntry } from './token-file.js';

/** Who a call's token says the caller is. */
export interface Identity {
  /** The token's name; `owner` for the auth-token. */
  readonly name: string;
  readonly role: Role;
  /** The auth-token / --token identity: may name any principal (x-retrace-principal, request fields). */
  readonly owner: boolean;
  /**
   * Aborted once the token is revoked or its entry changes (another name or role): calls still
   * open with it (streams) are ended then. Absent for the owner token, which lasts as long as
   * the process.
   */
  readonly revoked?: AbortSignal;
}

/** The identity of an `authorization` header value (`Bearer <token>`), or undefined: no such token. */
export type Authenticate = (authorization: string | undefined) => Identity | undefined;

const OWNER: Identity = Object.freeze({ name: OWNER_NAME, role: 'admin', owner: true });

/**
 * Only the owner token: what the coordinator accepted before named tokens (and what a server
 * built with a bare token, as the tests' mesh server is, still does); see bearerTokenCheck.
 */
export function ownerOnly(token: string): Authenticate {
  const check = bearerTokenCheck(token);
  return (authorization) => (check(authorization) ? OWNER : undefined);
}

/** The owner token and the named tokens of `<data>/tokens.json`, kept current while it runs. */
export interface TokenRegistry {
  readonly authenticate: Authenticate;
  /**
   * Whether a named token called `name` is in the table now (never true for `owner`). The file is
   * checked first, so a token revoked a moment ago (`retrace token revoke`) is already gone.
   */
  hasName(name: string): boolean;
  /** Stops watching the file. */
  close(): void;
}

/**
 * Reads `<dataDir>/tokens.json` (none: only the owner token is taken) and watches it: a change
 * (an add, a revoke, the file replaced by rename or removed) takes effect for every call made
 * after it, and for the streams open before within `intervalMs`, without a restart. A malformed
 * file throws here, naming the file and the entry; once running, one is logged and the previous
 * table kept, so a bad hand edit does not lock every caller out.
 * A token revoked (or whose role changes) has its identity's `revoked` signal aborted, so that
 * the calls it opened before (an agent's Connect, a TraceSession, a watch) end too.
 * A presented token is looked up by its SHA-256 hex digest: the lookup's time depends on the
 * digest, never on how much of the token matched.
 */
export function createTokenRegistry(options: { ownerToken: string; dataDir: string | null; log: (line: string) => void; intervalMs?: number }): TokenRegistry {
  const presented = bearerTokenMatcher(options.ownerToken);
  const { dataDir, log } = options;
  let table = new Map<string, Identity>();
  // The revocation signal of each identity in the table, by the identity.
  const revokers = new WeakMap<Identity, AbortController>();
  const file = dataDir === null ? null : tokensFilePath(dataDir);
  // What the table was read from (undefined: no file), so that an unknown token can tell cheaply whether the file changed since.
  let loadedFrom: string | undefined;
  const fileVersion = (): string | undefined => {
    let st: Stats | undefined;
    try {
      st = file === null ? undefined : statSync(file, { throwIfNoEntry: false });
    } catch {
      return loadedFrom;
    }
    return st && `${st.ino}:${st.size}:${st.mtimeMs}`;
  };
  const load = (): void => {
    const version = fileVersion();
    const entries: readonly TokenEntry[] = dataDir === null ? [] : readTokenFile(dataDir);
    const next = new Map<string, Identity>();
    for (const e of entries) {
      const before = table.get(e.sha256);
      if (before && before.name === e.name && before.role === e.role) {
        next.set(e.sha256, before);
        continue;
      }
      const controller = new AbortController();
      // One listener per open call of the token (auth-interceptor.ts): any number is expected.
      setMaxListeners(0, controller.signal);
      const identity: Identity = Object.freeze({ name: e.name, role: e.role, owner: false, revoked: controller.signal });
      revokers.set(identity, controller);
      next.set(e.sha256, identity);
    }
    const gone = [...table.entries()].filter(([digest, identity]) => next.get(digest) !== identity).map(([, identity]) => identity);
    table = next;
    loadedFrom = version;
    // After the swap, so that a call ended by its listener and retried at once is refused.
    for (const identity of gone) revokers.get(identity)?.abort(new Error(`token ${JSON.stringify(identity.name)} (role ${identity.role}) was revoked`));
  };
  const reload = (): void => {
    try {
      // A removed file is no named tokens: readTokenFile answers [] for it.
      load();
      log(`coordinator: ${file} changed: ${table.size} named token${table.size === 1 ? '' : 's'}`);
    } catch (err) {
      loadedFrom = fileVersion();
      log(`coordinator: WARNING: ${(err as Error).message}; keeping the ${table.size} named token${table.size === 1 ? '' : 's'} read before`);
    }
  };
  load();
  const authenticate: Authenticate = (authorization) => {
    // One SHA-256 of the presented token: compared with the owner's, then looked up as hex.
    const sent = presented(authorization);
    if (sent === undefined) return undefined;
    if (sent.matches) return OWNER;
    const digest = sent.sha256.toString('hex');
    // Every named token's call checks the file's stat first (a few µs), not only the poll below:
    // a token revoked a moment ago was let in until the next poll (up to `intervalMs`), and one
    // made a moment ago (`retrace token add`, then a call at once) was refused.
    if (file !== null && fileVersion() !== loadedFrom) reload();
    return table.get(digest);
  };
  const hasName = (name: string): boolean => {
    if (file !== null && fileVersion() !== loadedFrom) reload();
    for (const identity of table.values()) if (identity.name === name) return true;
    return false;
  };
  if (dataDir === null || file === null) return { authenticate, hasName, close: () => {} };
  const onChange = (): void => {
    if (fileVersion() !== loadedFrom) reload();
  };
  // Polled (stat every interval) rather than fs.watch: it follows the path, so a file replaced
  // by rename (as `retrace token` writes it), or made after start, is seen as well.
  watchFile(file, { interval: options.intervalMs ?? 500, persistent: false }, onChange);
  return { authenticate, hasName, close: () => unwatchFile(file, onChange) };
}
