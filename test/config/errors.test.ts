import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { ConfigError, editDistance, keyPaths, nearest, secretHint } from '../../config/errors.js';
import { EXPECTATIONS } from '../../config/expectations.js';
import { loadConfig } from '../../config/load.js';
import { configSchema } from '../../config/schema.js';
import { readSecret } from '../../protocol/secret.js';

function errorOf(text: string, source = 'edge.toml'): string {
  try {
    loadConfig(text, { source });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error(`expected the config to be refused:\n${text}`);
}

/** The smallest valid document around `path`: a route has its method and path, object storage its provider. */
function documentWith(path: string, value: unknown): Record<string, unknown> {
  const doc: Record<string, unknown> = {};
  const parts = path.split('.');
  if (parts[0] === 'object_storage' && parts.length > 1) doc.object_storage = { provider: 'AWS' };
  if (path.startsWith('uploads.routes.*.')) doc.uploads = { routes: [{ method: 'POST', path: '^/u' }] };
  let at: Record<string, unknown> | unknown[] = doc;
  parts.forEach((part, i) => {
    const last = i === parts.length - 1;
    const key = part === '*' ? 0 : part;
    const container = at as Record<string | number, unknown>;
    if (last) {
      container[key] = value;
      return;
    }
    const nextIsList = parts[i + 1] === '*';
    container[key] ??= nextIsList ? [] : {};
    if (nextIsList && parts[i + 2] !== undefined) {
      const list = container[key] as unknown[];
      list[0] ??= {};
    }
    at = container[key] as Record<string, unknown>;
  });
  return doc;
}

/** A key's dotted path as messages print it: list entries by index. */
const printed = (path: string) => path.replaceAll('*', '0');

describe('config errors', () => {
  it('name the key, what was expected with an example, and what was written, for a wrong type of every key', () => {
    const paths = keyPaths(configSchema);
    expect(paths.length).toBeGreaterThan(40);
    for (const path of paths) {
      // A wrong type for each: a boolean, or a string where a boolean is expected.
      const wrong = EXPECTATIONS[path] === 'true or false' ? 'yes' : true;
      const message = errorOf(stringify(documentWith(path, wrong)));
      const line = message.split('\n').find((l) => l.startsWith(`  - ${printed(path)}: `));
      expect(line, `${path}\n${message}`).toBeDefined();
      expect(line, path).toContain(wrong === true ? ', got true' : ', got the string "yes"');
      expect(line, path).not.toContain('Invalid input');
      // A key with a fixed set of values (or a number or "auto") is answered with the set, from the schema.
      if (/^expected (one of |"|a number of worker processes)/.test(line?.slice(`  - ${printed(path)}: `.length) ?? '')) continue;
      expect(line, path).toContain(`expected ${EXPECTATIONS[path]}`);
    }
  });

  it('have an expectation for every key the schema knows, and none for a key it does not', () => {
    const paths = keyPaths(configSchema);
    expect(paths.filter((p) => EXPECTATIONS[p] === undefined)).toEqual([]);
    expect(Object.keys(EXPECTATIONS).filter((p) => !paths.includes(p))).toEqual([]);
  });

  it('give examples that are accepted as they are written', () => {
    let checked = 0;
    for (const [path, expectation] of Object.entries(EXPECTATIONS)) {
      const example = /such as ("[^"]*"|\[[^\]]*\]|\d+)/.exec(expectation)?.[1];
      if (example === undefined) continue;
      const text = stringify(documentWith(path, JSON.parse(example)));
      try {
        loadConfig(text, { source: 'edge.toml' });
      } catch (err) {
        expect((err as Error).message, `${path} = ${example}`).not.toContain(`  - ${printed(path)}:`);
      }
      checked++;
    }
    expect(checked).toBeGreaterThan(30);
  });

  it('say listen_addr = 8196 needs quotes, with the file and an example of an address', () => {
    expect(errorOf('listen_addr = 8196', '/etc/outrider/edge.toml')).toBe(
      '/etc/outrider/edge.toml: invalid config\n' +
        '  - listen_addr: expected a string such as "127.0.0.1:8181" or "unix:/run/outrider/outrider.sock", got the number 8196 — put it in quotes',
    );
  });

  it('say how to fix the TOML when the value is right but written as the wrong type', () => {
    expect(errorOf('shutdown_timeout = 60')).toContain(
      '  - shutdown_timeout: expected a duration string such as "30s", "500ms" or "5m", got the number 60 — a duration needs a unit and quotes, such as "60s" or "60ms"',
    );
    expect(errorOf('[image_resizer]\nmax_scaler_procs = "4"')).toContain(
      '  - image_resizer.max_scaler_procs: expected a whole number such as 4, got the string "4" — remove the quotes',
    );
    expect(errorOf('propagate_correlation_id = "true"')).toContain(
      '  - propagate_correlation_id: expected true or false, got the string "true" — remove the quotes',
    );
    expect(errorOf('[outbound]\nallowed_hosts = "files.example.com"')).toContain('— write it as a list: ["files.example.com"]');
    expect(errorOf('image_resizer = 3')).toContain(
      '  - image_resizer: expected a table, got the number 3 — write it as a [image_resizer] section with its keys under it',
    );
    expect(errorOf('[uploads]\nroutes = [1]')).toContain('— write it as a [[uploads.routes]] section with its keys under it');
    expect(errorOf('log_level = 3')).toContain(
      '  - log_level: expected one of "fatal", "error", "warn", "info", "debug", "trace", "silent", got the number 3 — put it in quotes',
    );
    expect(errorOf('log_level = "warning"')).toContain('got the string "warning" — did you mean "warn"?');
    // A date is a TOML type of its own.
    expect(errorOf('secret_path = 2024-01-01')).toMatch(
      / {2}- secret_path: expected a string such as "\/etc\/outrider\/secret" \(a file path\), got the date /,
    );
  });

  it('say a required key is missing, and what it is for', () => {
    expect(errorOf('[[uploads.routes]]\npath = "^/u"')).toContain(
      '  - uploads.routes.0.method: missing; expected an HTTP method like "POST" or "PUT"',
    );
    expect(errorOf('[object_storage.s3]\naws_access_key_id = "A"\naws_secret_access_key = "B"')).toContain(
      '  - object_storage.provider: missing; expected "AWS" (the one provider Outrider has a client for)',
    );
  });

  it('suggest the known key nearest a mistyped one, at the same level', () => {
    expect(errorOf('[image_resizer]\nmax_scaler_proc = 4')).toBe(
      'edge.toml: invalid config\n  - image_resizer.max_scaler_proc: unknown key in [image_resizer]; did you mean max_scaler_procs?',
    );
    expect(errorOf('listen_adr = "127.0.0.1:1"')).toContain('  - listen_adr: unknown key at the top level; did you mean listen_addr?');
    expect(errorOf('[image_resizer]\nMax-Scaler-Procs = 4')).toContain('did you mean max_scaler_procs?');
    expect(errorOf('[imageresizer]\nmax_filesize = 1')).toContain(
      '  - imageresizer: unknown key at the top level; did you mean image_resizer?',
    );
    expect(errorOf('[[uploads.routes]]\nmethod = "POST"\npath = "^/u"\npre_authorize = true')).toContain(
      '  - uploads.routes.0.pre_authorize: unknown key in [uploads.routes]; did you mean preauthorize?',
    );
    expect(errorOf('[object_storage]\nprovider = "AWS"\n[object_storage.s3]\naws_acess_key_id = "A"')).toContain(
      'did you mean aws_access_key_id?',
    );
  });

  it('say which section a key belongs in when it is written in another', () => {
    // TOML puts every key after a [section] header into that section.
    expect(errorOf('[image_resizer]\nmax_filesize = 1\nworkers = 2')).toContain(
      '  - image_resizer.workers: unknown key in [image_resizer]; workers belongs at the top level: move it above the first [section] header',
    );
    expect(errorOf('max_scaler_procs = 4')).toContain(
      '  - max_scaler_procs: unknown key at the top level; max_scaler_procs belongs in [image_resizer]',
    );
    expect(errorOf('maxScalerProcs = 4')).toContain('did you mean max_scaler_procs? It belongs in [image_resizer]');
    expect(errorOf('[uploads]\nmethod = "POST"')).toContain('method belongs in [[uploads.routes]]');
  });

  it('suggest nothing for a key like no other, and list a small section’s keys', () => {
    expect(errorOf('colour = "blue"')).toBe(
      'edge.toml: invalid config\n  - colour: unknown key at the top level (config.example.toml lists every key)',
    );
    expect(errorOf('[object_storage]\nprovider = "AWS"\n[object_storage.s3]\nregion = "eu-west-1"')).toContain(
      '  - object_storage.s3.region: unknown key in [object_storage.s3] (its keys: aws_access_key_id, aws_secret_access_key, aws_session_token)',
    );
  });

  it('measure the distance between words with swaps as one edit', () => {
    expect(editDistance('listen_addr', 'listen_addr')).toBe(0);
    expect(editDistance('listen_adr', 'listen_addr')).toBe(1);
    expect(editDistance('lisetn_addr', 'listen_addr')).toBe(1);
    expect(editDistance('', 'abc')).toBe(3);
    expect(nearest('port', ['listen_addr', 'log_level'])).toBeUndefined();
    expect(nearest('information', ['info', 'warn'])).toBe('info');
  });

  it('say how to make a secret Outrider accepts, and the command given makes one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'outrider secret-'));
    const path = join(dir, "it's secret");
    const hint = secretHint(path);
    const command = /^make one with: (.*) and give the backend the same file$/.exec(hint)?.[1];
    expect(command).toBeDefined();
    execFileSync('/bin/sh', ['-c', command as string]);
    expect(readSecret(path, 'the secret')).toHaveLength(32);
    expect(readFileSync(path, 'utf8')).toMatch(/^[A-Za-z0-9+/]{43}=\n$/);
    expect(secretHint('/etc/outrider/secret', 'EACCES')).toBe(
      'the user running Outrider cannot read it: give that user read access (for example its group, with mode 0640)',
    );
  });
});
