/**
 * `outrider/express`: the toolkit as Express 5 middleware. `app.use(outrider({ secretPath }))`
 * gives every `res` the toolkit's answers as methods (`res.sendScaledImage`,
 * `res.sendFileThroughOutrider`, `res.sendUrl`), and the same object makes the two per-route
 * middlewares of an accelerated upload: `authorizeUpload` (Outrider's `/authorize` call) and
 * `verifyUpload` (the signed fields, onto `req.uploads` and `req.body`). A refused check is answered
 * here, as JSON `{ "error": { "code", "message" } }`, never through Express' error page.
 *
 * Express is not imported, not even its types: the request and response are node:http's, and the
 * methods are declared on the global `Express` namespace that `@types/express` merges into its own.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isAbsolute } from 'node:path';
import { OutriderVerificationError } from '../protocol/errors.js';
import { MULTIPART_FIELDS_HEADER } from '../protocol/headers.js';
import { loadSecret, SECRET_BYTES } from '../protocol/secret.js';
import { SIGNED_UPLOAD_FIELD, UPLOAD_KEYS } from '../protocol/upload-fields.js';
import {
  DETECT_CONTENT_TYPE,
  respond,
  type ScaledImageOptions,
  type SendUrlOptions,
  sendFile,
  sendScaledImage,
  sendUrl,
} from './send-data.js';
import {
  type AuthorizeOptions,
  authorizeResponse,
  type RemoteObject,
  readFields,
  type UploadedFile,
  type UploadHash,
  type VerifyApiRequestOptions,
  verifyApiRequest,
  verifyUploadFields,
} from './upload.js';

export type { RemoteObject, ScaledImageOptions, SendUrlOptions, UploadedFile, UploadHash };
export { OutriderVerificationError };

/** `res.sendFileThroughOutrider`'s options. */
export interface SendFileThroughOutriderOptions {
  /** Outrider sniffs the file's type and makes what a browser would run an attachment: for files users uploaded. */
  detectContentType?: boolean;
}

/** `res.sendUrl`'s options: the toolkit's `sendUrl` options, and `detectContentType`. */
export interface SendUrlThroughOutriderOptions extends SendUrlOptions {
  /** Outrider sniffs the answer's type and makes what a browser would run an attachment: for files users uploaded. */
  detectContentType?: boolean;
}

declare global {
  namespace Express {
    interface Request {
      /**
       * The files of an accelerated upload, by form field, verified by `verifyUpload()` (set on the
       * routes that use it). Move or copy a file before answering: Outrider deletes it afterwards.
       */
      uploads?: Readonly<Record<string, UploadedFile>>;
    }
    interface Response {
      /**
       * Answers 200 with a `send-scaled-img` directive: Outrider scales the image at `location` to
       * `width` (or serves the original) and answers revalidations with 304. Headers set before
       * (Cache-Control…) are kept. Set by `app.use(outrider(…))`.
       */
      sendScaledImage(options: ScaledImageOptions): this;
      /**
       * Answers 200 with `X-Sendfile: <path>` (absolute): Outrider serves the file, with ranges and
       * conditional requests. Headers set before are kept (`res.attachment(name)` sets Content-Type and
       * Content-Disposition); without a Content-Type Outrider sniffs one. Set by `app.use(outrider(…))`.
       */
      sendFileThroughOutrider(path: string, options?: SendFileThroughOutriderOptions): this;
      /**
       * Answers 200 with a `send-url` directive: Outrider requests `url` and streams the answer to
       * the client. Set by `app.use(outrider(…))`.
       */
      sendUrl(url: string, options?: SendUrlThroughOutriderOptions): this;
    }
  }
}

export interface OutriderOptions {
  /** The file Outrider's `secret_path` names (the base64 of 32 bytes), read once, now. Or give `secret`. */
  secretPath?: string;
  /** The 32 secret bytes themselves, as the toolkit's `loadSecret` returns them. Or give `secretPath`. */
  secret?: Buffer;
  /**
   * The directory (absolute) `authorizeUpload()` tells Outrider to store uploads in, and the one
   * `verifyUpload()` requires every stored file to be directly inside. A route can give its own.
   */
  tempPath?: string;
  /** The age and clock skew `authorizeUpload()` allows Outrider's token (the toolkit's `verifyApiRequest` options). */
  apiRequest?: VerifyApiRequestOptions;
}

/** What `authorizeUpload()` answers Outrider: the toolkit's `authorizeResponse` options, `tempPath` defaulting to `outrider()`'s. */
export interface AuthorizeUploadOptions {
  /** Where Outrider stores the files (absolute). Default: `outrider()`'s `tempPath`. */
  tempPath?: string;
  /** Object storage instead of `tempPath` (presigned URLs: give a function that makes them per request). */
  remoteObject?: RemoteObject;
  /** Bytes allowed per file; Outrider answers 413 past it. Default: no limit. */
  maximumSize?: number;
  /** The hashes Outrider computes; default all four. */
  uploadHashFunctions?: readonly UploadHash[];
}

