/**
 * Shared setup for the upload tests: the secret, scratch dirs, a Rails-like upload backend and small helpers.
 * Each test file runs in its own process (pool 'forks'), so each gets its own scratch dirs.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { FormData } from 'undici';
import { readBody, startBackend } from '../../helpers/backend.js';
import { API_TYPE, TEST_SECRET_B64, uploadRoutesToml, uploadScratch } from '../../helpers/uploads.js';

export const SECRET = Buffer.from(TEST_SECRET_B64, 'base64');
const { secretPath, newDir } = uploadScratch('outrider-upload-');

export { newDir };

export interface Received {
  headers: IncomingMessage['headers'];
  fields: [string, string][];
  /** The stored files' contents, read while the backend handled the request. */
  files: Record<string, Buffer>;
}

/**
 * A Rails-like backend: `/authorize` answers `authorizeAnswer` (or a refusal), the upload route
 * parses the rewritten body with undici's own multipart/urlencoded parser and reads the files.
 */
export async function uploadBackend(authorizeAnswer: (req: IncomingMessage) => { status: number; type: string; body: string }) {
  const authorizeCalls: IncomingMessage[] = [];
  const received: Received[] = [];
  const backend = await startBackend(async (req, res) => {
    if (req.url?.includes('/authorize')) {
      authorizeCalls.push(req);
      const a = authorizeAnswer(req);
      res.writeHead(a.status, { 'content-type': a.type, 'x-from': 'authorize' }).end(a.body);
      return;
    }
    const body = await readBody(req);
    const parsed = await new Response(body, { headers: { 'content-type': req.headers['content-type'] ?? '' } }).formData();
    const fields: [string, string][] = [];
    const files: Record<string, Buffer> = {};
    for (const [name, value] of parsed.entries()) {
      fields.push([name, String(value)]);
      if (name === 'file.path' && value !== '') files[name] = readFileSync(String(value));
    }
    received.push({ headers: req.headers, fields, files });
    res.writeHead(201, { 'content-type': 'text/plain' }).end('created');
  });
  return { ...backend, authorizeCalls, received };
}

export const localAnswer =
  (dir: string, extra: Record<string, unknown> = {}) =>
  () => ({
    status: 200,
    type: API_TYPE,
    body: JSON.stringify({ TempPath: dir, ...extra }),
  });

export const routesToml = (tempDir: string) => uploadRoutesToml({ secretPath, tempDir, maxFiles: 3 });

export function form(entries: [string, string | { data: Buffer | string; filename: string }][]): FormData {
  const f = new FormData();
  for (const [name, value] of entries) {
    if (typeof value === 'string') f.append(name, value);
    else f.append(name, new Blob([value.data]), value.filename);
  }
  return f;
}

export const waitFor = async (check: () => boolean, ms = 3000) => {
  for (let waited = 0; !check() && waited < ms; waited += 20) await new Promise((r) => setTimeout(r, 20));
};
