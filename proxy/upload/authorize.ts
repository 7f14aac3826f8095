import type { IncomingMessage } from 'node:http';
import { isAbsolute, posix, resolve } from 'node:path';
import type { Dispatcher } from 'undici';
import { API_CONTENT_TYPE } from '../../protocol/headers.js';
import { ISSUER, signJwt } from '../../protocol/jwt.js';
import { DirectiveError } from '../../protocol/send-data.js';
import { UPLOAD_HASHES, type UploadHash } from '../../protocol/upload-fields.js';
import { API_REQUEST, HOP_BY_HOP, RESPONSE_STRIPPED, withoutNamed } from '../forward/headers.js';
import { requestHeaders } from '../forward/request-headers.js';
import type { ClientTarget } from './store/client.js';
import type { Destination } from './store/index.js';

/** What the backend's authorize answer allows (Workhorse `api.Response`, the fields uploads use). */
export interface Authorization {
  destination: Destination;
  /** Bytes allowed per file; 0: no limit. */
  maxSize: number;
  hashes: UploadHash[];
}

/** A refusal (or any answer but the trusted 200) to relay to the client as it came. */
export interface Refusal {
  statusCode: number;
  headers: string[];
  body: Buffer;
}

/** Bytes of a refusal relayed to the client (Workhorse `failureResponseLimit`). */
export const REFUSAL_LIMIT = 32 * 1024;
/** Bytes of a trusted authorize answer read; a JSON answer is small. */
const ANSWER_LIMIT = 1024 * 1024;
/** Request headers that describe the body, which the authorize request does not carry. */
const NOT_ASKED = ['content-type', 'content-encoding', 'content-length', 'content-disposition', 'accept-encoding'];
/** Object storage uploads without a timeout get Workhorse's `DefaultObjectStoreTimeout`. */
const DEFAULT_REMOTE_TIMEOUT_MS = 4 * 60 * 60 * 1000;

/** The signed `Gitlab-Workhorse-Api-Request` value: `{"iss":"gitlab-workhorse","iat":<now>}`. */
export function apiRequestToken(secret: Buffer): string {
  return signJwt({ iss: ISSUER, iat: Math.floor(Date.now() / 1000) }, secret);
}

/**
 * Asks the backend whether this upload may happen (Workhorse `PreAuthorize`): the same method and
 * query at `<path>/authorize`, no body, the client's headers minus the body's, signed. Only a 200
 * with `application/vnd.gitlab-workhorse+json` is trusted; anything else is a refusal returned
 * as it came (bounded: a larger body is an error). Throws DirectiveError for an answer that is
 * trusted but unusable.
 */
export async function authorize(
  upstream: Dispatcher,
  req: IncomingMessage,
  ctx: { peer: string; requestId: string; version: string; secret: Buffer; signal: AbortSignal },
): Promise<{ ok: Authorization; wwwAuthenticate: string | undefined } | { refused: Refusal }> {
  // A client's own Gitlab-Workhorse-Api-Request is replaced, never sent alongside the real one.
  const headers = withoutNamed(requestHeaders(req, ctx.peer, ctx.requestId, ctx.version).list, [...NOT_ASKED, API_REQUEST]);
  headers.push(API_REQUEST, apiRequestToken(ctx.secret));
  const url = req.url as string;
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  const res = await upstream.request({
    method: req.method as Dispatcher.HttpMethod,
    path: `${path.replace(/\/+$/, '')}/authorize${q === -1 ? '' : url.slice(q)}`,
    headers,
    signal: ctx.signal,
  });
  const type = String(res.headers['content-type'] ?? '');
  if (res.statusCode === 200 && type.toLowerCase().startsWith(API_CONTENT_TYPE)) {
    const body = await readLimited(res.body, ANSWER_LIMIT);
    if (body === undefined) throw new DirectiveError(`the authorize answer is larger than ${ANSWER_LIMIT} bytes`);
    let json: unknown;
    try {
      json = JSON.parse(body.toString('utf8'));
    } catch {
      throw new DirectiveError('the authorize answer is not JSON');
    }
    // On success Workhorse copies only this header of the authorize answer to the client's.
    const challenge = res.headers['www-authenticate'];
    return { ok: parseAuthorization(json), wwwAuthenticate: Array.isArray(challenge) ? challenge[0] : challenge };
  }
  const body = await readLimited(res.body, REFUSAL_LIMIT);
  if (body === undefined) throw new DirectiveError(`the authorize refusal is larger than ${REFUSAL_LIMIT} bytes`);
  const out: string[] = [];
  for (const [name, value] of Object.entries(res.headers)) {
    const lower = name.toLowerCase();
    if (RESPONSE_STRIPPED.has(lower) || HOP_BY_HOP.has(lower) || lower === 'content-length' || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) out.push(name, v);
  }
  return { refused: { statusCode: res.statusCode, headers: out, body } };
}

