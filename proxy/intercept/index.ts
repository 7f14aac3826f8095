import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import { API_CONTENT_TYPE } from '../../protocol/headers.js';
import type { Scaler } from '../../scaler/index.js';
import { EdgeUpstreamInternalApi, writeError } from '../errors.js';
import type { Metrics } from '../observe/metrics/catalogue.js';
import type { Outbound } from '../outbound/client.js';
import { createScaledImg } from './scaled-img.js';
import { createSendUrl } from './send-url.js';
import { sendfile } from './sendfile.js';

/**
 * What the backend answered, read once while its headers are copied: `headers` is the flat
 * [name, value, …] list a client would get (hop-by-hop and instruction headers already removed),
 * and the instruction headers are kept apart for the interceptors to match on.
 */
export interface ResponseHead {
  statusCode: number;
  statusMessage: string;
  headers: string[];
  contentType: string | undefined;
  sendData: string | undefined;
  sendfile: string | undefined;
  detectContentType: boolean;
  /** The backend sent a Content-Length: its body has a known end (else it is chunked or ends with the connection). */
  hasLength: boolean;
}

export interface InterceptContext {
  req: IncomingMessage;
  res: ServerResponse;
  requestId: string;
  head: ResponseHead;
  /** A logger bound to this request id, made when first read. */
  readonly log: FastifyBaseLogger;
  /**
   * True once the client has left before the whole answer was written out (to the socket: an
   * answer ended and flushed counts as delivered, whatever the client then reads of it).
   */
  readonly clientGone: boolean;
  /** Aborted when `clientGone` becomes true; made when first read. */
  readonly signal: AbortSignal;
  /** Set when `prometheus_listen_addr` is. */
  metrics: Metrics | undefined;
}

/**
 * A response interceptor takes over a backend response: the backend's body is discarded and
 * `serve` writes the client's answer. `name` is the log label.
 */
export interface Interceptor {
  name: string;
  match(head: ResponseHead): boolean;
  serve(ctx: InterceptContext): Promise<void>;
}

/** Internal API answers (pre-authorize JSON) must never reach a client (Workhorse `api.Block`). */
export const blockInternalApi: Interceptor = {
  name: 'internal-api-block',
  match(head) {
    const type = head.contentType;
    return (
      type !== undefined &&
      type.length >= API_CONTENT_TYPE.length &&
      type.slice(0, API_CONTENT_TYPE.length).toLowerCase() === API_CONTENT_TYPE
    );
  },
  async serve({ res, log, head }) {
    log.warn({ subsystem: 'proxy', status: head.statusCode }, 'blocked a backend response with an internal API content type');
    writeError(res, new EdgeUpstreamInternalApi());
  },
};

/** The single registration list, in match order; the first match wins. */
export function createInterceptors(deps: { outbound: Outbound; scaler: Scaler; maxWidth: number; log?: FastifyBaseLogger }): Interceptor[] {
  return [
    blockInternalApi,
    sendfile,
    createScaledImg(deps.scaler, { maxWidth: deps.maxWidth, log: deps.log }),
    createSendUrl(deps.outbound),
  ];
}
