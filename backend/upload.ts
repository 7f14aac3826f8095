import { dirname, isAbsolute, resolve } from 'node:path';
import { OutriderVerificationError } from '../protocol/errors.js';
import { API_CONTENT_TYPE, API_REQUEST_HEADER, MULTIPART_FIELDS_HEADER } from '../protocol/headers.js';
import { verifyJwt } from '../protocol/jwt.js';
import {
  REWRITTEN_FIELDS_CLAIM,
  SIGNED_UPLOAD_FIELD,
  UPLOAD_CLAIM,
  UPLOAD_HASHES,
  UPLOAD_KEYS,
  type UploadHash,
} from '../protocol/upload-fields.js';
import type { OutriderAnswer } from './send-data.js';

export { API_CONTENT_TYPE, API_REQUEST_HEADER, MULTIPART_FIELDS_HEADER, UPLOAD_HASHES, type UploadHash };

/** Request headers as node:http, Express and fastify give them, or a fetch `Headers`. */
export type RequestHeaders = Readonly<Record<string, string | readonly string[] | undefined>> | { get(name: string): string | null };

export interface VerifyApiRequestOptions {
  /** Seconds a token may be old. Default 60; `Infinity` accepts tokens without `iat` (older Workhorse). */
  maxAgeSeconds?: number;
  /** Seconds the two clocks may differ, added both ways. Default 30 (with the default age: GitLab's 90 s). */
  clockSkewSeconds?: number;
  /** The current time in milliseconds. Default `Date.now()`. */
  now?: number;
}

/**
 * Checks `Gitlab-Workhorse-Api-Request`, which Outrider sends with every `/authorize` call (and
 * with the upload that follows): an HS256 JWT `{"iss":"gitlab-workhorse","iat":<unix seconds>}`
 * signed with the shared secret and no older than `maxAgeSeconds` (+ `clockSkewSeconds`).
 * Returns its claims; throws `OutriderVerificationError` with `statusCode` 401.
 */
export function verifyApiRequest(headers: RequestHeaders, secret: Buffer, options: VerifyApiRequestOptions = {}): Record<string, unknown> {
  const token = header(headers, API_REQUEST_HEADER, 401);
  const claims = verifyJwt(token, secret, { statusCode: 401 });
  const maxAge = options.maxAgeSeconds ?? 60;
  if (maxAge === Number.POSITIVE_INFINITY) return claims;
  const skew = options.clockSkewSeconds ?? 30;
  const iat = claims.iat;
  if (typeof iat !== 'number' || !Number.isFinite(iat)) {
    throw new OutriderVerificationError('EDGE_VERIFY_EXPIRED', 'the API request token has no iat', { statusCode: 401 });
  }
  const age = (options.now ?? Date.now()) / 1000 - iat;
  if (age > maxAge + skew) {
    throw new OutriderVerificationError(
      'EDGE_VERIFY_EXPIRED',
      `the API request token is ${Math.floor(age)} s old, over ${maxAge + skew} s`,
      {
        statusCode: 401,
      },
    );
  }
  if (age < -skew)
    throw new OutriderVerificationError('EDGE_VERIFY_EXPIRED', 'the API request token was issued in the future', { statusCode: 401 });
  return claims;
}

/** Object storage for an upload: presigned URLs Outrider PUTs the file to (Workhorse `RemoteObject`). */
export interface RemoteObject {
  /** The object's id, given back as `<f>.remote_id`. */
  id: string;
  /** Where the stored object can be read, given back as `<f>.remote_url`. */
  getUrl: string;
  /** The presigned PUT URL (not needed with `multipartUpload`). */
  storeUrl?: string;
  /** Outrider DELETEs this once the request is over (the backend copies the object first). */
  deleteUrl?: string;
  /** Headers for the PUT; without them Outrider sends `Content-Type: application/octet-stream`. */
  putHeaders?: Record<string, string>;
  /** Seconds the upload may take. Default (0): four hours. */
  timeout?: number;
  /** A presigned multipart upload: parts of `partSize` bytes to `partUrls`, then `completeUrl`. */
  multipartUpload?: { partSize: number; partUrls: string[]; completeUrl: string; abortUrl?: string };
}

interface AuthorizeCommon {
  /** Bytes allowed per file; 0 or absent: no limit. Outrider answers 413 past it. */
  maximumSize?: number;
  /** The hashes to compute; empty or absent: all four. */
  uploadHashFunctions?: readonly UploadHash[];
}
export type AuthorizeOptions =
  | (AuthorizeCommon & { tempPath: string; remoteObject?: undefined })
  | (AuthorizeCommon & { remoteObject: RemoteObject; tempPath?: undefined });

