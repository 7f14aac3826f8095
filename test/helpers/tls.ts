import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const dir = mkdtempSync(join(tmpdir(), 'outrider-tls-'));

/** The suite's scratch directory for certificates and files beside them. */
export const tlsDir = dir;

/**
 * A self-signed certificate for 127.0.0.1 with the common name `name`, made with Debian's
 * openssl, so a client can tell which one a connection got. Returns the PEM files' paths.
 */
export function certificate(name: string): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore' },
  );
  return { cert, key };
}

/** A certificate file's PEM, for a client's `ca`. */
export const pem = (path: string): Buffer => readFileSync(path);

/** The `[tls]` table for a certificate pair, with any further keys. */
export const tlsToml = (pair: { cert: string; key: string }, extra = ''): string =>
  `[tls]\ncertificate = "${pair.cert}"\nkey = "${pair.key}"\n${extra}`;
