import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { InvalidArgumentError, isRetraceError, NotFoundError, RetraceError, toHttpError } from '../../common/errors.js';
import { bearerTokenCheck } from '../bearer-token.js';
import type { HttpRequest, Route } from './router.js';

/** Largest accepted request body. */
export const MAX_HTTP_BODY_BYTES = 16 * 1024 * 1024;

/**
 * The coordinator's HTTP face: JSON in, JSON out, routes by exact path. Every request needs
 * `Authorization: Bearer <token>`, the token the gRPC services take (OpenLineage clients send it
 * with their api_key auth); without it, 401 before any route is looked up. Errors go through the
 * shared error table, so a 400 carries `{error, message, field}` just as gRPC names the field.
 */
export function createHttpServer(routes: readonly Route[], options: { token: string; log: (line: string) => void }): Server {
  const { log } = options;
  const authorized = bearerTokenCheck(options.token);
  const table = new Map<string, Route>(routes.map((r) => [`${r.method} ${r.path}`, r]));
  const paths = new Set(routes.map((r) => r.path));
  return createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => log(`http: response failed: ${String(err)}`));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const controller = new AbortController();
    res.on('close', () => controller.abort(new Error('client went away')));
    try {
      if (!authorized(req.headers.authorization)) {
        throw new RetraceError('UNAUTHENTICATED', 'missing or wrong token: send "Authorization: Bearer <token>" (the coordinator writes it to <data dir>/auth-token; OpenLineage clients: api_key auth of the http transport)');
      }
      const url = new URL(req.url ?? '/', 'http://localhost');
      const route = table.get(`${req.method} ${url.pathname}`);
      if (!route) {
        if (paths.has(url.pathname)) {
          send(res, 405, { error: 'METHOD_NOT_ALLOWED', message: `${req.method} is not allowed on ${url.pathname}` });
          return;
        }
        throw new NotFoundError(`route ${url.pathname}`);
      }
      const request: HttpRequest = {
        method: req.method ?? 'GET',
        path: url.pathname,
        query: url.searchParams,
        body: await readJson(req),
        headers: req.headers,
        signal: controller.signal,
      };
      const response = await route.handler(request);
      send(res, response.status, response.body);
    } catch (err) {
      if (isRetraceError(err)) {
        const { status, body } = toHttpError(err);
        send(res, status, body, status === 401 ? { 'www-authenticate': 'Bearer realm="retrace"' } : {});
      } else {
        log(`http: ${req.method} ${req.url} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        send(res, 500, { error: 'INTERNAL', message: 'internal error (see coordinator log)' });
      }
    }
  }
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_HTTP_BODY_BYTES) throw new InvalidArgumentError('body', `larger than ${MAX_HTTP_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return undefined;
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new InvalidArgumentError('body', `not valid JSON: ${(err as Error).message}`);
  }
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
