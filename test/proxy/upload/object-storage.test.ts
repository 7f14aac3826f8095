import { readdirSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { readBody, startBackend } from '../../helpers/backend.js';
import { API_TYPE } from '../../helpers/uploads.js';
import { form, newDir, type Received, routesToml, uploadBackend, waitFor } from './setup.js';

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
