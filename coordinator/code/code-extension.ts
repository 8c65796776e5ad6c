import { CodeServiceDefinition, type CodeServiceImplementation } from '../../common/gen/retrace/v1/code.js';
import type { CoordinatorExtension, ExtensionFactory } from '../coordinator.js';
import { createCodeStore, type CodeStore } from './code-store.js';

/** Options of the code service as a coordinator extension. */
export interface CodeExtensionOptions {
  /** Receives the store once created, for other coordinator code (scheduler, replay) to read code. */
  onCodeStore?: (store: CodeStore) => void;
}

/** CodeService over a store: each RPC is one store call; errors are the store's typed errors. */
export function createCodeHandlers(store: CodeStore): CodeServiceImplementation {
  return {
    async publishCode(request) {
      return store.publish(request.bundle, request.manifest as NonNullable<typeof request.manifest>);
    },
    async getCode(request) {
      const { code, bundle } = await store.get(request.codeVersion);
      return { code, bundle: Buffer.from(bundle.buffer, bundle.byteOffset, bundle.byteLength) };
    },
    async listCode(request) {
      return store.list({ transform: request.transform, pageSize: request.pageSize, pageToken: request.pageToken });
    },
  };
}

/**
 * Published transform code as a coordinator extension: `new Coordinator(opts, [codeExtension()])`
 * mounts CodeService (PublishCode, GetCode, ListCode) over the `code` sublevel of the
 * coordinator's database, behind the server's auth and error middleware.
 */
export function codeExtension(options: CodeExtensionOptions = {}): ExtensionFactory {
  return (ctx): CoordinatorExtension => {
    const store = createCodeStore(ctx.db, ctx.clock);
    options.onCodeStore?.(store);
    return {
      name: 'code',
      services: [{ definition: CodeServiceDefinition, implementation: createCodeHandlers(store) }],
    };
  };
}
