import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CLI = join(ROOT, 'scripts', 'retrace.mjs');

export interface CoordinatorProcess {
  proc: ChildProcess;
  grpc: string;
  http: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
}

/**
 * Starts `retrace coordinator` (the real CLI, a child process) on port 0 (or the `--grpc` given in
 * `extraArgs`, e.g. a restart's old address) and resolves with the addresses from its JSON line;
 * `extraArgs` are more of its flags, `env` more environment (e.g. RETRACE_TEST_CRASH_AT). The
 * process is pushed onto `children` for the caller to kill.
 */
export async function startCoordinatorProcess(dataDir: string, children: ChildProcess[], extraArgs: readonly string[] = [], env: Readonly<Record<string, string>> = {}): Promise<CoordinatorProcess> {
  const grpc = extraArgs.includes('--grpc') ? [] : ['--grpc', '127.0.0.1:0'];
  const proc = spawn(process.execPath, [CLI, 'coordinator', '--data', dataDir, ...grpc, '--http', '127.0.0.1:0', ...extraArgs], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  children.push(proc);
  let errText = '';
  proc.stderr?.setEncoding('utf8');
  proc.stderr?.on('data', (d: string) => {
    errText = (errText + d).slice(-20_000);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    void exited.then(({ code, signal }) => reject(new Error(`coordinator exited (${code ?? signal}) before listening:\n${errText}`)));
  });
  lines.on('line', () => {}); // keep draining stdout
  const addresses = JSON.parse(first) as { grpc: string; http: string };
  return { proc, grpc: addresses.grpc, http: addresses.http, exited, stderr: () => errText };
}

/** SIGKILLs every child still running and waits for each to exit; empties `children`. */
export async function killChildren(children: ChildProcess[]): Promise<void> {
  for (const proc of children.splice(0)) {
    if (proc.exitCode !== null || proc.signalCode !== null) continue;
    const gone = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGKILL');
    await gone;
  }
}

/** Runs `retrace ARGS` as a child process (pushed onto `children` when given; `env`: more environment); resolves with its exit code and output. */
export async function runCliProcess(args: readonly string[], children?: ChildProcess[], env: Readonly<Record<string, string>> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children?.push(proc);
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const code = await new Promise<number | null>((resolve) => proc.once('close', (c) => resolve(c)));
  return { code, stdout, stderr };
}
