import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Busboy, type BusboyInstance } from '@fastify/busboy';
import type { FastifyBaseLogger, FastifyError } from 'fastify';
import type { Dispatcher } from 'undici';
import type { Config } from '../../config/schema.js';
import { ISSUER, signJwt } from '../../protocol/jwt.js';
import { REWRITTEN_FIELDS_CLAIM, SIGNED_UPLOAD_FIELD, UPLOAD_CLAIM, UPLOAD_HASHES, UPLOAD_KEYS } from '../../protocol/upload-fields.js';
import { bodyUnread, closeAfterAnswer } from '../connection/linger.js';
import type { StallWatch } from '../connection/stall-watch.js';
import { EdgeBodyTimeout, EdgeRequestInvalid, endOnFault, toEdgeError, writeError } from '../errors.js';
import type { Exchange } from '../forward/exchange.js';
import type { BodyReplacement, Forwarder } from '../forward/forwarder.js';
import { API_REQUEST, MULTIPART_FIELDS } from '../forward/headers.js';
import { duplicateSingleton } from '../forward/request-headers.js';

import { type AccessLog, createAccessLog } from '../observe/log/access-line.js';
import type { Metrics } from '../observe/metrics/catalogue.js';
import type { Outbound } from '../outbound/client.js';
import type { ErrorPages } from '../routes/error-pages.js';
import { type Authorization, apiRequestToken, authorize } from './authorize.js';
import { Stash, type StoredFile, StoreError, storeFile } from './store/index.js';

type UploadRoute = Config['uploads']['routes'][number];

export interface UploadOptions {
  uploads: Config['uploads'];
  secret: Buffer;
  upstream: Dispatcher;
  outbound: Outbound;
  forward: Forwarder;
  version: string;
  log: FastifyBaseLogger;
  isClosing: () => boolean;
  metrics?: Metrics | undefined;
  /** Set when `document_root` is: Outrider's own 5xx answers use `<status>.html`. */
  errorPages?: ErrorPages | undefined;
  /** `client_body_timeout`: an upload whose body stops arriving is answered 408 and its files removed. */
  stallWatch?: StallWatch | undefined;
}

/** The fields a file part `<f>` becomes, in the order they are sent (Workhorse's names). */
const FILE_FIELDS = [...UPLOAD_KEYS, SIGNED_UPLOAD_FIELD] as const;
/** Bytes of a non-file field, and of all of them together: the rewritten body is held in memory. */
const FIELD_LIMIT = 1024 * 1024;
const FIELDS_TOTAL_LIMIT = 10 * 1024 * 1024;
const FIELDS_COUNT_LIMIT = 1000;

type Part =
  | { kind: 'field'; name: string; value: Buffer; contentType: string }
  | { kind: 'file'; name: string; filename: string; stored: StoredFile };

/**
 * Upload acceleration (Workhorse `upload`): requests matching an `[[uploads.routes]]` entry are
 * pre-authorized by the backend, their files stored (local disk or object storage) and hashed in
 * one streaming pass, and the backend receives a small rewritten request whose fields say where
 * each file is, signed with the shared secret. Everything else goes to `forward` untouched.
 */
export function createUploads(opts: UploadOptions): Forwarder {
  const routes = opts.uploads.routes;
  if (routes.length === 0) return opts.forward;
  const accessLog = createAccessLog(opts.log);
  const methods = new Set(routes.map((r) => r.method));
  return (exchange, replacement) => {
    const { req } = exchange;
    const url = req.url as string;
    const route =
      replacement === undefined && methods.has(req.method as string) && url.charCodeAt(0) === 47 && !opts.isClosing()
        ? matchRoute(routes, req.method as string, url)
        : undefined;
    if (route !== undefined) exchange.measure?.route(route.path.source);
    if (route === undefined || (route.kind === 'multipart' && !isMultipart(req.headers['content-type']))) {
      opts.forward(exchange, replacement);
      return;
    }
    handleUpload(route, exchange, opts, accessLog).catch((err: unknown) =>
      endOnFault(opts.log, exchange.requestId, exchange.res, err, 'upload', opts.errorPages),
    );
  };
}

function matchRoute(routes: readonly UploadRoute[], method: string, url: string): UploadRoute | undefined {
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  return routes.find((r) => r.method === method && r.path.test(path));
}

function isMultipart(type: string | undefined): boolean {
  return type !== undefined && /^multipart\/form-data\s*(;|$)/i.test(type);
}

