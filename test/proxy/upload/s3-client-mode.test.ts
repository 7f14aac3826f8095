import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it, onTestFinished } from 'vitest';
import { loadConfig } from '../../../config/load.js';
import { createOutbound } from '../../../proxy/outbound/client.js';
import { partSizeFor } from '../../../proxy/upload/store/client.js';
import { createObjectStorage, storeFile } from '../../../proxy/upload/store/index.js';
import { Stash } from '../../../proxy/upload/store/stash.js';
import type { Destination, StoreOptions } from '../../../proxy/upload/store/types.js';
import { startProxy } from '../../helpers/app.js';
import { md5Etag, S3_KEY, S3_REGION, S3_SECRET, type S3Server, startS3 } from '../../helpers/s3.js';
import { postFile, SLOW_MS, s3Backend } from './s3-setup.js';
import { newDir, routesToml, waitFor } from './setup.js';

const MiB = 1024 * 1024;
const OBJECT_STORAGE = `\n[object_storage]\nprovider = "AWS"\n[object_storage.s3]\naws_access_key_id = "${S3_KEY}"\naws_secret_access_key = "${S3_SECRET}"\n`;

/** The RemoteObject Rails sends when Workhorse's own client is to store the file (`workhorse_aws_hash`). */
const clientObject = (s3: S3Server, key: string, extra: Record<string, unknown> = {}) => ({
  ID: 'c1',
  GetURL: `${s3.endpoint}/${s3.bucket}/${key}`,
  UseWorkhorseClient: true,
  RemoteTempObjectID: key,
  ObjectStorage: { Provider: 'AWS', S3Config: { Bucket: s3.bucket, Region: S3_REGION, Endpoint: s3.endpoint, PathStyle: true } },
  ...extra,
});

/** The store alone, as an upload uses it: the own client, a stash cleared when the "request" ends. */
function clientStore(
  s3: S3Server,
  key: string,
  opts: {
    credentials?: boolean;
    skipDelete?: boolean;
    maxSize?: number;
    size?: number;
    putHeaders?: Record<string, string>;
    sse?: Record<string, string>;
  } = {},
) {
  const config = loadConfig(opts.credentials === false ? '[object_storage]\nprovider = "AWS"' : OBJECT_STORAGE);
  const objectStorage = createObjectStorage(config.objectStorage as NonNullable<typeof config.objectStorage>);
  const outbound = createOutbound(loadConfig('[outbound]\nallowed_hosts = ["127.0.0.1"]'), { env: {} });
  onTestFinished(async () => {
    objectStorage.close();
    await outbound.close();
  });
  const destination: Destination = {
    kind: 'remote',
    getUrl: '',
    id: 'c1',
    storeUrl: '',
    deleteUrl: undefined,
    skipDelete: opts.skipDelete ?? false,
    putHeaders: opts.putHeaders ?? { 'content-type': 'application/octet-stream' },
    timeoutMs: 30_000,
    multipart: undefined,
    client: {
      key,
      s3: {
        bucket: s3.bucket,
        region: S3_REGION,
        endpoint: s3.endpoint,
        pathStyle: true,
        useIamProfile: false,
        serverSideEncryption: opts.sse?.ServerSideEncryption,
        sseKmsKeyId: opts.sse?.SSEKMSKeyID,
      },
    },
  };
  const abort = new AbortController();
  const stash = new Stash(outbound);
  const store: StoreOptions = {
    destination,
    hashes: ['md5', 'sha256'],
    maxSize: opts.maxSize ?? 0,
    ...(opts.size === undefined ? {} : { size: opts.size }),
    stash,
    outbound,
    tempDir: newDir(),
    signal: abort.signal,
    objectStorage,
  };
  return { store, stash, abort, objectStorage };
}

/** A stream of `data` in 64 KiB chunks, as a request body arrives. */
const chunks = (data: Buffer) =>
  Readable.from(
    (function* () {
      for (let i = 0; i < data.length; i += 65536) yield data.subarray(i, i + 65536);
    })(),
  );

