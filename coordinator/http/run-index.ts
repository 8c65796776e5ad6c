import { NodeKind } from '../../common/gen/retrace/v1/lineage.js';
import type { LineageApi } from '../lineage/lineage-api.js';

/** A run as the index knows it: its job (the run's name) and when it was first seen and last changed. */
export interface RunEntry {
  runId: string;
  /** The run's name: `job:<ns>:<name>` for OpenLineage runs, anything for native ones. */
  job: string;
  firstSeenMs: number;
  lastChangedMs: number;
}

/** Runs read from the store at once while the index learns new ones. */
const READ_CONCURRENCY = 32;

/**
 * Which job each run belongs to. OpenLineage runs that read or wrote no dataset have no step,
 * so no transform: the run's name is their only link to their job. The graph does not index
 * run names, so each run is read once, the first time the index meets it, and its name kept
 * (an OpenLineage run's job never changes). One index per store, shared by the routes.
 */
export class RunIndex {
  private readonly jobOf = new Map<string, string>();
  /** One string per job name, however many runs share it. */
  private readonly names = new Map<string, string>();

  constructor(private readonly lineage: LineageApi) {}

  /** Every run in the store with its job, in the order first seen. */
  async all(): Promise<RunEntry[]> {
    const nodes = this.lineage.listNodes(NodeKind.NODE_KIND_RUN, '');
    const unknown = nodes.filter((n) => !this.jobOf.has(n.id));
    for (let i = 0; i < unknown.length; i += READ_CONCURRENCY) {
      await Promise.all(unknown.slice(i, i + READ_CONCURRENCY).map(async (n) => {
        const name0 = await this.nameOf(n.id);
        // A run not readable yet (its submission is still being written) is learnt next time.
        if (name0 === undefined) return;
        let name = this.names.get(name0);
        if (name === undefined) {
          name = name0;
          this.names.set(name, name);
        }
        this.jobOf.set(n.id, name);
      }));
    }
    const out: RunEntry[] = [];
    for (const n of nodes) {
      const job = this.jobOf.get(n.id);
      if (job !== undefined) out.push({ runId: n.id, job, firstSeenMs: n.firstSeenMs, lastChangedMs: n.lastChangedMs });
    }
    return out;
  }

  private async nameOf(runId: string): Promise<string | undefined> {
    return (await this.lineage.readRun(runId))?.name;
  }

  /** The runs of each OpenLineage job (`job:` names), newest first (first seen; later in the store first on a tie). */
  async byJob(): Promise<Map<string, RunEntry[]>> {
    const out = new Map<string, RunEntry[]>();
    for (const r of await this.all()) {
      if (!r.job.startsWith('job:')) continue;
      const list = out.get(r.job);
      if (list) list.push(r);
      else out.set(r.job, [r]);
    }
    for (const list of out.values()) list.reverse().sort((a, b) => b.firstSeenMs - a.firstSeenMs);
    return out;
  }
}

const indexes = new WeakMap<LineageApi, RunIndex>();

/** The run index of a store, made on first use. */
export function runIndexOf(lineage: LineageApi): RunIndex {
  let index = indexes.get(lineage);
  if (!index) {
    index = new RunIndex(lineage);
    indexes.set(lineage, index);
  }
  return index;
}