async function handleUpload(route: UploadRoute, exchange: Exchange, opts: UploadOptions, accessLog: AccessLog) {
  const { req, res, requestId, peer, started } = exchange;
  const log = opts.log.child({ requestId });
  const stash = new Stash(opts.outbound);
  const abort = new AbortController();
  let forwarded = false;
  // Temp files and remote temp objects live exactly as long as the request: removed once the
  // backend's answer was relayed, on any error, and when the client goes away mid-upload.
  res.once('close', () => {
    abort.abort();
    void stash.clear().then((errors) => {
      for (const err of errors) log.warn({ err, subsystem: 'upload' }, 'upload temp file could not be removed');
    });
    // A forwarded request gets its access line from the forwarder; one answered here gets it now.
    if (!forwarded) accessLog(req, res, { requestId, started, peer, bytes: undefined });
  });
  const forward = (replacement: BodyReplacement) => {
    forwarded = true;
    opts.forward(exchange, replacement);
  };
  const fields = { subsystem: 'upload', route: route.path.source, kind: route.kind };
  const answer = (err: FastifyError) => {
    // The rest of the client's body is not read: writeError closes the connection after this answer.
    req.on('error', () => undefined);
    writeError(res, err, opts.errorPages);
  };
  const duplicate = duplicateSingleton(req);
  if (duplicate !== undefined) {
    log.info({ ...fields, outcome: 'invalid', status: 400 }, 'upload refused: ambiguous request headers');
    // As the forwarder does for the same refusal: the connection closes after it.
    res.shouldKeepAlive = false;
    answer(new EdgeRequestInvalid(duplicate));
    return;
  }
  opts.stallWatch?.body(req, () => {
    if (res.writableEnded || res.destroyed || forwarded) return;
    log.warn(
      { ...fields, outcome: 'timeout', timeoutMs: opts.stallWatch?.bodyTimeoutMs, durationMs: elapsed(started) },
      'upload body timeout: the body stopped arriving',
    );
    opts.metrics?.upload('failed', req);
    // Answered first, then the store is stopped; its files go when the response closes.
    answer(new EdgeBodyTimeout());
    abort.abort();
  });
  try {
    let auth: Authorization = { destination: { kind: 'local', dir: opts.uploads.tempDir }, maxSize: 0, hashes: [...UPLOAD_HASHES] };
    if (route.preauthorize) {
      const result = await authorize(opts.upstream, req, {
        peer,
        requestId,
        version: opts.version,
        secret: opts.secret,
        signal: abort.signal,
      });
      // The client left while the backend was asked: nothing is stored.
      if (abort.signal.aborted || res.destroyed) return;
      if ('refused' in result) {
        log.info({ ...fields, outcome: 'refused', status: result.refused.statusCode }, 'upload refused by the backend');
        opts.metrics?.upload('refused', req);
        if (bodyUnread(req)) closeAfterAnswer(res);
        req.on('error', () => undefined);
        res.writeHead(result.refused.statusCode, [...result.refused.headers, 'content-length', String(result.refused.body.length)]);
        res.end(result.refused.body);
        return;
      }
      auth = result.ok;
    }
    const store = {
      destination: auth.destination,
      hashes: auth.hashes,
      maxSize: auth.maxSize,
      stash,
      outbound: opts.outbound,
      tempDir: opts.uploads.tempDir,
      signal: abort.signal,
    };
    // Signed when the request is sent, not when the upload began: a backend checks the token's age.
    const signed = (): string[] => (route.preauthorize ? [API_REQUEST, apiRequestToken(opts.secret)] : []);
    if (route.kind === 'body') {
      const declared = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
      if (auth.maxSize > 0 && declared !== undefined && declared > auth.maxSize) {
        throw new StoreError('too-large', `the body is larger than the ${auth.maxSize} bytes allowed`);
      }
      const stored = await storeFile(req, { ...store, ...(declared === undefined ? {} : { size: declared }) });
      if (res.destroyed) return;
      const form = new URLSearchParams();
      for (const [name, value] of fileFields('file', '', stored, opts.secret)) form.append(name, value);
      log.info({ ...fields, outcome: 'stored', files: 1, bytes: stored.size, durationMs: elapsed(started) }, 'upload stored');
      opts.metrics?.upload('stored', req);
      forward({
        body: Buffer.from(form.toString()),
        contentType: 'application/x-www-form-urlencoded',
        headers: [MULTIPART_FIELDS, signJwt({ [REWRITTEN_FIELDS_CLAIM]: { file: stored.path }, iss: ISSUER }, opts.secret), ...signed()],
      });
      return;
    }
    const parts = await readMultipart(req, opts.uploads.maxFiles, store, abort);
    if (res.destroyed) return;
    const boundary = `outrider-${randomBytes(16).toString('hex')}`;
    const chunks: Buffer[] = [];
    const rewritten: Record<string, string> = {};
    let files = 0;
    let bytes = 0;
    for (const part of parts) {
      if (part.kind === 'field') {
        chunks.push(formPart(boundary, part.name, part.value, part.contentType));
        continue;
      }
      files++;
      bytes += part.stored.size;
      rewritten[part.name] = part.stored.path;
      for (const [name, value] of fileFields(part.name, part.filename, part.stored, opts.secret))
        chunks.push(formPart(boundary, name, Buffer.from(value)));
    }
    chunks.push(Buffer.from(`--${boundary}--\r\n`));
    log.info({ ...fields, outcome: 'stored', files, bytes, durationMs: elapsed(started) }, 'upload stored');
    opts.metrics?.upload('stored', req);
    forward({
      body: Buffer.concat(chunks),
      contentType: `multipart/form-data; boundary=${boundary}`,
      headers: [
        ...(files > 0 ? [MULTIPART_FIELDS, signJwt({ [REWRITTEN_FIELDS_CLAIM]: rewritten, iss: ISSUER }, opts.secret)] : []),
        ...signed(),
      ],
    });
  } catch (err) {
    abort.abort();
    if (res.destroyed || res.writableEnded) return;
    // The store and the multipart reader throw StoreError; anything else is the authorize request's.
    const edge = toEdgeError(err, 'backend');
    const level = edge.statusCode !== undefined && edge.statusCode < 500 ? 'info' : 'error';
    log[level]({ ...fields, err, outcome: 'failed', status: edge.statusCode, durationMs: elapsed(started) }, 'upload failed');
    opts.metrics?.upload('failed', req);
    answer(edge);
  }
}

