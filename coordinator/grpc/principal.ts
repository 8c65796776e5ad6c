import type { Metadata } from '@grpc/grpc-js';
import type { CallContext } from 'nice-grpc';
import { RetraceError } from '../../common/errors.js';
import { TriggerKind, type LineageEvent } from '../../common/gen/retrace/v1/provenance.js';
import { boundPrincipalOf } from '../access-policy.js';
import type { DeferredEvents } from '../lineage/lineage-engine.js';
import type { Identity } from '../token-registry.js';

/**
 * Who a call acts for, as handlers read it: the principal recorded in provenance (`why`), in
 * jobs and changes. The owner token and admin tokens may name anyone with it; a client or agent
 * token acts only as itself (see bindPrincipal).
 */
export const PRINCIPAL_HEADER = 'x-retrace-principal';

/**
 * Set by the auth interceptor, never taken from the caller: the name a client or agent token is
 * bound to. A request field that names a principal (ReplayPolicy.principal) must then be empty
 * or this name (requestPrincipal).
 */
export const BOUND_PRINCIPAL_HEADER = 'x-retrace-bound-principal';

/**
 * Rewrites the principal headers of a call made with `identity`'s token, before any handler reads
 * them; PERMISSION_DENIED (nothing rewritten) when a client or agent token names another principal.
 * Whatever the caller sent as BOUND_PRINCIPAL_HEADER is dropped. A named token that names no
 * principal acts as its name; the owner token's calls keep what they sent (or each RPC's default).
 */
export function bindPrincipal(identity: Identity, metadata: Metadata): RetraceError | undefined {
  metadata.remove(BOUND_PRINCIPAL_HEADER);
  if (identity.owner) return undefined;
  const claimed = metadata
    .get(PRINCIPAL_HEADER)
    .map((v) => (typeof v === 'string' ? v.trim() : '\0binary'))
    .filter((v) => v !== '');
  const bound = boundPrincipalOf(identity);
  if (bound !== undefined) {
    const other = claimed.find((v) => v !== bound);
    if (other !== undefined) {
      return new RetraceError('PERMISSION_DENIED', `token ${JSON.stringify(identity.name)} (role ${identity.role}) acts only as principal ${JSON.stringify(identity.name)}, not ${JSON.stringify(other.slice(0, 100))}: drop the header or use an admin token`, { field: PRINCIPAL_HEADER });
    }
    metadata.set(BOUND_PRINCIPAL_HEADER, bound);
  }
  if (claimed.length === 0 || bound !== undefined) metadata.set(PRINCIPAL_HEADER, identity.name);
  return undefined;
}

/** The name the call's token is bound to (a client or agent token's), or undefined for the owner and admin tokens. */
export function boundPrincipal(context: Pick<CallContext, 'metadata'>): string | undefined {
  const bound = context.metadata.get(BOUND_PRINCIPAL_HEADER);
  return typeof bound === 'string' && bound !== '' ? bound : undefined;
}

/**
 * A step event as a call bound to `bound` may record it: `why.principal` empty becomes `bound`
 * (a copy of the event, `why` made when absent, its kind TRIGGER_KIND_UNSPECIFIED); `bound`
 * itself, and any event that is not a step, is `event` unchanged. Any other principal is
 * PERMISSION_DENIED naming `<path>.step.why.principal`. Since the filled-in principal is always
 * the token's name, a resend of the same event by the same token stores (and deduplicates) the same.
 */
export function bindEventPrincipal(event: LineageEvent, bound: string, path: string): LineageEvent {
  const body = event.body;
  if (body?.$case !== 'step') return event;
  const step = body.value;
  const principal = step.why?.principal ?? '';
  if (principal === bound) return event;
  if (principal !== '') {
    throw new RetraceError('PERMISSION_DENIED', `this token acts only as principal ${JSON.stringify(bound)}, not ${JSON.stringify(principal.slice(0, 100))}: leave it empty or use an admin token`, { field: `${path}.step.why.principal` });
  }
  const why = step.why ? { ...step.why, principal: bound } : { kind: TriggerKind.TRIGGER_KIND_UNSPECIFIED, id: '', principal: bound };
  return { ...event, body: { $case: 'step', value: { ...step, why } } };
}

/**
 * `events` (a SubmitEvents batch still in its wire form) with bindEventPrincipal applied as the
 * engine decodes them, so a bound call's batch waits in the commit queue as one buffer like any
 * other. A refused event rejects the whole batch before anything of it is validated or stored;
 * an event given its principal loses its wire bytes, so the engine encodes it as changed.
 */
export function bindDeferredPrincipals(events: DeferredEvents, bound: string): DeferredEvents {
  return {
    count: events.count,
    decode() {
      const d = events.decode();
      const wire: (Uint8Array | undefined)[] = d.wire;
      for (let i = 0; i < d.events.length; i++) {
        const event = d.events[i] as LineageEvent;
        const checked = bindEventPrincipal(event, bound, `events[${i}]`);
        if (checked !== event) {
          d.events[i] = checked;
          wire[i] = undefined;
        }
      }
      return { events: d.events, wire };
    },
  };
}

/**
 * The principal a request field names, checked against the caller's token: for a client or agent
 * token the field must be empty (then it is the token's name) or that name, else PERMISSION_DENIED
 * naming `field`. For the owner and admin tokens the field as sent, or when empty the
 * x-retrace-principal header's, or '' (the RPC's own default).
 */
export function requestPrincipal(context: Pick<CallContext, 'metadata'>, field: string, value: string): string {
  const bound = boundPrincipal(context);
  if (bound !== undefined) {
    if (value !== '' && value !== bound) {
      throw new RetraceError('PERMISSION_DENIED', `this token acts only as principal ${JSON.stringify(bound)}, not ${JSON.stringify(value.slice(0, 100))}: leave it empty or use an admin token`, { field });
    }
    return bound;
  }
  if (value !== '') return value;
  const header = context.metadata.get(PRINCIPAL_HEADER);
  return typeof header === 'string' ? header.trim() : '';
}

/**
 * Refuses a client or agent token's call on something another principal started (a job, a
 * replay): PERMISSION_DENIED naming `field`, the thing and both names. A user controls their own
 * runs, an operator all of them: the owner and admin tokens may act on anything. Something
 * started by the owner token with no principal (recorded as a default such as `replay`, or '')
 * is no client's: a bound token whose name differs is refused too.
 *
 * @param what how the message names it, e.g. `job "job-..."`
 * @param action the verb refused, e.g. `cancel`
 * @param startedBy the principal recorded when it was started
 */
export function checkActsFor(context: Pick<CallContext, 'metadata'>, field: string, what: string, action: string, startedBy: string): void {
  const bound = boundPrincipal(context);
  if (bound === undefined || bound === startedBy) return;
  throw new RetraceError(
    'PERMISSION_DENIED',
    `${what} was started by principal ${JSON.stringify(startedBy)}; this token acts as principal ${JSON.stringify(bound)} and may ${action} only what it started: use an admin token`,
    { field },
  );
}
