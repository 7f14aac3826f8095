import { AsyncLocalStorage } from 'node:async_hooks';
import { Readable } from 'node:stream';
import type { PutObjectCommandInput, S3Client } from '@aws-sdk/client-s3';
import type { NodeHttpHandler } from '@smithy/node-http-handler';
import type { Config } from '../../../config/schema.js';
import { DELETE_TIMEOUT_MS } from './stash.js';

/** Where the own client stores a file: `RemoteTempObjectID` in `RemoteObject.ObjectStorage.S3Config`'s bucket. */
export interface ClientTarget {
  /** The object key: RemoteTempObjectID cleaned, without a leading slash (Workhorse `normalizeKey`). */
  key: string;
  s3: S3Settings;
}

/** `RemoteObject.ObjectStorage.S3Config`, as the backend sends it. */
interface S3Settings {
  bucket: string;
  region: string;
  /** A custom endpoint (MinIO, another S3-compatible store); AWS's own when undefined. */
  endpoint: string | undefined;
  pathStyle: boolean;
  useIamProfile: boolean;
  serverSideEncryption: string | undefined;
  sseKmsKeyId: string | undefined;
}

/** S3's multipart limits: parts of at least 5 MiB (but the last), at most 10,000 of them. */
const MIN_PART_SIZE = 5 * 1024 * 1024;
const MAX_PARTS = 10_000;
/** Parts sent at once by one upload: memory per upload stays near (QUEUE_SIZE + 1) × part size. */
const QUEUE_SIZE = 4;
/** Clients kept, one per S3Config the backend sends (a few buckets, one endpoint, in practice). */
const MAX_CLIENTS = 16;

/**
 * Outrider's own object storage client (`[object_storage]`, Workhorse's `S3v2Object`): streams a
 * file to a bucket with the AWS SDK (`lib-storage` `Upload`: one PutObject for a file smaller than
 * a part, else a multipart upload with bounded memory, aborted on failure) and deletes temp objects.
 */
export interface ObjectStorage {
  /** Stores `body` as `target`, until it ends; rejects with `signal.reason` once `signal` aborts. */
  put(body: Readable, target: ClientTarget, opts: PutOptions): Promise<void>;
  /** Deletes `target` (a temp object, once the request is over). */
  remove(target: ClientTarget): Promise<void>;
  close(): void;
}

interface PutOptions {
  /** The exact size when known (a body upload's Content-Length), else undefined. */
  size: number | undefined;
  /** `MaximumSize` (0: none): the largest the file can be, which bounds the part size too. */
  maxSize: number;
  /** `RemoteObject.PutHeaders`, as SDK parameters where S3 has one (see `putParams`). */
  putHeaders: Record<string, string>;
  signal: AbortSignal;
}

/**
 * The part size for a file: the smallest S3 allows that still fits the file in 10,000 parts when
 * its size (or its upper bound, MaximumSize) is known; 5 MiB otherwise, which caps an upload of
 * unknown size at about 48.8 GiB, as the Go SDK's upload manager Workhorse uses does.
 */
export function partSizeFor(size: number | undefined, maxSize: number): number {
  const bound = size ?? (maxSize > 0 ? maxSize : undefined);
  return bound === undefined ? MIN_PART_SIZE : Math.max(MIN_PART_SIZE, Math.ceil(bound / MAX_PARTS));
}

/** PutHeaders that S3 stores with the object, by the SDK parameter that sends each. */
const PUT_PARAMS: Record<string, keyof PutObjectCommandInput> = {
  'content-type': 'ContentType',
  'content-disposition': 'ContentDisposition',
  'content-encoding': 'ContentEncoding',
  'content-language': 'ContentLanguage',
  'cache-control': 'CacheControl',
  'x-amz-acl': 'ACL',
  'x-amz-storage-class': 'StorageClass',
  'x-amz-tagging': 'Tagging',
  'x-amz-server-side-encryption': 'ServerSideEncryption',
  'x-amz-server-side-encryption-aws-kms-key-id': 'SSEKMSKeyId',
};

/**
 * `PutHeaders` as PutObject/CreateMultipartUpload parameters: the headers S3 keeps with an object
 * and `x-amz-meta-*` as metadata. Others (Content-MD5, Expect…) describe one request, not the
 * object, and would be wrong on a multipart upload: they are not sent.
 */
function putParams(headers: Record<string, string>): Partial<PutObjectCommandInput> {
  const params: Record<string, unknown> = {};
  const metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase();
    if (lower.startsWith('x-amz-meta-')) metadata[lower.slice('x-amz-meta-'.length)] = value;
    else if (PUT_PARAMS[lower] !== undefined) params[PUT_PARAMS[lower]] = value;
  }
  if (Object.keys(metadata).length > 0) params.Metadata = metadata;
  return params as Partial<PutObjectCommandInput>;
}

/** Server-side encryption from S3Config, which wins over PutHeaders (Workhorse `setS3EncryptionOptions`). */
function encryption(s3: S3Settings): Partial<PutObjectCommandInput> {
  if (s3.serverSideEncryption === undefined) return {};
  const params: Partial<PutObjectCommandInput> = {
    ServerSideEncryption: s3.serverSideEncryption as PutObjectCommandInput['ServerSideEncryption'],
  };
  if (s3.serverSideEncryption === 'aws:kms' && s3.sseKmsKeyId !== undefined) params.SSEKMSKeyId = s3.sseKmsKeyId;
  return params;
}

