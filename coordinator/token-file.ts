import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, NotFoundError, RetraceError } from '../common/errors.js';
import { tokenSha256 } from './bearer-token.js';
import { syncDirectory } from './directory-fsync.js';
import { crashPointForTests } from './test-crash-point.js';

/**
 * Named tokens with roles, kept in `<data>/tokens.json` (mode 0600) beside the owner's
 * `auth-token`. Only each token's SHA-256 digest is stored: the token itself is printed once,
 * when it is made, and never written. The coordinator reads the file at start and again each
 * time it changes (token-registry.ts); `retrace token add|list|revoke` edit it, also while a
 * coordinator runs.
 *
 * Format: `{"tokens": [{"name": "ci", "role": "client", "sha256": "<64 hex>", "created": "<ISO time>"}]}`.
 */
export const TOKENS_FILE = 'tokens.json';

/**
 * What a token may do. `agent`: only what `retrace agent` calls (NodeService/Connect,
 * CodeService/GetCode); `client`: everything but publishing code, connecting as an agent and
 * draining a node; `admin`: everything, as the owner token. See access-policy.ts.
 */
export type Role = 'agent' | 'client' | 'admin';

export const ROLES: readonly Role[] = ['agent', 'client', 'admin'];

/** One named token as the file holds it. */
export interface TokenEntry {
  name: string;
  role: Role;
  /** Hex SHA-256 of the token's UTF-8 bytes. */
  sha256: string;
  /** ISO-8601 time it was made; empty when a hand-written entry has none. */
  created: string;
}

/** Name of the owner identity (the `auth-token` / `--token` one); no named token may take it. */
export const OWNER_NAME = 'owner';

const NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** Hex SHA-256 of `token`: what the file keeps and what a presented token is looked up by. */
export function tokenDigest(token: string): string {
  return tokenSha256(token).toString('hex');
}

/** The path of the tokens file of `dataDir`. */
export function tokensFilePath(dataDir: string): string {
  return join(dataDir, TOKENS_FILE);
}

/**
 * The principals the coordinator records when a call names none (the owner token's ingest, apply,
 * publish, replay, notify and recompute calls; the auto policy's recomputes). A token named after
 * one would be taken for them: it could cancel their jobs and its steps would read as theirs.
 */
export const DEFAULT_PRINCIPALS: readonly string[] = ['ingest', 'apply', 'publish', 'replay', 'anonymous', 'auto-policy'];

/** Refuses a name that is not 1-64 of [A-Za-z0-9._-], is the owner's, or is a default principal. */
export function checkTokenName(name: string, field = 'name'): void {
  if (!NAME.test(name)) throw new InvalidArgumentError(field, `${JSON.stringify(name.slice(0, 100))} is not a token name: use 1 to 64 of the characters A-Z a-z 0-9 . _ -`);
  if (name === OWNER_NAME) throw new InvalidArgumentError(field, `"${OWNER_NAME}" is the name of the auth-token's identity; choose another`);
  if (DEFAULT_PRINCIPALS.includes(name)) throw new InvalidArgumentError(field, `"${name}" is the principal the coordinator records for calls that name none; a token named so would act for them: choose another`);
}

export function isRole(value: unknown): value is Role {
  return typeof value === 'string' && (ROLES as readonly string[]).includes(value);
}

/**
 * The entries of a tokens file's text; InvalidArgumentError naming `file` and the entry at fault
 * (`tokens[2].role`) for anything malformed: not JSON, a bad name, role or digest, a name or
 * digest twice.
 */
export function parseTokenFile(text: string, file: string): TokenEntry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(file, `not valid JSON: ${(err as Error).message}`);
  }
  const list = doc !== null && typeof doc === 'object' && !Array.isArray(doc) ? (doc as { tokens?: unknown }).tokens : undefined;
  if (!Array.isArray(list)) throw new InvalidArgumentError(file, 'expected {"tokens": [...]}');
  const names = new Set<string>();
  const digests = new Set<string>();
  return list.map((raw: unknown, i): TokenEntry => {
    const at = `${file}: tokens[${i}]`;
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new InvalidArgumentError(at, 'expected an object {name, role, sha256}');
    const e = raw as Record<string, unknown>;
    if (typeof e.name !== 'string') throw new InvalidArgumentError(`${at}.name`, 'must be a string');
    checkTokenName(e.name, `${at}.name`);
    if (!isRole(e.role)) throw new InvalidArgumentError(`${at}.role`, `must be one of ${ROLES.join(', ')}, got ${JSON.stringify(e.role)}`);
    if (typeof e.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(e.sha256)) throw new InvalidArgumentError(`${at}.sha256`, 'must be 64 lower-case hex digits (the SHA-256 of the token)');
    if (e.created !== undefined && typeof e.created !== 'string') throw new InvalidArgumentError(`${at}.created`, 'must be a string');
    if (names.has(e.name)) throw new InvalidArgumentError(`${at}.name`, `${JSON.stringify(e.name)} appears twice`);
    if (digests.has(e.sha256)) throw new InvalidArgumentError(`${at}.sha256`, 'the same token digest appears twice');
    names.add(e.name);
    digests.add(e.sha256);
    return { name: e.name, role: e.role, sha256: e.sha256, created: e.created ?? '' };
  });
}

/** The entries of `<dataDir>/tokens.json`; none when there is no file. Errors as parseTokenFile. */
export function readTokenFile(dataDir: string): TokenEntry[] {
  const file = tokensFilePath(dataDir);
  if (!existsSync(file)) return [];
  return parseTokenFile(readFileSync(file, 'utf8'), file);
}

