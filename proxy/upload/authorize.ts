import type { IncomingMessage } from 'node:http';
import { isAbsolute, resolve } from 'node:path';
import type { Dispatcher } from 'undici';
import { API_CONTENT_TYPE } from '../../protocol/headers.js';
import { ISSUER, signJwt } from '../../protocol/jwt.js';
import { DirectiveError } from '../../protocol/send-data.js';
import { UPLOAD_HASHES, type UploadHash } from '../../protocol/upload-fields.js';
import { API_REQUEST, HOP_BY_HOP, RESPONSE_STRIPPED, withoutNamed } from '../forward/headers.js';
import { requestHeaders } from '../forward/request-headers.js';
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
): Promise<{ ok: Authorization } | { refused: Refusal }> {
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
    return { ok: parseAuthorization(json) };
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
    destination = {
      kind: 'remote',
      getUrl: optStr(r.geturl, 'RemoteObject.GetURL') ?? '',
      id: remoteId as string,
      storeUrl: multipart === undefined ? str(r.storeurl, 'RemoteObject.StoreURL') : (optStr(r.storeurl, 'RemoteObject.StoreURL') ?? ''),
      deleteUrl: optStr(r.deleteurl, 'RemoteObject.DeleteURL'),
      putHeaders,
      timeoutMs: timeout > 0 ? timeout * 1000 : DEFAULT_REMOTE_TIMEOUT_MS,
      multipart,
    };
  }
  return { destination, maxSize: maxSize > 0 ? maxSize : 0, hashes };
}