export interface VerifyUploadOptions {
  /** Fields that must hold a file: a form sent with one left empty is refused with `EDGE_VERIFY_NO_FILE`. */
  required?: string | readonly string[];
  /** The directory (or several) each stored file must be inside. Default: `outrider()`'s `tempPath`. */
  tempPath?: string | readonly string[];
  /** Bytes of the forwarded form read at most (fields only, no file bytes); more is a 413. Default 1 MiB. */
  formLimit?: number;
}

/** A request as the middlewares see it: node:http's, with what they set. Express' `req` is one. */
type Req = IncomingMessage & Express.Request & { body?: unknown };
/** A response as the middlewares see it: node:http's, with the methods they set. Express' `res` is one. */
type Res = ServerResponse & Express.Response;
/** A middleware Express (and connect-style routers) can use. */
export type OutriderHandler = (req: Req, res: Res, next: (err?: unknown) => void) => void;

/** `app.use(outrider(…))` adds the response methods; `authorizeUpload` and `verifyUpload` make per-route middlewares. */
export interface OutriderMiddleware extends OutriderHandler {
  /**
   * Answers Outrider's `<path>/authorize` call: checks its `Gitlab-Workhorse-Api-Request` token
   * (a JSON 401 otherwise) and lets the upload in. Put your own checks (session, quota) before it:
   * whatever they answer instead, Outrider relays to the client and stores nothing. A function
   * gives the options per request (a presigned `remoteObject`, a per-user `maximumSize`).
   */
  authorizeUpload<R extends Req = Req>(
    options?: AuthorizeUploadOptions | ((req: R) => AuthorizeUploadOptions | Promise<AuthorizeUploadOptions>),
  ): (req: R, res: Res, next: (err?: unknown) => void) => void;
  /**
   * Verifies what Outrider forwards once it has stored an upload and sets `req.uploads` (the
   * files, by field) and `req.body` (the other fields: a string each, an array when repeated).
   * Anything forged, unsigned or missing is answered with a JSON 400 and never reaches the route.
   */
  verifyUpload(options?: VerifyUploadOptions): OutriderHandler;
}

/**
 * The Express adapter. Throws at once, naming what is wrong, when no usable secret is given:
 * `secretPath` (read with the toolkit's `loadSecret`) or `secret` (32 bytes).
 */
export function outrider(options: OutriderOptions): OutriderMiddleware {
  const secret = secretOf(options);
  const defaultTempPath = options.tempPath;
  if (defaultTempPath !== undefined && !isAbsolute(defaultTempPath)) {
    throw new TypeError(`outrider: tempPath must be an absolute directory, got ${JSON.stringify(defaultTempPath)}`);
  }

  const middleware: OutriderHandler = (_req, res, next) => {
    res.sendScaledImage = methods.sendScaledImage as Res['sendScaledImage'];
    res.sendFileThroughOutrider = methods.sendFileThroughOutrider as Res['sendFileThroughOutrider'];
    res.sendUrl = methods.sendUrl as Res['sendUrl'];
    next();
  };

  const toAuthorizeOptions = (given: AuthorizeUploadOptions): AuthorizeOptions => {
    const common = {
      ...(given.maximumSize === undefined ? {} : { maximumSize: given.maximumSize }),
      ...(given.uploadHashFunctions === undefined ? {} : { uploadHashFunctions: given.uploadHashFunctions }),
    };
    if (given.remoteObject !== undefined) {
      if (given.tempPath !== undefined) throw new TypeError('authorizeUpload: give tempPath or remoteObject, not both');
      return { ...common, remoteObject: given.remoteObject };
    }
    const tempPath = given.tempPath ?? defaultTempPath;
    if (tempPath === undefined) throw new TypeError('authorizeUpload: give tempPath (here or to outrider()) or remoteObject');
    return { ...common, tempPath };
  };

  const authorizeUpload: OutriderMiddleware['authorizeUpload'] = (given = {}) => {
    // Fixed options are checked now, so a mistake fails at start rather than on the first upload.
    const fixed = typeof given === 'function' ? undefined : authorizeResponse(toAuthorizeOptions(given));
    return (req, res, next) => {
      try {
        verifyApiRequest(req.headers, secret, options.apiRequest);
      } catch (err) {
        return void refuseOr(err, res, next);
      }
      if (fixed !== undefined) return void respond(res, fixed);
      Promise.resolve()
        .then(() => (given as (req: Req) => AuthorizeUploadOptions | Promise<AuthorizeUploadOptions>)(req))
        .then((perRequest) => void respond(res, authorizeResponse(toAuthorizeOptions(perRequest))), next);
    };
  };

  const verifyUpload: OutriderMiddleware['verifyUpload'] = (given = {}) => {
    const tempPath = given.tempPath ?? defaultTempPath;
    const verifyOptions = {
      ...(tempPath === undefined ? {} : { tempPath }),
      ...(given.required === undefined ? {} : { required: given.required }),
    };
    const readOptions = given.formLimit === undefined ? {} : { limit: given.formLimit };
    return (req, res, next) => {
      receive(req, secret, verifyOptions, readOptions).then(
        ({ uploads, body }) => {
          req.uploads = uploads;
          req.body = body;
          next();
        },
        (err: unknown) => refuseOr(err, res, next),
      );
    };
  };

  return Object.assign(middleware, { authorizeUpload, verifyUpload });
}