async function readLimited(body: Dispatcher.ResponseData['body'], limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    total += (chunk as Buffer).length;
    if (total > limit) {
      body.destroy();
      return undefined;
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks, total);
}

/** JSON keys matched case-insensitively, as Go decodes them; header maps keep their entries. */
function lowerKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(lowerKeys);
  if (typeof value !== 'object' || value === null) return value;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k.toLowerCase(), lowerKeys(v)]));
}

const str = (v: unknown, field: string): string => {
  if (typeof v !== 'string') throw new DirectiveError(`authorize: '${field}' must be a string`);
  return v;
};
const optStr = (v: unknown, field: string): string | undefined => (v === undefined || v === null || v === '' ? undefined : str(v, field));

const optBool = (v: unknown, field: string): boolean => {
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw new DirectiveError(`authorize: '${field}' must be true or false`);
  return v;
};

/**
 * The own client's target, when the answer asks for it (Workhorse `UseWorkhorseClientEnabled`:
 * `UseWorkhorseClient` and a `RemoteTempObjectID`; otherwise the presigned URLs are used). Only
 * the AWS provider (Workhorse: "AWS" or "S3", any case) is supported: Azure and Google go through
 * Workhorse's GoCloud client, which Outrider does not have, so such an answer is refused.
 */
function parseClientTarget(r: Record<string, unknown>): ClientTarget | undefined {
  if (!optBool(r.useworkhorseclient, 'RemoteObject.UseWorkhorseClient')) return undefined;
  const objectId = optStr(r.remotetempobjectid, 'RemoteObject.RemoteTempObjectID');
  if (objectId === undefined) return undefined;
  const os = (r.objectstorage ?? {}) as Record<string, unknown>;
  if (typeof os !== 'object' || Array.isArray(os)) throw new DirectiveError("authorize: 'RemoteObject.ObjectStorage' must be an object");
  const provider = optStr(os.provider, 'RemoteObject.ObjectStorage.Provider') ?? '';
  if (!/^(aws|s3)$/i.test(provider)) {
    throw new DirectiveError(
      `authorize: RemoteObject.ObjectStorage.Provider "${provider}" is not supported by Outrider's own client (only "AWS")`,
    );
  }
  const c = (os.s3config ?? {}) as Record<string, unknown>;
  if (typeof c !== 'object' || Array.isArray(c))
    throw new DirectiveError("authorize: 'RemoteObject.ObjectStorage.S3Config' must be an object");
  const bucket = optStr(c.bucket, 'S3Config.Bucket');
  if (bucket === undefined) throw new DirectiveError("authorize: 'RemoteObject.ObjectStorage.S3Config.Bucket' is missing");
  return {
    key: normalizeKey(objectId),
    s3: {
      bucket,
      // Rails sends Fog's default when none is configured; an answer without one gets the same.
      region: optStr(c.region, 'S3Config.Region') ?? 'us-east-1',
      endpoint: optStr(c.endpoint, 'S3Config.Endpoint'),
      pathStyle: optBool(c.pathstyle, 'S3Config.PathStyle'),
      useIamProfile: optBool(c.useiamprofile, 'S3Config.UseIamProfile'),
      serverSideEncryption: optStr(c.serversideencryption, 'S3Config.ServerSideEncryption'),
      sseKmsKeyId: optStr(c.ssekmskeyid, 'S3Config.SSEKMSKeyID'),
    },
  };
}