/** An endpoint without a scheme (`minio.internal:9000`) is HTTPS, as in the Go SDK. */
function endpointUrl(endpoint: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint) ? endpoint : `https://${endpoint}`;
}

/**
 * The AWS SDK, loaded on first use: an Outrider whose backend never asks for the client does not
 * load it at start (about 100 ms of module loading on this machine).
 */
async function loadSdk() {
  const [s3, storage, http] = await Promise.all([
    import('@aws-sdk/client-s3'),
    import('@aws-sdk/lib-storage'),
    import('@smithy/node-http-handler'),
  ]);
  return {
    S3Client: s3.S3Client,
    DeleteObjectCommand: s3.DeleteObjectCommand,
    Upload: storage.Upload,
    NodeHttpHandler: http.NodeHttpHandler,
  };
}

export function createObjectStorage(config: NonNullable<Config['objectStorage']>): ObjectStorage {
  // lib-storage sends its requests without a signal of ours: the upload's signal reaches the HTTP
  // handler through the async context instead, so aborting an upload cuts the bytes in flight
  // (PutObject, UploadPart) and a completion. What cleans up after an aborted upload is not cut,
  // only bounded: the deletes (AbortMultipartUpload, DeleteObject), and CreateMultipartUpload,
  // whose upload id lib-storage needs to abort the upload it opened.
  const current = new AsyncLocalStorage<AbortSignal>();
  let http: NodeHttpHandler | undefined;
  // Like Workhorse's client cache: one client per S3Config, whose credentials the SDK refreshes.
  const clients = new Map<string, S3Client>();
  let closed = false;
  let sdk: ReturnType<typeof loadSdk> | undefined;
  const clientFor = async (s3: S3Settings) => {
    sdk ??= loadSdk();
    const { S3Client, NodeHttpHandler, ...rest } = await sdk;
    if (closed) throw new Error('the object storage client is closed');
    const key = JSON.stringify([s3.region, s3.endpoint, s3.pathStyle]);
    let client = clients.get(key);
    if (client === undefined) {
      http ??= new NodeHttpHandler();
      const base = http;
      const handler = {
        handle: (...[request, options = {}]: Parameters<NodeHttpHandler['handle']>) => {
          const cleanup = request.method === 'DELETE' || (request.method === 'POST' && 'uploads' in (request.query ?? {}));
          const signal = cleanup ? AbortSignal.timeout(DELETE_TIMEOUT_MS) : current.getStore();
          return base.handle(request, { ...options, abortSignal: options.abortSignal ?? signal });
        },
        // Shared by every client: closed once, with the storage.
        destroy: () => undefined,
        updateHttpClientConfig: base.updateHttpClientConfig.bind(base),
        httpHandlerConfigs: base.httpHandlerConfigs.bind(base),
      };
      if (clients.size >= MAX_CLIENTS) {
        const [oldest] = clients.keys();
        clients.delete(oldest as string);
      }
      client = new S3Client({
        region: s3.region,
        ...(s3.endpoint === undefined ? {} : { endpoint: endpointUrl(s3.endpoint) }),
        forcePathStyle: s3.pathStyle,
        // Static keys from [object_storage.s3], else the SDK's default chain (env, files, roles).
        ...(config.credentials === undefined ? {} : { credentials: config.credentials }),
        requestHandler: handler,
        // CRC32 checksums on every request are refused by some S3-compatible stores; MD5 and
        // SigV4 payload hashes are what Workhorse's client relies on too.
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });
      clients.set(key, client);
    }
    return { client, ...rest };
  };

  return {
    async put(body, target, opts) {
      if (opts.signal.aborted) throw opts.signal.reason;
      const { client, Upload } = await clientFor(target.s3);
      const upload = new Upload({
        client,
        params: {
          ...putParams(opts.putHeaders),
          ...encryption(target.s3),
          Bucket: target.s3.bucket,
          Key: target.key,
          // lib-storage sizes a stream by its `size` or `length` if it has one (the meter counts in
          // `size`): it gets a plain stream of the same chunks, and the length only when known.
          Body: Readable.from(body, { objectMode: false }),
          ...(opts.size === undefined ? {} : { ContentLength: opts.size }),
        },
        partSize: partSizeFor(opts.size, opts.maxSize),
        queueSize: QUEUE_SIZE,
        leavePartsOnError: false,
      });
      // No abortController: lib-storage's abort settles done() before its own cleanup. The signal
      // ends the body (the caller's stream is tied to it) and cuts the requests in flight; the
      // upload then fails, aborts its multipart upload, and only then settles.
      try {
        await current.run(opts.signal, () => upload.done());
      } catch (err) {
        throw opts.signal.aborted ? opts.signal.reason : err;
      }
    },
    async remove(target) {
      const { client, DeleteObjectCommand } = await clientFor(target.s3);
      await client.send(new DeleteObjectCommand({ Bucket: target.s3.bucket, Key: target.key }));
    },
    close() {
      closed = true;
      for (const client of clients.values()) client.destroy();
      clients.clear();
      http?.destroy();
    },
  };
}