/**
 * The answer that lets an upload in at `<path>/authorize`: status 200, `Content-Type:
 * application/vnd.gitlab-workhorse+json` and the JSON (Workhorse's key names). Outrider stores each
 * file in `tempPath` (absolute; created if missing) or in object storage at `remoteObject`.
 */
export function authorizeResponse(options: AuthorizeOptions): OutriderAnswer {
  const body: Record<string, unknown> = {};
  if ((options.tempPath === undefined) === (options.remoteObject === undefined)) {
    throw new TypeError('authorizeResponse: give exactly one of tempPath and remoteObject');
  }
  if (options.tempPath !== undefined) {
    if (!isAbsolute(options.tempPath))
      throw new TypeError(`authorizeResponse: tempPath must be absolute, got ${JSON.stringify(options.tempPath)}`);
    body.TempPath = options.tempPath;
  } else {
    const r = options.remoteObject as RemoteObject;
    if (r.id === '') throw new TypeError('authorizeResponse: remoteObject.id must be set');
    if (r.multipartUpload === undefined && (r.storeUrl ?? '') === '')
      throw new TypeError('authorizeResponse: remoteObject.storeUrl must be set');
    body.RemoteObject = {
      ID: r.id,
      GetURL: r.getUrl,
      ...(r.storeUrl === undefined ? {} : { StoreURL: r.storeUrl }),
      ...(r.deleteUrl === undefined ? {} : { DeleteURL: r.deleteUrl }),
      ...(r.putHeaders === undefined ? {} : { CustomPutHeaders: true, PutHeaders: r.putHeaders }),
      ...(r.timeout === undefined ? {} : { Timeout: r.timeout }),
      ...(r.multipartUpload === undefined
        ? {}
        : {
            MultipartUpload: {
              PartSize: r.multipartUpload.partSize,
              PartURLs: r.multipartUpload.partUrls,
              CompleteURL: r.multipartUpload.completeUrl,
              ...(r.multipartUpload.abortUrl === undefined ? {} : { AbortURL: r.multipartUpload.abortUrl }),
            },
          }),
    };
  }
  if (options.maximumSize !== undefined) {
    if (!Number.isSafeInteger(options.maximumSize) || options.maximumSize < 0) {
      throw new RangeError(`authorizeResponse: maximumSize must be a whole number of bytes, got ${options.maximumSize}`);
    }
    body.MaximumSize = options.maximumSize;
  }
  if (options.uploadHashFunctions !== undefined) {
    const unknown = options.uploadHashFunctions.filter((h) => !UPLOAD_HASHES.includes(h));
    if (unknown.length > 0)
      throw new TypeError(`authorizeResponse: unknown hash functions ${unknown.join(', ')} (known: ${UPLOAD_HASHES.join(', ')})`);
    body.UploadHashFunctions = [...options.uploadHashFunctions];
  }
  return { statusCode: 200, contentType: API_CONTENT_TYPE, body: JSON.stringify(body) };
}

/** A file Outrider stored, as its signed fields describe it. */
export interface UploadedFile {
  /** The form field the file came in (`avatar` for `avatar.path`, `avatar.size`…; `file` for body uploads). */
  field: string;
  /** The client's file name, last path segment only ("" for body uploads). */
  name: string;
  /** The stored file (inside the `tempPath` answered); undefined when it went to object storage. */
  path: string | undefined;
  /** `RemoteObject.ID` and `GetURL` for object storage; undefined on disk. */
  remoteId: string | undefined;
  remoteUrl: string | undefined;
  /** Bytes. */
  size: number;
  /** Lower-case hex digests, the ones asked for in `uploadHashFunctions`. */
  hashes: Partial<Record<UploadHash, string>>;
  /** Seconds Outrider spent storing the file, when it says. */
  uploadDuration: number | undefined;
}

/** The form's fields: a `FormData` (as `readFields` gives), `URLSearchParams`, a `Map`, or a plain object (multer, fastify). */
export type FormFields = { getAll(name: string): unknown[] } | ReadonlyMap<string, unknown> | Readonly<Record<string, unknown>>;

export interface VerifyUploadFieldsOptions {
  /**
   * The `tempPath` (or several) this backend answered at `/authorize`: every file stored on disk
   * must be directly inside one of them, so a signed path can only name a file Outrider stored.
   * Strongly recommended.
   */
  tempPath?: string | readonly string[];
  /**
   * Fields that must hold a file: one that came through Outrider without one (a form submitted
   * with its file input left empty) is refused with `EDGE_VERIFY_NO_FILE`, not `EDGE_VERIFY_MISSING`.
   */
  required?: string | readonly string[];
}

