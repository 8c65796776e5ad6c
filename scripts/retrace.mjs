#!/usr/bin/env -S node --max-semi-space-size=32
// The `retrace` CLI. TypeScript sources run through tsx's loader, so there is no build step.
// A 64 MiB young generation (V8's default is 32): lineage events live for one commit group
// (100-600 ms under load), and with the default most of them are copied out of the young
// generation before they die; `npm start`, `npm run demo`, `npm run bench` and the local agents
// pass the same flag. On the 2-core dev VM the in-process capture path went from a median
// 377 to 326 µs per record (5 alternating runs of 10k records).
import { register } from 'tsx/esm/api';

register();
const { main } = await import('./cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
