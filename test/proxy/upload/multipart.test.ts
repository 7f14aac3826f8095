import { readdirSync, statSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { FormData, request } from 'undici';
import { describe, expect, it } from 'vitest';
import { verifyJwt } from '../../../protocol/jwt.js';
import { startProxy } from '../../helpers/app.js';
import { readBody, startBackend } from '../../helpers/backend.js';
import { API_TYPE } from '../../helpers/uploads.js';
import { form, localAnswer, newDir, type Received, routesToml, SECRET, uploadBackend, waitFor } from './setup.js';

describe('accelerated multipart uploads', () => {
  it('stores the file, hashes it, and hands the backend signed fields in place of the file', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const res = await request(`${proxy.url}/uploads/user?x=1`, {
      method: 'POST',
      body: form([
        ['token', 'test'],
        ['file', { data: 'test', filename: 'my.file' }],
      ]),
      headers: { 'gitlab-workhorse-multipart-fields': 'forged' },
    });
    expect(res.statusCode).toBe(201);
    expect(await res.body.text()).toBe('created');

    // Pre-authorized at <path>/authorize with the query, no body, and a signed API request header.
    expect(backend.authorizeCalls).toHaveLength(1);
    const auth = backend.authorizeCalls[0] as IncomingMessage;
    expect(auth.url).toBe('/uploads/user/authorize?x=1');
    expect(auth.headers['content-type']).toBeUndefined();
    expect(verifyJwt(String(auth.headers['gitlab-workhorse-api-request']), SECRET)).toMatchObject({
      iss: 'gitlab-workhorse',
      iat: expect.any(Number),
    });

    const got = backend.received[0] as Received;
    const fields = Object.fromEntries(got.fields);
    expect(got.fields.map(([n]) => n)).toEqual([
      'token',
      'file.name',
      'file.path',
      'file.remote_url',
      'file.remote_id',
      'file.size',
      'file.md5',
      'file.sha1',
      'file.sha256',
      'file.sha512',
      'file.upload_duration',
      'file.gitlab-workhorse-upload',
    ]);
    expect(fields).toMatchObject({
      token: 'test',
      'file.name': 'my.file',
      'file.remote_url': '',
      'file.remote_id': '',
      'file.size': '4',
      'file.md5': '098f6bcd4621d373cade4e832627b4f6',
      'file.sha1': 'a94a8fe5ccb19ba61c4c0873d391e987982fbbd3',
      'file.sha256': '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08',
      'file.sha512':
        'ee26b0dd4af7e749aa1a8ee3c10ae9923f618980772e473f8819a5d4940e0db27ac185f8a0e1d5f84f88bc887fd67b143732c304cc5fa9ad8e6f57f50028a8ff',
    });
    expect(fields['file.path']?.startsWith(`${dir}/`)).toBe(true);
    expect(got.files['file.path']?.toString()).toBe('test');
    // Both tokens verify with the shared secret and say the same as the fields.
    const upload = verifyJwt(fields['file.gitlab-workhorse-upload'] as string, SECRET);
    expect(upload).toMatchObject({
      iss: 'gitlab-workhorse',
      upload: { name: 'my.file', path: fields['file.path'], size: '4', md5: fields['file.md5'] },
    });
    expect(verifyJwt(String(got.headers['gitlab-workhorse-multipart-fields']), SECRET)).toEqual({
      rewritten_fields: { file: fields['file.path'] },
      iss: 'gitlab-workhorse',
    });
    expect(() => verifyJwt(String(got.headers['gitlab-workhorse-multipart-fields']), Buffer.alloc(32, 1))).toThrow('bad signature');
    // The final request is signed too, and its body length is exact.
    expect(verifyJwt(String(got.headers['gitlab-workhorse-api-request']), SECRET).iss).toBe('gitlab-workhorse');
    expect(got.headers['content-type']).toMatch(/^multipart\/form-data; boundary=outrider-/);
    // The temp file is gone once the request is over.
    await waitFor(() => readdirSync(dir).length === 0);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('relays a refusal as it came and never stores the body', async () => {
    const dir = newDir();
    const backend = await uploadBackend(() => ({ status: 401, type: 'text/plain', body: 'who are you?' }));
    const proxy = await startProxy(backend.url, { toml: routesToml(dir) });
    const res = await request(`${proxy.url}/uploads/user`, {
      method: 'POST',
      body: form([['file', { data: 'x'.repeat(100_000), filename: 'a' }]]),
    });
    expect(res.statusCode).toBe(401);
    expect(res.headers['x-from']).toBe('authorize');
    expect(await res.body.text()).toBe('who are you?');
    expect(backend.received).toHaveLength(0);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('does not trust a 200 without the Workhorse content type', async () => {
    const dir = newDir();
    const backend = await uploadBackend(() => ({ status: 200, type: 'application/json', body: JSON.stringify({ TempPath: dir }) }));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const res = await request(`${proxy.url}/uploads/user`, { method: 'POST', body: form([['file', { data: 'x', filename: 'a' }]]) });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe(JSON.stringify({ TempPath: dir }));
    expect(backend.received).toHaveLength(0);
  });

  it('answers 413 past MaximumSize, forwards nothing and leaves nothing behind', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir, { MaximumSize: 1000 }));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const res = await request(`${proxy.url}/uploads/user`, {
      method: 'POST',
      body: form([['file', { data: Buffer.alloc(5 * 1024 * 1024, 1), filename: 'big.bin' }]]),
    });
    // The proxy answers before it read the whole body, then closes: the client still sees the 413.
    expect(res.statusCode).toBe(413);
    expect(res.headers.connection).toBe('close');
    expect(await res.body.text()).toBe('Request Entity Too Large: the file is larger than the 1000 bytes allowed\n');
    await waitFor(() => readdirSync(dir).length === 0);
    expect(readdirSync(dir)).toEqual([]);
    expect(backend.received).toHaveLength(0);
  });

  it('refuses fields that would collide with rewritten ones, too many files, and bad names', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const send = async (entries: Parameters<typeof form>[0]) => {
      const res = await request(`${proxy.url}/uploads/user`, { method: 'POST', body: form(entries) });
      return { status: res.statusCode, body: await res.body.text() };
    };
    const file = { data: 'test', filename: 'a.txt' };
    expect(
      await send([
        ['file', file],
        ['file.path', '/etc/passwd'],
      ]),
    ).toEqual({
      status: 400,
      body: 'Bad Request: the field "file.path" collides with an uploaded file\'s field\n',
    });
    expect(
      (
        await send([
          ['file.remote_id', 'x'],
          ['file', file],
        ])
      ).status,
    ).toBe(400);
    expect(
      (
        await send([
          ['file', file],
          ['other.path', 'fine'],
        ])
      ).status,
    ).toBe(201);
    expect(
      await send([
        ['a', file],
        ['b', file],
        ['c', file],
        ['d', file],
      ]),
    ).toEqual({ status: 400, body: 'Bad Request: the request has more than 3 files\n' });
    expect((await send([['file', { data: 'x', filename: '..' }]])).status).toBe(400);
    // A name with path parts is reduced to its base name; the file still lands in the temp dir.
    expect((await send([['file', { data: 'x', filename: '../../etc/evil' }]])).status).toBe(201);
    const last = backend.received.at(-1) as Received;
    expect(Object.fromEntries(last.fields)['file.name']).toBe('evil');
    expect(Object.fromEntries(last.fields)['file.path']?.startsWith(`${dir}/outrider-upload-`)).toBe(true);
    await waitFor(() => readdirSync(dir).length === 0);
    expect(readdirSync(dir)).toEqual([]);
    expect(backend.received).toHaveLength(2);
  });

  it('answers 400 to malformed multipart: no boundary, a truncated part, part headers that never end', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const post = async (type: string, body: string) => {
      const res = await request(`${proxy.url}/uploads/user`, { method: 'POST', headers: { 'content-type': type }, body });
      return { status: res.statusCode, body: await res.body.text() };
    };
    expect(await post('multipart/form-data', 'x')).toEqual({ status: 400, body: 'Bad Request: the multipart body has no boundary\n' });
    const truncated = '--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nhalf a fi';
    expect((await post('multipart/form-data; boundary=b', truncated)).status).toBe(400);
    const endlessHeaders = '--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\nX-Pad: y';
    expect((await post('multipart/form-data; boundary=b', endlessHeaders)).status).toBe(400);
    expect(backend.received).toHaveLength(0);
    await waitFor(() => readdirSync(dir).length === 0);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('removes the temp file when the client goes away mid-file, and never calls the backend', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const socket = connect(proxy.port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.write(
      'POST /uploads/user HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n' +
        '--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n',
    );
    socket.write(Buffer.alloc(200_000, 7));
    await waitFor(() => readdirSync(dir).length === 1);
    expect(readdirSync(dir)).toHaveLength(1);
    socket.destroy();
    await waitFor(() => readdirSync(dir).length === 0);
    expect(readdirSync(dir)).toEqual([]);
    expect(backend.received).toHaveLength(0);
  });

  it('proxies unchanged what matches no route, and non-multipart bodies on a multipart route after authorizing them', async () => {
    const authorized: string[] = [];
    const backend = await startBackend(async (req, res) => {
      if (req.url?.endsWith('/authorize')) {
        authorized.push(req.url);
        if (req.url.startsWith('/uploads/denied')) return void res.writeHead(401, { 'www-authenticate': 'Basic realm="x"' }).end('no');
        res.writeHead(200, { 'content-type': API_TYPE, 'www-authenticate': 'Bearer realm="registry"' });
        return void res.end(JSON.stringify({ TempPath: newDir() }));
      }
      const body = await readBody(req);
      res.end(
        JSON.stringify({
          url: req.url,
          type: req.headers['content-type'],
          body: body.toString(),
          fields: req.headers['gitlab-workhorse-multipart-fields'] ?? null,
          signed:
            req.headers['gitlab-workhorse-api-request'] === undefined
              ? null
              : verifyJwt(req.headers['gitlab-workhorse-api-request'] as string, SECRET).iss,
        }),
      );
    });
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const plain = (path: string) =>
      request(`${proxy.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'text/plain', 'gitlab-workhorse-multipart-fields': 'forged' },
        body: 'REQUEST',
      });
    // Pre-authorized route: asked first, then forwarded as it came, signed; the authorize answer's
    // WWW-Authenticate reaches the client, as in Workhorse.
    const asked = await plain('/uploads/user');
    expect(asked.headers['www-authenticate']).toBe('Bearer realm="registry"');
    expect(await asked.body.json()).toEqual({
      url: '/uploads/user',
      type: 'text/plain',
      body: 'REQUEST',
      fields: null,
      signed: 'gitlab-workhorse',
    });
    expect(authorized).toEqual(['/uploads/user/authorize']);
    const mixed = await request(`${proxy.url}/uploads/user`, {
      method: 'POST',
      headers: { 'content-type': 'multipart/mixed; boundary=x' },
      body: '--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nunread\r\n--x--\r\n',
    });
    // Nothing here reads multipart/mixed: its file would reach the backend unstored, but signed.
    expect([mixed.statusCode, await mixed.body.text()]).toEqual([400, 'Bad Request: uploads must be multipart/form-data\n']);
    const denied = await plain('/uploads/denied');
    expect([denied.statusCode, denied.headers['www-authenticate'], await denied.body.text()]).toEqual([401, 'Basic realm="x"', 'no']);
    // A route without pre-authorization: forwarded unchanged, unsigned, nobody asked.
    const open = await plain('/open/x');
    expect(await open.body.json()).toEqual({ url: '/open/x', type: 'text/plain', body: 'REQUEST', fields: null, signed: null });
    expect(authorized).toEqual(['/uploads/user/authorize', '/uploads/denied/authorize']);
    const other = await request(`${proxy.url}/elsewhere`, { method: 'POST', body: form([['file', { data: 'kept', filename: 'a' }]]) });
    const echoed = (await other.body.json()) as { body: string; fields: unknown };
    expect(echoed.body).toContain('kept');
    expect(echoed.fields).toBeNull();
  });

  it('signs the fields header even when the form carries no file, so the backend knows it came through', async () => {
    const backend = await uploadBackend(localAnswer(newDir()));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const body = new FormData();
    body.append('title', 'hello');
    body.append('file', new Blob([]), '');
    const res = await request(`${proxy.url}/uploads/x`, { method: 'POST', body });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    const header = backend.received[0]?.headers['gitlab-workhorse-multipart-fields'] as string;
    expect(verifyJwt(header, SECRET)).toMatchObject({ rewritten_fields: {}, iss: 'gitlab-workhorse' });
  });

  it('stores uploads of routes without pre-authorization in temp_dir, unsigned', async () => {
    const tempDir = newDir();
    const backend = await uploadBackend(() => ({ status: 500, type: 'text/plain', body: 'never asked' }));
    const proxy = await startProxy(backend.url, { toml: routesToml(tempDir) });
    const res = await request(`${proxy.url}/open/x`, { method: 'POST', body: form([['file', { data: 'test', filename: 'a' }]]) });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    expect(backend.authorizeCalls).toHaveLength(0);
    const got = backend.received[0] as Received;
    expect(Object.fromEntries(got.fields)['file.path']?.startsWith(tempDir)).toBe(true);
    expect(got.headers['gitlab-workhorse-api-request']).toBeUndefined();
    await waitFor(() => readdirSync(tempDir).length === 0);
    expect(readdirSync(tempDir)).toEqual([]);
  });
});

describe('[uploads] file_mode', () => {
  it('stores files 0600 in a 0700 directory by default, and with file_mode "0640" readable by the group', async () => {
    for (const [mode, file, dir, strip] of [
      [undefined, 0o600, 0o700, false],
      ['0640', 0o640, 0o750, false],
      // With strip_exif the directory is first made for scratch files: it gets the same mode.
      ['0660', 0o660, 0o770, true],
    ] as const) {
      const modes: number[] = [];
      const backend = await startBackend(async (req, res) => {
        const body = await readBody(req);
        const parsed = await new Response(body, { headers: { 'content-type': req.headers['content-type'] ?? '' } }).formData();
        const path = String(parsed.get('file.path'));
        modes.push(statSync(path).mode & 0o777, statSync(dirname(path)).mode & 0o777);
        res.end('ok');
      });
      const tempDir = join(newDir(), 'created-by-outrider');
      const toml = routesToml(tempDir).replace('[uploads]\n', `[uploads]\n${mode === undefined ? '' : `file_mode = "${mode}"\n`}`);
      const proxy = await startProxy(backend.url, {
        toml: strip ? toml.replace('preauthorize = false\n', 'preauthorize = false\nstrip_exif = true\n') : toml,
      });
      const res = await request(`${proxy.url}/open/x`, {
        method: 'POST',
        body: form([['file', { data: 'secret bytes', filename: 'a.txt' }]]),
      });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      expect(
        modes.map((m) => m.toString(8)),
        String(mode),
      ).toEqual([file.toString(8), dir.toString(8)]);
    }
  });
});
