/**
 * A real S3-protocol server for the tests: s3rver (npm) on 127.0.0.1, an ephemeral port and a
 * temp directory, started and stopped by the test that uses it, plus what a Rails-like backend
 * needs to hand out presigned URLs made by the AWS SDK's own presigner.
 *
 * s3rver stores and serves objects, multipart parts and completions as S3 does, with two gaps this
 * helper fills in front of it, in plain sight:
 * - it checks that a SigV4 signature names a known key but never computes it ("V4 signatures have
 *   incomplete support", lib/middleware/authentication.js). The front verifies every signature,
 *   header or presigned query, with the S3RVER secret, and refuses unsigned requests: a URL that
 *   Outrider altered, or a request the SDK signed wrong, fails here as it would on S3;
 * - it answers AbortMultipartUpload (DELETE ?uploadId=) with 405. The front answers 204, as S3
 *   does, forgets the upload and refuses later parts for it (404 NoSuchUpload, where s3rver would
 *   reopen it); `pendingUploads()` lists the multipart uploads left open. The aborted parts' files
 *   stay in s3rver's directory until it closes.
 * Also unlike S3: a completed multipart object's ETag is the MD5 of its whole content, not the
 * MD5 of the part MD5s followed by "-<parts>".
 */
// First, before node:http: on Node 24 importing node:http loads Node's own bundled undici, which
// then takes the process-wide global dispatcher that the npm undici's `request()` also uses
// (nodejs/node#59012). That dispatcher cannot send the npm undici's FormData, the upload tests'
// bodies: such a request hung after its headers. Loaded first, the npm undici keeps the slot.
import 'undici';
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import S3rver from 's3rver';
import { onTestFinished } from 'vitest';

/** s3rver's built-in account. */
export const S3_KEY = 'S3RVER';
export const S3_SECRET = 'S3RVER';
export const S3_REGION = 'us-east-1';

export interface S3Request {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
}

export interface StoredObject {
  body: Buffer;
  etag: string;
  contentType: string | undefined;
  metadata: Record<string, string>;
}

export interface S3Server {
  /** `http://127.0.0.1:<port>`: an S3 endpoint for path-style requests. */
  endpoint: string;
  bucket: string;
  /** An SDK client with s3rver's key: what the test backend (Rails) uses. */
  client: S3Client;
  /** Every request that reached the server, in order (the tests' own reads included). */
  requests: S3Request[];
  presignPut(key: string, headers?: Record<string, string>): Promise<string>;
  presignDelete(key: string): Promise<string>;
  /** CreateMultipartUpload done here, then presigned UploadPart, Complete and Abort URLs. */
  presignMultipart(key: string, parts: number): Promise<{ uploadId: string; partUrls: string[]; completeUrl: string; abortUrl: string }>;
  get(key: string): Promise<StoredObject | undefined>;
  keys(): Promise<string[]>;
  /** Multipart uploads created and neither completed nor aborted. */
  pendingUploads(): string[];
  close(): Promise<void>;
}