/**
 * Checks what Outrider forwarded after storing an upload and returns the files it describes:
 * the `Gitlab-Workhorse-Multipart-Fields` header (an HS256 JWT `{"rewritten_fields": {<field>:
 * <path>}}`), each `<field>.gitlab-workhorse-upload` JWT (`{"upload": {name, path, size, …}}`),
 * that each signed path is the one in `rewritten_fields`, that every plain `<field>.<key>` equals
 * its signed value, and (with `tempPath`) that each file is in the directory handed out.
 * Throws `OutriderVerificationError` (`statusCode` 400) on anything forged, unsigned or missing.
 */
export function verifyUploadFields(
  headers: RequestHeaders,
  fields: FormFields,
  secret: Buffer,
  options: VerifyUploadFieldsOptions = {},
): UploadedFile[] {
  const required = typeof options.required === 'string' ? [options.required] : (options.required ?? []);
  const noFile = (field: string) =>
    new OutriderVerificationError('EDGE_VERIFY_NO_FILE', `no file was sent in the field ${field}`, { statusCode: 400 });
  if (required.length > 0 && !succeeds(() => header(headers, MULTIPART_FIELDS_HEADER, 400))) {
    // No file at all: a request Outrider signed (a pre-authorized route whose body had no
    // multipart form) says it came through; anything else did not.
    if (succeeds(() => verifyApiRequest(headers, secret, { maxAgeSeconds: Number.POSITIVE_INFINITY }))) throw noFile(required[0] as string);
  }
  const claims = verifyJwt(header(headers, MULTIPART_FIELDS_HEADER, 400), secret);
  const rewritten = claims[REWRITTEN_FIELDS_CLAIM];
  if (typeof rewritten !== 'object' || rewritten === null || Array.isArray(rewritten)) {
    throw new OutriderVerificationError('EDGE_VERIFY_MALFORMED', 'rewritten_fields is not an object');
  }
  const dirs =
    options.tempPath === undefined
      ? undefined
      : (typeof options.tempPath === 'string' ? [options.tempPath] : options.tempPath).map((d) => resolve(d));
  const files: UploadedFile[] = [];
  for (const [field, rewrittenPath] of Object.entries(rewritten)) {
    if (typeof rewrittenPath !== 'string')
      throw new OutriderVerificationError('EDGE_VERIFY_MALFORMED', `rewritten_fields.${field} is not a string`);
    const token = formValue(fields, `${field}.${SIGNED_UPLOAD_FIELD}`);
    if (token === undefined)
      throw new OutriderVerificationError('EDGE_VERIFY_MISSING', `the field ${field}.gitlab-workhorse-upload is missing`);
    const upload = verifyJwt(token, secret)[UPLOAD_CLAIM];
    if (typeof upload !== 'object' || upload === null || Array.isArray(upload)) {
      throw new OutriderVerificationError('EDGE_VERIFY_MALFORMED', `${field}.gitlab-workhorse-upload has no upload claim`);
    }
    const signed = upload as Record<string, unknown>;
    for (const key of UPLOAD_KEYS) {
      const value = signed[key];
      if (value !== undefined && typeof value !== 'string')
        throw new OutriderVerificationError('EDGE_VERIFY_MALFORMED', `the signed ${field}.${key} is not a string`);
      const plain = formValue(fields, `${field}.${key}`);
      if (plain !== value)
        throw new OutriderVerificationError('EDGE_VERIFY_MISMATCH', `the field ${field}.${key} is not the one Outrider signed`);
    }
    const path = (signed.path as string | undefined) ?? '';
    if (path !== rewrittenPath)
      throw new OutriderVerificationError('EDGE_VERIFY_MISMATCH', `${field}.path is not the path in rewritten_fields`);
    const remoteId = (signed.remote_id as string | undefined) ?? '';
    if (path === '' && remoteId === '')
      throw new OutriderVerificationError('EDGE_VERIFY_MALFORMED', `${field} has neither a path nor a remote id`);
    if (path !== '' && dirs !== undefined && (!isAbsolute(path) || resolve(path) !== path || !dirs.includes(dirname(path)))) {
      throw new OutriderVerificationError('EDGE_VERIFY_OUTSIDE', `${field}.path is not in the upload directory`);
    }
    const size = Number(signed.size);
    if (typeof signed.size !== 'string' || !/^\d+$/.test(signed.size) || !Number.isSafeInteger(size)) {
      throw new OutriderVerificationError('EDGE_VERIFY_MALFORMED', `the signed ${field}.size is not a number of bytes`);
    }
    const hashes: Partial<Record<UploadHash, string>> = {};
    for (const hash of UPLOAD_HASHES) if (typeof signed[hash] === 'string') hashes[hash] = signed[hash];
    const duration = signed.upload_duration === undefined ? undefined : Number(signed.upload_duration);
    files.push({
      field,
      name: (signed.name as string | undefined) ?? '',
      path: path === '' ? undefined : path,
      remoteId: remoteId === '' ? undefined : remoteId,
      remoteUrl: remoteId === '' ? undefined : ((signed.remote_url as string | undefined) ?? ''),
      size,
      hashes,
      uploadDuration: duration !== undefined && Number.isFinite(duration) ? duration : undefined,
    });
  }
  for (const field of required) if (!files.some((f) => f.field === field)) throw noFile(field);
  return files;
}

