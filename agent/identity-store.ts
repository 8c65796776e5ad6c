import { randomBytes } from 'node:crypto';
import { link, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
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

/**
 * A process as a lock or claim file names it: its pid and, where /proc tells it, its start time
 * (clock ticks since boot, /proc/PID/stat field 22), which a later process given the same pid
 * does not share. Written `<pid> <start>\n`, or `<pid>\n` without /proc (and by older agents).
 */
interface Holder {
  pid: number;
  start: string | undefined;
}

/** What /proc/PID/stat says of a process: its state (field 3) and start time (field 22); undefined where it cannot be read. */
async function statOf(pid: number | 'self'): Promise<{ state: string; start: string } | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'latin1');
    // Fields from the third on follow the command name, which may itself hold spaces and ")".
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const state = fields[3 - 3];
    const start = fields[22 - 3];
    return state !== undefined && start !== undefined && /^\d+$/.test(start) ? { state, start } : undefined;
  } catch {
    return undefined;
  }
}

function textOf(holder: Holder): string {
  return holder.start === undefined ? `${holder.pid}\n` : `${holder.pid} ${holder.start}\n`;
}

/** Who a lock or claim file names; undefined when it names no one (empty, cut short, not ours). */
function holderIn(text: string | undefined): Holder | undefined {
  const m = /^(\d+)(?: (\d+))?$/.exec(text?.trim() ?? '');
  if (!m) return undefined;
  const pid = Number(m[1]);
  return Number.isSafeInteger(pid) && pid > 0 ? { pid, start: m[2] } : undefined;
}

function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Whether `holder` still runs. Its pid alone is not enough: a dead agent's pid given to an
 * unrelated process held every restarted agent off until that process ended, and so did a dead
 * agent its parent had not reaped (a zombie: a container's init that reaps none keeps it for good).
 * A pid whose start time differs from the one recorded is another process. Where /proc/PID/stat
 * cannot be read (no /proc, another user's process hidden by hidepid) the pid's existence decides.
 */
async function isRunning(holder: Holder): Promise<boolean> {
  if (!pidExists(holder.pid)) return false;
  const stat = await statOf(holder.pid);
  if (stat === undefined) return true;
  if (stat.state === 'Z' || stat.state === 'X') return false;
  return holder.start === undefined || stat.start === holder.start;
}

/**
 * Takes `<dataDir>/agent.lock` (this process, see Holder) for as long as an agent runs there, so
 * two agents never share one node identity: two `retrace agent --data D` registered as the same
 * node and took the node from each other every few hundred ms (39 registrations in 8 s, each a
 * "restart" that ended drains and gave up the node's shards). A lock left by a process that is
 * gone (SIGKILL, a crash), even one whose pid now names another process, is taken over, by one
 * agent only. Resolves the function that releases it.
 * @throws FailedPreconditionError naming `field` when a live process holds the lock, or another
 * agent starting at the same moment takes it.
 */
export async function lockDataDir(dataDir: string, field: string): Promise<() => Promise<void>> {
  const path = join(dataDir, LOCK_FILE);
  const me = textOf({ pid: process.pid, start: (await statOf('self'))?.start });
  // The lock appears with its holder in it, by a hard link of a file written first: created empty
  // and then written (open with O_EXCL), it could be read empty by an agent started at the same
  // moment, which took it for a dead holder's, removed it and ran too.
  // Named for this call, not only this process: two calls of one process must not share it.
  const mine = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(mine, me, { mode: 0o600 });
  } catch (err) {
    throw new InvalidArgumentError(field, `cannot lock the directory ${JSON.stringify(dataDir)}: ${(err as Error).message}`, err);
  }
  const release = async (): Promise<void> => {
    await rm(path, { force: true });
  };
  const locked = async (): Promise<() => Promise<void>> => {
    await removeLeftovers(dataDir, me);
    return release;
  };
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        await link(mine, path);
        return await locked();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new InvalidArgumentError(field, `cannot lock the directory ${JSON.stringify(dataDir)}: ${(err as Error).message}`, err);
        }
      }
      const held = await readFile(path, 'utf8').catch(() => undefined);
      const holder = holderIn(held);
      if (holder !== undefined && (await isRunning(holder))) {
        throw new FailedPreconditionError(
          `${dataDir} is in use by another agent (pid ${holder.pid}); give each agent its own data directory (remove ${path} if that process is not an agent)`,
          field,
        );
      }
      // Left by a process that is gone (or released just now): taken over once; a second loss
      // means another agent starting at the same moment has it.
      if (attempt > 0) throw new FailedPreconditionError(`${dataDir} is being taken by another agent`, field);
      // Replaced whole (rename), not removed and linked: between the two another agent found no
      // lock, linked its own, and both ran.
      if (held !== undefined && (await replaceStale(path, held, me, () => rename(mine, path)))) return await locked();
    }
  } finally {
    await rm(mine, { force: true });
  }
}

