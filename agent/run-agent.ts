import { isRetraceError } from '../common/errors.js';
import { createAgentRuntime, type AgentOptions } from './agent-runtime.js';

/**
 * Runs an agent process until `io.signal` aborts (SIGINT/SIGTERM in the CLI), then drains it
 * cleanly. Prints one JSON line `{"nodeId", "rejoined", "coordinator"}` on stdout at the first
 * registration (logs go to stderr), so a supervisor or test can read the node id. Resolves the
 * exit code: 0 after a clean stop, 1 when the runtime FAILED (e.g. a refused token).
 */
export async function runAgent(options: AgentOptions, io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream; signal: AbortSignal }): Promise<number> {
  const runtime = createAgentRuntime(options);
  const onAbort = (): void => void runtime.stop('signal');
  io.signal.addEventListener('abort', onAbort, { once: true });
  try {
    await runtime.start();
    runtime
      .registered()
      .then(({ nodeId, rejoined }) => io.stdout.write(`${JSON.stringify({ nodeId, rejoined, coordinator: options.coordinator })}\n`))
      .catch(() => {
        // Stopped or failed before registering: `done` reports it.
      });
    if (io.signal.aborted) void runtime.stop('signal');
    await runtime.done;
    return 0;
  } catch (err) {
    io.stderr.write(`error: ${isRetraceError(err) || err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  } finally {
    io.signal.removeEventListener('abort', onAbort);
  }
}
