import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { verifyJwt } from '../../../protocol/jwt.js';
import { startProxy } from '../../helpers/app.js';
import { readBody, startBackend } from '../../helpers/backend.js';
import { API_TYPE } from '../../helpers/uploads.js';
import { form, localAnswer, newDir, type Received, routesToml, SECRET, uploadBackend, waitFor } from './setup.js';

describe('what reaches the backend', () => {
  it('copies fields byte for byte, keeps UTF-8 names, and treats an empty file input as a field', async () => {
    const dir = newDir();
    let raw: Buffer = Buffer.alloc(0);
    const backend = await startBackend(async (req, res) => {
      if (req.url?.includes('/authorize'))
        return void res.writeHead(200, { 'content-type': API_TYPE }).end(JSON.stringify({ TempPath: dir }));
      raw = await readBody(req);
      res.end('ok');
    });
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const b = 'x-boundary';
    const body = Buffer.concat([
      Buffer.from(`--${b}\r\nContent-Disposition: form-data; name="bin"\r\nContent-Type: application/octet-stream\r\n\r\n`),
      Buffer.from([0xff, 0xfe, 0x00, 0x80, 0x41]),
      Buffer.from(`\r\n--${b}\r\nContent-Disposition: form-data; name="títle"\r\n\r\nçà\r\n`),
      Buffer.from(
        `--${b}\r\nContent-Disposition: form-data; name="optional"; filename=""\r\nContent-Type: application/octet-stream\r\n\r\n\r\n`,
      ),
      Buffer.from(`--${b}\r\nContent-Disposition: form-data; name="file"; filename="résumé.txt"\r\n\r\ntest\r\n--${b}--\r\n`),
    ]);
    const res = await request(`${proxy.url}/uploads/user`, {
      method: 'POST',
      headers: { 'content-type': `multipart/form-data; boundary=${b}` },
      body,
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(raw.includes(Buffer.concat([Buffer.from('\r\n\r\n'), Buffer.from([0xff, 0xfe, 0x00, 0x80, 0x41]), Buffer.from('\r\n')]))).toBe(
      true,
    );
    const text = raw.toString('utf8');
    expect(text).toContain('name="títle"\r\n\r\nçà\r\n');
    expect(text).toContain('name="optional"');
    expect(text).toContain('name="file.name"\r\n\r\nrésumé.txt\r\n');
  });

  it('replaces a client-sent Gitlab-Workhorse-Api-Request and signs the final request when it is sent', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    // A client that takes its time: the final token must be younger than the upload.
    const b = 'slow';
    async function* slow() {
      yield Buffer.from(`--${b}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n`);
      await new Promise((r) => setTimeout(r, 1200));
      yield Buffer.from(`test\r\n--${b}--\r\n`);
    }
    const res = await request(`${proxy.url}/uploads/user`, {
      method: 'POST',
      headers: { 'content-type': `multipart/form-data; boundary=${b}`, 'gitlab-workhorse-api-request': 'forged' },
      body: Readable.from(slow()),
    });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    const authToken = (backend.authorizeCalls[0] as IncomingMessage).headers['gitlab-workhorse-api-request'];
    const finalToken = (backend.received[0] as Received).headers['gitlab-workhorse-api-request'];
    // One value each (not "forged, <token>"), both valid, the final one signed after the body arrived.
    const authIat = verifyJwt(String(authToken), SECRET).iat as number;
    const finalIat = verifyJwt(String(finalToken), SECRET).iat as number;
    expect(finalIat).toBeGreaterThan(authIat);
  });

  it('writes one access-log line for an upload it answers itself', async () => {
    const backend = await uploadBackend(() => ({ status: 403, type: 'text/plain', body: 'no' }));
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()), logs });
    const res = await request(`${proxy.url}/uploads/user`, { method: 'POST', body: form([['file', { data: 'x', filename: 'a' }]]) });
    expect(res.statusCode).toBe(403);
    await res.body.dump();
    await waitFor(() => logs.some((l) => l.msg === 'request'));
    expect(logs.filter((l) => l.msg === 'request')).toEqual([
      expect.objectContaining({ method: 'POST', path: '/uploads/user', status: 403 }),
    ]);
  });
});
