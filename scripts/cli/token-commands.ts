import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { FailedPreconditionError } from '../../common/errors.js';
import { ADMIN_ONLY_METHODS, AGENT_METHODS } from '../../coordinator/access-policy.js';
import { addToken, isRole, readTokenFile, revokeToken, ROLES, tokensFilePath } from '../../coordinator/token-file.js';
import { flag, hasFlag, noMorePositionals, UsageError, type CliCommand, type ParsedArgs } from './command.js';
import { renderTable, toJson } from './format.js';

/** `a, b and c` of gRPC method paths as `Service/Method`, from the access policy itself so the help cannot drift from it. */
function methodList(methods: ReadonlySet<string>): string {
  const names = [...methods].map((m) => m.replace(/^\/retrace\.v1\./, ''));
  return names.length > 1 ? `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}` : names.join('');
}

const DATA_FLAG = `--data DIR    the coordinator's data dir (default ./.retrace); works while it runs`;

/**
 * The data dir named by --data, which must exist: a mistyped path would otherwise get a tokens
 * file no coordinator reads.
 */
function dataDirOf(args: ParsedArgs): string {
  const dir = resolve(flag(args, 'data', './.retrace') as string);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new FailedPreconditionError(`--data: no data dir ${dir}: start the coordinator once with --data ${dir}, or name the one it uses`);
  return dir;
}

/** The one NAME positional of `token add|revoke`. */
function nameOf(args: ParsedArgs): string {
  const name = args.positionals[0];
  if (name === undefined) throw new UsageError('a token NAME is required');
  noMorePositionals(args, 1);
  return name;
}

/** `retrace token add|list|revoke`: named tokens with roles in <data>/tokens.json. */
export const commands: CliCommand[] = [
  {
    path: ['token', 'add'],
    summary: 'make a named token with a role (agent, client, admin); prints it once',
    usage: `retrace token add NAME --role ${ROLES.join('|')} [--data DIR]

Makes a token for NAME (1-64 of A-Z a-z 0-9 . _ -) and prints it once on stdout; only its SHA-256
is kept, in <data>/tokens.json. A running coordinator takes it from its first call.
  --role agent   only what \`retrace agent\` needs (${[...AGENT_METHODS].map((m) => m.replace(/^\/retrace\.v1\./, '')).join(', ')})
  --role client  everything but ${methodList(ADMIN_ONLY_METHODS)}
  --role admin   everything, as the auth-token
  ${DATA_FLAG}`,
    async run(args, io) {
      const name = nameOf(args);
      const role = flag(args, 'role');
      if (role === undefined || role === 'true') throw new UsageError(`--role ${ROLES.join('|')} is required`);
      if (!isRole(role)) throw new UsageError(`--role: must be one of ${ROLES.join(', ')}, got ${JSON.stringify(role)}`);
      const dataDir = dataDirOf(args);
      const { token } = addToken(dataDir, name, role);
      io.stdout.write(`${token}\n`);
      io.stderr.write(`token ${JSON.stringify(name)} (role ${role}) added to ${tokensFilePath(dataDir)}; it is shown only this once\n`);
      return 0;
    },
  },
  {
    path: ['token', 'list'],
    summary: 'list the named tokens (name, role, created)',
    usage: `retrace token list [--data DIR] [--json]

Lists the named tokens of <data>/tokens.json; the auth-token (the owner, role admin) is not listed.
  ${DATA_FLAG}
  --json        a JSON array of {name, role, created}`,
    async run(args, io) {
      noMorePositionals(args, 0);
      const entries = readTokenFile(dataDirOf(args)).map(({ name, role, created }) => ({ name, role, created }));
      if (hasFlag(args, 'json')) io.stdout.write(toJson(entries));
      else if (entries.length === 0) io.stdout.write('no named tokens (the auth-token is the owner\'s, role admin)\n');
      else io.stdout.write(renderTable(['NAME', 'ROLE', 'CREATED'], entries.map((e) => [e.name, e.role, e.created || '-'])));
      return 0;
    },
  },
  {
    path: ['token', 'revoke'],
    summary: 'revoke a named token (a running coordinator refuses it from its next call, and ends its open calls within a second)',
    usage: `retrace token revoke NAME [--data DIR]

Removes NAME from <data>/tokens.json; a running coordinator refuses the token from its next call and ends the calls it has open within a second.
  ${DATA_FLAG}`,
    async run(args, io) {
      const name = nameOf(args);
      const dataDir = dataDirOf(args);
      const gone = revokeToken(dataDir, name);
      io.stderr.write(`token ${JSON.stringify(gone.name)} (role ${gone.role}) revoked\n`);
      return 0;
    },
  },
];
