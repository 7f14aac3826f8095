import { readdirSync, readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { FormData, request } from 'undici';
import { describe, expect, it } from 'vitest';
import { verifyJwt } from '../../../protocol/jwt.js';
import { startProxy } from '../../helpers/app.js';
import { readBody, startBackend } from '../../helpers/backend.js';
import { API_TYPE, TEST_SECRET_B64, uploadRoutesToml, uploadScratch } from '../../helpers/uploads.js';

const SECRET = Buffer.from(TEST_SECRET_B64, 'base64');
const { secretPath, newDir } = uploadScratch('outrider-upload-');

interface Received {
  headers: IncomingMessage['headers'];
  fields: [string, string][];
  /** The stored files' contents, read while the backend handled the request. */
  files: Record<string, Buffer>;
}

/**
 * A Rails-like backend: `/authorize` answers `authorizeAnswer` (or a refusal), the upload route
 * parses the rewritten body with undici's own multipart/urlencoded parser and reads the files.
 */
async function uploadBackend(authorizeAnswer: (req: IncomingMessage) => { status: number; type: string; body: string }) {
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

const localAnswer =
  (dir: string, extra: Record<string, unknown> = {}) =>
  () => ({
    status: 200,
    type: API_TYPE,
    body: JSON.stringify({ TempPath: dir, ...extra }),
  });

const routesToml = (tempDir: string) => uploadRoutesToml({ secretPath, tempDir, maxFiles: 3 });

function form(entries: [string, string | { data: Buffer | string; filename: string }][]): FormData {
  const f = new FormData();
  for (const [name, value] of entries) {
    if (typeof value === 'string') f.append(name, value);
    else f.append(name, new Blob([value.data]), value.filename);
  }
  return f;
}

const waitFor = async (check: () => boolean, ms = 3000) => {
  for (let waited = 0; !check() && waited < ms; waited += 20) await new Promise((r) => setTimeout(r, 20));
};

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

  it('proxies unchanged what matches no route, and non-multipart bodies on a multipart route', async () => {
    const backend = await startBackend(async (req, res) => {
      const body = await readBody(req);
      res.end(
        JSON.stringify({
          url: req.url,
          type: req.headers['content-type'],
          body: body.toString(),
          fields: req.headers['gitlab-workhorse-multipart-fields'] ?? null,
        }),
      );
    });
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const plain = await request(`${proxy.url}/uploads/user`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain', 'gitlab-workhorse-multipart-fields': 'forged' },
      body: 'REQUEST',
    });
    expect(await plain.body.json()).toEqual({ url: '/uploads/user', type: 'text/plain', body: 'REQUEST', fields: null });
    const other = await request(`${proxy.url}/elsewhere`, { method: 'POST', body: form([['file', { data: 'kept', filename: 'a' }]]) });
    const echoed = (await other.body.json()) as { body: string; fields: unknown };
    expect(echoed.body).toContain('kept');
    expect(echoed.fields).toBeNull();
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

describe('uploads to object storage', () => {
  /** A local S3-like store: presigned PUTs, multipart parts, completion and deletes, all recorded. */
  async function objectStore() {
    const objects = new Map<string, Buffer>();
    const calls: string[] = [];
    const store = await startBackend(async (req, res) => {
      const body = await readBody(req);
      calls.push(`${req.method} ${req.url}`);
      if (req.method === 'PUT') {
        objects.set(req.url as string, body);
        res.writeHead(200, { etag: `"etag-${req.url}"` }).end();
      } else if (req.method === 'POST') {
        objects.set(req.url as string, body);
        res.writeHead(200, { 'content-type': 'application/xml' }).end('<CompleteMultipartUploadResult/>');
      } else {
        objects.delete(req.url as string);
        res.writeHead(204).end();
      }
    });
    return { ...store, objects, calls };
  }

  it('PUTs the file to StoreURL, hands the backend remote_url and remote_id, and deletes the temp object afterwards', async () => {
    const store = await objectStore();
    const backend = await uploadBackend(() => ({
      status: 200,
      type: API_TYPE,
      body: JSON.stringify({
        RemoteObject: {
          ID: 'obj-1',
          GetURL: `${store.url}/tmp/obj-1`,
          StoreURL: `${store.url}/tmp/obj-1?sig=x`,
          DeleteURL: `${store.url}/tmp/obj-1?del=x`,
        },
      }),
    }));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const res = await request(`${proxy.url}/uploads/user`, { method: 'POST', body: form([['file', { data: 'test', filename: 'a.txt' }]]) });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    const fields = Object.fromEntries((backend.received[0] as Received).fields);
    expect(fields).toMatchObject({
      'file.path': '',
      'file.remote_id': 'obj-1',
      'file.remote_url': `${store.url}/tmp/obj-1`,
      'file.size': '4',
    });
    expect(store.objects.get('/tmp/obj-1?sig=x')?.toString()).toBe('test');
    await waitFor(() => store.calls.includes('DELETE /tmp/obj-1?del=x'));
    expect(store.calls).toEqual(['PUT /tmp/obj-1?sig=x', 'DELETE /tmp/obj-1?del=x']);
  });

  it('cuts the file into PartSize parts and completes the multipart upload', async () => {
    const store = await objectStore();
    const data = Buffer.alloc(2500, 'abc');
    const backend = await uploadBackend(() => ({
      status: 200,
      type: API_TYPE,
      body: JSON.stringify({
        RemoteObject: {
          ID: 'obj-2',
          GetURL: `${store.url}/obj-2`,
          MultipartUpload: {
            PartSize: 1000,
            PartURLs: [1, 2, 3, 4].map((n) => `${store.url}/obj-2?part=${n}`),
            CompleteURL: `${store.url}/obj-2?complete`,
            AbortURL: `${store.url}/obj-2?abort`,
          },
        },
      }),
    }));
    const tempDir = newDir();
    const proxy = await startProxy(backend.url, { toml: routesToml(tempDir) });
    const res = await request(`${proxy.url}/uploads/user`, { method: 'POST', body: form([['file', { data, filename: 'a.bin' }]]) });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    expect(store.calls).toEqual(['PUT /obj-2?part=1', 'PUT /obj-2?part=2', 'PUT /obj-2?part=3', 'POST /obj-2?complete']);
    expect(Buffer.concat([1, 2, 3].map((n) => store.objects.get(`/obj-2?part=${n}`) as Buffer)).equals(data)).toBe(true);
    expect(store.objects.get('/obj-2?complete')?.toString()).toBe(
      '<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&#34;etag-/obj-2?part=1&#34;</ETag></Part>' +
        '<Part><PartNumber>2</PartNumber><ETag>&#34;etag-/obj-2?part=2&#34;</ETag></Part>' +
        '<Part><PartNumber>3</PartNumber><ETag>&#34;etag-/obj-2?part=3&#34;</ETag></Part></CompleteMultipartUpload>',
    );
    expect(readdirSync(tempDir)).toEqual([]);
  });

  it('sends PutHeaders when CustomPutHeaders is set, and refuses a second file for the one object', async () => {
    const store = await objectStore();
    let headers: IncomingMessage['headers'] = {};
    store.server.prependListener('request', (req: IncomingMessage) => {
      headers = req.headers;
    });
    const backend = await uploadBackend(() => ({
      status: 200,
      type: API_TYPE,
      body: JSON.stringify({
        RemoteObject: {
          ID: 'o',
          StoreURL: `${store.url}/o`,
          CustomPutHeaders: true,
          PutHeaders: { 'x-amz-meta-owner': 'ada', 'content-type': 'image/png' },
        },
      }),
    }));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const one = await request(`${proxy.url}/uploads/user`, { method: 'POST', body: form([['file', { data: 'x', filename: 'a' }]]) });
    expect(one.statusCode).toBe(201);
    await one.body.dump();
    expect([headers['x-amz-meta-owner'], headers['content-type']]).toEqual(['ada', 'image/png']);
    const two = await request(`${proxy.url}/uploads/user`, {
      method: 'POST',
      body: form([
        ['a', { data: 'x', filename: 'a' }],
        ['b', { data: 'y', filename: 'b' }],
      ]),
    });
    expect(two.statusCode).toBe(400);
    expect(await two.body.text()).toBe('Bad Request: only one file may be uploaded to object storage per request\n');
  });

  it('aborts a multipart upload and deletes its parts when the client goes away mid-file', async () => {
    const store = await objectStore();
    const backend = await uploadBackend(() => ({
      status: 200,
      type: API_TYPE,
      body: JSON.stringify({
        RemoteObject: {
          ID: 'o',
          DeleteURL: `${store.url}/o?delete`,
          MultipartUpload: {
            PartSize: 100_000,
            PartURLs: [1, 2, 3, 4, 5].map((n) => `${store.url}/o?part=${n}`),
            CompleteURL: `${store.url}/o?complete`,
            AbortURL: `${store.url}/o?abort`,
          },
        },
      }),
    }));
    const tempDir = newDir();
    const proxy = await startProxy(backend.url, { toml: routesToml(tempDir) });
    const socket = connect(proxy.port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.write(
      'POST /uploads/user HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n' +
        '--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n',
    );
    socket.write(Buffer.alloc(250_000, 7));
    await waitFor(() => store.calls.includes('PUT /o?part=2'));
    socket.destroy();
    await waitFor(
      () => store.calls.includes('DELETE /o?abort') && store.calls.includes('DELETE /o?delete') && readdirSync(tempDir).length === 0,
    );
    expect(store.calls).toContain('DELETE /o?abort');
    expect(store.calls).toContain('DELETE /o?delete');
    expect(store.calls).not.toContain('POST /o?complete');
    expect(readdirSync(tempDir)).toEqual([]);
    expect(backend.received).toHaveLength(0);
  });

  it('answers 502 when object storage fails, and 413 when the file needs more parts than URLs', async () => {
    const failing = await startBackend((_req, res) => res.writeHead(500).end('<Error>bucket secret</Error>'));
    const backend = await uploadBackend(() => ({
      status: 200,
      type: API_TYPE,
      body: JSON.stringify({ RemoteObject: { ID: 'o', StoreURL: `${failing.url}/o` } }),
    }));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const res = await request(`${proxy.url}/uploads/user`, { method: 'POST', body: form([['file', { data: 'x', filename: 'a' }]]) });
    expect(res.statusCode).toBe(502);
    expect(await res.body.text()).toBe('Bad Gateway: the upload could not be stored\n');
    expect(backend.received).toHaveLength(0);

    const store = await objectStore();
    const small = await uploadBackend(() => ({
      status: 200,
      type: API_TYPE,
      body: JSON.stringify({
        RemoteObject: {
          ID: 'o',
          MultipartUpload: { PartSize: 10, PartURLs: [`${store.url}/p1`], CompleteURL: `${store.url}/c`, AbortURL: `${store.url}/abort` },
        },
      }),
    }));
    const proxy2 = await startProxy(small.url, { toml: routesToml(newDir()) });
    const big = await request(`${proxy2.url}/uploads/user`, {
      method: 'POST',
      body: form([['file', { data: 'x'.repeat(25), filename: 'a' }]]),
    });
    expect(big.statusCode).toBe(413);
    await big.body.dump();
    expect(store.calls).toContain('DELETE /abort');
  });
});

describe('upload failures upstream', () => {
  it('answers 502 when the backend cannot be asked, and 504 when object storage outlives RemoteObject.Timeout', async () => {
    const dead = await startBackend(() => undefined);
    const deadUrl = dead.url;
    await dead.close();
    const proxy = await startProxy(deadUrl, { toml: routesToml(newDir()) });
    const down = await request(`${proxy.url}/uploads/user`, { method: 'POST', body: form([['file', { data: 'x', filename: 'a' }]]) });
    expect(down.statusCode).toBe(502);
    expect(await down.body.text()).toBe('Bad Gateway: the backend is not responding\n');

    const silent = await startBackend((req) => req.resume()); // takes the PUT and never answers
    const backend = await uploadBackend(() => ({
      status: 200,
      type: API_TYPE,
      body: JSON.stringify({ RemoteObject: { ID: 'o', StoreURL: `${silent.url}/o`, Timeout: 0.3 } }),
    }));
    const proxy2 = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const started = Date.now();
    const slow = await request(`${proxy2.url}/uploads/user`, { method: 'POST', body: form([['file', { data: 'x', filename: 'a' }]]) });
    expect(slow.statusCode).toBe(504);
    expect(await slow.body.text()).toBe('Gateway Timeout: the upload could not be stored in time\n');
    expect(Date.now() - started).toBeLessThan(3000);
    expect(backend.received).toHaveLength(0);
  });
});

describe('a large upload', () => {
  it('streams hundreds of MB with flat memory, and the hashes match', { timeout: 60_000 }, async () => {
    const dir = newDir();
    const { createHash } = await import('node:crypto');
    let backendSha = '';
    const backend = await startBackend(async (req, res) => {
      if (req.url?.includes('/authorize')) {
        res.writeHead(200, { 'content-type': API_TYPE }).end(JSON.stringify({ TempPath: dir, UploadHashFunctions: ['sha256'] }));
        return;
      }
      const parsed = await new Response(await readBody(req), { headers: { 'content-type': req.headers['content-type'] ?? '' } }).formData();
      const path = String(parsed.get('file.path'));
      const hash = createHash('sha256');
      for await (const chunk of (await import('node:fs')).createReadStream(path)) hash.update(chunk as Buffer);
      backendSha = `${hash.digest('hex')} ${parsed.get('file.sha256')} ${parsed.get('file.md5')}`;
      res.end('ok');
    });
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const size = 300 * 1024 * 1024;
    const chunk = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31) % 251;
    const expected = createHash('sha256');
    const boundary = 'big-boundary';
    async function* body() {
      yield Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n`);
      for (let sent = 0; sent < size; sent += chunk.length) {
        expected.update(chunk);
        yield chunk;
      }
      yield Buffer.from(`\r\n--${boundary}--\r\n`);
    }
    global.gc?.();
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 20);
    const res = await request(`${proxy.url}/uploads/big`, {
      method: 'POST',
      headers: { 'content-type': `multipart/form-data; boundary=${boundary}` },
      body: Readable.from(body()),
    });
    clearInterval(sampler);
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    const sha = expected.digest('hex');
    // Stored bytes hash to the sent bytes; only the asked-for hash is computed (md5 absent).
    expect(backendSha).toBe(`${sha} ${sha} null`);
    // The client, the proxy and the backend share this process: the growth stays far under the file size.
    expect(peak - baseline).toBeLessThan(100 * 1024 * 1024);
    await waitFor(() => readdirSync(dir).length === 0);
    expect(readdirSync(dir)).toEqual([]);
  });
});