describe('the own object storage client ([object_storage], RemoteObject.UseWorkhorseClient)', () => {
  it('stores a small file with one signed PutObject: bytes, MD5 ETag, PutHeaders and server-side encryption', async () => {
    const s3 = await startS3();
    const data = randomBytes(200_000);
    const { store, stash } = clientStore(s3, 'tmp/uploads/small', {
      putHeaders: { 'Content-Type': 'image/png', 'x-amz-meta-owner': 'ada', 'Content-MD5': 'ignored' },
      sse: { ServerSideEncryption: 'aws:kms', SSEKMSKeyID: 'arn:aws:kms:us-east-1:1:key/k' },
    });
    const file = await storeFile(chunks(data), store);
    expect(file).toMatchObject({ path: '', remoteId: 'c1', size: 200_000 });
    const object = await s3.get('tmp/uploads/small');
    expect(object?.body.equals(data)).toBe(true);
    expect(object?.etag).toBe(md5Etag(data));
    expect(`"${file.hashes.md5}"`).toBe(object?.etag);
    expect(file.hashes.sha256).toBe(createHash('sha256').update(data).digest('hex'));
    expect(object).toMatchObject({ contentType: 'image/png', metadata: { owner: 'ada' } });
    const put = s3.requests.find((r) => r.method === 'PUT');
    expect(put?.headers.authorization).toMatch(/^AWS4-HMAC-SHA256 Credential=S3RVER\//);
    expect([put?.headers['x-amz-server-side-encryption'], put?.headers['x-amz-server-side-encryption-aws-kms-key-id']]).toEqual([
      'aws:kms',
      'arn:aws:kms:us-east-1:1:key/k',
    ]);
    expect(put?.headers['content-md5']).toBeUndefined();
    // The temp object goes when the request ends.
    expect(await stash.clear()).toEqual([]);
    expect(await s3.keys()).toEqual([]);
  });

  it('streams a large file as a multipart upload with parts sized from its length, and keeps it with SkipDelete', async () => {
    const s3 = await startS3();
    const data = randomBytes(11 * MiB);
    const { store, stash } = clientStore(s3, 'artifacts/large', { skipDelete: true, size: data.length });
    const file = await storeFile(chunks(data), store);
    expect(file.size).toBe(data.length);
    const parts = s3.requests.filter((r) => r.method === 'PUT' && r.url.includes('partNumber='));
    // Parts go in parallel (4 at a time): in any order.
    expect(parts.map((r) => Number(r.headers['content-length'])).sort((a, b) => b - a)).toEqual([5 * MiB, 5 * MiB, MiB]);
    expect(s3.pendingUploads()).toEqual([]);
    expect(await stash.clear()).toEqual([]);
    const kept = await s3.get('artifacts/large');
    expect(kept?.body.equals(data)).toBe(true);
    expect(s3.requests.some((r) => r.method === 'DELETE')).toBe(false);
  });

  it('aborts the multipart upload and leaves nothing when the file outgrows MaximumSize or the client leaves', async () => {
    const s3 = await startS3();
    const big = clientStore(s3, 'tmp/uploads/too-large', { maxSize: 7 * MiB, skipDelete: true });
    await expect(storeFile(chunks(randomBytes(12 * MiB)), big.store)).rejects.toMatchObject({ name: 'StoreError', reason: 'too-large' });
    // The store settles once its multipart upload is aborted; the object was never completed, so
    // even with SkipDelete there is nothing to delete (Workhorse deletes only what it uploaded).
    expect(s3.pendingUploads()).toEqual([]);
    await big.stash.clear();
    expect(s3.requests.filter((r) => r.method === 'DELETE').map((r) => r.url.includes('uploadId='))).toEqual([true]);
    expect(await s3.keys()).toEqual([]);

    const gone = clientStore(s3, 'tmp/uploads/left');
    const body = new Readable({ read() {} });
    const stored = storeFile(body, gone.store);
    body.push(randomBytes(6 * MiB));
    await waitFor(() => s3.pendingUploads().length === 1, SLOW_MS);
    gone.abort.abort();
    await expect(stored).rejects.toMatchObject({ name: 'AbortError' });
    expect(s3.pendingUploads()).toEqual([]);
    await gone.stash.clear();
    expect(await s3.keys()).toEqual([]);
  });

  it('picks the smallest part size S3 allows that fits the file in 10,000 parts, from its size or MaximumSize', () => {
    expect(partSizeFor(undefined, 0)).toBe(5 * MiB);
    expect(partSizeFor(11 * MiB, 0)).toBe(5 * MiB);
    expect(partSizeFor(100 * 1024 * MiB, 0)).toBe(Math.ceil((100 * 1024 * MiB) / 10_000));
    expect(partSizeFor(undefined, 200 * 1024 * MiB)).toBe(Math.ceil((200 * 1024 * MiB) / 10_000));
  });

  it('takes credentials from the environment when [object_storage.s3] has none (the SDK default chain)', async () => {
    const s3 = await startS3();
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = S3_KEY;
    process.env.AWS_SECRET_ACCESS_KEY = S3_SECRET;
    onTestFinished(() => {
      for (const [name, value] of [
        ['AWS_ACCESS_KEY_ID', saved.id],
        ['AWS_SECRET_ACCESS_KEY', saved.secret],
      ] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    });
    const { store } = clientStore(s3, 'tmp/uploads/env', { credentials: false });
    await storeFile(chunks(Buffer.from('from env')), store);
    expect((await s3.get('tmp/uploads/env'))?.body.toString()).toBe('from env');
  });

  it('answers 502 and names the missing [object_storage] when the backend asks for the client and none is configured', async () => {
    const s3 = await startS3();
    const backend = await s3Backend(s3, { key: 'tmp/uploads/x', remoteObject: async () => clientObject(s3, 'tmp/uploads/x') });
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()), logs });
    expect(await postFile(proxy.url, Buffer.from('x'))).toEqual({
      status: 502,
      body: 'Bad Gateway: the backend sent an invalid instruction\n',
    });
    const line = logs.find((l) => l.msg === 'upload failed');
    expect(line).toMatchObject({ level: 50, status: 502 });
    expect(line?.err).toMatchObject({ message: expect.stringContaining('[object_storage] is not configured') });
    expect(s3.requests.filter((r) => r.method !== 'GET')).toEqual([]);
    expect(backend.handled).toEqual([]);
  });
});