/**
 * Replaces `<dataDir>/tokens.json` with `entries`, whole or not at all, and durably: written to a
 * temp file (mode 0600) beside it and fsynced, renamed over it, then the directory fsynced. A
 * coordinator reading it meanwhile sees the old table or the new one, never half of one; a power
 * loss after this returns keeps the new table (without the fsyncs the rename could reach the disk
 * before the data, leaving an empty or truncated file, or be lost itself: a printed token unstored
 * or a revoked one back).
 */
export function writeTokenFile(dataDir: string, entries: readonly TokenEntry[]): void {
  const file = tokensFilePath(dataDir);
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeFileSync(fd, `${JSON.stringify({ tokens: entries }, null, 2)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    crashPointForTests('token-file-written');
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  syncDirectory(dataDir);
}

/** How long `token add|revoke` waits for another one editing the same file. */
const LOCK_WAIT_MS = 10_000;

/** A lock older than this was left by a process that died while editing (an edit takes milliseconds). */
const LOCK_STALE_MS = 30_000;

/**
 * Whether the process whose pid `<lock>` holds has exited: a `retrace token` killed while editing
 * (SIGKILL, OOM) leaves its lock behind. False while the pid is unknown (the holder has yet to
 * write it, or a lock from before pids were written) or names a live process (EPERM: another
 * user's, alive); those wait for LOCK_STALE_MS.
 */
function holderDied(lock: string): boolean {
  let pid: number;
  try {
    pid = Number(readFileSync(lock, 'utf8').trim());
  } catch {
    return false;
  }
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** Whether `path` was last modified more than LOCK_STALE_MS ago (false when it is gone). */
function olderThanStale(path: string): boolean {
  const st = statSync(path, { throwIfNoEntry: false });
  return st !== undefined && Date.now() - st.mtimeMs > LOCK_STALE_MS;
}

/**
 * Removes `lock` if its holder died or it is older than LOCK_STALE_MS, judged again while holding
 * `<lock>.takeover` (O_EXCL): two waiters that both found it stale would otherwise both remove
 * it, the second one removing the lock the first had just taken. A takeover guard left by a
 * process killed in those few microseconds is itself removed once stale. True: removed.
 */
function takeOverStaleLock(lock: string): boolean {
  const guard = `${lock}.takeover`;
  try {
    closeSync(openSync(guard, 'wx', 0o600));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    if (olderThanStale(guard)) rmSync(guard, { force: true });
    return false;
  }
  try {
    if (!holderDied(lock) && !olderThanStale(lock)) return false;
    rmSync(lock, { force: true });
    return true;
  } finally {
    rmSync(guard, { force: true });
  }
}

/**
 * Runs `edit` (read the file, write it whole) holding `<dataDir>/tokens.json.lock`, made with
 * O_EXCL and holding the holder's pid: two `retrace token add|revoke` at once would otherwise
 * both read the same table and the second rename would drop the first one's change: a token
 * printed but never stored, or a revoked one back. Waits up to LOCK_WAIT_MS for another holder.
 * A lock whose holder has exited (killed while editing) is taken over at once, so a `token
 * revoke` right after a killed `token add` is not refused; one whose holder is unknown, once it
 * is older than LOCK_STALE_MS. FAILED_PRECONDITION naming the lock when it stays held.
 */
function withFileLock<T>(dataDir: string, edit: () => T): T {
  const lock = `${tokensFilePath(dataDir)}.lock`;
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    let fd: number;
    try {
      fd = openSync(lock, 'wx', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if ((holderDied(lock) || olderThanStale(lock)) && takeOverStaleLock(lock)) continue;
      if (Date.now() > deadline) throw new RetraceError('FAILED_PRECONDITION', `${lock} is held by another \`retrace token\` edit; if none runs, remove it`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5 + Math.floor(Math.random() * 10));
      continue;
    }
    try {
      writeSync(fd, String(process.pid));
    } finally {
      closeSync(fd);
    }
    break;
  }
  try {
    return edit();
  } finally {
    rmSync(lock, { force: true });
  }
}

/**
 * Makes a token for `name` with `role`, stores its digest and returns the token (24 random
 * bytes as hex, as the auth-token is made). InvalidArgumentError for a bad name or role,
 * ALREADY_EXISTS for a name taken; nothing is written then. Safe to run beside other adds and
 * revokes of the same data dir (withFileLock).
 */
export function addToken(dataDir: string, name: string, role: string, now: Date = new Date()): { token: string; entry: TokenEntry } {
  checkTokenName(name);
  if (!isRole(role)) throw new InvalidArgumentError('role', `must be one of ${ROLES.join(', ')}, got ${JSON.stringify(role)}`);
  return withFileLock(dataDir, () => {
    const entries = readTokenFile(dataDir);
    if (entries.some((e) => e.name === name)) throw new RetraceError('ALREADY_EXISTS', `a token named ${JSON.stringify(name)} exists already in ${tokensFilePath(dataDir)}; revoke it first to replace it`, { field: 'name' });
    const token = randomBytes(24).toString('hex');
    const entry: TokenEntry = { name, role, sha256: tokenDigest(token), created: now.toISOString() };
    writeTokenFile(dataDir, [...entries, entry]);
    return { token, entry };
  });
}

/** Removes the token named `name`; NotFoundError (nothing written) when there is none. */
export function revokeToken(dataDir: string, name: string): TokenEntry {
  return withFileLock(dataDir, () => {
    const entries = readTokenFile(dataDir);
    const gone = entries.find((e) => e.name === name);
    if (!gone) throw new NotFoundError(`token ${JSON.stringify(name)} (in ${tokensFilePath(dataDir)})`, 'name');
    writeTokenFile(dataDir, entries.filter((e) => e !== gone));
    return gone;
  });
}
