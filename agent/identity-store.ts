import { randomBytes } from 'node:crypto';
import { link, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { DataLossError, FailedPreconditionError, InvalidArgumentError } from '../common/errors.js';
import { isNodeId } from '../common/node-resources.js';
import { makeDirectory } from './make-directory.js';

/** What makes an agent the same node across restarts; kept in `<data dir>/node-identity.json`. */
export interface AgentIdentity {
  nodeId: string;
  /** ms since the epoch. */
  createdAtMs: number;
}

const FILE = 'node-identity.json';

/**
 * Loads the identity from `dataDir`, creating (and persisting) a new one on first start:
 * `<hostname>-<6 hex>`, readable in `retrace nodes` yet unique when hosts share a name.
 * Throws DataLossError when the file exists but is unreadable, rather than silently becoming
 * a different node; InvalidArgumentError naming `data` when `dataDir` cannot be created.
 */
export async function loadOrCreateIdentity(dataDir: string, now: () => number = Date.now): Promise<AgentIdentity> {
  await prepareDataDir(dataDir, 'data');
  const path = join(dataDir, FILE);
  let text: string | undefined;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (text !== undefined) {
    try {
      const parsed = JSON.parse(text) as Partial<AgentIdentity>;
      if (typeof parsed.nodeId === 'string' && isNodeId(parsed.nodeId)) {
        return { nodeId: parsed.nodeId, createdAtMs: typeof parsed.createdAtMs === 'number' ? parsed.createdAtMs : 0 };
      }
    } catch {
      // fall through to the error below
    }
    throw new DataLossError(`${path} is corrupt; remove it to register as a new node`);
  }
  const base = hostname().toLowerCase().replace(/[^a-z0-9.-]+/g, '-').replace(/^[^a-z0-9]+/, '').slice(0, 100) || 'node';
  const identity: AgentIdentity = { nodeId: `${base}-${randomBytes(3).toString('hex')}`, createdAtMs: now() };
  await saveIdentity(dataDir, identity);
  return identity;
}

/**
 * Creates the data directory (and missing parents) if it is missing, mode 0700; InvalidArgumentError naming `field` (the option or
 * flag the directory came from) with the system's reason when it cannot be.
 */
export async function prepareDataDir(dataDir: string, field: string): Promise<void> {
  try {
    // For this user only: it holds the node identity and the code cache the workers load.
    await makeDirectory(dataDir, 0o700);
  } catch (err) {
    throw new InvalidArgumentError(field, `cannot create the directory ${JSON.stringify(dataDir)}: ${(err as Error).message}`, err);
  }
}

/** Writes the identity atomically (temp file + rename), so a crash never leaves half a file. */
export async function saveIdentity(dataDir: string, identity: AgentIdentity): Promise<void> {
  const path = join(dataDir, FILE);
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(identity)}\n`, { mode: 0o600 });
  await rename(tmp, path);
}

const LOCK_FILE = 'agent.lock';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes `<dataDir>/agent.lock` (the pid of this process) for as long as an agent runs there, so
 * two agents never share one node identity: two `retrace agent --data D` registered as the same
 * node and took the node from each other every few hundred ms (39 registrations in 8 s, each a
 * "restart" that ended drains and gave up the node's shards). A lock left by a process that is
 * gone (SIGKILL, a crash) is taken over, by one agent only. Resolves the function that releases it.
 * @throws FailedPreconditionError naming `field` when a live process holds the lock, or another
 * agent starting at the same moment takes it.
 */
export async function lockDataDir(dataDir: string, field: string): Promise<() => Promise<void>> {
  const path = join(dataDir, LOCK_FILE);
  // The lock appears with its pid in it, by a hard link of a file written first: created empty
  // and then written (open with O_EXCL), it could be read empty by an agent started at the same
  // moment, which took it for a dead holder's, removed it and ran too.
  // Named for this call, not only this process: two calls of one process must not share it.
  const mine = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(mine, `${process.pid}\n`, { mode: 0o600 });
  } catch (err) {
    throw new InvalidArgumentError(field, `cannot lock the directory ${JSON.stringify(dataDir)}: ${(err as Error).message}`, err);
  }
  const release = async (): Promise<void> => {
    await rm(path, { force: true });
  };
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        await link(mine, path);
        return release;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new InvalidArgumentError(field, `cannot lock the directory ${JSON.stringify(dataDir)}: ${(err as Error).message}`, err);
        }
      }
      const held = await readFile(path, 'utf8').catch(() => undefined);
      const pid = pidIn(held);
      if (pid !== undefined && isAlive(pid)) {
        throw new FailedPreconditionError(
          `${dataDir} is in use by another agent (pid ${pid}); give each agent its own data directory (remove ${path} if that process is not an agent)`,
          field,
        );
      }
      // Left by a process that is gone (or released just now): taken over once; a second loss
      // means another agent starting at the same moment has it.
      if (attempt > 0) throw new FailedPreconditionError(`${dataDir} is being taken by another agent`, field);
      // Replaced whole (rename), not removed and linked: between the two another agent found no
      // lock, linked its own, and both ran.
      if (held !== undefined && (await replaceStale(path, held, () => rename(mine, path)))) return release;
    }
  } finally {
    await rm(mine, { force: true });
  }
}

/** The pid a lock or claim file holds; undefined when it holds none. */
function pidIn(text: string | undefined): number | undefined {
  const pid = Number(text?.trim());
  return text !== undefined && Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/**
 * Runs `replace` (which removes or replaces `path`) if `path` still holds `held`, the text of a
 * process that is gone, and only in one caller of all that found it so: each first creates
 * `<path>.takeover-<its pid>` exclusively, and whoever fails to is refused. Two agents that both
 * read a dead holder's pid each removed the lock and linked their own, the second removing the
 * first's fresh lock: both ran. Under the claim the file is read again: a caller that read it
 * before the winner replaced it finds the winner's pid and leaves it. Resolves whether `replace` ran.
 */
async function replaceStale(path: string, held: string, replace: () => Promise<void>): Promise<boolean> {
  const claim = `${path}.takeover-${pidIn(held) ?? 'unreadable'}`;
  if (!(await createWithPid(claim))) {
    const holder = await readFile(claim, 'utf8').catch(() => undefined);
    const pid = pidIn(holder);
    if (holder === undefined || (pid !== undefined && isAlive(pid))) return false;
    // A claim left by a process that died mid-takeover would hold every agent off for good: it is
    // removed the same way (a claim on it, named by its dead holder's pid), then made again.
    if (!(await replaceStale(claim, holder, () => rm(claim)))) return false;
    if (!(await createWithPid(claim))) return false;
  }
  try {
    if ((await readFile(path, 'utf8').catch(() => undefined)) !== held) return false;
    await replace();
    return true;
  } finally {
    await rm(claim, { force: true });
  }
}

/** Creates `path` holding this process's pid, never seen empty (a hard link of a file written first); false when it exists. */
async function createWithPid(path: string): Promise<boolean> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
  await writeFile(tmp, `${process.pid}\n`, { mode: 0o600 });
  try {
    await link(tmp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await rm(tmp, { force: true });
  }
}
