import { readFileSync } from 'node:fs';
import { ConfigError } from '../config/errors.js';

/** Bytes in the shared secret (Workhorse `numSecretBytes`). */
export const SECRET_BYTES = 32;

/**
 * Reads the secret shared with the backend: the standard base64 of exactly 32 bytes, line breaks
 * and surrounding spaces ignored (Workhorse `secret.go`). Anything else is a `ConfigError` naming
 * the file and what was expected; the secret itself never appears in a message.
 */
export function loadSecret(path: string): Buffer {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new ConfigError(`${path}: cannot read the secret (secret_path): ${code === 'ENOENT' ? 'no such file' : code}`, { cause: err });
  }
  const compact = text.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 !== 0) {
    throw new ConfigError(`${path}: the secret (secret_path) must be the base64 of ${SECRET_BYTES} bytes; the file is not base64`);
  }
  const secret = Buffer.from(compact, 'base64');
  if (secret.length !== SECRET_BYTES) {
    throw new ConfigError(`${path}: the secret (secret_path) must be the base64 of ${SECRET_BYTES} bytes, got ${secret.length} bytes`);
  }
  return secret;
}
