import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Http2Server, type ServerHttp2Session, type Settings } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createAgentRuntime } from '../agent/agent-runtime.js';
import { FLOW_CONTROL_WINDOW_BYTES } from '../common/grpc-flow-control.js';
import { LineageServiceDefinition } from '../common/gen/retrace/v1/lineage.js';
import { createGrpcServer } from '../coordinator/grpc/grpc-server.js';
import { openClient } from '../scripts/cli/client.js';
import { parseArgs } from '../scripts/cli/command.js';
import { waitFor } from './helpers/mesh-server.js';

/**
 * HTTP/2 windows of 64 KiB held a stream to 64 KiB per round trip (6.6k events/s of SubmitEvents
 * at 20 ms RTT): the coordinator's server, the CLI's channel and the agent's channel each ask
 * for FLOW_CONTROL_WINDOW_BYTES, per stream (SETTINGS) and per connection (WINDOW_UPDATE).
 * Read off the wire with Node's own HTTP/2 on the other end.
 */

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

describe('the coordinator gRPC server', () => {
  it('advertises the stream window and opens the connection window', async () => {
    const { server } = createGrpcServer({ token: 'secret-token-0123456789', services: [], log: () => {} });
    const port = await server.listen('127.0.0.1:0');
    cleanup.push(() => server.forceShutdown());
    const session = connect(`http://127.0.0.1:${port}`);
    cleanup.push(() => void session.destroy());
    const settings = await new Promise<Settings>((resolve, reject) => {
      session.once('remoteSettings', resolve);
      session.once('error', reject);
    });
    expect(settings.initialWindowSize).toBe(FLOW_CONTROL_WINDOW_BYTES);
    // What this end may send on the connection before the server's next WINDOW_UPDATE.
    await waitFor(() => session.state.remoteWindowSize === FLOW_CONTROL_WINDOW_BYTES, 5000, `connection window ${session.state.remoteWindowSize}`);
  });
});

/** A bare HTTP/2 server standing in for a coordinator: it records each client's settings and window. */
async function windowProbe(): Promise<{ address: string; seen: Promise<{ settings: Settings; window: number }> }> {
  const h2: Http2Server = createServer();
  const sessions = new Set<ServerHttp2Session>();
  const seen = new Promise<{ settings: Settings; window: number }>((resolve) => {
    h2.on('session', (session: ServerHttp2Session) => {
      sessions.add(session);
      session.once('remoteSettings', (settings) => {
        // A client raises its connection window with a WINDOW_UPDATE just after its SETTINGS.
        const until = Date.now() + 2000;
        const check = (): void => {
          const window = session.state.remoteWindowSize ?? 0;
          if (window >= FLOW_CONTROL_WINDOW_BYTES || Date.now() > until) resolve({ settings, window });
          else setTimeout(check, 10);
        };
        check();
      });
    });
  });
  await new Promise<void>((resolve) => h2.listen(0, '127.0.0.1', resolve));
  cleanup.push(
    () =>
      new Promise<void>((resolve) => {
        h2.close(() => resolve());
        // A session a client left open would hold close() back.
        for (const s of sessions) s.destroy();
      }),
  );
  return { address: `127.0.0.1:${(h2.address() as AddressInfo).port}`, seen };
}

describe('Retrace channels', () => {
  it("the CLI's channel asks for the window", async () => {
    const probe = await windowProbe();
    const cli = openClient(LineageServiceDefinition, parseArgs(['--coordinator', probe.address]), { env: {} });
    cleanup.push(() => cli.close());
    // The call fails (nothing answers gRPC there); connecting is what sends the settings.
    void cli.client.getNode({}).catch(() => {});
    const { settings, window } = await probe.seen;
    expect(settings.initialWindowSize).toBe(FLOW_CONTROL_WINDOW_BYTES);
    expect(window).toBe(FLOW_CONTROL_WINDOW_BYTES);
  });

  it("the agent's channel asks for the window", async () => {
    const probe = await windowProbe();
    const dataDir = mkdtempSync(join(tmpdir(), 'retrace-flow-control-'));
    cleanup.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const runtime = createAgentRuntime({ coordinator: probe.address, dataDir, token: 'secret-token-0123456789', linkProbeIntervalMs: 0, log: () => {} });
    cleanup.push(() => runtime.stop().catch(() => {}));
    await runtime.start();
    const { settings, window } = await probe.seen;
    expect(settings.initialWindowSize).toBe(FLOW_CONTROL_WINDOW_BYTES);
    expect(window).toBe(FLOW_CONTROL_WINDOW_BYTES);
  });
});

