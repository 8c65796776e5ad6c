import type { CallContext } from 'nice-grpc';
import { CodeServiceDefinition, type CodeServiceImplementation, type PublishedCode } from '../../common/gen/retrace/v1/code.js';
import type { CoordinatorExtension, ExtensionFactory } from '../coordinator.js';
import { createCodeStore, type CodeStore } from './code-store.js';

/** Options of the code service as a coordinator extension. */
export interface CodeExtensionOptions {
  /** Receives the store once created, for other coordinator code (scheduler, replay) to read code. */
  onCodeStore?: (store: CodeStore) => void;
  /**
   * Told of every newly published bundle (not of bytes published before), after it is stored and
   * before PublishCode answers, so a publish that is a change (a new version of a transform a
   * pipeline uses) is recorded by the time the client hears back. It must not throw. The bundle is
   * stored with a follow-up note (`CodeStore.followUps`) that the listener removes once done
   * (`followUpDone`): a note left by a crash is the listener's to finish on the next start.
   */
  onPublished?: (code: PublishedCode, principal: string) => Promise<void>;
}

function principalOf(context: CallContext): string {
  const p = context.metadata.get('x-retrace-principal');
  return typeof p === 'string' && p.trim() !== '' ? p.trim() : 'publish';
}

/** CodeService over a store: each RPC is one store call; errors are the store's typed errors. */
export function createCodeHandlers(store: CodeStore, onPublished?: CodeExtensionOptions['onPublished']): CodeServiceImplementation {
  return {
    async publishCode(request, context) {
      const principal = principalOf(context);
      const result = await store.publish(request.bundle, request.manifest as NonNullable<typeof request.manifest>, onPublished ? { followUp: principal } : {});
      if (result.created && result.code && onPublished) await onPublished(result.code, principal);
      return result;
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
      services: [{ definition: CodeServiceDefinition, implementation: createCodeHandlers(store, options.onPublished) }],
    };
  };
}
