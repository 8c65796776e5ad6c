import type { AbstractSublevel } from 'abstract-level';
import type { ResourceReading } from '../../common/gen/retrace/v1/node.js';
import type { Database } from '../store/database.js';

/** States of a node in the mesh (see NodeState in node.proto). */
export type NodeStateName = 'READY' | 'SUSPECT' | 'LOST' | 'DRAINING' | 'LEFT';

/** One state change; `from` is null for a node's first registration. */
export interface TransitionRecord {
  from: NodeStateName | null;
  to: NodeStateName;
  reason: string;
  /** ms since the epoch. */
  atMs: number;
}

/** What the coordinator keeps of a node across restarts. Times are ms since the epoch. */
export interface NodeRecord {
  nodeId: string;
  host: string;
  labels: Record<string, string>;
  capabilities: ResourceReading[];
  codeVersions: string[];
  agentVersion: string;
  state: NodeStateName;
  /** Non-empty while a drain is requested (survives SUSPECT and reconnects of the same process). */
  drainReason: string;
  reportIntervalMs: number;
  firstSeenMs: number;
  registeredMs: number;
  /** 0 before the first report. */
  lastReportMs: number;
  /** Newest first, bounded. */
  transitions: TransitionRecord[];
  /**
   * The name of the `agent` token the node is bound to (never the token or its digest): set by
   * the first Connect with a named agent token, moved only when that name has left the token
   * table. Absent: unbound (registered only with the owner or admin tokens, or written before
   * bindings existed); the next named agent token to connect binds it.
   */
  boundToken?: string;
}

/** The node table: `mesh-nodes` sublevel, node id → NodeRecord JSON. The only code knowing its layout. */
export interface NodeRecordStore {
  /** Every stored record, in node-id order. */
  all(): Promise<NodeRecord[]>;
  put(record: NodeRecord): Promise<void>;
}

/** Opens the node table on `db` (creates the sublevel; writes nothing). */
export function createNodeRecordStore(db: Database): NodeRecordStore {
  const table: AbstractSublevel<Database, string | Uint8Array, string, NodeRecord> = db.sublevel<string, NodeRecord>('mesh-nodes', {
    valueEncoding: 'json',
  });
  return {
    async all() {
      const out: NodeRecord[] = [];
      for await (const value of table.values()) out.push(value);
      return out;
    },
    async put(record) {
      await table.put(record.nodeId, record);
    },
  };
}
