import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { md5Etag, type S3Server, startS3 } from '../../helpers/s3.js';
import { postFile, proxyFor, SLOW_MS, s3Backend } from './s3-setup.js';
import { waitFor } from './setup.js';

/** Long enough for a request's cleanup (run when its response closes) to have sent its DELETE. */
const SETTLE_MS = 300;

const deletes = (s3: S3Server) => s3.requests.filter((r) => r.method === 'DELETE').map((r) => r.url.split('?')[0]);

describe('RemoteObject.SkipDelete (the object is stored at its final path)', () => {
  it('keeps an object the backend accepted', async () => {
    const s3 = await startS3();
    const data = randomBytes(10_000);
    const key = 'artifacts/final';
    const backend = await s3Backend(s3, {
      key,
      remoteObject: async () => ({ ID: 'f', StoreURL: await s3.presignPut(key), DeleteURL: await s3.presignDelete(key), SkipDelete: true }),
    });
    const proxy = await proxyFor(backend.url);
    expect((await postFile(proxy.url, data)).status).toBe(201);
    await sleep(SETTLE_MS);
    expect(deletes(s3)).toEqual([]);
    const kept = await s3.get(key);
    expect(kept?.body.equals(data)).toBe(true);
    expect(kept?.etag).toBe(md5Etag(data));
  });

  it('keeps it when the backend refuses the request too, as Workhorse does; without SkipDelete the temp object is deleted', async () => {
    const s3 = await startS3();
    const skip = await s3Backend(s3, {
      key: 'artifacts/refused',
      status: 422,
      remoteObject: async () => ({
        ID: 'r',
        StoreURL: await s3.presignPut('artifacts/refused'),
        DeleteURL: await s3.presignDelete('artifacts/refused'),
        SkipDelete: true,
      }),
    });
    expect((await postFile((await proxyFor(skip.url)).url, Buffer.from('kept'))).status).toBe(422);
    await sleep(SETTLE_MS);
    expect(deletes(s3)).toEqual([]);
    expect((await s3.get('artifacts/refused'))?.body.toString()).toBe('kept');

    const temp = await s3Backend(s3, {
      key: 'tmp/refused',
      status: 422,
      remoteObject: async () => ({
        ID: 't',
        StoreURL: await s3.presignPut('tmp/refused'),
        DeleteURL: await s3.presignDelete('tmp/refused'),
      }),
    });
    expect((await postFile((await proxyFor(temp.url)).url, Buffer.from('gone'))).status).toBe(422);
    // The backend saw it; then it went.
    expect(temp.handled[0]?.object?.body.toString()).toBe('gone');
    await waitFor(() => deletes(s3).length === 1, SLOW_MS);
    expect(deletes(s3)).toEqual([`/${s3.bucket}/tmp/refused`]);
    expect(await s3.keys()).toEqual(['artifacts/refused']);
  });

  it('still aborts and deletes when storing failed (the file outgrew MaximumSize mid-upload)', async () => {
    const s3 = await startS3();
    const key = 'artifacts/too-large';
    const backend = await s3Backend(s3, {
      key,
      extra: { MaximumSize: 150_000 },
      remoteObject: async () => {
        const mp = await s3.presignMultipart(key, 4);
        return {
          ID: 'l',
          DeleteURL: await s3.presignDelete(key),
          SkipDelete: true,
          MultipartUpload: { PartSize: 100_000, PartURLs: mp.partUrls, CompleteURL: mp.completeUrl, AbortURL: mp.abortUrl },
        };
      },
    });
    const proxy = await proxyFor(backend.url);
    expect((await postFile(proxy.url, randomBytes(300_000))).status).toBe(413);
    await waitFor(() => deletes(s3).length === 2, SLOW_MS);
    // AbortMultipartUpload (DELETE ?uploadId=) and the DeleteURL, as Workhorse's deferred Abort() and Delete().
    expect(deletes(s3)).toEqual([`/${s3.bucket}/${key}`, `/${s3.bucket}/${key}`]);
    expect(s3.requests.filter((r) => r.method === 'DELETE').map((r) => r.url.includes('uploadId='))).toEqual([true, false]);
    expect(s3.pendingUploads()).toEqual([]);
    expect(await s3.keys()).toEqual([]);
    expect(backend.handled).toEqual([]);
  });
});