export async function startS3(bucket = 'uploads'): Promise<S3Server> {
  const directory = mkdtempSync(join(tmpdir(), 'outrider-s3-'));
  const s3rver = new S3rver({ silent: true, directory, configureBuckets: [{ name: bucket, configs: [] }] });
  await s3rver.configureBuckets();
  const app = s3rver.callback();
  const requests: S3Request[] = [];
  const uploadsDir = join(directory, bucket, '._S3rver_uploads');
  // A part that arrived before its upload was aborted can still land after it (s3rver recreates
  // the upload's folder for it): aborted ids are remembered, as S3 forgets an aborted upload.
  const aborted = new Set<string>();
  // Requests s3rver is still handling: its part files are written by streams with no error
  // handler, so nothing they write into may be removed under them (an abort, the end of a test).
  const handling = new Set<Promise<void>>();
  const settled = () => Promise.all(handling.keys());
  const server = createServer((req, res) => {
    requests.push({ method: req.method as string, url: req.url as string, headers: req.headers });
    const refusal = checkSignature(req);
    if (refusal !== undefined) return s3Error(res, 403, refusal.code, refusal.message);
    const url = new URL(req.url as string, 'http://s3');
    const uploadId = url.searchParams.get('uploadId');
    const open = uploadId !== null && !aborted.has(uploadId) && /^[0-9a-f]+$/.test(uploadId) && readdirSafe(uploadsDir).includes(uploadId);
    // s3rver takes a part for any upload id, recreating an aborted upload: S3 refuses it.
    if (req.method === 'PUT' && uploadId !== null && !open)
      return s3Error(res, 404, 'NoSuchUpload', 'The specified upload does not exist.');
    if (req.method === 'DELETE' && uploadId !== null) {
      // AbortMultipartUpload, which s3rver lacks: its parts go, as on S3.
      if (!open) return s3Error(res, 404, 'NoSuchUpload', 'The specified upload does not exist.');
      // Forgotten, as S3 forgets it: later parts are refused above, and pendingUploads() leaves it
      // out. Its part files stay on disk until the server closes: a part s3rver is still writing
      // (its stream has no error handler) must not have its folder removed under it.
      aborted.add(uploadId);
      req.resume();
      res.writeHead(204).end();
      return;
    }
    const done = new Promise<void>((resolve) => res.once('close', () => setImmediate(resolve)));
    handling.add(done);
    void done.then(() => handling.delete(done));
    app(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = new S3Client({
    endpoint,
    region: S3_REGION,
    forcePathStyle: true,
    credentials: { accessKeyId: S3_KEY, secretAccessKey: S3_SECRET },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const signing = (signableHeaders?: Set<string>) => ({ expiresIn: 600, ...(signableHeaders === undefined ? {} : { signableHeaders }) });
  const close = async () => {
    client.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await Promise.race([settled(), new Promise((r) => setTimeout(r, 2000))]);
    rmSync(directory, { recursive: true, force: true });
  };
  onTestFinished(close);
  return {
    endpoint,
    bucket,
    client,
    requests,
    // Rails signs the host only; a test that lists headers makes S3 refuse a PUT without them.
    presignPut: (key, headers = {}) =>
      getSignedUrl(
        client,
        new PutObjectCommand({ Bucket: bucket, Key: key, ...(headers['content-type'] ? { ContentType: headers['content-type'] } : {}) }),
        signing(new Set(Object.keys(headers))),
      ),
    presignDelete: (key) => getSignedUrl(client, new DeleteObjectCommand({ Bucket: bucket, Key: key }), signing()),
    async presignMultipart(key, parts) {
      const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }));
      const uploadId = UploadId as string;
      const partUrls = await Promise.all(
        Array.from({ length: parts }, (_, i) =>
          getSignedUrl(client, new UploadPartCommand({ Bucket: bucket, Key: key, UploadId: uploadId, PartNumber: i + 1 }), signing()),
        ),
      );
      const completeUrl = await getSignedUrl(
        client,
        new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }),
        signing(),
      );
      const abortUrl = await getSignedUrl(
        client,
        new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }),
        signing(),
      );
      return { uploadId, partUrls, completeUrl, abortUrl };
    },
    async get(key) {
      try {
        const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        return {
          body: Buffer.from(await (out.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray()),
          etag: out.ETag as string,
          contentType: out.ContentType,
          metadata: out.Metadata ?? {},
        };
      } catch (err) {
        if ((err as Error).name === 'NoSuchKey') return undefined;
        throw err;
      }
    },
    async keys() {
      const out = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
      return (out.Contents ?? []).map((o) => o.Key as string).sort();
    },
    pendingUploads: () => readdirSafe(uploadsDir).filter((id) => !aborted.has(id)),
    close,
  };
}

