import { statSync } from 'node:fs';
import { ConfigError, secretHint } from '../../config/errors.js';
import type { Config } from '../../config/schema.js';
import { OutriderSecretError } from '../../protocol/errors.js';
import { readSecret } from '../../protocol/secret.js';
import { loadTlsFiles } from './tls.js';

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
    if (err instanceof OutriderSecretError) {
      const errno = (err.cause as NodeJS.ErrnoException | undefined)?.code;
      throw new ConfigError(`${err.message} — ${secretHint(path, errno)}`, { cause: err });
    }
    throw err;
  }
}

/** `document_root` must be a readable directory: a `ConfigError` (exit code 2) otherwise. */
export function checkDocumentRoot(dir: string): string {
  let isDirectory: boolean;
  try {
    isDirectory = statSync(dir).isDirectory();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new ConfigError(`${dir}: cannot read document_root: ${code === 'ENOENT' ? 'no such directory' : code}`, { cause: err });
  }
  if (!isDirectory) throw new ConfigError(`${dir}: document_root is not a directory`);
  return dir;
}

/**
 * The files `buildServer` reads at start (the secret when upload routes exist, `document_root`, `[tls]`),
 * checked without building a server: the cluster primary runs this before it forks, so a bad
 * secret or document root still stops Outrider with exit code 2 and one message.
 */
export function checkStartFiles(config: Config): void {
  if (config.uploads.routes.length > 0) loadSecret(config.secretPath);
  if (config.documentRoot !== undefined) checkDocumentRoot(config.documentRoot);
  if (config.tls !== undefined) loadTlsFiles(config.tls);
}
