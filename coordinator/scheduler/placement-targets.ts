import { InvalidArgumentError } from '../../common/errors.js';

/**
 * Refuses target labels that no known node carries all of: such a job would wait for a node that
 * may never come, where an unknown target node id is refused outright. `field` names the labels.
 */
export function checkTargetLabels(wanted: Readonly<Record<string, string>>, nodes: readonly { labels: Readonly<Record<string, string>> }[], field: string): void {
  const pairs = Object.entries(wanted);
  if (pairs.length === 0) return;
  if (nodes.some((n) => pairs.every(([k, v]) => n.labels[k] === v))) return;
  const known = [...new Set(nodes.flatMap((n) => Object.entries(n.labels).map(([k, v]) => `${k}=${v}`)))].sort();
  throw new InvalidArgumentError(field, `no known node has ${pairs.map(([k, v]) => `${k}=${v}`).join(', ')} (labels of known nodes: ${known.length > 0 ? known.join(', ') : 'none'})`);
}
