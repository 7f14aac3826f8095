import { readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { verifyJwt } from '../../../protocol/jwt.js';
import { startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { API_TYPE } from '../../helpers/uploads.js';
import { localAnswer, newDir, type Received, routesToml, SECRET, uploadBackend, waitFor } from './setup.js';

describe('accelerated body uploads', () => {
  it('stores a raw PUT body and forwards urlencoded file fields, signed', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const res = await request(`${proxy.url}/packages/generic/x`, { method: 'PUT', body: 'A test file content' });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    const got = backend.received[0] as Received;
    const fields = Object.fromEntries(got.fields);
    expect(got.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(fields['file.size']).toBe('19');
    expect(got.files['file.path']?.toString()).toBe('A test file content');
    expect(verifyJwt(String(got.headers['gitlab-workhorse-multipart-fields']), SECRET)).toEqual({
      rewritten_fields: { file: fields['file.path'] },
      iss: 'gitlab-workhorse',
    });
    expect(verifyJwt(fields['file.gitlab-workhorse-upload'] as string, SECRET)).toMatchObject({
      upload: { size: '19', sha256: fields['file.sha256'] },
    });
  });

  it('stores nothing when the client leaves while the backend is still authorizing', async () => {
    const dir = newDir();
    let answered = false;
    const backend = await startBackend((req, res) => {
      if (!req.url?.includes('/authorize')) return void res.end('never');
      setTimeout(() => {
        res.writeHead(200, { 'content-type': API_TYPE }).end(JSON.stringify({ TempPath: dir }));
        answered = true;
      }, 400);
    });
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const socket = connect(proxy.port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.write('PUT /packages/generic/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n');
    socket.write(Buffer.alloc(50_000, 1));
    await new Promise((r) => setTimeout(r, 100));
    socket.destroy();
    await waitFor(() => answered);
    await new Promise((r) => setTimeout(r, 300));
    expect(readdirSync(dir)).toEqual([]);
  });

  it('answers 413 at once when Content-Length is over MaximumSize', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir, { MaximumSize: 10 }));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const res = await request(`${proxy.url}/packages/generic/x`, { method: 'PUT', body: 'more than ten bytes' });
    expect(res.statusCode).toBe(413);
    await res.body.dump();
    expect(backend.received).toHaveLength(0);
    expect(readdirSync(dir)).toEqual([]);
  });
});
