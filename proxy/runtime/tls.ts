import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureVersion } from 'node:tls';
import { ConfigError } from '../../config/errors.js';
import type { Config } from '../../config/schema.js';

export type TlsConfig = NonNullable<Config['tls']>;

/** What a TLS listener needs: the PEM certificate chain and key, read and checked together. */
export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
  minVersion: SecureVersion;
  maxVersion: SecureVersion;
}

function read(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied for the user running Outrider' : (code ?? 'unreadable');
    throw new ConfigError(`${path}: cannot read the ${what}: ${why}`, { cause: err });
  }
}

/**
 * Reads `[tls] certificate` and `key` and checks them as OpenSSL will use them (PEM, the key
 * matching the certificate): a `ConfigError` naming the file otherwise, so a bad file stops
 * Outrider at start with exit code 2, or keeps the old pair on a reload.
 */
export function loadTlsFiles(tls: TlsConfig): TlsFiles {
  const cert = read(tls.certificate, 'TLS certificate ([tls] certificate)');
  const key = read(tls.key, 'TLS key ([tls] key)');
  try {
    createSecureContext({ cert, key, minVersion: tls.minVersion, maxVersion: tls.maxVersion });
  } catch (err) {
    const message = (err as Error).message;
    const what = /key values mismatch/i.test(message)
      ? `the key ${tls.key} ([tls] key) does not belong to this certificate`
      : /PEM|certificate|x509/i.test(message) && !/key/i.test(message)
        ? 'not a PEM certificate ([tls] certificate)'
        : /key/i.test(message)
          ? `${tls.key}: not a PEM private key ([tls] key), or one the certificate does not match`
          : `unusable as a TLS certificate and key (${message})`;
    throw new ConfigError(`${tls.certificate}: ${what}`, { cause: err });
  }
  return { cert, key, minVersion: tls.minVersion, maxVersion: tls.maxVersion };
}
