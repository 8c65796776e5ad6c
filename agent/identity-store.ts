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
 * gone (SIGKILL, a crash) is taken over. Resolves the function that releases it.
 * @throws FailedPreconditionError naming `field` when a live process holds the lock.
 */
export async function lockDataDir(dataDir: string, field: string): Promise<() => Promise<void>> {
  const path = join(dataDir, LOCK_FILE);
  // The lock appears with its pid in it, by a hard link of a file written first: created empty
  // and then written (open with O_EXCL), it could be read empty by an agent started at the same
  // moment, which took it for a dead holder's, removed it and ran too.
  // Named for this call, not only this process: two calls of one process must not share it.
  const mine = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
  for (let attempt = 0; ; attempt++) {
    try {
      await writeFile(mine, `${process.pid}\n`, { mode: 0o600 });
      try {
        await link(mine, path);
      } finally {
        await rm(mine, { force: true });
      }
      return async () => {
        await rm(path, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new InvalidArgumentError(field, `cannot lock the directory ${JSON.stringify(dataDir)}: ${(err as Error).message}`, err);
      }
    }
    const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
    if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
      throw new FailedPreconditionError(
        `${dataDir} is in use by another agent (pid ${pid}); give each agent its own data directory (remove ${path} if that process is not an agent)`,
        field,
      );
    }
    // Left by a process that is gone: take it over (once; a second loss means a race with another starting agent).
    if (attempt > 0) throw new FailedPreconditionError(`${dataDir} is being taken by another agent`, field);
    await rm(path, { force: true });
  }
}
