import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { startS3 } from '../../helpers/s3.js';
import { postFile, proxyFor, SLOW_MS, s3Backend } from './s3-setup.js';
import { form, newDir, routesToml, waitFor } from './setup.js';

describe('object storage failures leave nothing behind (s3rver)', () => {
  it('refuses a second file for the one object with 400, storing neither', async () => {
    const s3 = await startS3();
    const key = 'tmp/uploads/one';
    const backend = await s3Backend(s3, {
      key,
      remoteObject: async () => ({ ID: 'o', StoreURL: await s3.presignPut(key), DeleteURL: await s3.presignDelete(key) }),
    });
    const proxy = await proxyFor(backend.url);
    const two = await request(`${proxy.url}/uploads/user`, {
      method: 'POST',
      body: form([
        ['a', { data: 'x', filename: 'a' }],
        ['b', { data: 'y', filename: 'b' }],
      ]),
    });
    expect(two.statusCode).toBe(400);
    expect(await two.body.text()).toBe('Bad Request: only one file may be uploaded to object storage per request\n');
    await waitFor(() => s3.requests.some((r) => r.method === 'DELETE'), SLOW_MS);
    expect(await s3.keys()).toEqual([]);
    expect(backend.handled).toEqual([]);
  });

  it('aborts a multipart upload and deletes its object when the client goes away mid-file', async () => {
    const s3 = await startS3();
    const key = 'tmp/uploads/left';
    const backend = await s3Backend(s3, {
      key,
      remoteObject: async () => {
        const mp = await s3.presignMultipart(key, 5);
        return {
          ID: 'o',
          DeleteURL: await s3.presignDelete(key),
          MultipartUpload: { PartSize: 100_000, PartURLs: mp.partUrls, CompleteURL: mp.completeUrl, AbortURL: mp.abortUrl },
        };
      },
    });
    const tempDir = newDir();
    const proxy = await startProxy(backend.url, { toml: routesToml(tempDir) });
    const socket = connect(proxy.port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.write(
      'POST /uploads/user HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n' +
        '--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n',
    );
    socket.write(randomBytes(250_000));
    await waitFor(() => s3.requests.some((r) => r.url.includes('partNumber=2')), SLOW_MS);
    socket.destroy();
    await waitFor(() => s3.pendingUploads().length === 0 && s3.requests.filter((r) => r.method === 'DELETE').length === 2, SLOW_MS);
    expect(s3.requests.filter((r) => r.method === 'DELETE').map((r) => r.url.includes('uploadId='))).toEqual([true, false]);
    expect(s3.requests.some((r) => r.method === 'POST' && r.url.includes('uploadId='))).toBe(false);
    expect(s3.pendingUploads()).toEqual([]);
    expect(await s3.keys()).toEqual([]);
    await waitFor(() => readdirSync(tempDir).length === 0, SLOW_MS);
    expect(readdirSync(tempDir)).toEqual([]);
    expect(backend.handled).toHaveLength(0);
  });

  it('answers 502 when object storage refuses the PUT, and 413 when the file needs more parts than URLs', async () => {
    const s3 = await startS3();
    // A presigned URL altered after signing (another bucket): S3 refuses it with 403.
    const missing = await s3Backend(s3, {
      key: 'tmp/uploads/x',
      remoteObject: async () => ({
        ID: 'o',
        StoreURL: (await s3.presignPut('tmp/uploads/x')).replace(`/${s3.bucket}/`, '/no-such-bucket/'),
      }),
    });
    expect(await postFile((await proxyFor(missing.url)).url, Buffer.from('x'))).toEqual({
      status: 502,
      body: 'Bad Gateway: the upload could not be stored\n',
    });
    expect(missing.handled).toHaveLength(0);
    expect(s3.requests.at(-1)).toMatchObject({ method: 'PUT', url: expect.stringMatching(/^\/no-such-bucket\//) });

    const key = 'tmp/uploads/big';
    const small = await s3Backend(s3, {
      key,
      remoteObject: async () => {
        const mp = await s3.presignMultipart(key, 2);
        return {
          ID: 'o',
          DeleteURL: await s3.presignDelete(key),
          MultipartUpload: { PartSize: 10_000, PartURLs: mp.partUrls, CompleteURL: mp.completeUrl, AbortURL: mp.abortUrl },
        };
      },
    });
    expect((await postFile((await proxyFor(small.url)).url, randomBytes(25_000))).status).toBe(413);
    await waitFor(() => s3.requests.filter((r) => r.method === 'DELETE').length === 2, SLOW_MS);
    expect(s3.pendingUploads()).toEqual([]);
    expect(await s3.keys()).toEqual([]);
  });
});
