import { triggerKindToJSON, type ObjectVersion, type Step } from './gen/retrace/v1/provenance.js';
import { contentHashOf } from './hash.js';
import { nanosToIso } from './time.js';

/** The content hash of zero bytes: a version under it has size 0 for certain. */
const EMPTY_CONTENT_HASH = contentHashOf('');

/** Retrace's namespace in PROV documents. */
export const PROV_NAMESPACE = 'https://retrace.dev/ns/prov#';

export interface ProvSubgraph {
  versions: ObjectVersion[];
  /** Objects reached as a whole (unversioned uses). */
  objects: string[];
  steps: Step[];
}

type ProvRecord = Record<string, unknown>;

/**
 * A lineage subgraph as a W3C PROV-JSON document (https://www.w3.org/submissions/prov-json/):
 * object versions are entities, steps are activities, hosts and principals are agents (a
 * principal that is a URI, an OpenLineage producer, a prov:SoftwareAgent; others prov:Person), with
 * used / wasGeneratedBy / wasAssociatedWith relations, and specializationOf from a version to
 * its object when both are in the document (an object-level subgraph, an unversioned use).
 * Identifiers are `retrace:` QNames with the local part percent-encoded.
 */
export function toProvJson(graph: ProvSubgraph): Record<string, unknown> {
  const entity: Record<string, ProvRecord> = {};
  const activity: Record<string, ProvRecord> = {};
  const agent: Record<string, ProvRecord> = {};
  const used: Record<string, ProvRecord> = {};
  const wasGeneratedBy: Record<string, ProvRecord> = {};
  const wasAssociatedWith: Record<string, ProvRecord> = {};
  const specializationOf: Record<string, ProvRecord> = {};
  let n = 0;
  const blank = (): string => `_:r${++n}`;

  for (const v of graph.versions) {
    const rec: ProvRecord = {
      'prov:type': { $: 'retrace:ObjectVersion', type: 'prov:QUALIFIED_NAME' },
      'retrace:objectId': v.objectId,
      'retrace:contentHash': v.contentHash,
    };
    if (sizeIsKnown(v)) rec['retrace:size'] = Number(v.size);
    if (v.mediaType) rec['retrace:mediaType'] = v.mediaType;
    if (v.createdAtNs !== '0') rec['retrace:createdAt'] = { $: nanosToIso(v.createdAtNs), type: 'xsd:dateTime' };
    entity[versionId(v.objectId, v.contentHash)] = rec;
  }
  for (const o of graph.objects) {
    entity[qname(`object/${o}`)] = { 'prov:type': { $: 'retrace:Object', type: 'prov:QUALIFIED_NAME' }, 'retrace:objectId': o };
  }
  // An object and its versions both in the document: each version is a specialization of it.
  const objects = new Set(graph.objects);
  for (const v of graph.versions) {
    if (objects.has(v.objectId)) specializationOf[blank()] = { 'prov:specificEntity': versionId(v.objectId, v.contentHash), 'prov:generalEntity': qname(`object/${v.objectId}`) };
  }
  for (const s of graph.steps) {
    const id = qname(`step/${s.stepId}`);
    const rec: ProvRecord = {
      'prov:type': { $: 'retrace:Step', type: 'prov:QUALIFIED_NAME' },
      'retrace:transform': s.transform,
    };
    if (s.startedAtNs !== '0') rec['prov:startTime'] = nanosToIso(s.startedAtNs);
    if (s.endedAtNs !== '0') rec['prov:endTime'] = nanosToIso(s.endedAtNs);
    if (s.codeVersion) rec['retrace:codeVersion'] = s.codeVersion;
    if (s.runId) rec['retrace:runId'] = s.runId;
    if (s.parameters) rec['retrace:parameters'] = JSON.stringify(s.parameters);
    if (s.resources) {
      for (const [k, v] of Object.entries(s.resources)) rec[`retrace:${k}`] = Number(v);
    }
    if (s.why) {
      // The enum's name, as the CLI's --json and the proto JSON mapping print it, not its number.
      rec['retrace:triggerKind'] = triggerKindToJSON(s.why.kind);
      if (s.why.id) rec['retrace:triggerId'] = s.why.id;
    }
    activity[id] = rec;
    for (const u of s.used) {
      used[blank()] = { 'prov:activity': id, 'prov:entity': u.unversioned ? qname(`object/${u.objectId}`) : versionId(u.objectId, u.contentHash) };
    }
    for (const g of s.generated) {
      wasGeneratedBy[blank()] = { 'prov:entity': versionId(g.objectId, g.contentHash), 'prov:activity': id, ...(s.endedAtNs !== '0' ? { 'prov:time': nanosToIso(s.endedAtNs) } : {}) };
    }
    if (s.nodeId || s.host) {
      const agentId = qname(`node/${s.nodeId || s.host}`);
      agent[agentId] = { 'prov:type': { $: 'prov:SoftwareAgent', type: 'prov:QUALIFIED_NAME' }, ...(s.host ? { 'retrace:host': s.host } : {}) };
      wasAssociatedWith[blank()] = { 'prov:activity': id, 'prov:agent': agentId };
    }
    if (s.why?.principal) {
      const agentId = qname(`principal/${s.why.principal}`);
      agent[agentId] = { 'prov:type': { $: principalIsSoftware(s.why.principal) ? 'prov:SoftwareAgent' : 'prov:Person', type: 'prov:QUALIFIED_NAME' } };
      wasAssociatedWith[blank()] = { 'prov:activity': id, 'prov:agent': agentId, 'prov:role': 'retrace:principal' };
    }
  }
  const doc: Record<string, unknown> = { prefix: { retrace: PROV_NAMESPACE } };
  for (const [name, section] of Object.entries({ entity, activity, agent, used, wasGeneratedBy, wasAssociatedWith, specializationOf })) {
    if (Object.keys(section).length > 0) doc[name] = section;
  }
  return doc;
}

/**
 * Whether a principal names software rather than a person: an OpenLineage run with no owner is
 * caused by its producer, a URI (`https://github.com/OpenLineage/...`), which is a program.
 */
function principalIsSoftware(principal: string): boolean {
  return /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(principal);
}

/**
 * Whether a version's size is a fact. `size` has no presence in the model: a version known only
 * as a step's output, or one whose producer gave no size (an OpenLineage output without
 * statistics), reads 0 like an empty content. Only the empty content's hash proves a 0, so any
 * other 0 is left out of the document (unknown) rather than stated (a real 0 under another hash,
 * such as an OpenLineage output's synthetic one, is lost, but nothing false is said).
 */
function sizeIsKnown(v: ObjectVersion): boolean {
  return (v.size !== '0' && v.size !== '') || v.contentHash === EMPTY_CONTENT_HASH;
}

function versionId(objectId: string, contentHash: string): string {
  return qname(`version/${objectId}@${contentHash}`);
}

function qname(local: string): string {
  return `retrace:${encodeURIComponent(local)}`;
}
