/**
 * Loads TensorFlow.js with the fastest backend this host has: `@tensorflow/tfjs-node-gpu`, then
 * `@tensorflow/tfjs-node` (both optional native packages), else the pure-JS `@tensorflow/tfjs` on CPU.
 * The optional packages are imported by a computed name so the build never requires them.
 */
import type * as TF from '@tensorflow/tfjs';

/** The TensorFlow.js namespace, whichever package provided it. */
export type Tensorflow = typeof TF;

/** Which package was loaded. */
export type TensorflowBackendName = 'tfjs-node-gpu' | 'tfjs-node' | 'tfjs-cpu';

/** A loaded TensorFlow.js and what it runs on. */
export interface LoadedTensorflow {
  tf: Tensorflow;
  /** The package that loaded. */
  backend: TensorflowBackendName;
  /** The tfjs backend in use (`tensorflow` for the native packages, `cpu` for pure JS). */
  engine: string;
  /** Why each faster package was skipped, for the log. */
  skipped: { name: string; reason: string }[];
}

const CANDIDATES: readonly { name: TensorflowBackendName; specifier: string }[] = [
  { name: 'tfjs-node-gpu', specifier: '@tensorflow/tfjs-node-gpu' },
  { name: 'tfjs-node', specifier: '@tensorflow/tfjs-node' },
];

let loading: Promise<LoadedTensorflow> | undefined;
let loaded: LoadedTensorflow | undefined;

async function load(): Promise<LoadedTensorflow> {
  const skipped: { name: string; reason: string }[] = [];
  for (const candidate of CANDIDATES) {
    try {
      const specifier: string = candidate.specifier;
      const mod = (await import(specifier)) as Tensorflow & { default?: Tensorflow };
      const tf = (typeof mod.ready === 'function' ? mod : mod.default) as Tensorflow;
      await tf.ready();
      return { tf, backend: candidate.name, engine: tf.getBackend(), skipped };
    } catch (err) {
      skipped.push({ name: candidate.name, reason: err instanceof Error ? err.message.split('\n')[0] ?? err.message : String(err) });
    }
  }
  const tf = await import('@tensorflow/tfjs');
  // PROD silences the "install tfjs-node" banner (we report the backend ourselves) and skips
  // per-op debug checks; it is process-wide, like the backend itself.
  tf.env().set('PROD', true);
  await tf.setBackend('cpu');
  await tf.ready();
  return { tf, backend: 'tfjs-cpu', engine: tf.getBackend(), skipped };
}

/**
 * Loads TensorFlow.js once per process (later calls share the first result). Never throws for a
 * missing optional package; rejects only if even `@tensorflow/tfjs` cannot load.
 */
export function loadTensorflow(): Promise<LoadedTensorflow> {
  loading ??= load().then((result) => {
    loaded = result;
    return result;
  });
  return loading;
}

/** The backend that loaded, or `undefined` before {@link loadTensorflow} has resolved. */
export function tensorflowBackend(): TensorflowBackendName | undefined {
  return loaded?.backend;
}

/** One line for logs and the CLI, e.g. `tfjs-cpu (engine cpu; skipped tfjs-node-gpu, tfjs-node)`; loads if needed. */
export async function describeTensorflowBackend(): Promise<string> {
  const { backend, engine, skipped } = await loadTensorflow();
  return skipped.length > 0 ? `${backend} (engine ${engine}; skipped ${skipped.map((s) => s.name).join(', ')})` : `${backend} (engine ${engine})`;
}
