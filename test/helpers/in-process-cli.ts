import { Writable } from 'node:stream';
import { main } from '../../scripts/cli/main.js';

/** Runs `retrace ...` in-process; resolves its exit code and what it wrote. `onErr` sees each stderr write as it comes. */
export async function runCli(argv: string[], signal?: AbortSignal, onErr?: (text: string) => void): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const sink = (append: (s: string) => void): Writable =>
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        append(chunk.toString());
        cb();
      },
    });
  const code = await main(argv, { stdout: sink((s) => (out += s)), stderr: sink((s) => {
      err += s;
      onErr?.(s);
    }), ...(signal ? { signal } : {}) });
  return { code, out, err };
}
