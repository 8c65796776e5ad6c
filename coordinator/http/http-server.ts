import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { promisify } from 'node:util';
import { gunzip, inflate } from 'node:zlib';
import { InvalidArgumentError, isRetraceError, NotFoundError, RetraceError, toHttpError } from '../../common/errors.js';
import { boundPrincipalOf, mayUseHttp, permissionDenied } from '../access-policy.js';
import { ownerOnly, type Authenticate } from '../token-registry.js';
import { storeErrorOf } from '../store/database.js';
import type { HttpRequest, Route } from './router.js';

/** Largest accepted request body; a larger one is answered 413 (see BodyTooLargeError). */
export const MAX_HTTP_BODY_BYTES = 16 * 1024 * 1024;

/**
 * A request body over MAX_HTTP_BODY_BYTES: 413 with `{error: "RESOURCE_EXHAUSTED", field: "body"}`,
 * answered at once; the rest of the body is discarded as it arrives, never held.
 */
class BodyTooLargeError extends Error {}

/**
 * A request body that says it is not JSON (`Content-Type: text/plain`, a form, XML): 415 with
 * `{error: "INVALID_ARGUMENT", field: "content-type"}`, as Marquez refuses it, before a byte of
 * it is read. A body without a Content-Type is read as JSON.
 */
class UnsupportedMediaTypeError extends Error {
  constructor(
    message: string,
    /** The header at fault. */
    readonly field: 'content-type' | 'content-encoding' = 'content-type',
  ) {
    super(message);
  }
}

