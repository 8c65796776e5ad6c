import { randomBytes } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { DataLossError, InvalidArgumentError } from '../common/errors.js';
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
