/**
 * One line for a gRPC channel that never connected (grpc-js UNAVAILABLE "No connection
 * established. Last error: ..."), with what to change when the cause is TLS on one side only or
 * an untrusted certificate; undefined for any other failure (the caller keeps grpc-js's details).
 * `tls` says whether the client dialled with TLS.
 */
export function describeConnectFailure(details: string, options: { address: string; tls: boolean }): string | undefined {
  const m = /^No connection established\. Last error: ([\s\S]*?)(?:\. Resolution note:[\s\S]*)?$/.exec(details);
  if (!m) return undefined;
  const last = (m[1] as string).trim();
  // OpenSSL's "...:SSL routines:ssl3_get_record:wrong version number:<source file>" keeps only its reason.
  const reason =
    /SSL routines:[^:]*:([^:\n]+)/.exec(last)?.[1] ??
    (last.split('\n')[0] as string)
      .replace(/^Error: /, '')
      .replace(/\s*\(\d{4}-\d\d-\d\dT[^)]*\)$/, '');
  const head = `cannot connect to the coordinator at ${options.address}: ${reason}`;
  // Refused, unresolved, unreachable: nothing to do with TLS.
  if (/\b(ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT)\b/.test(last)) return head;
  if (!options.tls) return `${head}; if it serves TLS (started with --tls-cert), pass --tls-ca FILE or set RETRACE_TLS_CA`;
  if (/wrong version number|packet length too long|http request/i.test(last)) {
    return `${head}; it does not answer TLS: drop --tls-ca (and RETRACE_TLS_CA), or start it with --tls-cert/--tls-key`;
  }
  if (/certificate|altnames|verify|self.signed/i.test(last)) {
    return `${head}; --tls-ca must hold the coordinator's certificate (or the CA that signed it), issued for the host dialled`;
  }
  return head;
}
