import { type ServerResponse, STATUS_CODES } from 'node:http';
import createError, { type FastifyError, FastifyError as FastifyErrorBase } from '@fastify/error';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import { DirectiveError } from '../protocol/send-data.js';
import { ScaleError } from '../scaler/index.js';
import { bodyUnread, closeAfterAnswer } from './connection/linger.js';
import { type ErrorPages, writeErrorPage } from './routes/error-pages.js';
import { MetadataError } from './upload/exif/errors.js';
import { StoreError } from './upload/store/errors.js';

/** The HTTP error catalogue: one code, message and status per failure a client can see. */
export const EdgeUpstreamUnavailable = createError('EDGE_UPSTREAM_UNAVAILABLE', 'Bad Gateway: the backend is not responding', 502);
export const EdgeUpstreamTimeout = createError('EDGE_UPSTREAM_TIMEOUT', 'Gateway Timeout: the backend did not answer in time', 504);
export const EdgeUpstreamInvalidResponse = createError(
  'EDGE_UPSTREAM_INVALID_RESPONSE',
  'Bad Gateway: the backend sent an invalid response',
  502,
);
export const EdgeUpstreamInternalApi = createError('EDGE_UPSTREAM_INTERNAL_API', 'Internal Server Error', 500);
export const EdgeRequestInvalid = createError<[string, { cause: unknown }?]>('EDGE_REQUEST_INVALID', 'Bad Request: %s', 400);
export const EdgeRequestMalformed = createError('EDGE_REQUEST_MALFORMED', 'Bad Request: the request is not valid HTTP', 400);
export const EdgeHeadersTimeout = createError('EDGE_HEADERS_TIMEOUT', 'Request Timeout: the request headers did not arrive in time', 408);
export const EdgeHeadersTooLarge = createError(
  'EDGE_HEADERS_TOO_LARGE',
  'Request Header Fields Too Large: the request headers are too large',
  431,
);
export const EdgeSendfileMissing = createError('EDGE_SENDFILE_MISSING', 'Not Found', 404);
export const EdgeDirectiveInvalid = createError('EDGE_DIRECTIVE_INVALID', 'Bad Gateway: the backend sent an invalid instruction', 502);
export const EdgeSourceUnavailable = createError('EDGE_SOURCE_UNAVAILABLE', 'Bad Gateway: the requested content is not available', 502);
/** A send-url origin failed and the instruction named the status to answer (`ErrorResponseStatus`, `TimeoutResponseStatus`). */
const EdgeOriginFailed = createError<[string, { cause: unknown }?]>('EDGE_ORIGIN_FAILED', '%s', 502);
export const EdgeShuttingDown = createError('EDGE_SHUTTING_DOWN', 'Service Unavailable: shutting down', 503);
/** An upgrade (WebSocket…) beyond `[websocket] max_tunnels` open tunnels: refused before the backend sees it. */
export const EdgeTunnelsFull = createError('EDGE_TUNNELS_FULL', 'Service Unavailable: too many open connections', 503);
/** A CONNECT without `:protocol` (RFC 8441): Outrider is a reverse proxy, not a forward one. */
export const EdgeConnectRefused = createError('EDGE_CONNECT_REFUSED', 'Method Not Allowed: CONNECT is not proxied', 405);
export const EdgeBodyTimeout = createError('EDGE_BODY_TIMEOUT', 'Request Timeout: the request body stopped arriving', 408);
export const EdgeInternal = createError('EDGE_INTERNAL', 'Internal Server Error', 500);
export const EdgeStaticMissing = createError('EDGE_STATIC_MISSING', 'Not Found', 404);
export const EdgeUploadTooLarge = createError<[string]>('EDGE_UPLOAD_TOO_LARGE', 'Request Entity Too Large: %s', 413);
export const EdgeUploadInvalid = createError<[string]>('EDGE_UPLOAD_INVALID', 'Bad Request: %s', 400);
export const EdgeUploadUnprocessable = createError<[string, { cause: unknown }?]>(
  'EDGE_UPLOAD_UNPROCESSABLE',
  'Unprocessable Content: %s',
  422,
);
export const EdgeUploadStoreFailed = createError('EDGE_UPLOAD_STORE_FAILED', 'Bad Gateway: the upload could not be stored', 502);
export const EdgeUploadStoreTimeout = createError(
  'EDGE_UPLOAD_STORE_TIMEOUT',
  'Gateway Timeout: the upload could not be stored in time',
  504,
);

/** A peer accepted the request and then did not answer in time. Failing to connect at all is a 502. */
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);
/** undici refused what it was asked to send: for the backend, headers the client sent. */
const REFUSED_CODES = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED']);

/**
 * Whom a failed exchange was with: the client (what Node's parser could not read), the backend,
 * or a third-party origin (send-url, object storage).
 */
export type Peer = 'client' | 'backend' | 'origin';

/**
 * The one switch from an internal failure to the catalogue error a client sees. Layers below the
 * proxy (the scaler, the upload store, the send-data decoder, the outbound client) throw typed
 * errors that name what failed and choose no status; undici and socket failures are told apart by
 * their code (a wrapped one by its cause's). A catalogue error passes through as it is. Anything
 * else failed talking to `peer`: a 502, or a 504 when the peer accepted the request and then did
 * not answer in time.
 */
