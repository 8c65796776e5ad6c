import { defineTransform, type JsonValue } from 'retrace/transform';

/** Bumped to publish a new code version that computes differently (tests, demo). */
const VERSION = 1;

/** FNV-1a, 32 bits, as 8 hex digits: a deterministic digest with no imports (bundles stay small). */
function fnv(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

function stable(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stable).join(',')}]`;
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${stable((v as Record<string, unknown>)[k])}`).join(',')}}`;
  return JSON.stringify(v) ?? 'null';
}

/**
 * A workflow task for recompute tests, the demo and the benchmark. It burns CPU for
 * `params.costMs`, then emits one JSON output per name in `params.outputs` (default one output,
 * keyed like its input; several are keyed `<key>/<name>`). Each output is a deterministic function
 * of the inputs' content and the parameters (except `costMs`), and of only the part of each input
 * the step looks at:
 * - `project: ["a", "b"]` keeps only those fields of a JSON input (others may change freely);
 * - `ignoreInputSuffix: n` ignores the last n characters of a text input.
 * `failIf: "text"` fails the run when an input contains that text (retry and failure tests).
 */
export default defineTransform({
  name: 'wf-task',
  requirements: { cpu: 0.1, memoryMb: 64 },
  run(input, params, ctx) {
    const costMs = Number(params.costMs ?? 0);
    const until = Date.now() + costMs;
    while (Date.now() < until && !ctx.signal.aborted) {
      // busy: the cost is CPU time, like real work
    }
    const failIf = typeof params.failIf === 'string' ? params.failIf : '';
    const project = Array.isArray(params.project) ? params.project.map(String) : undefined;
    const suffix = Number(params.ignoreInputSuffix ?? 0);
    const seen: Record<string, unknown> = {};
    for (const name of Object.keys(input.inputs).sort()) {
      const i = input.inputs[name];
      if (!i) continue;
      const text = i.text();
      if (failIf !== '' && text.includes(failIf)) throw new Error(`input ${name} contains ${JSON.stringify(failIf)} (failIf)`);
      let value: unknown = suffix > 0 ? text.slice(0, Math.max(0, text.length - suffix)) : text;
      if (project) {
        try {
          const o = JSON.parse(text) as Record<string, unknown>;
          // A projected upstream wf-task output carries its fields under `fields`.
          const src = (o.fields && typeof o.fields === 'object' ? o.fields : o) as Record<string, unknown>;
          value = Object.fromEntries(project.filter((k) => k in src).map((k) => [k, src[k]]));
        } catch {
          // not JSON: the whole text counts
        }
      }
      seen[name] = value;
    }
    const rest: Record<string, JsonValue> = { ...params };
    delete rest.costMs;
    const digest = fnv(stable({ v: VERSION, params: rest, inputs: seen }));
    const names = Array.isArray(params.outputs) && params.outputs.length > 0 ? params.outputs.map(String) : ['out'];
    const fields = project && typeof seen[input.name] === 'object' ? seen[input.name] : undefined;
    return names.map((name) => ({
      key: names.length > 1 ? `${input.key}/${name}` : input.key,
      json: { name, digest: fnv(`${digest}/${name}`), ...(fields ? { fields } : {})},
    }));
  },
});
