#!/usr/bin/env -S node --max-semi-space-size=64
// The `retrace` CLI. TypeScript sources run through tsx's loader, so there is no build step.
// A 64 MiB young generation (the shebang's flag; npm start, demo and bench pass it too): a
// commit group's decoded events live for a few fsyncs, and with the 16 MiB default they were
// promoted to the old generation and collected there (GC was 16% of the committer thread's
// time in `npm run bench -- ingest`). The young generation grows to this size only under load.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('./cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
