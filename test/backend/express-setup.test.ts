import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { outrider } from '../../backend/express.js';
import { OutriderSecretError } from '../../backend/index.js';
import { uploadScratch } from '../helpers/uploads.js';

const scratch = uploadScratch('outrider-express-setup-');

/** The error `fn` throws (it must throw). */
function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected it to throw');
}

describe('setting up the Express adapter', () => {
  it('fails at once without a secret, saying what to give and how to make one', () => {
    const err = thrown(() => outrider({}));
    expect(err).toBeInstanceOf(TypeError);
    expect(err.message).toBe(
      'outrider: no secret: give secretPath, the file Outrider reads as secret_path (make one with `head -c 32 /dev/urandom | base64 > secret`), or secret (its 32 bytes)',
    );
    expect(thrown(() => outrider(undefined as never)).message).toMatch(/^outrider: no secret/);
  });

  it('fails at once on a secret file Outrider could not use either, naming the file', () => {
    const missing = join(scratch.root, 'nope');
    const err = thrown(() => outrider({ secretPath: missing }));
    expect([err.constructor, (err as OutriderSecretError).code, err.message]).toEqual([
      OutriderSecretError,
      'EDGE_SECRET_UNREADABLE',
      `${missing}: cannot read the secret: no such file`,
    ]);
    const short = join(scratch.root, 'short');
    writeFileSync(short, randomBytes(16).toString('base64'));
    expect(thrown(() => outrider({ secretPath: short })).message).toBe(`${short}: the secret must be the base64 of 32 bytes, got 16 bytes`);
  });

  it('refuses a secret of the wrong size, both kinds of secret, and a relative tempPath', () => {
    expect(thrown(() => outrider({ secret: randomBytes(16) })).message).toBe(
      'outrider: secret must be a Buffer of 32 bytes (loadSecret(path) reads one)',
    );
    expect(thrown(() => outrider({ secret: 'x'.repeat(32) as never })).message).toMatch(/must be a Buffer of 32 bytes/);
    expect(thrown(() => outrider({ secret: randomBytes(32), secretPath: scratch.secretPath })).message).toBe(
      'outrider: give secretPath or secret, not both',
    );
    expect(thrown(() => outrider({ secretPath: scratch.secretPath, tempPath: 'uploads' })).message).toBe(
      'outrider: tempPath must be an absolute directory, got "uploads"',
    );
  });

  it('checks fixed authorize options when the route is set up, not on the first upload', () => {
    const edge = outrider({ secretPath: scratch.secretPath });
    expect(thrown(() => edge.authorizeUpload()).message).toBe('authorizeUpload: give tempPath (here or to outrider()) or remoteObject');
    expect(thrown(() => edge.authorizeUpload({ tempPath: '/srv/tmp', maximumSize: -1 }))).toBeInstanceOf(RangeError);
    expect(thrown(() => edge.authorizeUpload({ tempPath: '/srv/tmp', remoteObject: { id: 'o', getUrl: 'https://s/o' } })).message).toBe(
      'authorizeUpload: give tempPath or remoteObject, not both',
    );
    expect(typeof outrider({ secretPath: scratch.secretPath, tempPath: '/srv/tmp' }).authorizeUpload({ maximumSize: 10 })).toBe('function');
  });

  it('loads where express is not installed: the built adapter needs nothing but node: builtins and its own files', () => {
    // The built backend/ and protocol/ alone, in a directory with no node_modules above it.
    const dist = fileURLToPath(new URL('../../dist/', import.meta.url));
    const alone = mkdtempSync(join(tmpdir(), 'outrider-express-alone-'));
    for (const folder of ['backend', 'protocol']) cpSync(join(dist, folder), join(alone, folder), { recursive: true });
    writeFileSync(join(alone, 'package.json'), '{"type":"module"}');
    const out = execFileSync(
      process.execPath,
      ['--input-type=module', '-e', "const m = await import('./backend/express.js'); console.log(Object.keys(m).sort().join(' '))"],
      { cwd: alone, encoding: 'utf8' },
    );
    expect(out.trim()).toBe('OutriderVerificationError outrider');
  });
});
