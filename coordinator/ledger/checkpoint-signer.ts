import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Checkpoint } from '../../common/gen/retrace/v1/provenance.js';

/** Signs ledger checkpoints with the coordinator's ed25519 key. */
export interface CheckpointSigner {
  sign(treeSize: bigint, rootHex: string, headHex: string, signedAtNs: bigint): Checkpoint;
  publicKeyBase64: string;
}

/** The exact bytes a checkpoint signature covers. */
export function checkpointMessage(c: Pick<Checkpoint, 'treeSize' | 'rootHash' | 'headHash' | 'signedAtNs'>): Buffer {
  return Buffer.from(`retrace-checkpoint:v1:${c.treeSize}:${c.rootHash}:${c.headHash}:${c.signedAtNs}`);
}

/** True when the checkpoint's signature verifies under its own public key (or `publicKey`, when given). */
export function verifyCheckpoint(c: Checkpoint, publicKeyBase64 = c.publicKey): boolean {
  try {
    const key = createPublicKey({ key: Buffer.from(publicKeyBase64, 'base64'), format: 'der', type: 'spki' });
    return verify(null, checkpointMessage(c), key, Buffer.from(c.signature, 'base64'));
  } catch {
    return false;
  }
}

/**
 * Loads the signing key from `<dir>/signing-key.pem`, making one on first start (mode 0600).
 * With `dir` null the key lives only in memory (tests).
 */
export function loadCheckpointSigner(dir: string | null): CheckpointSigner {
  let privateKey: KeyObject;
  const file = dir === null ? null : join(dir, 'signing-key.pem');
  if (file && existsSync(file)) {
    privateKey = createPrivateKey(readFileSync(file));
  } else {
    privateKey = generateKeyPairSync('ed25519').privateKey;
    if (file) writeFileSync(file, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
  }
  const publicKeyBase64 = createPublicKey(privateKey).export({ format: 'der', type: 'spki' }).toString('base64');
  return {
    publicKeyBase64,
    sign(treeSize, rootHex, headHex, signedAtNs) {
      const c: Checkpoint = {
        treeSize: treeSize.toString(),
        rootHash: rootHex,
        headHash: headHex,
        signedAtNs: signedAtNs.toString(),
        signature: '',
        publicKey: publicKeyBase64,
      };
      c.signature = sign(null, checkpointMessage(c), privateKey).toString('base64');
      return c;
    },
  };
}

/** Reads the public key that signed this data dir's checkpoints, without the private key. */
export function readPublicKey(dir: string): string | undefined {
  const file = join(dir, 'signing-key.pem');
  if (!existsSync(file)) return undefined;
  return createPublicKey(createPrivateKey(readFileSync(file))).export({ format: 'der', type: 'spki' }).toString('base64');
}