export function toEdgeError(err: unknown, peer: Peer = 'backend'): FastifyError {
  if (err instanceof StoreError) {
    switch (err.reason) {
      case 'too-large':
        return new EdgeUploadTooLarge(err.message);
      case 'invalid':
        return new EdgeUploadInvalid(err.message);
      case 'timeout':
        return new EdgeUploadStoreTimeout({ cause: err });
      case 'disk':
        return new EdgeInternal({ cause: err });
      case 'object-storage':
        return new EdgeUploadStoreFailed({ cause: err });
    }
  }
  if (err instanceof MetadataError) {
    return new EdgeUploadUnprocessable(
      err.reason === 'unsupported'
        ? 'the image is in a format whose metadata cannot be removed'
        : 'the image is malformed: its metadata cannot be removed',
      { cause: err },
    );
  }
  if (err instanceof ScaleError) {
    return err.code === 'EDGE_DIRECTIVE_INVALID' ? new EdgeDirectiveInvalid() : new EdgeSourceUnavailable({ cause: err });
  }
  if (err instanceof DirectiveError) return new EdgeDirectiveInvalid({ cause: err });
  if (isCatalogued(err)) return err;
  const code = errorCode(err);
  if (peer === 'client') {
    if (code === 'HPE_HEADER_OVERFLOW') return new EdgeHeadersTooLarge({ cause: err });
    if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return new EdgeHeadersTimeout({ cause: err });
    return new EdgeRequestMalformed({ cause: err });
  }
  if (TIMEOUT_CODES.has(code)) return new EdgeUpstreamTimeout({ cause: err });
  if (peer === 'origin') return new EdgeSourceUnavailable({ cause: err });
  if (REFUSED_CODES.has(code)) return new EdgeRequestInvalid('the request headers cannot be forwarded', { cause: err });
  return new EdgeUpstreamUnavailable({ cause: err });
}

/** An error's code, or its cause's (undici wraps socket errors): '' when it has none. */
export function errorCode(err: unknown): string {
  const e = err as { code?: string; cause?: { code?: string } } | null;
  return e?.cause?.code ?? e?.code ?? '';
}

/** The catalogue error for a failure the backend chose the status of: that status, its reason phrase as the body. */
export function failureWithStatus(status: number, cause: unknown): FastifyError {
  const err = new EdgeOriginFailed(STATUS_CODES[status] ?? 'Error', { cause });
  err.statusCode = status;
  return err;
}

/** One of the catalogue's errors above: made by `createError` with an `EDGE_` code. */
function isCatalogued(err: unknown): err is FastifyError {
  return err instanceof FastifyErrorBase && err.code.startsWith('EDGE_');
}

/**
 * Answers a hijacked response with a catalogue error as `text/plain`, or for a 5xx with
 * `<document_root>/<status>.html` when `pages` are given (`document_root` is set) and the page exists. Once
 * headers are out, the only honest answer is to cut the connection: never a silently truncated 200.
 *
 * This is the one error path, and it cannot throw: a head half-applied by an earlier `writeHead`
 * that Node refused (a backend's reason phrase with a control byte leaves it in `statusMessage`)
 * is replaced, and anything Node still refuses ends the connection instead.
 */
export function writeError(res: ServerResponse, err: FastifyError, pages?: ErrorPages): void {
  if (res.destroyed) return;
  if (res.headersSent || res.writableEnded) {
    res.destroy();
    return;
  }
  const status = err.statusCode ?? 500;
  // Answered before the client finished sending: the connection closes after this, gently.
  if (res.req !== undefined && bodyUnread(res.req)) closeAfterAnswer(res);
  try {
    const page = status >= 500 ? pages?.get(status) : undefined;
    if (page !== undefined) {
      writeErrorPage(res, status, page);
      return;
    }
    const body = `${err.message}\n`;
    // Node's own reason phrase (HTTP/2 has none: passing one there only earns a warning).
    res.writeHead(status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'x-content-type-options': 'nosniff',
    });
    res.end(body);
  } catch {
    res.destroy();
  }
}

/**
 * A callback of one request threw (a defect of Outrider's, or of an interceptor): the error is
 * logged with the request id, and that request alone ends, answered 500 when nothing was sent
 * yet, else with its connection cut. Every per-request entry point (the request listener, event
 * and timer callbacks, undici's handler calls, interceptors) ends up here instead of letting the
 * error reach `uncaughtException`, where it would take every other request of the process with it.
 * Never throws.
 */
export function endOnFault(
  log: FastifyBaseLogger,
  requestId: string,
  res: ServerResponse,
  err: unknown,
  where: string,
  pages?: ErrorPages,
): void {
  try {
    log.error({ err, requestId, subsystem: 'proxy', where }, 'request callback threw: this request is ended');
  } catch {
    // A logger that throws must not stop the request from being ended.
  }
  writeError(res, new EdgeInternal({ cause: err }), pages);
}

/** Client errors pass through; anything else is logged and answered with a generic 500. */
export function setErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError, request, reply) => {
    const status = err.statusCode ?? 500;
    if (status < 500) {
      reply.code(status).type('text/plain; charset=utf-8').send(`${err.message}\n`);
      return;
    }
    request.log.error({ err }, 'request failed');
    const generic = new EdgeInternal();
    reply.code(500).type('text/plain; charset=utf-8').send(`${generic.message}\n`);
  });
}
