/**
 * Entry of an agent process: `node --import tsx agent/main.ts --coordinator HOST:PORT ...` is
 * `retrace agent ...` (flags, token resolution and the run loop live there and in run-agent.ts).
 */
const { main } = await import('../scripts/cli/main.js');
process.exitCode = await main(['agent', ...process.argv.slice(2)]);
