/**
 * `npm run bench -- NAME [flags]` runs bench/NAME.ts. Each benchmark prints its figures and, as
 * its last line, one JSON object {"bench", "ratio", "goal", ...}.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { join } from 'node:path';

const [name, ...rest] = process.argv.slice(2);
const dir = fileURLToPath(new URL('.', import.meta.url));
if (!name || !/^[a-z0-9-]+$/.test(name) || !existsSync(join(dir, `${name}.ts`))) {
  console.error(`usage: npm run bench -- NAME [flags]\nunknown benchmark ${JSON.stringify(name ?? '')}`);
  process.exit(2);
}
const mod = (await import(pathToFileURL(join(dir, `${name}.ts`)).href)) as { main(argv: string[]): Promise<void> };
await mod.main(rest);
