/**
 * The HTTP face's routing contract. Route modules export `Route[]`; the HTTP server
 * (`http-server.ts`) parses JSON bodies, dispatches (exact paths first, then patterns in the
 * order given), and maps thrown RetraceErrors to
 * `{status, {error, message, field}}` through the shared error table. Handlers never
 * write to the socket themselves.
 */
export interface HttpRequest {
  method: string;
  /** Path without the query string, e.g. "/api/v1/lineage". */
  path: string;
  /** The route's `{name}` segments as they came in this path, percent-decoded. */
  params: Record<string, string>;
  query: URLSearchParams;
  /** Parsed JSON body (undefined for an empty body). Malformed JSON never reaches a handler: 400. */
  body: unknown;
  headers: Record<string, string | string[] | undefined>;
  /**
   * The name the request's token is bound to (a client token's, access-policy.ts
   * boundPrincipalOf): the principal whatever it stores records. Undefined for the owner and
   * admin tokens.
   */
  boundPrincipal: string | undefined;
  signal: AbortSignal;
}

export interface HttpResponse {
  status: number;
  /** Serialised as JSON; omit for an empty body. */
  body?: unknown;
}

export interface Route {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /**
   * The path: exact, or with whole segments `{name}` that match any one segment
   * (`/api/v1/namespaces/{namespace}/datasets/{dataset}`; a `/` inside a name comes as `%2F`).
   */
  path: string;
  handler: (req: HttpRequest) => Promise<HttpResponse>;
}
