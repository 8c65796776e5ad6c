import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  ChannelCredentials,
  ClientError,
  Metadata,
  Status,
  createChannel,
  createClientFactory,
  type CallOptions,
  type Channel,
  type Client,
  type ClientMiddlewareCall,
  type CompatServiceDefinition,
} from 'nice-grpc';
import { describeConnectFailure } from '../../common/connect-failure.js';
import { fromClientError, RetraceError } from '../../common/errors.js';
import { FLOW_CONTROL_WINDOW_BYTES, FLOW_CONTROL_WINDOW_OPTION } from '../../common/grpc-flow-control.js';
import { flag, UsageError, type ParsedArgs } from './command.js';
// A Struct key `__proto__` (a step parameter) is kept as an own property, not dropped.
import '../../common/struct-own-keys.js';

/** Where client commands connect when `--coordinator` is not given. */
export const DEFAULT_COORDINATOR = '127.0.0.1:7700';

/** The token file a coordinator started in this directory writes. */
export const DEFAULT_TOKEN_FILE = './.retrace/auth-token';

/** Reads `--coordinator HOST:PORT` (default 127.0.0.1:7700); UsageError when malformed. */
export function coordinatorAddress(args: ParsedArgs): string {
  const address = flag(args, 'coordinator', DEFAULT_COORDINATOR) as string;
  if (!/^(\[[0-9a-fA-F:]+\]|[^\s:]+):\d{1,5}$/.test(address)) {
    throw new UsageError(`--coordinator: expected HOST:PORT, got ${JSON.stringify(address)}`);
  }
  return address;
}

/**
 * The bearer token, first found of: `--token T`, `--token-file F` (`-`: stdin to its end, as `takeStdinToken` read it, else
 * read from fd 0 now), env RETRACE_TOKEN, and (when
 * `defaultFile` is given) that file if it exists. Undefined when none is set.
 */
export function resolveToken(args: ParsedArgs, options: { env?: NodeJS.ProcessEnv; defaultFile?: string } = {}): string | undefined {
  const direct = flag(args, 'token');
  if (direct !== undefined && direct !== 'true') {
    hideTokenArgument(direct);
    return direct.trim();
  }
  const file = flag(args, 'token-file');
  if (file === '-') return (args.stdinToken ?? readStdin('--token-file -').toString('utf8')).trim();
  if (file !== undefined) return readNamedFile('--token-file', file).toString('utf8').trim();
  const env = (options.env ?? process.env).RETRACE_TOKEN;
  if (env !== undefined && env.trim() !== '') return env.trim();
  if (options.defaultFile !== undefined && existsSync(options.defaultFile)) {
    return readFileSync(options.defaultFile, 'utf8').trim();
  }
  return undefined;
}

/**
 * Reads the token of `--token-file -` from `stdin` (the CLI's own, which tests replace) into
 * `args.stdinToken`, before the command runs; nothing when `--token` is given, which comes first.
 * A usage error, before anything is read, when an argument `-` (`retrace submit -`, `ingest P S -`,
 * `lineage trace -`) reads stdin too: one of the two read nothing, and the command ran without its
 * token or with no input.
 */
export async function takeStdinToken(args: ParsedArgs, stdin: NodeJS.ReadableStream): Promise<void> {
  if (flag(args, 'token-file') !== '-') return;
  const direct = flag(args, 'token');
  if (direct !== undefined && direct !== 'true') return;
  if (args.positionals.includes('-')) {
    throw new UsageError('--token-file - and the argument - both read stdin, which holds one of them only: give the token with --token-file FILE or RETRACE_TOKEN');
  }
  const chunks: Buffer[] = [];
  try {
    for await (const c of stdin) chunks.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer));
  } catch (err) {
    throw new UsageError(`--token-file -: cannot read stdin: ${(err as Error).message}`);
  }
  args.stdinToken = Buffer.concat(chunks).toString('utf8');
}

/**
 * `--token T` leaves T in this process's command line, which every local user reads (`ps`,
 * /proc/PID/cmdline) and so does a transform running on an agent (its worker threads share the
 * process). Once the flag is read, the command line is rewritten with the value as `***`:
 * `process.title` overwrites the memory the kernel shows as the command line (libuv; checked on
 * Linux). Until then (the process's first second) it is visible: --token-file or RETRACE_TOKEN
 * keep it out entirely. Nothing happens when this process's own arguments do not hold the value
 * (a command run in-process, as the tests do).
 */
function hideTokenArgument(value: string): void {
  const argv = process.argv;
  const passed = argv.some((a, i) => a === `--token=${value}` || (a === value && argv[i - 1] === '--token'));
  if (!passed) return;
  let words: string[];
  try {
    // The command line as the kernel shows it (node's own flags included), where there is one.
    words = readFileSync('/proc/self/cmdline', 'utf8').split('\0');
    if (words.at(-1) === '') words.pop();
  } catch {
    words = [process.argv0, ...process.execArgv, ...argv.slice(1)];
  }
  process.title = words.map((a, i) => (a === `--token=${value}` ? '--token=***' : a === value && words[i - 1] === '--token' ? '***' : a)).join(' ');
}

/**
 * All of stdin, to its end. Read from fd 0 rather than by opening /dev/stdin, which fails
 * (ENXIO) when stdin is a socket, as a Node parent's `stdio: 'pipe'` makes it.
 */
