import { type ServerResponse, STATUS_CODES } from 'node:http';
import createError, { type FastifyError } from '@fastify/error';
import type { FastifyInstance } from 'fastify';
import { bodyUnread, closeAfterAnswer } from './connection/linger.js';
import { type ErrorPages, writeErrorPage } from './routes/error-pages.js';

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
export const EdgeSendfileMissing = createError('EDGE_SENDFILE_MISSING', 'Not Found', 404);
export const EdgeDirectiveInvalid = createError('EDGE_DIRECTIVE_INVALID', 'Bad Gateway: the backend sent an invalid instruction', 502);
export const EdgeSourceUnavailable = createError('EDGE_SOURCE_UNAVAILABLE', 'Bad Gateway: the requested content is not available', 502);
export const EdgeShuttingDown = createError('EDGE_SHUTTING_DOWN', 'Service Unavailable: shutting down', 503);
export const EdgeBodyTimeout = createError('EDGE_BODY_TIMEOUT', 'Request Timeout: the request body stopped arriving', 408);
export const EdgeInternal = createError('EDGE_INTERNAL', 'Internal Server Error', 500);
export const EdgeStaticMissing = createError('EDGE_STATIC_MISSING', 'Not Found', 404);
export const EdgeUploadTooLarge = createError<[string]>('EDGE_UPLOAD_TOO_LARGE', 'Request Entity Too Large: %s', 413);
export const EdgeUploadInvalid = createError<[string]>('EDGE_UPLOAD_INVALID', 'Bad Request: %s', 400);
export const EdgeUploadStoreFailed = createError('EDGE_UPLOAD_STORE_FAILED', 'Bad Gateway: the upload could not be stored', 502);
export const EdgeUploadStoreTimeout = createError(
  'EDGE_UPLOAD_STORE_TIMEOUT',
  'Gateway Timeout: the upload could not be stored in time',
  504,
);

/** The backend accepted the request and then did not answer in time. Failing to connect at all is a 502. */
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/** Maps an undici (or socket) failure talking to the backend to the error the client sees. */
export function mapUpstreamError(err: unknown): FastifyError {
  const e = err as { code?: string; cause?: { code?: string } };
  const code = e.cause?.code ?? e.code ?? '';
  if (TIMEOUT_CODES.has(code)) return new EdgeUpstreamTimeout({ cause: err });
  if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED') {
    return new EdgeRequestInvalid('the request headers cannot be forwarded', { cause: err });
  }
  return new EdgeUpstreamUnavailable({ cause: err });
}

const kErrorPages = Symbol('outrider.errorPages');
type PagedResponse = ServerResponse & { [kErrorPages]?: ErrorPages };

/** Outrider's own 5xx answers on this response use `document_root`'s error pages when one exists. */
export function useErrorPages(res: ServerResponse, pages: ErrorPages): void {
  (res as PagedResponse)[kErrorPages] = pages;
}

/**
 * Answers a hijacked response with a catalogue error as `text/plain`, or for a 5xx with
 * `<document_root>/<status>.html` when `useErrorPages` was called and the page exists. Once
 * headers are out, the only honest answer is to cut the connection: never a silently truncated 200.
 *
 * This is the one error path, and it cannot throw: a head half-applied by an earlier `writeHead`
 * that Node refused (a backend's reason phrase with a control byte leaves it in `statusMessage`)
 * is replaced, and anything Node still refuses ends the connection instead.
 */
export function writeError(res: ServerResponse, err: FastifyError): void {
  if (res.destroyed) return;
  if (res.headersSent || res.writableEnded) {
    res.destroy();
    return;
  }
  const status = err.statusCode ?? 500;
  // Answered before the client finished sending: the connection closes after this, gently.
  if (res.req !== undefined && bodyUnread(res.req)) closeAfterAnswer(res);
  try {
    const page = status >= 500 ? (res as PagedResponse)[kErrorPages]?.get(status) : undefined;
    if (page !== undefined) {
      writeErrorPage(res, status, page);
      return;
    }
    const body = `${err.message}\n`;
    res.writeHead(status, STATUS_CODES[status] ?? 'Error', {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'x-content-type-options': 'nosniff',
    });
    res.end(body);
  } catch {
    res.destroy();
  }
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
