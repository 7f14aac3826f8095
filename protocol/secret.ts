import { readFileSync } from 'node:fs';
import { OutriderSecretError } from './errors.js';

/** Bytes in the shared secret (Workhorse `numSecretBytes`). */
export const SECRET_BYTES = 32;

/**
 * Reads the secret shared with Outrider, as Outrider reads its `secret_path`: the standard base64
 * of exactly 32 bytes, line breaks and surrounding spaces ignored (Workhorse `secret.go`).
 * Anything else throws an `OutriderSecretError` naming the file and what was expected.
 */
export function loadSecret(path: string): Buffer {
  return readSecret(path, 'the secret');
}

/** `loadSecret` with the secret called `label` in messages (Outrider says which config key). */
export function readSecret(path: string, label: string): Buffer {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new OutriderSecretError('EDGE_SECRET_UNREADABLE', `${path}: cannot read ${label}: ${code === 'ENOENT' ? 'no such file' : code}`, {
      cause: err,
    });
  }
  const compact = text.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 !== 0) {
    throw new OutriderSecretError(
      'EDGE_SECRET_INVALID',
      `${path}: ${label} must be the base64 of ${SECRET_BYTES} bytes; the file is not base64`,
    );
  }
  const secret = Buffer.from(compact, 'base64');
  if (secret.length !== SECRET_BYTES) {
    throw new OutriderSecretError(
      'EDGE_SECRET_INVALID',
      `${path}: ${label} must be the base64 of ${SECRET_BYTES} bytes, got ${secret.length} bytes`,
    );
  }
  return secret;
}