/** An object key as Workhorse's `normalizeKey`: `path.Clean`, then no leading slash. */
function normalizeKey(key: string): string {
  const clean = posix.normalize(key).replace(/(.)\/+$/, '$1');
  return clean.startsWith('/') ? clean.slice(1) : clean;
}

/** Validates the authorize answer: exactly one of TempPath and RemoteObject, and what each needs. */
export function parseAuthorization(raw: unknown): Authorization {
  const json = lowerKeys(raw) as Record<string, unknown>;
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new DirectiveError('the authorize answer is not a JSON object');
  const tempPath = optStr(json.temppath, 'TempPath');
  const remote = json.remoteobject as Record<string, unknown> | undefined | null;
  const remoteId = remote === undefined || remote === null ? undefined : optStr(remote.id, 'RemoteObject.ID');
  if (tempPath !== undefined && remoteId !== undefined) throw new DirectiveError('the authorize answer has both TempPath and RemoteObject');
  if (tempPath === undefined && remoteId === undefined)
    throw new DirectiveError('the authorize answer has neither TempPath nor RemoteObject');
  const maxSize = json.maximumsize ?? 0;
  if (typeof maxSize !== 'number' || !Number.isInteger(maxSize)) throw new DirectiveError("authorize: 'MaximumSize' must be an integer");
  const wanted = json.uploadhashfunctions ?? [];
  if (!Array.isArray(wanted)) throw new DirectiveError("authorize: 'UploadHashFunctions' must be a list");
  const hashes = wanted.length === 0 ? [...UPLOAD_HASHES] : UPLOAD_HASHES.filter((h) => wanted.includes(h));
  let destination: Destination;
  if (tempPath !== undefined) {
    destination = { kind: 'local', dir: isAbsolute(tempPath) ? tempPath : resolve(tempPath) };
  } else {
    const r = remote as Record<string, unknown>;
    const putHeaders: Record<string, string> = {};
    if (r.customputheaders === true && typeof r.putheaders === 'object' && r.putheaders !== null) {
      for (const [k, v] of Object.entries(r.putheaders)) putHeaders[k] = str(v, `RemoteObject.PutHeaders.${k}`);
    } else {
      putHeaders['content-type'] = 'application/octet-stream';
    }
    const timeout = r.timeout ?? 0;
    if (typeof timeout !== 'number' || timeout < 0)
      throw new DirectiveError("authorize: 'RemoteObject.Timeout' must be a number of seconds");
    const mp = r.multipartupload as Record<string, unknown> | undefined | null;
    let multipart: Extract<Destination, { kind: 'remote' }>['multipart'];
    if (mp !== undefined && mp !== null && typeof mp.partsize === 'number' && mp.partsize > 0) {
      if (!Number.isInteger(mp.partsize)) throw new DirectiveError("authorize: 'MultipartUpload.PartSize' must be an integer");
      const urls = mp.parturls;
      if (!Array.isArray(urls) || urls.length === 0) throw new DirectiveError("authorize: 'MultipartUpload.PartURLs' must list URLs");
      multipart = {
        partSize: mp.partsize,
        partUrls: urls.map((u, i) => str(u, `MultipartUpload.PartURLs[${i}]`)),
        completeUrl: str(mp.completeurl, 'MultipartUpload.CompleteURL'),
        abortUrl: optStr(mp.aborturl, 'MultipartUpload.AbortURL'),
      };
    }
    const client = parseClientTarget(r);
    destination = {
      kind: 'remote',
      getUrl: optStr(r.geturl, 'RemoteObject.GetURL') ?? '',
      id: remoteId as string,
      // The own client needs no URL to store at; the presigned single PUT needs StoreURL.
      storeUrl:
        multipart === undefined && client === undefined
          ? str(r.storeurl, 'RemoteObject.StoreURL')
          : (optStr(r.storeurl, 'RemoteObject.StoreURL') ?? ''),
      deleteUrl: optStr(r.deleteurl, 'RemoteObject.DeleteURL'),
      skipDelete: optBool(r.skipdelete, 'RemoteObject.SkipDelete'),
      putHeaders,
      timeoutMs: timeout > 0 ? timeout * 1000 : DEFAULT_REMOTE_TIMEOUT_MS,
      multipart,
      client,
    };
  }
  return { destination, maxSize: maxSize > 0 ? maxSize : 0, hashes };
}
