import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Metadata, Status, type Client, type CompatServiceDefinition } from 'nice-grpc';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CodeServiceDefinition } from '../common/gen/retrace/v1/code.js';
import { Direction, LineageServiceDefinition, NodeKind } from '../common/gen/retrace/v1/lineage.js';
import { NodeServiceDefinition, NodeState } from '../common/gen/retrace/v1/node.js';
import { RecomputeServiceDefinition } from '../common/gen/retrace/v1/recompute.js';
import { ReplayServiceDefinition } from '../common/gen/retrace/v1/replay.js';
import { startLocalAgents } from '../scripts/cli/local-agents.js';
import { startCoordinatorProcess, type CoordinatorProcess } from './helpers/coordinator-process.js';
import { runCli } from './helpers/in-process-cli.js';
import { h, objectEvent, ref, stepEvent } from './helpers/lineage-events.js';
import { processHarness } from './helpers/process-harness.js';
import { until } from './helpers/until.js';

/**
 * Named tokens with roles (<data>/tokens.json, `retrace token`), against the real CLI coordinator
 * and a real agent process: what each role may call, revocation while running, and the principal
 * a named token is bound to.
 */

const harness = processHarness();
let dataDir: string;
let coord: CoordinatorProcess;
let owner: string;
const tokens: Record<'agent' | 'client' | 'admin' | 'doomed', string> = { agent: '', client: '', admin: '', doomed: '' };

/** `retrace token ARGS --data <dataDir>`, in this process (the commands only edit the file). */
async function tokenCli(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const r = await runCli(['token', ...args, '--data', dataDir]);
  return { code: r.code, stdout: r.out, stderr: r.err };
}

function as<S extends CompatServiceDefinition>(token: string, definition: S): Client<S> {
  return harness.client(coord.grpc, token, definition) as Client<S>;
}

beforeAll(async () => {
  dataDir = harness.tempDir('retrace-token-roles-');
  // Made before the coordinator starts (read at start) and one while it runs (picked up).
  const names = { agent: 'host-7', client: 'ci', doomed: 'temp' } as const;
  for (const [k, name] of Object.entries(names)) {
    const r = await tokenCli('add', name, '--role', k === 'doomed' ? 'client' : k);
    expect(r, r.stderr).toMatchObject({ code: 0 });
    tokens[k as keyof typeof names] = r.stdout.trim();
  }
  coord = await startCoordinatorProcess(dataDir, harness.children);
  owner = readFileSync(join(dataDir, 'auth-token'), 'utf8').trim();
  const r = await tokenCli('add', 'ops', '--role', 'admin');
  expect(r.code).toBe(0);
  tokens.admin = r.stdout.trim();
}, 60_000);

afterAll(async () => {
  await harness.cleanup();
});

const trace = { start: { kind: NodeKind.NODE_KIND_OBJECT_VERSION, id: 'roles:raw', contentHash: h('raw') }, direction: Direction.DIRECTION_DOWNSTREAM };

