import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

/** An agent process started on this machine by `retrace start` / `retrace demo`. */
export interface LocalAgent {
  nodeId: string;
  process: ChildProcess;
}

const CLI = fileURLToPath(new URL('../retrace.mjs', import.meta.url));
/** How much of a local agent's stderr is kept for the errors that quote it. */
const STDERR_TAIL_CHARS = 4096;

/**
 * Starts one `retrace agent` process per spec (each with its own data dir, so its identity
 * persists across restarts) and resolves once each has registered and printed its node id.
 */
export async function startLocalAgents(
  coordinator: string,
  token: string,
  dataDir: string,
  specs: readonly { name: string; labels?: string[]; advertise?: string; reportInterval?: string }[],
): Promise<LocalAgent[]> {
  return Promise.all(
    specs.map(async (spec) => {
      // The young-generation size retrace.mjs's shebang asks for (spawned through node, not the shebang).
      const args = ['--max-semi-space-size=32', CLI, 'agent', '--coordinator', coordinator, '--data', join(dataDir, 'agents', spec.name), '--report-interval', spec.reportInterval ?? '2s', '--exit-with-parent'];
      for (const l of spec.labels ?? []) args.push('--label', l);
      if (spec.advertise) args.push('--advertise', spec.advertise);
      // The token goes down a pipe (the agent's stdin, read whole at start): any local user can
      // read a command line (ps, /proc/PID/cmdline), and the transforms the agent runs can read
      // its environment (/proc/self/environ keeps the variables it started with, whatever the
      // process does with process.env later). The coordinators of `start` and `demo` are
      // plaintext on loopback: a RETRACE_TLS_CA kept for a remote one must not turn TLS on here.
      args.push('--token-file', '-');
      const env: NodeJS.ProcessEnv = { ...process.env, RETRACE_TLS_CA: '' };
      delete env.RETRACE_TOKEN;
      const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'], env });
      child.stdin?.end(token);
      // The last of what it logged, for the errors below: the agent logs for as long as it runs
      // (a line per transform print too), and keeping all of it grew `retrace start` without end.
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-STDERR_TAIL_CHARS)));
      const nodeId = await new Promise<string>((resolve, reject) => {
        const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
        const timer = setTimeout(() => reject(new Error(`agent ${spec.name} did not register within 30 s: ${stderr.slice(-500)}`)), 30_000);
        lines.on('line', (line) => {
          try {
            const parsed = JSON.parse(line) as { nodeId?: string };
            if (parsed.nodeId) {
              clearTimeout(timer);
              resolve(parsed.nodeId);
            }
          } catch {
            // not the registration line
          }
        });
        child.once('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`agent ${spec.name} exited with ${code}: ${stderr.slice(-500)}`));
        });
      });
      return { nodeId, process: child };
    }),
  );
}

/** SIGTERM (agents drain and leave cleanly), then SIGKILL after `graceMs`. */
export async function stopLocalAgents(agents: readonly LocalAgent[], graceMs = 5000): Promise<void> {
  await Promise.all(
    agents.map(
      (a) =>
        new Promise<void>((resolve) => {
          if (a.process.exitCode !== null || a.process.signalCode !== null) return resolve();
          const timer = setTimeout(() => a.process.kill('SIGKILL'), graceMs);
          a.process.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
          a.process.kill('SIGTERM');
        }),
    ),
  );
}
