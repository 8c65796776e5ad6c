import type { CliCommand } from './command.js';

/**
 * Every subcommand of `retrace`. Each feature's commands live in their own file under
 * scripts/cli/ and are listed here once.
 */
export async function loadCommands(): Promise<CliCommand[]> {
  const modules = await Promise.all([
    import('./coordinator-commands.js'),
    import('./lineage-commands.js'),
    import('./tour-commands.js'),
    import('./agent-commands.js'),
    import('./node-commands.js'),
    import('./publish-command.js'),
    import('./pipeline-commands.js'),
    import('./replay-commands.js'),
    import('./recompute-commands.js'),
    import('./job-commands.js'),
    import('./token-commands.js'),
  ] as Promise<{ commands: CliCommand[] }>[]);
  return modules.flatMap((m) => m.commands);
}
