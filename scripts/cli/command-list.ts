import type { CliCommand } from './command.js';

/**
 * Every subcommand of `retrace`. Each feature's commands live in their own file under
 * scripts/cli/ and are listed here once.
 */
export async function loadCommands(): Promise<CliCommand[]> {
  const modules = await Promise.all([
    // Added as features land, e.g. import('./lineage-commands.js'),
  ] as Promise<{ commands: CliCommand[] }>[]);
  return modules.flatMap((m) => m.commands);
}