describe('client mode through Outrider', () => {
  it('stores the file at RemoteTempObjectID for the backend, then deletes it; with SkipDelete keeps it', async () => {
    const s3 = await startS3();
    const data = randomBytes(300_000);
    const backend = await s3Backend(s3, { key: 'tmp/uploads/e2e', remoteObject: async () => clientObject(s3, '/tmp/uploads/e2e') });
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) + OBJECT_STORAGE });
    expect((await postFile(proxy.url, data)).status).toBe(201);
    expect(backend.handled[0]?.object?.body.equals(data)).toBe(true);
    expect(backend.handled[0]?.object?.etag).toBe(md5Etag(data));
    expect(backend.handled[0]?.fields).toMatchObject({ 'file.remote_id': 'c1', 'file.path': '', 'file.size': '300000' });
    await waitFor(() => s3.requests.some((r) => r.method === 'DELETE'), SLOW_MS);
    expect(await s3.keys()).toEqual([]);

    const skip = await s3Backend(s3, {
      key: 'artifacts/e2e',
      status: 422,
      remoteObject: async () => clientObject(s3, 'artifacts/e2e', { SkipDelete: true }),
    });
    const proxy2 = await startProxy(skip.url, { toml: routesToml(newDir()) + OBJECT_STORAGE });
    expect((await postFile(proxy2.url, data)).status).toBe(422);
    await sleep(300);
    expect((await s3.get('artifacts/e2e'))?.body.equals(data)).toBe(true);
  });
});
