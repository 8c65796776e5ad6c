import { NodeKind, type NodeRef } from './gen/retrace/v1/lineage.js';
import { InvalidArgumentError } from './errors.js';

/**
 * String keys of lineage-graph nodes, as they appear in Trace edges and page tokens:
 * "object:<id>", "version:<id>@<hash>", "step:<id>", "run:<id>", "transform:<name>".
 * Object ids may contain any character, so a version key splits at its LAST "@sha256:".
 */
export function nodeKey(ref: NodeRef): string {
  switch (ref.kind) {
    case NodeKind.NODE_KIND_OBJECT:
      return `object:${ref.id}`;
    case NodeKind.NODE_KIND_OBJECT_VERSION:
      return versionKey(ref.id, ref.contentHash);
    case NodeKind.NODE_KIND_STEP:
      return `step:${ref.id}`;
    case NodeKind.NODE_KIND_RUN:
      return `run:${ref.id}`;
    case NodeKind.NODE_KIND_TRANSFORM:
      return `transform:${ref.id}`;
    default:
      throw new InvalidArgumentError('node.kind', 'must be OBJECT, OBJECT_VERSION, STEP, RUN or TRANSFORM');
  }
}

export function versionKey(objectId: string, contentHash: string): string {
  return `version:${objectId}@${contentHash}`;
}

const PREFIXES: readonly [string, NodeKind][] = [
  ['object:', NodeKind.NODE_KIND_OBJECT],
  ['version:', NodeKind.NODE_KIND_OBJECT_VERSION],
  ['step:', NodeKind.NODE_KIND_STEP],
  ['run:', NodeKind.NODE_KIND_RUN],
  ['transform:', NodeKind.NODE_KIND_TRANSFORM],
];

/** What a node key of `kind` starts with ("object:", "step:", ...). */
export function nodeKindPrefix(kind: NodeKind): string {
  const found = PREFIXES.find(([, k]) => k === kind);
  if (!found) throw new InvalidArgumentError('node.kind', 'must be OBJECT, OBJECT_VERSION, STEP, RUN or TRANSFORM');
  return found[0];
}

/** Inverse of nodeKey. */
export function parseNodeKey(key: string, field = 'node'): NodeRef {
  for (const [prefix, kind] of PREFIXES) {
    if (!key.startsWith(prefix)) continue;
    const rest = key.slice(prefix.length);
    if (kind === NodeKind.NODE_KIND_OBJECT_VERSION) {
      const at = rest.lastIndexOf('@sha256:');
      if (at <= 0) throw new InvalidArgumentError(field, `version key needs "<object id>@sha256:<hex>": ${JSON.stringify(key)}`);
      return { kind, id: rest.slice(0, at), contentHash: rest.slice(at + 1) };
    }
    if (rest.length === 0) throw new InvalidArgumentError(field, `empty id in ${JSON.stringify(key)}`);
    return { kind, id: rest, contentHash: '' };
  }
  throw new InvalidArgumentError(field, `unknown node key ${JSON.stringify(key)}; expected object:, version:, step:, run: or transform:`);
}
