import { formatDurationMs, isoToNanos, parseDurationMs } from '../../common/time.js';
/**
 * One CLI subcommand. `path` is the words that select it (e.g. ["lineage", "trace"]);
 * the longest matching path wins. `run` returns the exit code; errors thrown from it are
 * printed by the dispatcher (RetraceErrors as "error: <message>", exit 1; usage errors exit 2).
 */
export interface CliCommand {
  path: string[];
  /** One line for `retrace help`. */
  summary: string;
  /** Usage text shown by `retrace <path> --help` and on usage errors. */
  usage: string;
  /** Flags of this command that take no value (besides COMMON_BOOLEAN_FLAGS). */
  booleans?: readonly string[];
  /**
   * Flags of this command that feed a protobuf integer field, with the field's type. The dispatcher
   * checks every value against the type's range before `run`, so `run` reads them with `intFlag`
   * (or `flag` for 64-bit ones) and never sees a value the encoder would refuse.
   */
  integers?: Readonly<Record<string, IntegerFlagKind>>;
  /**
   * A service that runs until it is told to stop (coordinator, agent, quick start): SIGINT or
   * SIGTERM is how it ends, and it exits with what `run` returns. Any other command a signal
   * ends is interrupted: 130 / 143.
   */
  stopsOnSignal?: boolean;
  run(args: ParsedArgs, io: CliIo): Promise<number>;
}

export interface CliIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
  /** Aborted on SIGINT/SIGTERM: long-running commands stop cleanly. */
  signal: AbortSignal;
}

/** `--name value`, `--name=value`, bare `--flag` (value "true"); repeated flags collect in order. */
export interface ParsedArgs {
  positionals: string[];
  flags: Map<string, string[]>;
  /**
   * Flags not in `booleans` that came without a value (last word, or followed by another flag):
   * their value reads "true", so the dispatcher refuses them rather than let `--svg` write a
   * file named `true`.
   */
  bare?: ReadonlySet<string>;
  /** What `--token-file -` read from the CLI's stdin, before the command ran (`takeStdinToken`). */
  stdinToken?: string;
}

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/**
 * Why a file given on the command line could not be read, in words ("no such file", "is a
 * directory, not a file", "permission denied"), not Node's "ENOENT: ..., open '...'"; the
 * caller names the file and the argument.
 */
export function unreadableFileReason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory, not a file' : code === 'EACCES' ? 'permission denied' : (err as Error).message;
}

/**
 * Refuses a word past the `count` positionals a command takes, rather than ignoring it (`impact
 * A B` would answer for A alone, exit 0). `hint` is appended to the message.
 */
export function noMorePositionals(args: ParsedArgs, count: number, hint = ''): void {
  const extra = args.positionals[count];
  if (extra !== undefined) throw new UsageError(`unexpected argument ${JSON.stringify(extra)}${hint}`);
}

/** The protobuf integer types a flag can feed. */
export type IntegerFlagKind = 'uint32' | 'int32' | 'uint64';

const INTEGER_RANGES: Readonly<Record<IntegerFlagKind, { min: bigint; max: bigint }>> = {
  uint32: { min: 0n, max: 2n ** 32n - 1n },
  int32: { min: -(2n ** 31n), max: 2n ** 31n - 1n },
  uint64: { min: 0n, max: 2n ** 64n - 1n },
};

/**
 * Refuses a value of `--name` that is not a decimal integer within the range of `kind`, with a
 * usage error naming the flag and the range; the protobuf encoder's own message names neither.
 */
export function checkIntegerFlag(name: string, value: string, kind: IntegerFlagKind): void {
  const { min, max } = INTEGER_RANGES[kind];
  const n = /^-?\d+$/.test(value) ? BigInt(value) : undefined;
  if (n === undefined || n < min || n > max) throw new UsageError(`--${name}: expected an integer from ${min} to ${max} (${kind}), got ${JSON.stringify(value)}`);
}

/** Last value of an integer flag declared in the command's `integers` (already range-checked), or the default. */
export function intFlag(args: ParsedArgs, name: string, fallback: number): number {
  const v = flag(args, name);
  return v === undefined ? fallback : Number(v);
}

/** Flags that never take a value, for every command; commands add their own through `booleans`. */
export const COMMON_BOOLEAN_FLAGS: readonly string[] = ['json', 'help', 'watch'];

/**
 * Splits argv into positionals and flags. A flag listed in `booleans` never takes the next word
 * as its value, so `--json node-1` keeps `node-1` positional.
 */
export function parseArgs(argv: readonly string[], booleans: Iterable<string> = COMMON_BOOLEAN_FLAGS): ParsedArgs {
  const bools = new Set(booleans);
  const positionals: string[] = [];
  const flags = new Map<string, string[]>();
  const bare = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--') || arg === '-') {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    let value = 'true';
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (!bools.has(name)) {
      const next = argv[i + 1];
      if (next !== undefined && (!next.startsWith('--') || next === '-')) {
        value = next;
        i++;
      } else bare.add(name);
    }
    const list = flags.get(name) ?? [];
    list.push(value);
    flags.set(name, list);
  }
  return { positionals, flags, bare };
}

/** Last value of a flag, or the default. */
export function flag(args: ParsedArgs, name: string, fallback?: string): string | undefined {
  const v = args.flags.get(name);
  return v && v.length > 0 ? v[v.length - 1] : fallback;
}

/**
 * Last value of a duration flag (`500ms`, `30s`, `5m`, `2h`, `1d`, `1w`) in milliseconds, or
 * undefined when absent and no fallback; a usage error naming the flag when it is malformed or
 * below `minMs`. With `zeroTurnsOff`, `0` (bare or with a unit) is 0, whatever `minMs` is.
 */
export function durationFlagMs(args: ParsedArgs, name: string, options: { fallback?: string; minMs?: number; zeroTurnsOff?: boolean } = {}): number | undefined {
  const v = flag(args, name, options.fallback);
  if (v === undefined) return undefined;
  if (options.zeroTurnsOff && v.trim() === '0') return 0;
  const ms = durationArgMs(v, `--${name}`);
  if (options.zeroTurnsOff && ms === 0) return 0;
  if (options.minMs !== undefined && ms < options.minMs) throw new UsageError(`--${name}: at least ${formatDurationMs(options.minMs)}, got ${v}`);
  return ms;
}

/** A duration in an argument (`5m`, or part of one: `--fault latency:50ms`) in milliseconds; malformed, a usage error naming `field`. */
export function durationArgMs(text: string, field: string): number {
  try {
    return parseDurationMs(text, field);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function hasFlag(args: ParsedArgs, name: string): boolean {
  const v = flag(args, name);
  return v !== undefined && v !== 'false';
}

/** Every value of a repeatable flag. */
export function flagAll(args: ParsedArgs, name: string): string[] {
  return args.flags.get(name) ?? [];
}

/**
 * A time given on the command line (`--as-of`, `--window`'s FROM and TO): integer nanoseconds
 * since the epoch as they are, or an ISO-8601 date-time. A bad one is a usage error naming `what`,
 * as any other bad flag value is (exit 2), not the coordinator's kind of refusal.
 */
export function timeArgNs(text: string, what: string): string {
  if (/^\d+$/.test(text)) return text;
  try {
    return isoToNanos(text, what).toString();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}