/** S3's ETag of a single PUT: the MD5 of the bytes, hex, quoted. */
export const md5Etag = (data: Buffer): string => `"${createHash('md5').update(data).digest('hex')}"`;

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function s3Error(res: ServerResponse, status: number, code: string, message: string): void {
  res.req.resume();
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`;
  res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body), connection: 'close' }).end(body);
}

/** RFC 3986 encoding, as SigV4 canonical query strings use. */
const encode = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data).digest();

/**
 * Verifies an AWS Signature Version 4, from the Authorization header or presigned query
 * parameters, against s3rver's one key pair; undefined when it holds.
 * https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
 */
function checkSignature(req: IncomingMessage): { code: string; message: string } | undefined {
  const raw = req.url as string;
  const q = raw.indexOf('?');
  const path = q === -1 ? raw : raw.slice(0, q);
  const pairs = (q === -1 ? '' : raw.slice(q + 1))
    .split('&')
    .filter((p) => p !== '')
    .map((p) => {
      const eq = p.indexOf('=');
      const name = decodeURIComponent(eq === -1 ? p : p.slice(0, eq));
      const value = eq === -1 ? '' : decodeURIComponent(p.slice(eq + 1).replace(/\+/g, ' '));
      return [name, value] as [string, string];
    });
  const query = new Map(pairs);
  const header = req.headers.authorization;
  let credential: string;
  let signedHeaders: string;
  let signature: string;
  let amzDate: string;
  let payloadHash: string;
  let signedPairs = pairs;
  if (header !== undefined) {
    const m = /^AWS4-HMAC-SHA256 Credential=([^,]+), ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/.exec(header);
    if (m === null) return { code: 'AuthorizationHeaderMalformed', message: 'not a SigV4 Authorization header' };
    [, credential, signedHeaders, signature] = m as unknown as [string, string, string, string];
    amzDate = String(req.headers['x-amz-date'] ?? '');
    payloadHash = String(req.headers['x-amz-content-sha256'] ?? '');
  } else if (query.get('X-Amz-Algorithm') === 'AWS4-HMAC-SHA256') {
    credential = query.get('X-Amz-Credential') ?? '';
    signedHeaders = query.get('X-Amz-SignedHeaders') ?? '';
    signature = query.get('X-Amz-Signature') ?? '';
    amzDate = query.get('X-Amz-Date') ?? '';
    payloadHash = query.get('X-Amz-Content-Sha256') ?? 'UNSIGNED-PAYLOAD';
    signedPairs = pairs.filter(([name]) => name !== 'X-Amz-Signature');
    const issued = Date.parse(amzDate.replace(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/, '$1-$2-$3T$4:$5:$6Z'));
    if (!(Date.now() <= issued + Number(query.get('X-Amz-Expires')) * 1000))
      return { code: 'AccessDenied', message: 'Request has expired' };
  } else {
    return { code: 'AccessDenied', message: 'Anonymous requests are not allowed' };
  }
  const [keyId, date, region, service] = credential.split('/');
  if (keyId !== S3_KEY) return { code: 'InvalidAccessKeyId', message: 'The AWS Access Key Id you provided does not exist in our records.' };
  const canonicalQuery = signedPairs
    .map(([name, value]) => [encode(name), encode(value)])
    .sort(([a, av], [b, bv]) => (a === b ? ((av as string) < (bv as string) ? -1 : 1) : (a as string) < (b as string) ? -1 : 1))
    .map(([name, value]) => `${name}=${value}`)
    .join('&');
  const canonicalHeaders = signedHeaders
    .split(';')
    .map((name) => {
      const value = req.headers[name];
      return `${name}:${(Array.isArray(value) ? value.join(',') : (value ?? '')).trim().replace(/\s+/g, ' ')}\n`;
    })
    .join('');
  const canonicalRequest = [req.method, path, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash].join('\n');
  const scope = `${date}/${region}/${service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, createHash('sha256').update(canonicalRequest).digest('hex')].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${S3_SECRET}`, date as string), region as string), service as string), 'aws4_request');
  const expected = hmac(key, stringToSign);
  const given = Buffer.from(signature, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    return { code: 'SignatureDoesNotMatch', message: 'The request signature we calculated does not match the signature you provided.' };
  }
  return undefined;
}