const elapsed = (since: number) => Math.round(performance.now() - since);

/** `<f>.name`, `<f>.path`… and `<f>.gitlab-workhorse-upload`, the JWT signing all of them. */
function fileFields(prefix: string, filename: string, stored: StoredFile, secret: Buffer): [string, string][] {
  const upload: Record<string, string> = {
    name: filename,
    path: stored.path,
    remote_url: stored.remoteUrl,
    remote_id: stored.remoteId,
    size: String(stored.size),
  };
  for (const hash of UPLOAD_HASHES) {
    const digest = stored.hashes[hash];
    if (digest !== undefined) upload[hash] = digest;
  }
  upload.upload_duration = String(stored.durationS);
  const out: [string, string][] = Object.entries(upload).map(([k, v]) => [`${prefix}.${k}`, v]);
  out.push([`${prefix}.${SIGNED_UPLOAD_FIELD}`, signJwt({ [UPLOAD_CLAIM]: upload, iss: ISSUER }, secret)]);
  return out;
}

/** One part of the rewritten body; names escaped as browsers do (`"` → %22, CR/LF → %0D/%0A). */
function formPart(boundary: string, name: string, value: Buffer, contentType?: string): Buffer {
  const escaped = name.replace(/"/g, '%22').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
  const type = contentType === undefined || contentType === '' || contentType === 'text/plain' ? '' : `Content-Type: ${contentType}\r\n`;
  return Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${escaped}"\r\n${type}\r\n`), value, CRLF]);
}

const CRLF = Buffer.from('\r\n');

/**
 * With `defCharset: 'latin1'` busboy reads a field without a charset as one char per byte, so its
 * value goes back byte for byte; one that declared its charset goes back in it. (Names and file
 * names busboy decodes as UTF-8, as browsers send them.)
 */
function encodeField(value: string, contentType: string): Buffer {
  const charset = /;\s*charset="?([^";\s]+)/i.exec(contentType)?.[1]?.toLowerCase();
  if (charset === 'utf-8' || charset === 'utf8') return Buffer.from(value, 'utf8');
  if (charset === 'utf-16le' || charset === 'utf16le' || charset === 'ucs2' || charset === 'ucs-2') return Buffer.from(value, 'utf16le');
  return Buffer.from(value, 'latin1');
}

/** The last segment of a client's file name, with either kind of slash ("C:\\x\\a.png" → "a.png"). */
export function baseName(filename: string): string {
  const parts = filename.split(/[/\\]/);
  return parts[parts.length - 1] ?? '';
}

