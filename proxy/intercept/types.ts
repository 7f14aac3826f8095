import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';

/**
 * The interceptor contract, apart from the list of interceptors (`index.ts`), as Workhorse keeps
 * its `Injecter` interface apart from `upstream/routes.go`: the forwarder and every interceptor
 * import this, and it imports nothing of Outrider's.
 */

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
  /**
   * Answers the client with the catalogue error for `err`: a catalogue error is sent as it is,
   * typed errors are mapped by `toEdgeError` in `proxy/errors.ts`, and anything else counts as the
   * interceptor's source failing (502, or 504 when it accepted the request and did not answer in
   * time). `document_root`'s error page replaces a 5xx when there is one; the connection is cut
   * when the answer has already begun. Never throws.
   */
  fail(err: unknown): void;
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