/** A readable request body with its headers: a node:http `IncomingMessage` (Express `req`, fastify `request.raw`). */
export interface RequestBody extends AsyncIterable<Uint8Array | string> {
  headers: Readonly<Record<string, string | readonly string[] | undefined>>;
  /** A node:stream `Readable`'s, to stop reading past the limit without destroying the socket (so a 413 can still be sent). */
  iterator?(options: { destroyOnReturn: boolean }): AsyncIterable<Uint8Array | string>;
}

export interface ReadFieldsOptions {
  /** Bytes of body read at most; more is an `EDGE_VERIFY_TOO_LARGE` (413). Default 1 MiB. */
  limit?: number;
}

/**
 * Reads the small form Outrider forwards after storing an upload (`multipart/form-data`, or
 * `application/x-www-form-urlencoded` for body uploads) into a `FormData`, with nothing but Node's
 * own fetch classes. The files are not in it: only their fields.
 */
export async function readFields(req: RequestBody, options: ReadFieldsOptions = {}): Promise<FormData> {
  const limit = options.limit ?? 1024 * 1024;
  const tooLarge = () =>
    new OutriderVerificationError('EDGE_VERIFY_TOO_LARGE', `the form is larger than ${limit} bytes`, { statusCode: 413 });
  const type = req.headers['content-type'];
  if (typeof type !== 'string') throw new OutriderVerificationError('EDGE_VERIFY_MALFORMED', 'the request has no Content-Type');
  if (Number(req.headers['content-length'] ?? 0) > limit) throw tooLarge();
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req.iterator === undefined ? req : req.iterator({ destroyOnReturn: false })) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    total += buffer.length;
    if (total > limit) throw tooLarge();
    chunks.push(buffer);
  }
  try {
    return await new Response(Buffer.concat(chunks, total), { headers: { 'content-type': type } }).formData();
  } catch (err) {
    throw new OutriderVerificationError('EDGE_VERIFY_MALFORMED', 'the form cannot be read', { cause: err });
  }
}

/** True when `check` does not throw. */
function succeeds(check: () => unknown): boolean {
  try {
    check();
    return true;
  } catch {
    return false;
  }
}

/** One header's value; absent or repeated is refused. */

function header(headers: RequestHeaders, name: string, statusCode: number): string {
  let value: unknown;
  if (typeof headers.get === 'function') value = (headers as { get(name: string): string | null }).get(name) ?? undefined;
  else {
    const record = headers as Readonly<Record<string, unknown>>;
    const lower = name.toLowerCase();
    value = Object.hasOwn(record, lower) ? record[lower] : Object.entries(record).find(([k]) => k.toLowerCase() === lower)?.[1];
  }
  if (Array.isArray(value) && value.length === 1) value = value[0];
  if (value === undefined || value === '') {
    throw new OutriderVerificationError('EDGE_VERIFY_MISSING', `the ${name} header is missing: the request did not come through Outrider`, {
      statusCode,
    });
  }
  if (typeof value !== 'string')
    throw new OutriderVerificationError('EDGE_VERIFY_MALFORMED', `the ${name} header is there more than once`, { statusCode });
  return value;
}

/** One form field's string value, undefined when absent; a field given twice or as a file is refused. */
function formValue(fields: FormFields, name: string): string | undefined {
  let values: unknown[];
  if (typeof (fields as { getAll?: unknown }).getAll === 'function') values = (fields as { getAll(name: string): unknown[] }).getAll(name);
  else {
    const record = fields as Readonly<Record<string, unknown>>;
    const value = fields instanceof Map ? fields.get(name) : Object.hasOwn(record, name) ? record[name] : undefined;
    values = value === undefined ? [] : Array.isArray(value) ? value : [value];
  }
  if (values.length === 0) return undefined;
  if (values.length > 1) throw new OutriderVerificationError('EDGE_VERIFY_MISMATCH', `the field ${name} is there more than once`);
  if (typeof values[0] !== 'string') throw new OutriderVerificationError('EDGE_VERIFY_MISMATCH', `the field ${name} is not a plain value`);
  return values[0];
}