const CLAIM = '.takeover-';

/** The name a claim on `held` takes after its file's: the holder's pid and start time, the same for all who read it. */
function claimOn(path: string, held: string): string {
  const holder = holderIn(held);
  return `${path}${CLAIM}${holder === undefined ? 'unreadable' : `${holder.pid}${holder.start === undefined ? '' : `-${holder.start}`}`}`;
}

/**
 * Removes, once this process holds the lock (`me` in it), what takeovers left behind: claims a
 * process made and did not remove because it died (between its rename and the claim's removal,
 * say), and the temporary files of processes that are gone. A claim on anyone but `me` is of no
 * use any more: the lock held that holder's text when it was made, holds `me` now, and never holds
 * that text again (no other process has the same pid and start time; without /proc, not before
 * this process and a later one given that pid have both come and gone), so whoever still uses
 * such a claim reads the lock again under it, finds `me` and leaves. Temporary files are removed only
 * for pids that no process has: a live one may be about to link or rename its own.
 */
async function removeLeftovers(dataDir: string, me: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dataDir);
  } catch {
    return;
  }
  const ownClaim = claimOn(LOCK_FILE, me);
  const claim = new RegExp(`^${LOCK_FILE.replace('.', '\\.')}(?:\\${CLAIM}[0-9a-z-]+)+$`);
  const temp = new RegExp(`^${LOCK_FILE.replace('.', '\\.')}(?:\\${CLAIM}[0-9a-z-]+)*\\.(\\d+)\\.[0-9a-f]{8}$`);
  const leftovers = names.filter((name) => {
    if (claim.test(name)) return name !== ownClaim && !name.startsWith(`${ownClaim}.`);
    const pid = temp.exec(name)?.[1];
    return pid !== undefined && !pidExists(Number(pid));
  });
  // Litter only: one that cannot be removed stops no agent.
  await Promise.all(leftovers.map((name) => rm(join(dataDir, name), { force: true }).catch(() => undefined)));
}

/**
 * Runs `replace` (which removes or replaces `path`) if `path` still holds `held`, the text of a
 * process that is gone, and only in one caller of all that found it so: each first creates a
 * claim (claimOn) exclusively, holding `me`, and whoever fails to is refused. Two agents that both
 * read a dead holder's pid each removed the lock and linked their own, the second removing the
 * first's fresh lock: both ran. Under the claim the file is read again: a caller that read it
 * before the winner replaced it finds the winner and leaves it. Resolves whether `replace` ran.
 */
async function replaceStale(path: string, held: string, me: string, replace: () => Promise<void>): Promise<boolean> {
  const claim = claimOn(path, held);
  if (!(await createHolding(claim, me))) {
    const text = await readFile(claim, 'utf8').catch(() => undefined);
    const claimant = holderIn(text);
    if (text === undefined || (claimant !== undefined && (await isRunning(claimant)))) return false;
    // A claim left by a process that died mid-takeover would hold every agent off for good: it is
    // removed the same way (a claim on it, named by its dead claimant), then made again.
    if (!(await replaceStale(claim, text, me, () => rm(claim)))) return false;
    if (!(await createHolding(claim, me))) return false;
  }
  try {
    if ((await readFile(path, 'utf8').catch(() => undefined)) !== held) return false;
    await replace();
    return true;
  } finally {
    await rm(claim, { force: true });
  }
}

/** Creates `path` holding `text`, never seen empty (a hard link of a file written first); false when it exists. */
async function createHolding(path: string, text: string): Promise<boolean> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
  await writeFile(tmp, text, { mode: 0o600 });
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
