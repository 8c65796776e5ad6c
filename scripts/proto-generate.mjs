#!/usr/bin/env node
// Regenerates common/gen from proto/ with buf + ts-proto. With --check, generates into a
// temporary folder and fails when the committed files differ (CI runs this).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, readdirSync, readFileSync, statSync, cpSync, existsSync } from 'node:fs';
import { join, relative } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const check = process.argv.includes('--check');
const buf = join(root, 'node_modules', '.bin', 'buf');
const run = (args, cwd) => execFileSync(buf, args, { cwd, stdio: ['ignore', 'inherit', 'inherit'] });

run(['lint', 'proto'], root);
const out = mkdtempSync(join(tmpdir(), 'retrace-proto-'));
try {
  // buf resolves the template's relative `out` against the working directory.
  run(['generate', '--template', 'proto/buf.gen.yaml', '--output', out, 'proto'], root);
  run(['build', 'proto', '--as-file-descriptor-set', '-o', join(out, 'common', 'gen', 'descriptor-set.binpb')], root);
  const fresh = join(out, 'common', 'gen');
  const committed = join(root, 'common', 'gen');
  if (check) {
    const a = listFiles(fresh);
    const b = existsSync(committed) ? listFiles(committed) : [];
    const diff = [...new Set([...a, ...b])].filter(
      (f) => !a.includes(f) || !b.includes(f) || !readFileSync(join(fresh, f)).equals(readFileSync(join(committed, f))),
    );
    if (diff.length > 0) {
      console.error(`common/gen is stale; run "npm run proto". Differs: ${diff.join(', ')}`);
      process.exitCode = 1;
    } else {
      console.log(`common/gen is up to date (${a.length} files)`);
    }
  } else {
    rmSync(committed, { recursive: true, force: true });
    cpSync(fresh, committed, { recursive: true });
    console.log(`generated ${listFiles(committed).length} files into common/gen`);
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}

function listFiles(dir) {
  const files = [];
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else files.push(relative(dir, p));
    }
  };
  walk(dir);
  return files.sort();
}
