import { ConfigError } from '../../config/errors.js';
import { OutriderSecretError } from '../../protocol/errors.js';
import { readSecret } from '../../protocol/secret.js';

export { SECRET_BYTES } from '../../protocol/secret.js';

/**
 * Reads the secret shared with the backend: the standard base64 of exactly 32 bytes, line breaks
 * and surrounding spaces ignored (Workhorse `secret.go`), read by the same code as the backend
 * toolkit's `loadSecret`. Anything else is a `ConfigError` naming the file and what was expected;
 * the secret itself never appears in a message.
 */
export function loadSecret(path: string): Buffer {
  try {
    return readSecret(path, 'the secret (secret_path)');
  } catch (err) {
    if (err instanceof OutriderSecretError) throw new ConfigError(err.message, { cause: err });
    throw err;
  }
}
