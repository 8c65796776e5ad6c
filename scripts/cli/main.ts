import { isRetraceError } from '../../common/errors.js';
import { checkIntegerFlag, COMMON_BOOLEAN_FLAGS, parseArgs, UsageError, type CliCommand, type CliIo, type ParsedArgs } from './command.js';
import { loadCommands } from './command-list.js';
import { takeStdinToken } from './client.js';

let servicing = false;

/** Whether the command running is a service (`stopsOnSignal`): a closed stdout does not end it. */
export function runningService(): boolean {
  return servicing;
}

/** Runs one `retrace` invocation and returns its exit code. */
export async function main(argv: readonly string[], io?: Partial<CliIo>): Promise<number> {
  const controller = new AbortController();
  let interruptedBy: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    interruptedBy = signal;
    controller.abort(new Error('interrupted'));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const cli: CliIo = {
    stdout: io?.stdout ?? process.stdout,
    stderr: io?.stderr ?? process.stderr,
    stdin: io?.stdin ?? process.stdin,
    signal: io?.signal ?? controller.signal,
  };
  // Ctrl-C (or the caller's signal) ended a command, however it came out of it (a watch loop
  // ends normally, a read of stdin ends early, a call fails as aborted): saying so is the whole
  // story. 128 + the signal's number, as shells report it. A service (`stopsOnSignal`) ends
  // that way normally, and an error it meets while stopping is shown as any other.
  const interrupted = (): boolean => cli.signal.aborted && !servicing;
  const reportInterrupted = (): number => {
    cli.stderr.write(`interrupted${interruptedBy ? ` (${interruptedBy})` : ''}\n`);
    return interruptedBy === 'SIGTERM' ? 143 : 130;
  };
  servicing = false;
  try {
    const commands = await loadCommands();
    if (argv.length === 0 || argv[0] === 'help' || argv[0] === '--help' || argv[0] === '-h') {
      cli.stdout.write(helpText(commands));
      return 0;
    }
    const command = findCommand(commands, argv);
    if (!command) {
      const group = commands.filter((c) => c.path.length > 1 && c.path[0] === argv[0]);
      if (group.length > 0 && (argv[1] === '--help' || argv[1] === '-h')) {
        cli.stdout.write(helpText(group));
        return 0;
      }
      // A mistyped command gets one line saying so on stderr, not the whole list on stdout (where
      // a script would take it for output) with nothing naming what was wrong.
      cli.stderr.write(`error: ${unknownCommand(commands, argv)}; retrace help lists every command\n`);
      return 2;
    }
    servicing = command.stopsOnSignal === true;
    const args = parseArgs(argv.slice(command.path.length), [...COMMON_BOOLEAN_FLAGS, ...(command.booleans ?? [])]);
    if (args.flags.has('help')) {
      cli.stdout.write(`${command.usage}\n`);
      return 0;
    }
    try {
      checkFlags(command, args);
      await takeStdinToken(args, cli.stdin);
      const code = await command.run(args, cli);
      return interrupted() ? reportInterrupted() : code;
    } catch (err) {
      if (err instanceof UsageError && !interrupted()) {
        cli.stderr.write(`error: ${err.message}\n\nusage: ${command.usage}\n`);
        return 2;
      }
      throw err;
    }
  } catch (err) {
    if (interrupted()) return reportInterrupted();
    if (isRetraceError(err)) {
      cli.stderr.write(`error: ${err.message}\n`);
    } else if (isSystemError(err)) {
      // What the user asked for failed (a missing file, a port in use): the message says it all.
      cli.stderr.write(`error: ${systemErrorText(err)}\n`);
    } else if (process.env.RETRACE_DEBUG) {
      cli.stderr.write(`error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    } else {
      cli.stderr.write(`error: ${err instanceof Error ? err.message : String(err)} (unexpected; RETRACE_DEBUG=1 prints where it came from)\n`);
    }
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * Flags every command takes: connection and help. `--json` and `--watch` are not among them: they
 * are parsed as flags without a value everywhere (so they never take the next word), but only the
 * commands whose usage names them take them; elsewhere they would be ignored (plain text printed
 * to a script that asked for JSON, a command that prints once).
 */
const COMMON_FLAGS = ['coordinator', 'token', 'token-file', 'tls-ca', ...COMMON_BOOLEAN_FLAGS.filter((f) => f !== 'watch' && f !== 'json')];

/**
 * A flag the command does not take is a usage error: ignored, a typo (`--dept 1`) silently ran
 * the command without it. A command takes the flags its usage text names. Integer flags are
 * range-checked here, once, against the protobuf field each one feeds.
 */
function checkFlags(command: CliCommand, args: ParsedArgs): void {
  const known = new Set([...COMMON_FLAGS, ...(command.booleans ?? []), ...[...command.usage.matchAll(/--([a-z][a-z0-9-]*)/g)].map((m) => m[1] as string)]);
  for (const name of args.flags.keys()) {
    if (known.has(name)) continue;
    const near = nearest([...known], name);
    throw new UsageError(`unknown flag --${name}${near ? ` (did you mean --${near}?)` : ''}`);
  }
  for (const name of args.bare ?? []) throw new UsageError(`--${name} needs a value`);
  for (const [name, kind] of Object.entries(command.integers ?? {})) {
    for (const value of args.flags.get(name) ?? []) checkIntegerFlag(name, value, kind);
  }
}

/** Levenshtein distance, for suggestions between short flag names. */
function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min((row[j] as number) + 1, (next[j - 1] as number) + 1, (row[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length] as number;
}

/** An error from the operating system (ENOENT, EACCES, EADDRINUSE...), as Node reports them. */
function isSystemError(err: unknown): err is Error & { code: string } {
  const code = err instanceof Error ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code);
}

/**
 * A file error in words, naming the file first: "cannot open out/prov.json: no such file or
 * directory (ENOENT)" rather than Node's "ENOENT: no such file or directory, open 'out/prov.json'".
 * Errors that name no path (a port in use) keep Node's message.
 */
function systemErrorText(err: Error & { code: string }): string {
  const { path, syscall } = err as { path?: unknown; syscall?: unknown };
  if (typeof path !== 'string' || typeof syscall !== 'string') return err.message;
  const reason = /^[A-Z0-9]+: ([^,]+)/.exec(err.message)?.[1] ?? err.message;
  const verb = syscall === 'mkdir' ? 'create the directory' : syscall === 'scandir' ? 'list' : syscall === 'unlink' || syscall === 'rmdir' ? 'remove' : syscall;
  return `cannot ${verb} ${path}: ${reason} (${err.code})`;
}

function findCommand(commands: readonly CliCommand[], argv: readonly string[]): CliCommand | undefined {
  let best: CliCommand | undefined;
  for (const c of commands) {
    if (c.path.length <= argv.length && c.path.every((w, i) => argv[i] === w)) {
      if (!best || c.path.length > best.path.length) best = c;
    }
  }
  return best;
}

/**
 * Why `argv` names no command: a group word without its subcommand (`lineage`), a subcommand the
 * group lacks (`lineage bogus`), or an unknown word, with the nearest command when one is close.
 */
function unknownCommand(commands: readonly CliCommand[], argv: readonly string[]): string {
  const first = argv[0] as string;
  const group = commands.filter((c) => c.path.length > 1 && c.path[0] === first).map((c) => c.path[1] as string);
  if (group.length > 0) {
    const sub = argv[1];
    const subs = group.join(', ');
    if (sub === undefined || sub.startsWith('-')) return `${first} needs a subcommand: ${subs}`;
    const near = nearest(group, sub);
    return `unknown command "${first} ${sub}"${near ? ` (did you mean ${first} ${near}?)` : ''}; ${first} takes ${subs}`;
  }
  const near = nearest([...new Set(commands.map((c) => c.path[0] as string))], first);
  return `unknown command ${JSON.stringify(first)}${near ? ` (did you mean ${near}?)` : ''}`;
}

/** The candidate within edit distance 2 of `word`, the closest first; undefined when none is. */
function nearest(candidates: readonly string[], word: string): string | undefined {
  return candidates
    .map((k) => ({ k, d: editDistance(k, word) }))
    .filter((c) => c.d <= 2)
    .sort((a, b) => a.d - b.d)[0]?.k;
}

function helpText(commands: readonly CliCommand[]): string {
  const rows = [...commands].sort((a, b) => a.path.join(' ').localeCompare(b.path.join(' ')));
  const width = Math.max(0, ...rows.map((c) => c.path.join(' ').length));
  return [
    'retrace: provenance, replay and recomputation',
    '',
    'usage: retrace <command> [flags]   (retrace <command> --help for details)',
    '',
    ...rows.map((c) => `  ${c.path.join(' ').padEnd(width)}  ${c.summary}`),
    '',
  ].join('\n');
}