/** Whether a Content-Type names JSON: `application/json` or a `+json` type, any parameters. */
function isJsonMediaType(contentType: string): boolean {
  const type = (contentType.split(';')[0] ?? '').trim().toLowerCase();
  return type === 'application/json' || /^application\/[a-z0-9.!#$&^_-]+\+json$/.test(type);
}

/** A request with a body whose Content-Type is not JSON, or whose Content-Encoding is not one read (see contentEncodingOf). */
function checkContentType(req: IncomingMessage): void {
  const contentType = req.headers['content-type'];
  const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
  if (!hasBody) return;
  contentEncodingOf(req);
  if (contentType === undefined || isJsonMediaType(contentType)) return;
  throw new UnsupportedMediaTypeError(`content-type: the body must be JSON (application/json), got ${JSON.stringify(contentType.slice(0, 100))}`);
}

const gunzipAsync = promisify(gunzip);
const inflateAsync = promisify(inflate);

/**
 * How the body is compressed: OpenLineage's HTTP transports send `Content-Encoding: gzip` when
 * configured with `compression: gzip` (Python and Java clients), and Marquez reads it. `gzip`
 * (`x-gzip`) and `deflate` are read; no header or `identity` is plain; any other is 415 naming
 * `content-encoding` before the body is read.
 */
function contentEncodingOf(req: IncomingMessage): 'gzip' | 'deflate' | undefined {
  const header = req.headers['content-encoding'];
  const value = (Array.isArray(header) ? header.join(',') : (header ?? '')).trim().toLowerCase();
  if (value === '' || value === 'identity') return undefined;
  if (value === 'gzip' || value === 'x-gzip') return 'gzip';
  if (value === 'deflate') return 'deflate';
  throw new UnsupportedMediaTypeError(`content-encoding: must be gzip, deflate or identity, got ${JSON.stringify(value.slice(0, 100))}`, 'content-encoding');
}

/** A compressed body made plain, at most MAX_HTTP_BODY_BYTES of it (413 beyond, 400 when it does not decompress). */
async function decompressed(body: Buffer, encoding: 'gzip' | 'deflate'): Promise<Buffer> {
  try {
    return await (encoding === 'gzip' ? gunzipAsync : inflateAsync)(body, { maxOutputLength: MAX_HTTP_BODY_BYTES });
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ERR_BUFFER_TOO_LARGE') throw bodyTooLarge(`more than ${MAX_HTTP_BODY_BYTES} bytes once decompressed`);
    throw new InvalidArgumentError('body', `not valid ${encoding} (Content-Encoding: ${encoding}): ${(err as Error).message}`);
  }
}

function bodyTooLarge(what: string): BodyTooLargeError {
  return new BodyTooLargeError(`body: ${what}; the limit is ${MAX_HTTP_BODY_BYTES} bytes (16 MiB): send fewer events per request`);
}

/**
 * The coordinator's HTTP face: JSON in, JSON out, routes by path (router.ts). Every request needs
 * `Authorization: Bearer <token>`, the token the gRPC services take (OpenLineage clients send it
 * with their api_key auth); without it, 401 before any route is looked up; with an agent-role
 * token, 403 (access-policy.ts). Errors go through the
 * shared error table, so a 400 carries `{error, message, field}` just as gRPC names the field.
 * With `tls` (PEM certificate and key) it serves HTTPS instead.
 */
export function createHttpServer(
  routes: readonly Route[],
  options: { token: string | Authenticate; log: (line: string) => void; tls?: { cert: Buffer; key: Buffer } | undefined },
): Server | HttpsServer {
  const { log } = options;
  const authenticate = typeof options.token === 'string' ? ownerOnly(options.token) : options.token;
  const match = compileRoutes(routes);
  const listener: RequestListener = (req, res) => {
    void handle(req, res).catch((err: unknown) => log(`http: response failed: ${String(err)}`));
  };
  return options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, listener) : createServer(listener);

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const controller = new AbortController();
    res.on('close', () => controller.abort(new Error('client went away')));
    try {
      const identity = authenticate(req.headers.authorization);
      if (!identity) {
        throw new RetraceError('UNAUTHENTICATED', 'missing or wrong token: send "Authorization: Bearer <token>" (the coordinator writes it to <data dir>/auth-token; OpenLineage clients: api_key auth of the http transport)');
      }
      const url = new URL(req.url ?? '/', 'http://localhost');
      if (!mayUseHttp(identity.role)) throw permissionDenied(identity, `HTTP ${req.method ?? 'GET'} ${url.pathname}`);
      const found = match(req.method ?? 'GET', url.pathname);
      if (found === 'METHOD_NOT_ALLOWED') {
        send(res, 405, { error: 'METHOD_NOT_ALLOWED', message: `${req.method} is not allowed on ${url.pathname}` });
        return;
      }
      if (!found) throw new NotFoundError(`route ${url.pathname}`);
      const { route, params } = found;
      checkContentType(req);
      const request: HttpRequest = {
        method: req.method ?? 'GET',
        path: url.pathname,
        params,
        query: url.searchParams,
        body: await readJson(req),
        headers: req.headers,
        boundPrincipal: boundPrincipalOf(identity),
        signal: controller.signal,
      };
      const response = await route.handler(request);
      send(res, response.status, response.body);
    } catch (caught) {
      if (caught instanceof UnsupportedMediaTypeError) {
        send(res, 415, { error: 'INVALID_ARGUMENT', message: caught.message, field: caught.field });
        return;
      }
      if (caught instanceof BodyTooLargeError) {
        send(res, 413, { error: 'RESOURCE_EXHAUSTED', message: caught.message, field: 'body' });
        return;
      }
      const err = isRetraceError(caught) ? caught : (storeErrorOf(caught) ?? caught);
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

type RouteMatch = { route: Route; params: Record<string, string> } | 'METHOD_NOT_ALLOWED' | undefined;

/** The routes as one lookup: exact paths from a table, then `{name}` patterns in order. */
function compileRoutes(routes: readonly Route[]): (method: string, path: string) => RouteMatch {
  const exact = new Map<string, Route>();
  const exactPaths = new Set<string>();
  const patterns: { route: Route; re: RegExp; names: string[] }[] = [];
  for (const r of routes) {
    if (!r.path.includes('{')) {
      exact.set(`${r.method} ${r.path}`, r);
      exactPaths.add(r.path);
      continue;
    }
    const names: string[] = [];
    const source = r.path
      .split('/')
      .map((seg) => {
        const m = /^\{([a-zA-Z]+)\}$/.exec(seg);
        if (!m) return seg.replace(/[.*+?^$()|[\]\\]/g, '\\$&');
        names.push(m[1] as string);
        return '([^/]+)';
      })
      .join('/');
    patterns.push({ route: r, re: new RegExp(`^${source}$`), names });
  }
  return (method, path) => {
    const hit = exact.get(`${method} ${path}`);
    if (hit) return { route: hit, params: {} };
    let pathKnown = exactPaths.has(path);
    for (const p of patterns) {
      const m = p.re.exec(path);
      if (!m) continue;
      if (p.route.method !== method) {
        pathKnown = true;
        continue;
      }
      const params: Record<string, string> = {};
      p.names.forEach((name, i) => {
        try {
          params[name] = decodeURIComponent(m[i + 1] as string);
        } catch {
          throw new InvalidArgumentError(name, `malformed percent-encoding in ${JSON.stringify((m[i + 1] as string).slice(0, 200))}`);
        }
      });
      return { route: p.route, params };
    }
    return pathKnown ? 'METHOD_NOT_ALLOWED' : undefined;
  };
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  // A declared length over the limit is refused before a byte of the body is read: a client that
  // declares 1 GB and sends it slowly is not held until it has sent 16 MiB.
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_HTTP_BODY_BYTES) throw bodyTooLarge(`Content-Length is ${declared} bytes`);
  // Not `for await`: leaving that loop early destroys the request and with it the socket, and the
  // client, still sending, could get a reset instead of the 413. Here the reader just stops
  // listening: the stream keeps flowing and Node discards the rest of the body.
  const { chunks, size } = await new Promise<{ chunks: Buffer[]; size: number }>((resolve, reject) => {
    const parts: Buffer[] = [];
    let total = 0;
    const onData = (chunk: Buffer): void => {
      total += chunk.length;
      if (total > MAX_HTTP_BODY_BYTES) {
        stop();
        parts.length = 0;
        reject(bodyTooLarge(`more than ${MAX_HTTP_BODY_BYTES} bytes`));
        return;
      }
      parts.push(chunk);
    };
    const onEnd = (): void => {
      stop();
      resolve({ chunks: parts, size: total });
    };
    const onError = (err: Error): void => {
      stop();
      reject(err);
    };
    const stop = (): void => {
      req.off('data', onData).off('end', onEnd).off('error', onError);
    };
    req.on('data', onData).on('end', onEnd).on('error', onError);
  });
  if (size === 0) return undefined;
  const encoding = contentEncodingOf(req);
  const raw = Buffer.concat(chunks);
  const body = encoding === undefined ? raw : await decompressed(raw, encoding);
  if (body.length === 0) return undefined;
  const text = body.toString('utf8');
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
