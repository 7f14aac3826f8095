import type { IncomingMessage } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import type { Dispatcher } from 'undici';
import type { StallWatch } from '../connection/stall-watch.js';
import { EdgeRequestInvalid, EdgeShuttingDown, writeError } from '../errors.js';
import type { Interceptor } from '../intercept/types.js';
import { createAccessLog } from '../observe/log/access-line.js';
import type { ErrorPages } from '../routes/error-pages.js';
import { forwardExpectingContinue } from './continue.js';
import type { Exchange } from './exchange.js';
import { ForwardHandler, type HandlerOptions } from './handler.js';
import { withoutNamed } from './headers.js';
import { BODY_HEADERS, requestHeaders } from './request-headers.js';
import { continueTarget } from './upstream.js';

export interface ForwardOptions {
  upstream: Dispatcher;
  interceptors: Interceptor[];
  version: string;
  /** The process logger; the access-log line carries the request id as a field. */
  log: FastifyBaseLogger;
  /** True once shutdown has begun: responses then ask the client to close the connection. */
  isClosing: () => boolean;
  /** Set when `document_root` is: a backend's HTML error answer is replaced by `<status>.html`. */
  errorPages?: ErrorPages | undefined;
  /** `client_body_timeout`: a request body that stops arriving is answered 408 and its backend request aborted. */
  stallWatch?: StallWatch | undefined;
}

/**
 * A body sent to the backend in place of the client's (a rewritten upload): its Content-Type and
 * length replace the client's body headers, and `headers` are added. Without `body`, the client's
 * own body goes as it came and only `headers` are added (a signed request that is not rewritten).
 */
export type BodyReplacement = { body: Buffer; contentType: string; headers: string[] } | { body?: undefined; headers: string[] };

/** Forwards one request to the backend and streams the answer back. Never throws. */
export type Forwarder = (exchange: Exchange, replacement?: BodyReplacement) => void;

/**
 * Every request goes to the backend with its body streamed as it arrives, and the response
 * streams back chunk by chunk with backpressure both ways (`handler.ts`); the backend's answer
 * is matched against the interceptors first.
 */
export function createForwarder(options: ForwardOptions): Forwarder {
  const opts: HandlerOptions = {
    interceptors: options.interceptors,
    log: options.log,
    accessLog: createAccessLog(options.log),
    isClosing: options.isClosing,
    errorPages: options.errorPages,
    stallWatch: options.stallWatch,
  };
  const { upstream, version, errorPages: pages } = options;
  const expectTarget = continueTarget(upstream);
  return (exchange, replacement) => {
    const { req, res, requestId } = exchange;
    const handler = new ForwardHandler(exchange, opts);
    res.on('close', () => handler.onResponseClose());
    if (opts.isClosing()) {
      // Shutting down: new requests on open keep-alive connections are told to go elsewhere.
      res.shouldKeepAlive = false;
      writeError(res, new EdgeShuttingDown(), pages);
      return;
    }
    // Only origin-form targets ("/path?query") are forwarded: an absolute-form target would let the
    // client choose the host the backend believes it serves (RFC 9112 §3.2.2); "*" has no path.
    if ((req.url as string).charCodeAt(0) !== 47) {
      res.shouldKeepAlive = false;
      writeError(res, new EdgeRequestInvalid('the request target must be a path'), pages);
      return;
    }
    try {
      const headers = requestHeaders(req, exchange.peer, requestId, version);
      if (headers.invalid !== undefined) {
        res.shouldKeepAlive = false;
        writeError(res, new EdgeRequestInvalid(headers.invalid), pages);
        return;
      }
      let body: IncomingMessage | Buffer | null = headers.hasBody ? req : null;
      if (replacement !== undefined) {
        // The replacement's headers replace the client's of the same names.
        const replaced = replacement.headers.filter((_, i) => i % 2 === 0).map((name) => name.toLowerCase());
        headers.list = withoutNamed(headers.list, replacement.body === undefined ? replaced : [...BODY_HEADERS, ...replaced]);
        if (replacement.body !== undefined) {
          headers.list.push('content-type', replacement.contentType, 'content-length', String(replacement.body.length));
          body = replacement.body;
        }
        headers.list.push(...replacement.headers);
      }
      if (body === req && exchange.awaitingContinue) {
        if (expectTarget !== undefined) {
          // The client waits for 100 before its body: the backend decides (`continue.ts`), and
          // the body is watched from when it is asked for.
          const watchBody = () => opts.stallWatch?.body(req, () => handler.onBodyStall());
          forwardExpectingContinue(expectTarget, exchange, handler, headers.list, watchBody);
          return;
        }
        exchange.sendContinue();
      }
      if (body === req && opts.stallWatch !== undefined) {
        opts.stallWatch.body(req, () => handler.onBodyStall());
      }
      upstream.dispatch(
        {
          origin: undefined,
          method: req.method as Dispatcher.HttpMethod,
          path: req.url as string,
          headers: headers.list,
          body,
          // A client that sent `Connection: close` should not cost us the backend connection.
          reset: false,
        },
        handler,
      );
    } catch (err) {
      // undici validates the headers before anything is sent: a header it refuses is the client's fault.
      handler.onError(err as Error);
    }
  };
}
