import type { Http2Server, Http2Session, ServerOptions } from 'node:http2';
import { Server } from '@grpc/grpc-js';
import { FLOW_CONTROL_WINDOW_OPTION } from '../../common/grpc-flow-control.js';

/** What the wrapper below reads of grpc-js's Server (1.14): not public API. */
interface GrpcJsServerInternals {
  options: Record<string, unknown>;
  commonServerOptions: ServerOptions;
  createHttp2Server(credentials: unknown): Http2Server;
}

/** HTTP/2's initial window, which a smaller option would shrink. */
const DEFAULT_WINDOW = 65_535;

let installed: boolean | undefined;

/**
 * Makes grpc-js servers honour FLOW_CONTROL_WINDOW_OPTION as its channels already do: the stream
 * window a server advertises in its SETTINGS, and its connection window, raised as each session
 * opens. grpc-js 1.14 reads the option only for channels, so every server stream stayed at 64 KiB
 * whatever the client asked (grpc/grpc-node#3058 adds this to grpc-js; drop this file once it
 * lands). Installed once per process; servers built without the option are left as they were.
 * Answers false, changing nothing, if grpc-js no longer has the method wrapped here: servers then
 * keep 64 KiB windows, which test/grpc-flow-control.test.ts catches.
 */
export function installServerFlowControlWindow(): boolean {
  if (installed !== undefined) return installed;
  const proto = Server.prototype as unknown as Partial<GrpcJsServerInternals>;
  const create = proto.createHttp2Server;
  if (typeof create !== 'function') return (installed = false);
  proto.createHttp2Server = function (this: GrpcJsServerInternals, credentials: unknown): Http2Server {
    const window = this.options[FLOW_CONTROL_WINDOW_OPTION];
    if (typeof window !== 'number' || window <= DEFAULT_WINDOW) return create.call(this, credentials);
    // Read by createHttp2Server for the plain and the TLS server alike.
    this.commonServerOptions = { ...this.commonServerOptions, settings: { ...this.commonServerOptions.settings, initialWindowSize: window } };
    const server = create.call(this, credentials);
    server.on('session', (session: Http2Session) => session.setLocalWindowSize(window));
    return server;
  };
  return (installed = true);
}
