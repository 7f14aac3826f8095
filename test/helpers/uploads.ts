import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Workhorse's test key (testdata/test-secret), base64 as in a secret file. */
export const TEST_SECRET_B64 = '+M8OJgJxoxdDRgOR0UT8sDbAgp/63y/XUNE3d8+tawA=';
export const API_TYPE = 'application/vnd.gitlab-workhorse+json';

/**
 * The upload configuration the tests share: `POST /uploads/…` (multipart, pre-authorized),
 * `POST /open/…` (multipart, no pre-authorize) and `PUT /packages/…` (a body upload). `top` is
 * TOML for the top level (it must come before `[uploads]`).
 */
export function uploadRoutesToml(opts: { secretPath: string; tempDir: string; maxFiles: number; top?: string }): string {
  return `secret_path = "${opts.secretPath}"
${opts.top ?? ''}
[uploads]
temp_dir = "${opts.tempDir}"
max_files = ${opts.maxFiles}
[[uploads.routes]]
method = "POST"
path = "^/uploads/"
[[uploads.routes]]
method = "POST"
path = "^/open/"
preauthorize = false
[[uploads.routes]]
method = "PUT"
path = "^/packages/"
kind = "body"
`;
}

/**
 * A scratch directory for one test file's uploads: the shared secret written as `secretPath`, and
 * `newDir()` for a fresh empty directory (a TempPath, a temp_dir) per test.
 */
export function uploadScratch(prefix: string): { root: string; secretPath: string; newDir: () => string } {
  const root = mkdtempSync(join(tmpdir(), prefix));
  const secretPath = join(root, 'secret');
  writeFileSync(secretPath, `${TEST_SECRET_B64}\n`);
  let dirs = 0;
  const newDir = () => {
    const dir = join(root, `d${dirs++}`);
    mkdirSync(dir);
    return dir;
  };
  return { root, secretPath, newDir };
}
