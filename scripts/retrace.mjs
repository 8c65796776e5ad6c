#!/usr/bin/env -S node --max-semi-space-size=32 --initial-old-space-size=128
// The `retrace` CLI. TypeScript sources run through tsx's loader, so there is no build step.
// A 64 MiB young generation (V8's default is 32): lineage events live for one commit group
// (100-600 ms under load), and with the default most of them are copied out of the young
// generation before they die; `npm start`, `npm run demo`, `npm run bench` and the local agents
// pass the same flag. On the 2-core dev VM the in-process capture path went from a median
// 377 to 326 µs per record (5 alternating runs of 10k records).
// A 128 MiB initial old generation: the coordinator's live heap is small (~25 MiB; the lineage
// index lives in typed arrays outside it), and while the old generation's headroom is below the
// young generation's size V8 starts a full mark-compact every 80-130 ms even with nothing to
// free: 13 full GCs in 1.9 s of TraceSession queries on a 300k-edge graph, none with the flag;
// on the 1M-edge `lineage` bench graph the query p95 went from 0.77 to 0.66 ms (2 alternating
// runs each). `npm start`, `npm run demo` and `npm run bench` pass it too; the local agents do not
// (the `dispatch` bench did not change with it).
import { register } from 'tsx/esm/api';

register();
// grpc-js names the TLS server by the host it dials, an IP literal too (`--coordinator
// 127.0.0.1:7700 --tls-ca ...`), and Node warns about that (DEP0123) on stderr. The certificate
// is still checked against that IP's subjectAltName, so the warning only adds noise.
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = (warning, ...rest) => {
  const code = typeof rest[0] === 'object' && rest[0] !== null ? rest[0].code : rest[1];
  if (code !== 'DEP0123') emitWarning(warning, ...rest);
};
// grpc-js writes some failures to stderr itself, in its own format, before the error reaches the
// CLI, which then says the same in its words: a taken port printed "E No address added out of
// total 1 resolved" above "error: --grpc 127.0.0.1:7700: address already in use". Its lines
// appear when asked for, through the variables grpc-js documents (GRPC_VERBOSITY=ERROR|INFO|DEBUG).
if (!process.env.GRPC_VERBOSITY && !process.env.GRPC_NODE_VERBOSITY) {
  const grpc = await import('@grpc/grpc-js');
  grpc.setLogVerbosity(grpc.logVerbosity.NONE);
}
const { main, runningService } = await import('./cli/main.ts');
// A reader that stopped reading (`retrace jobs | head -1`) is not an error of ours: a command
// stops quietly, as `grep` and `rg` do, instead of crashing on the unhandled EPIPE. A service
// (coordinator, agent) keeps running: its output is not its purpose, and exiting would skip its
// orderly stop. A closed stderr leaves nowhere to say anything, so nothing is said.
process.stdout.on('error', (err) => {
  if (err.code !== 'EPIPE') throw err;
  if (!runningService()) process.exit(0);
});
process.stderr.on('error', (err) => {
  if (err.code !== 'EPIPE') throw err;
});
process.exitCode = await main(process.argv.slice(2));
