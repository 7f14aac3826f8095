/**
 * Shared setup for the object-storage tests against s3rver (`test/helpers/s3.ts`): a Rails-like
 * backend that hands out RemoteObject answers and reads the stored object back while it handles
 * the upload, as Rails copies it, then accepts or refuses.
 */
import type { IncomingMessage } from 'node:http';
import { request } from 'undici';
import { startProxy } from '../../helpers/app.js';
import { readBody, startBackend } from '../../helpers/backend.js';
import type { S3Server, StoredObject } from '../../helpers/s3.js';
import { API_TYPE } from '../../helpers/uploads.js';
import { form, newDir, routesToml } from './setup.js';

export interface Handled {
  fields: Record<string, string>;
  /** The object named by `key`, as the backend found it while handling the request. */
  object: StoredObject | undefined;
}

/**
 * `remoteObject()` is the authorize answer's RemoteObject; `status` what the upload request is
 * answered (201 accepted, 422 refused…); `key` the object the backend reads while it handles it.
 */
export async function s3Backend(
  s3: S3Server,
  opts: { remoteObject: () => Promise<Record<string, unknown>>; key: string; status?: number; extra?: Record<string, unknown> },
) {
  const handled: Handled[] = [];
  const backend = await startBackend(async (req: IncomingMessage, res) => {
    if (req.url?.includes('/authorize')) {
      const body = JSON.stringify({ RemoteObject: await opts.remoteObject(), ...opts.extra });
      res.writeHead(200, { 'content-type': API_TYPE }).end(body);
      return;
    }
    const body = await readBody(req);
    const parsed = await new Response(body, { headers: { 'content-type': req.headers['content-type'] ?? '' } }).formData();
    const fields = Object.fromEntries([...parsed.entries()].map(([k, v]) => [k, String(v)]));
    handled.push({ fields, object: await s3.get(opts.key) });
    const status = opts.status ?? 201;
    res.writeHead(status, { 'content-type': 'text/plain' }).end(status < 300 ? 'created' : 'refused');
  });
  return { ...backend, handled };
}

/** Outrider in front of `backendUrl` with the shared upload routes, plus extra top-level TOML tables. */
export const proxyFor = (backendUrl: string, tables = '') => startProxy(backendUrl, { toml: routesToml(newDir()) + tables });

/** POSTs one file as multipart/form-data to the pre-authorized route; status and body. */
export async function postFile(url: string, data: Buffer, filename = 'a.bin') {
  const res = await request(`${url}/uploads/user`, { method: 'POST', body: form([['file', { data, filename }]]) });
  return { status: res.statusCode, body: await res.body.text() };
}

/** The bound for `waitFor` here: generous for a loaded CI machine; a wait ends as soon as its condition holds. */
export const SLOW_MS = 10_000;