function readStdin(source: string): Buffer {
  try {
    return readFileSync(0);
  } catch (err) {
    throw new UsageError(`${source}: cannot read stdin: ${(err as Error).message}`);
  }
}

/** The bytes of the file a flag (or variable) names; a usage error naming `source` when it cannot be read. */
export function readNamedFile(source: string, file: string): Buffer {
  if (file === '' || file === 'true') throw new UsageError(`${source}: expected a file name`);
  try {
    return readFileSync(resolve(file));
  } catch (err) {
    throw new UsageError(`${source}: cannot read ${file}: ${(err as Error).message}`);
  }
}

/**
 * The PEM CA certificate(s) a client trusts for the coordinator's TLS certificate, from
 * `--tls-ca FILE`, else the file env RETRACE_TLS_CA names; undefined (plaintext) when neither is
 * set. A usage error naming the flag or variable when the file cannot be read or holds no
 * certificate (grpc-js would take it and fail every handshake later).
 */
export function resolveTlsCa(args: ParsedArgs, options: { env?: NodeJS.ProcessEnv } = {}): Buffer | undefined {
  const direct = flag(args, 'tls-ca');
  const envFile = (options.env ?? process.env).RETRACE_TLS_CA;
  let source: string;
  let file: string;
  if (direct !== undefined) [source, file] = ['--tls-ca', direct];
  else if (envFile !== undefined && envFile.trim() !== '') [source, file] = ['RETRACE_TLS_CA', envFile.trim()];
  else return undefined;
  const pem = readNamedFile(source, file);
  try {
    new X509Certificate(pem);
  } catch (err) {
    throw new UsageError(`${source}: ${file} holds no PEM certificate: ${(err as Error).message}`);
  }
  return pem;
}

/**
 * Largest response a CLI call takes: the coordinator's own send limit (its MAX_MESSAGE_BYTES,
 * 64 MiB). grpc-js's default of 4 MiB refused the report of a 10,000-record replay (30,000
 * steps, 16 MB) with "Received message larger than max" after the replay had run, and
 * `code show` of a 5 MiB bundle (32 MiB are allowed) the same way.
 */
export const CLIENT_MAX_RECEIVE_BYTES = 64 * 1024 * 1024;

/** A connected client; `close()` releases the channel. */
export interface CliClient<S extends CompatServiceDefinition> {
  client: Client<S>;
  channel: Channel;
  address: string;
  close(): void;
}

/**
 * Opens a channel to the coordinator named by the flags and a client for `definition` that
 * sends `authorization: Bearer <token>`, retries calls the proto marks IDEMPOTENT on UNAVAILABLE
 * (jittered backoff, 3 attempts, unary only) and turns gRPC statuses into typed RetraceErrors.
 * With `--tls-ca` (or RETRACE_TLS_CA) the channel is TLS, trusting that CA only. `env` replaces
 * process.env for RETRACE_TOKEN and RETRACE_TLS_CA.
 */
export function openClient<S extends CompatServiceDefinition>(definition: S, args: ParsedArgs, options: { env?: NodeJS.ProcessEnv } = {}): CliClient<S> {
  const address = coordinatorAddress(args);
  const token = resolveToken(args, { ...options, defaultFile: DEFAULT_TOKEN_FILE });
  const ca = resolveTlsCa(args, options);
  const metadata = Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  const channel = createChannel(address, ca ? ChannelCredentials.createSsl(ca) : ChannelCredentials.createInsecure(), {
    'grpc.max_receive_message_length': CLIENT_MAX_RECEIVE_BYTES,
    [FLOW_CONTROL_WINDOW_OPTION]: FLOW_CONTROL_WINDOW_BYTES,
  });
  const client = createClientFactory()
    .use(errorMiddleware({ address, tls: ca !== undefined }))
    .use(retryMiddleware)
    .create(definition, channel, { '*': { metadata } }) as Client<S>;
  return { client, channel, address, close: () => channel.close() };
}

/** The client's error funnel: statuses become RetraceErrors; a channel that never connected says why in one line. */
function errorMiddleware(connection: { address: string; tls: boolean }) {
  return async function* <Request, Response>(call: ClientMiddlewareCall<Request, Response>, options: CallOptions) {
    try {
      return yield* call.next(call.request, options);
    } catch (err) {
      const message = err instanceof ClientError && err.code === Status.UNAVAILABLE ? describeConnectFailure(err.details, connection) : undefined;
      throw message === undefined ? fromClientError(err) : new RetraceError('UNAVAILABLE', message, { cause: err });
    }
  };
}

async function* retryMiddleware<Request, Response>(call: ClientMiddlewareCall<Request, Response>, options: CallOptions) {
  const idempotent = call.method.options.idempotencyLevel === 'IDEMPOTENT' || call.method.options.idempotencyLevel === 'NO_SIDE_EFFECTS';
  if (!idempotent || call.requestStream || call.responseStream) return yield* call.next(call.request, options);
  for (let attempt = 0; ; attempt++) {
    try {
      return yield* call.next(call.request, options);
    } catch (err) {
      if (!(err instanceof ClientError) || err.code !== Status.UNAVAILABLE || attempt >= 2 || options.signal?.aborted) throw err;
      const base = 200 * 2 ** attempt;
      await new Promise((r) => setTimeout(r, base / 2 + Math.random() * (base / 2)));
    }
  }
}