describe('token roles', () => {
  it('an agent token runs a real agent (Connect, GetCode) and nothing else: PERMISSION_DENIED naming the role and the method', async () => {
    const [agent] = await startLocalAgents(coord.grpc, tokens.agent, dataDir, [{ name: 'a', reportInterval: '200ms' }]);
    harness.agents.push(agent!);
    const nodes = await as(owner, NodeServiceDefinition).listNodes({});
    expect(nodes.nodes.find((n) => n.nodeId === agent!.nodeId)?.state).toBe(NodeState.NODE_STATE_READY);
    // GetCode is let through: the answer is the store's, not the policy's.
    await expect(as(tokens.agent, CodeServiceDefinition).getCode({ codeVersion: `sha256:${'0'.repeat(64)}` })).rejects.toMatchObject({ code: Status.NOT_FOUND });
    const denied = { code: Status.PERMISSION_DENIED, details: expect.stringMatching(/token "host-7" has role agent, which may not call retrace\.v1\.CodeService\/PublishCode/) };
    await expect(as(tokens.agent, CodeServiceDefinition).publishCode({ bundle: Buffer.from('x'), manifest: { transform: 't', sourceFile: 't.ts', bundler: 'b' } as never })).rejects.toMatchObject(denied);
    await expect(as(tokens.agent, LineageServiceDefinition).trace(trace)).rejects.toMatchObject({ code: Status.PERMISSION_DENIED, details: expect.stringMatching(/LineageService\/Trace/) });
    await expect(as(tokens.agent, NodeServiceDefinition).listNodes({})).rejects.toMatchObject({ code: Status.PERMISSION_DENIED });
    const res = await fetch(`http://${coord.http}/api/v1/lineage`, { method: 'POST', headers: { authorization: `Bearer ${tokens.agent}`, 'content-type': 'application/json' }, body: '{}' });
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ error: 'PERMISSION_DENIED', message: expect.stringMatching(/role agent.*HTTP POST \/api\/v1\/lineage/) });
  }, 60_000);

  it('a client token submits and traces lineage (gRPC and HTTP) but may not publish code, connect as an agent or drain a node', async () => {
    const lineage = as(tokens.client, LineageServiceDefinition);
    await lineage.submitEvent({ event: objectEvent('roles-o1', 'roles:raw', 'raw') });
    await lineage.submitEvent({ event: stepEvent('roles-s1', 'roles-step', [ref('roles:raw', 'raw')], [ref('roles:out', 'out')]) });
    expect((await lineage.trace(trace)).nodes.length).toBeGreaterThan(0);
    const event = {
      eventTime: '2024-10-17T09:18:26.825Z',
      producer: 'https://example.com/roles-test',
      schemaURL: 'https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent',
      eventType: 'COMPLETE',
      run: { runId: '00000000-0000-4000-8000-00000000abcd', facets: {} },
      job: { namespace: 'roles', name: 'job', facets: {} },
      inputs: [],
      outputs: [{ namespace: 'roles', name: 'out' }],
    };
    const res = await fetch(`http://${coord.http}/api/v1/lineage`, { method: 'POST', headers: { authorization: `Bearer ${tokens.client}`, 'content-type': 'application/json' }, body: JSON.stringify(event) });
    expect(res.status, await res.clone().text()).toBeLessThan(300);
    await expect(as(tokens.client, CodeServiceDefinition).publishCode({ bundle: Buffer.from('x'), manifest: undefined })).rejects.toMatchObject({
      code: Status.PERMISSION_DENIED,
      details: expect.stringMatching(/token "ci" has role client, which may not call retrace\.v1\.CodeService\/PublishCode: it needs role admin/),
    });
    await expect(as(tokens.client, NodeServiceDefinition).drainNode({ nodeId: 'x' } as never)).rejects.toMatchObject({ code: Status.PERMISSION_DENIED, details: expect.stringMatching(/DrainNode/) });
    const connect = async (): Promise<void> => {
      for await (const _ of as(tokens.client, NodeServiceDefinition).connect((async function* () {})())) break;
    };
    await expect(connect()).rejects.toMatchObject({ code: Status.PERMISSION_DENIED, details: expect.stringMatching(/NodeService\/Connect/) });
    // An admin token calls what the owner may.
    await expect(as(tokens.admin, NodeServiceDefinition).drainNode({ nodeId: 'no-such-node' } as never)).rejects.toMatchObject({ code: Status.NOT_FOUND });
  });

  it('binds a client token to its name: recorded as the principal, another one refused in the header or in a request field', async () => {
    const event = objectEvent('roles-o2', 'roles:bound', 'v1');
    await as(owner, LineageServiceDefinition).submitEvent({ event });
    const recompute = as(tokens.client, RecomputeServiceDefinition);
    const r = await recompute.notifyChange({ objectId: 'roles:bound', contentHash: '', payload: Buffer.from('v2'), mediaType: 'text/plain', noticedBy: '' });
    expect(r.change?.noticedBy).toBe('notify:ci');
    // The owner may still speak for anyone, as before.
    const o = await as(owner, RecomputeServiceDefinition).notifyChange(
      { objectId: 'roles:bound', contentHash: '', payload: Buffer.from('v3'), mediaType: 'text/plain', noticedBy: '' },
      { metadata: Metadata({ authorization: `Bearer ${owner}`, 'x-retrace-principal': 'alice' }) },
    );
    expect(o.change?.noticedBy).toBe('notify:alice');
    const spoof = Metadata({ authorization: `Bearer ${tokens.client}`, 'x-retrace-principal': 'alice' });
    await expect(recompute.notifyChange({ objectId: 'roles:bound', contentHash: '', payload: Buffer.from('v4'), mediaType: 'text/plain', noticedBy: '' }, { metadata: spoof })).rejects.toMatchObject({
      code: Status.PERMISSION_DENIED,
      details: expect.stringMatching(/^x-retrace-principal: token "ci" \(role client\) acts only as principal "ci", not "alice"/),
    });
    // The header the interceptor sets for the handlers cannot be sent from outside.
    const forged = Metadata({ authorization: `Bearer ${tokens.admin}`, 'x-retrace-bound-principal': 'ci' });
    const replay = as(tokens.client, ReplayServiceDefinition);
    await expect(replay.startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:p/raw:1'] } } }, policy: { principal: 'alice' } as never })).rejects.toMatchObject({
      code: Status.PERMISSION_DENIED,
      details: expect.stringMatching(/^policy\.principal: this token acts only as principal "ci", not "alice"/),
    });
    // Empty or its own name passes the binding (and fails further on, for want of records).
    for (const principal of ['', 'ci']) {
      await expect(replay.startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:p/raw:1'] } } }, policy: { principal } as never })).rejects.not.toMatchObject({ code: Status.PERMISSION_DENIED });
    }
    await expect(as(tokens.admin, ReplayServiceDefinition).startReplay({ selector: { selector: { $case: 'recordIds', value: { objectIds: ['record:p/raw:1'] } } }, policy: { principal: 'alice' } as never }, { metadata: forged })).rejects.not.toMatchObject({ code: Status.PERMISSION_DENIED });
  });

  it('a token made while the coordinator runs is taken at once, not only after the next poll of the file', async () => {
    const r = await tokenCli('add', 'fresh', '--role', 'client');
    expect(r, r.stderr).toMatchObject({ code: 0 });
    await expect(as(r.stdout.trim(), LineageServiceDefinition).listRuns({})).resolves.toBeDefined();
    // An unknown token is still unknown (and does not make the table forget the others).
    await expect(as('f'.repeat(48), LineageServiceDefinition).listRuns({})).rejects.toMatchObject({ code: Status.UNAUTHENTICATED });
    await as(tokens.client, LineageServiceDefinition).listRuns({});
    expect(await tokenCli('revoke', 'fresh')).toMatchObject({ code: 0 });
  });

  it('a revoked token is refused by the running coordinator within about a second', async () => {
    const lineage = as(tokens.doomed, LineageServiceDefinition);
    await lineage.listRuns({});
    const r = await tokenCli('revoke', 'temp');
    expect(r, r.stderr).toMatchObject({ code: 0 });
    const started = Date.now();
    const err = await until('the revoked token to be refused', async () => {
      try {
        await lineage.listRuns({});
        return undefined;
      } catch (e) {
        return e;
      }
    }, 5000, 50);
    expect(err).toMatchObject({ code: Status.UNAUTHENTICATED });
    expect(Date.now() - started).toBeLessThan(2500);
    // A file broken by hand while running is logged; the table read before stays.
    const file = join(dataDir, 'tokens.json');
    const before = readFileSync(file, 'utf8');
    writeFileSync(file, '{"tokens": [{"name": "x"}]}');
    await until('the bad file to be logged', () => (/WARNING: .*tokens\.json: tokens\[0\]\.role/.test(coord.stderr()) ? true : undefined), 5000, 50);
    await as(tokens.client, LineageServiceDefinition).listRuns({});
    writeFileSync(file, before, { mode: 0o600 });
  });
});

