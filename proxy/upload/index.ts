import type { FastifyBaseLogger, FastifyError } from 'fastify';
import type { Dispatcher } from 'undici';
import type { Config } from '../../config/schema.js';
import { UPLOAD_HASHES } from '../../protocol/upload-fields.js';
import { bodyUnread, closeAfterAnswer } from '../connection/linger.js';
import type { StallWatch } from '../connection/stall-watch.js';
import { EdgeBodyTimeout, EdgeRequestInvalid, endOnFault, toEdgeError, writeError } from '../errors.js';
import type { Exchange } from '../forward/exchange.js';
import type { BodyReplacement, Forwarder } from '../forward/forwarder.js';
import { API_REQUEST } from '../forward/headers.js';
import { duplicateSingleton } from '../forward/request-headers.js';
import { type AccessLog, createAccessLog } from '../observe/log/access-line.js';
import type { Metrics } from '../observe/metrics/catalogue.js';
import type { Outbound } from '../outbound/client.js';
import type { ErrorPages } from '../routes/error-pages.js';
import { type Authorization, apiRequestToken, authorize } from './authorize.js';
import { saveStripped } from './exif/index.js';
import { readMultipart } from './multipart.js';
import { rewriteBody, rewriteMultipart } from './rewrite.js';
import { StoreError } from './store/errors.js';
import { type ObjectStorage, type StoredFile, storeFile } from './store/index.js';
import { Stash } from './store/stash.js';

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
  /** `[object_storage]`: the own client for answers with `RemoteObject.UseWorkhorseClient`. */
  objectStorage?: ObjectStorage | undefined;
  /** Set when `document_root` is: Outrider's own 5xx answers use `<status>.html`. */
  errorPages?: ErrorPages | undefined;
  /** `client_body_timeout`: an upload whose body stops arriving is answered 408 and its files removed. */
  stallWatch?: StallWatch | undefined;
}

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
    // A body that is not multipart on a multipart route carries no file to store: as in Workhorse,
    // it is still authorized (and signed) when the route is, then forwarded as it came.
    const files = route !== undefined && (route.kind === 'body' || isMultipart(req.headers['content-type']));
    if (route === undefined || (!files && !route.preauthorize)) {
      opts.forward(exchange, replacement);
      return;
    }
    handleUpload(route, files, exchange, opts, accessLog).catch((err: unknown) =>
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

async function handleUpload(route: UploadRoute, files: boolean, exchange: Exchange, opts: UploadOptions, accessLog: AccessLog) {
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
  if (!files && /^multipart\//i.test(req.headers['content-type'] ?? '')) {
    // Another multipart type (multipart/mixed…) would reach the backend with its files unstored
    // and unchecked, but signed: refused, as nothing here reads it.
    log.info({ ...fields, outcome: 'rejected', status: 400 }, 'upload refused: a multipart body that is not multipart/form-data');
    opts.metrics?.upload('rejected', req);
    answer(new EdgeRequestInvalid('uploads must be multipart/form-data'));
    return;
  }
  opts.stallWatch?.body(req, () => {
    if (res.writableEnded || res.destroyed || forwarded) return;
    log.warn(
      { ...fields, outcome: 'timeout', timeoutMs: opts.stallWatch?.bodyTimeoutMs, durationMs: elapsed(started) },
      'upload body timeout: the body stopped arriving',
    );
    opts.metrics?.upload('rejected', req);
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
      if (result.wwwAuthenticate !== undefined && result.wwwAuthenticate !== '') res.setHeader('WWW-Authenticate', result.wwwAuthenticate);
    }
    const store = {
      destination: auth.destination,
      hashes: auth.hashes,
      maxSize: auth.maxSize,
      stash,
      outbound: opts.outbound,
      tempDir: opts.uploads.tempDir,
      signal: abort.signal,
      objectStorage: opts.objectStorage,
      fileMode: opts.uploads.fileMode,
    };
    // Signed when the request is sent, not when the upload began: a backend checks the token's age.
    const signed = (): string[] => (route.preauthorize ? [API_REQUEST, apiRequestToken(opts.secret)] : []);
    if (!files) {
      log.info(
        { ...fields, outcome: 'not-multipart', durationMs: elapsed(started) },
        'upload route: no multipart body, forwarded as it came',
      );
      forward({ headers: signed() });
      return;
    }
    const strip = { tempDir: opts.uploads.tempDir, maxSize: auth.maxSize, fileMode: opts.uploads.fileMode };
    let stored: StoredFile[];
    let replacement: BodyReplacement;
    if (route.kind === 'body') {
      const declared = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
      if (auth.maxSize > 0 && declared !== undefined && declared > auth.maxSize) {
        throw new StoreError('too-large', `the body is larger than the ${auth.maxSize} bytes allowed`);
      }
      // Outrider reads the body itself: a client that sent `Expect: 100-continue` is asked for it
      // only now the upload is allowed (a refusal above goes out without it).
      exchange.sendContinue();
      // Stripped, the file is shorter than the body: its declared length no longer applies.
      const file = route.strip_exif
        ? await saveStripped(req, strip, (clean) => storeFile(clean, store))
        : await storeFile(req, { ...store, ...(declared === undefined ? {} : { size: declared }) });
      if (res.destroyed) return;
      stored = [file];
      replacement = rewriteBody(file, opts.secret, signed());
    } else {
      exchange.sendContinue();
      const parts = await readMultipart(req, opts.uploads.maxFiles, store, abort, route.strip_exif ? strip : undefined);
      if (res.destroyed) return;
      stored = parts.flatMap((part) => (part.kind === 'file' ? [part.stored] : []));
      replacement = rewriteMultipart(parts, opts.secret, signed());
    }
    const bytes = stored.reduce((sum, file) => sum + file.size, 0);
    log.info({ ...fields, outcome: 'stored', files: stored.length, bytes, durationMs: elapsed(started) }, 'upload stored');
    opts.metrics?.upload('stored', req);
    forward(replacement);
  } catch (err) {
    abort.abort();
    if (res.destroyed || res.writableEnded) return;
    // The store and the multipart reader throw StoreError; anything else is the authorize request's.
    const edge = toEdgeError(err, 'backend');
    // A 4xx is the client's upload at fault (too large, malformed): not a failure of Outrider's.
    const rejected = edge.statusCode !== undefined && edge.statusCode < 500;
    const outcome = rejected ? 'rejected' : 'failed';
    log[rejected ? 'info' : 'error'](
      { ...fields, err, outcome, status: edge.statusCode, durationMs: elapsed(started) },
      `upload ${outcome}`,
    );
    opts.metrics?.upload(outcome, req);
    answer(edge);
  }
}

const elapsed = (since: number) => Math.round(performance.now() - since);