/** The response methods, shared by every response (`this` is the response). */
const methods = {
  sendScaledImage(this: ServerResponse, options: ScaledImageOptions) {
    return respond(this, sendScaledImage(options));
  },
  sendFileThroughOutrider(this: ServerResponse, path: string, options: SendFileThroughOutriderOptions = {}) {
    return respond(this, sendFile(path), detect(options.detectContentType));
  },
  sendUrl(this: ServerResponse, url: string, options: SendUrlThroughOutriderOptions = {}) {
    const { detectContentType, ...sendUrlOptions } = options;
    return respond(this, sendUrl(url, sendUrlOptions), detect(detectContentType));
  },
};

function detect(detectContentType: boolean | undefined): Record<string, string> {
  return detectContentType === true ? { [DETECT_CONTENT_TYPE.name]: DETECT_CONTENT_TYPE.value } : {};
}

function secretOf(options: OutriderOptions): Buffer {
  const { secret, secretPath } = options ?? {};
  if (secret !== undefined && secretPath !== undefined) throw new TypeError('outrider: give secretPath or secret, not both');
  if (secretPath !== undefined) return loadSecret(secretPath);
  if (secret === undefined) {
    throw new TypeError(
      'outrider: no secret: give secretPath, the file Outrider reads as secret_path (make one with `head -c 32 /dev/urandom | base64 > secret`), or secret (its 32 bytes)',
    );
  }
  if (!Buffer.isBuffer(secret) || secret.length !== SECRET_BYTES) {
    throw new TypeError(`outrider: secret must be a Buffer of ${SECRET_BYTES} bytes (loadSecret(path) reads one)`);
  }
  return secret;
}

/** The files and other fields of an upload Outrider forwarded, verified. */
async function receive(
  req: Req,
  secret: Buffer,
  verifyOptions: { tempPath?: string | readonly string[]; required?: string | readonly string[] },
  readOptions: { limit?: number },
): Promise<{ uploads: Record<string, UploadedFile>; body: Record<string, unknown> }> {
  // Without Outrider's header the fields cannot change the verdict (only why): refuse without reading the body.
  if (req.headers[MULTIPART_FIELDS_HEADER.toLowerCase()] === undefined) verifyUploadFields(req.headers, {}, secret, verifyOptions);
  // A body parser that ran first (express.urlencoded for body uploads, multer's none()) left the fields in req.body.
  const parsed = req.readableEnded ? ((req.body ?? {}) as Readonly<Record<string, unknown>>) : undefined;
  const form = parsed === undefined ? await readFields(req, readOptions) : undefined;
  const files = verifyUploadFields(req.headers, form ?? parsed ?? {}, secret, verifyOptions);
  // req.body is the client's own fields: the file fields Outrider wrote are in req.uploads.
  const taken = new Set(files.flatMap((f) => [...UPLOAD_KEYS, SIGNED_UPLOAD_FIELD].map((key) => `${f.field}.${key}`)));
  const uploads = Object.fromEntries(files.map((f) => [f.field, f]));
  if (parsed !== undefined) return { uploads, body: Object.fromEntries(Object.entries(parsed).filter(([name]) => !taken.has(name))) };
  const body = new Map<string, string[]>();
  for (const [name, value] of form ?? []) {
    if (taken.has(name) || typeof value !== 'string') continue;
    const list = body.get(name);
    if (list === undefined) body.set(name, [value]);
    else list.push(value);
  }
  return {
    uploads,
    body: Object.fromEntries([...body].map(([name, values]) => [name, values.length === 1 ? (values[0] as string) : values])),
  };
}

/** Answers a refused check as JSON with its status (400, 401 at /authorize, 413 for a form too large); anything else goes to `next`. */
function refuseOr(err: unknown, res: ServerResponse, next: (err?: unknown) => void): void {
  if (!(err instanceof OutriderVerificationError) || res.headersSent) {
    next(err);
    return;
  }
  const body = JSON.stringify({ error: { code: err.code, message: err.message } });
  res.statusCode = err.statusCode;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}