describe('retrace token', () => {
  it("add --help names every method a client token may not call (SweepPayloads too), as the coordinator refuses them", async () => {
    const r = await runCli(['token', 'add', '--help']);
    expect(r.code).toBe(0);
    const client = r.out.split('\n').find((l) => l.includes('--role client')) ?? '';
    for (const m of ['CodeService/PublishCode', 'NodeService/Connect', 'NodeService/DrainNode', 'PipelineService/SweepPayloads']) expect(client).toContain(m);
  });

  it('refuses bad input with a clear message and a non-zero exit, and leaves the file as it was', async () => {
    const file = join(dataDir, 'tokens.json');
    const before = readFileSync(file, 'utf8');
    const cases: [string[], RegExp][] = [
      [['add', 'bad name', '--role', 'client'], /"bad name" is not a token name/],
      [['add', 'x'.repeat(65), '--role', 'client'], /is not a token name/],
      [['add', 'ci', '--role', 'client'], /a token named "ci" exists already/],
      [['add', 'new', '--role', 'root'], /role: must be one of agent, client, admin, got "root"/],
      [['add', 'owner', '--role', 'admin'], /"owner" is the name of the auth-token's identity/],
      // A client named after a default principal would own the owner's default-principal jobs.
      [['add', 'replay', '--role', 'client'], /"replay" is the principal the coordinator records for calls that name none/],
      [['add', 'auto-policy', '--role', 'client'], /"auto-policy" is the principal/],
      [['add', 'new'], /--role agent\|client\|admin is required/],
      [['revoke', 'nobody'], /token "nobody" .* not found/],
    ];
    for (const [args, message] of cases) {
      const r = await tokenCli(...args);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toMatch(message);
      expect(r.stdout, args.join(' ')).toBe('');
    }
    // Flags the command checks itself are usage errors (exit 2), as with every other command.
    for (const args of [['add', 'new', '--role', 'root'], ['add', 'new']]) expect((await tokenCli(...args)).code, args.join(' ')).toBe(2);
    expect(readFileSync(file, 'utf8')).toBe(before);
    const list = await tokenCli('list', '--json');
    expect(JSON.parse(list.stdout)).toEqual([
      { name: 'host-7', role: 'agent', created: expect.stringMatching(/^\d{4}-/) },
      { name: 'ci', role: 'client', created: expect.any(String) },
      { name: 'ops', role: 'admin', created: expect.any(String) },
    ]);
  }, 60_000);

  it('a malformed tokens file is a start error naming the file and the entry', async () => {
    const dir = harness.tempDir('retrace-token-bad-');
    writeFileSync(join(dir, 'tokens.json'), JSON.stringify({ tokens: [{ name: 'a', role: 'client', sha256: 'abc' }] }), { mode: 0o600 });
    await expect(startCoordinatorProcess(dir, harness.children)).rejects.toThrow(/tokens\.json: tokens\[0\]\.sha256: must be 64 lower-case hex digits/);
  }, 30_000);
});