/**
 * Reads the multipart body part by part with busboy: each file is stored as it streams in (busboy
 * waits while a file is written, so memory stays flat), fields are kept in order. Resolves once
 * the body ended and every file is stored; rejects with a StoreError (400/413) for a malformed or
 * refused body, and when the client goes away.
 */
function readMultipart(
  req: IncomingMessage,
  maxFiles: number,
  store: Omit<Parameters<typeof storeFile>[1], 'size'>,
  abort: AbortController,
): Promise<Part[]> {
  return new Promise((resolve, reject) => {
    let bb: BusboyInstance;
    try {
      bb = new Busboy({
        headers: req.headers as { 'content-type': string },
        preservePath: true,
        defCharset: 'latin1',
        highWaterMark: 256 * 1024,
        fileHwm: 256 * 1024,
        // A file input left empty is sent with filename="": an ordinary (empty) field, as in Workhorse.
        isPartAFile: (_name, _type, filename) => filename !== undefined && filename !== '',
        limits: { files: maxFiles, fields: FIELDS_COUNT_LIMIT, fieldSize: FIELD_LIMIT, headerPairs: 100 },
      });
    } catch (err) {
      reject(new StoreError('invalid', 'the multipart body has no boundary', { cause: err }));
      return;
    }
    const parts: (Part | Promise<Part>)[] = [];
    const generated = new Set<string>();
    const fieldNames = new Set<string>();
    let fieldBytes = 0;
    let failed = false;
    const fail = (err: unknown) => {
      if (failed) return;
      failed = true;
      abort.abort();
      req.unpipe(bb);
      reject(err);
    };
    bb.on('field', (name, value, nameTruncated, valueTruncated, _encoding, contentType) => {
      if (failed || name === '') return;
      if (nameTruncated || valueTruncated) return fail(new StoreError('too-large', `a form field is larger than ${FIELD_LIMIT} bytes`));
      if (generated.has(name)) return fail(new StoreError('invalid', `the field "${name}" collides with an uploaded file's field`));
      fieldBytes += value.length;
      if (fieldBytes > FIELDS_TOTAL_LIMIT)
        return fail(new StoreError('too-large', `the form fields are larger than ${FIELDS_TOTAL_LIMIT} bytes`));
      fieldNames.add(name);
      parts.push({ kind: 'field', name, value: encodeField(value, contentType), contentType });
    });
    let files = 0;
    bb.on('file', (name, stream, filename) => {
      // busboy reports a part cut short on the part itself, possibly after its reader gave up:
      // the body's own 'error' (below) is what fails the request.
      stream.on('error', () => undefined);
      if (failed || name === '') {
        stream.resume();
        return;
      }
      const base = baseName(filename);
      if (base === '' || base === '.' || base === '..') {
        stream.resume();
        return fail(new StoreError('invalid', 'the file name is not allowed'));
      }
      const names = [name, ...FILE_FIELDS.map((f) => `${name}.${f}`)];
      if (names.some((n) => generated.has(n)) || names.slice(1).some((n) => fieldNames.has(n))) {
        stream.resume();
        return fail(new StoreError('invalid', `the file field "${name}" collides with another field`));
      }
      // One presigned object per request: a second file would overwrite the first.
      if (++files > 1 && store.destination.kind === 'remote') {
        stream.resume();
        return fail(new StoreError('invalid', 'only one file may be uploaded to object storage per request'));
      }
      for (const n of names) generated.add(n);
      const stored = storeFile(stream, store).then((file): Part => ({ kind: 'file', name, filename: base, stored: file }));
      stored.catch(fail);
      parts.push(stored);
    });
    bb.on('filesLimit', () => fail(new StoreError('invalid', `the request has more than ${maxFiles} files`)));
    bb.on('fieldsLimit', () => fail(new StoreError('invalid', `the request has more than ${FIELDS_COUNT_LIMIT} fields`)));
    bb.on('error', (err: Error) => fail(new StoreError('invalid', 'the multipart body is malformed', { cause: err })));
    bb.on('finish', () => {
      Promise.all(parts).then((done) => {
        if (!failed) resolve(done);
      }, fail);
    });
    req.on('error', () => undefined);
    req.on('close', () => {
      if (!req.complete) fail(new StoreError('invalid', 'the client went away mid-upload'));
    });
    req.pipe(bb);
  });
}
