import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { md5Etag, startS3 } from '../../helpers/s3.js';
import { postFile, proxyFor, SLOW_MS, s3Backend } from './s3-setup.js';
import { waitFor } from './setup.js';

describe('presigned uploads to a real S3-protocol server (s3rver)', () => {
  it('PUTs the file to the presigned StoreURL, hands the backend its fields, then deletes it at DeleteURL', async () => {
    const s3 = await startS3();
    const data = randomBytes(100_000);
    const key = 'tmp/uploads/one';
    const backend = await s3Backend(s3, {
      key,
      remoteObject: async () => ({
        ID: 'one',
        GetURL: `${s3.endpoint}/${s3.bucket}/${key}`,
        StoreURL: await s3.presignPut(key),
        DeleteURL: await s3.presignDelete(key),
      }),
    });
    const proxy = await proxyFor(backend.url);
    expect((await postFile(proxy.url, data)).status).toBe(201);
    const seen = backend.handled[0];
    expect(seen?.object?.body.equals(data)).toBe(true);
    expect(seen?.object?.etag).toBe(md5Etag(data));
    expect(seen?.object?.contentType).toBe('application/octet-stream');
    expect(seen?.fields).toMatchObject({
      'file.remote_id': 'one',
      'file.remote_url': `${s3.endpoint}/${s3.bucket}/${key}`,
      'file.size': '100000',
    });
    // The temp object goes once the backend answered.
    await waitFor(() => s3.requests.some((r) => r.method === 'DELETE'), SLOW_MS);
    expect(await s3.keys()).toEqual([]);
  });

  it('sends PutHeaders with the PUT: a presigned URL that signed Content-Type accepts only that one', async () => {
    const s3 = await startS3();
    const key = 'tmp/uploads/typed';
    const backend = await s3Backend(s3, {
      key,
      remoteObject: async () => ({
        ID: 'typed',
        StoreURL: await s3.presignPut(key, { 'content-type': 'image/png' }),
        CustomPutHeaders: true,
        PutHeaders: { 'Content-Type': 'image/png', 'x-amz-meta-owner': 'ada' },
      }),
    });
    const proxy = await proxyFor(backend.url);
    expect((await postFile(proxy.url, Buffer.from('png'))).status).toBe(201);
    expect(backend.handled[0]?.object).toMatchObject({ contentType: 'image/png', metadata: { owner: 'ada' } });

    // Without CustomPutHeaders the type is application/octet-stream: S3 refuses the signature, Outrider answers 502.
    const refused = await s3Backend(s3, {
      key: 'tmp/uploads/untyped',
      remoteObject: async () => ({ ID: 'untyped', StoreURL: await s3.presignPut('tmp/uploads/untyped', { 'content-type': 'image/png' }) }),
    });
    const proxy2 = await proxyFor(refused.url);
    expect(await postFile(proxy2.url, Buffer.from('png'))).toEqual({ status: 502, body: 'Bad Gateway: the upload could not be stored\n' });
    expect(s3.requests.at(-1)?.headers['content-type']).toBe('application/octet-stream');
    expect(await s3.get('tmp/uploads/untyped')).toBeUndefined();
  });

  it('cuts the file into PartSize parts for presigned UploadPart URLs, with PutHeaders on each, and completes it', async () => {
    const s3 = await startS3();
    const data = randomBytes(250_000);
    const key = 'tmp/uploads/multi';
    const backend = await s3Backend(s3, {
      key,
      remoteObject: async () => {
        const mp = await s3.presignMultipart(key, 5);
        return {
          ID: 'multi',
          CustomPutHeaders: true,
          PutHeaders: { 'content-type': 'application/zip', 'x-amz-meta-owner': 'ada' },
          DeleteURL: await s3.presignDelete(key),
          MultipartUpload: { PartSize: 100_000, PartURLs: mp.partUrls, CompleteURL: mp.completeUrl, AbortURL: mp.abortUrl },
        };
      },
    });
    const proxy = await proxyFor(backend.url);
    expect((await postFile(proxy.url, data)).status).toBe(201);
    const object = backend.handled[0]?.object;
    expect(object?.body.equals(data)).toBe(true);
    // s3rver's ETag for a completed multipart upload is the MD5 of the whole object (S3's is md5-of-part-md5s "-3").
    expect(object?.etag).toBe(md5Etag(data));
    const parts = s3.requests.filter((r) => r.method === 'PUT' && r.url.includes('partNumber='));
    expect(parts.map((r) => [r.headers['content-length'], r.headers['content-type'], r.headers['x-amz-meta-owner']])).toEqual([
      ['100000', 'application/zip', 'ada'],
      ['100000', 'application/zip', 'ada'],
      ['50000', 'application/zip', 'ada'],
    ]);
    const complete = s3.requests.find((r) => r.method === 'POST' && r.url.includes('uploadId='));
    expect(complete?.headers['content-type']).toBe('application/xml');
    expect(complete?.headers['x-amz-meta-owner']).toBeUndefined();
    expect(s3.pendingUploads()).toEqual([]);
    await waitFor(() => s3.requests.some((r) => r.method === 'DELETE'), SLOW_MS);
    expect(await s3.keys()).toEqual([]);
  });
});
