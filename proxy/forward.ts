import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import type { FastifyBaseLogger, FastifyPluginCallback } from 'fastify';
import type { Dispatcher } from 'undici';
import { type AccessLog, createAccessLog } from './access-log.js';
import { type ErrorPages, pageFor, writeErrorPage } from './error-pages.js';
import { EdgeInternal, EdgeRequestInvalid, EdgeShuttingDown, mapUpstreamError, writeError } from './errors.js';
import {
  connectionTokens,
  DETECT_CONTENT_TYPE,
  FORWARDED_FOR,
  PROXY_START,
  REQUEST_ID,
  REQUEST_STRIPPED,
  RESPONSE_STRIPPED,
  SEND_DATA,
  SENDFILE,
  SENDFILE_TYPE,
  WORKHORSE,
} from './headers.js';
import type { InterceptContext, Interceptor, ResponseHead } from './intercept.js';
import type { Metrics } from './metrics.js';

export interface ForwardOptions {
  upstream: Dispatcher;
  interceptors: Interceptor[];
  version: string;
  /** The process logger; the access-log line carries the request id as a field. */
  log: FastifyBaseLogger;
  /** True once shutdown has begun: responses then ask the client to close the connection. */
  isClosing: () => boolean;
  /** Set when `prometheus_listen_addr` is: interceptors taking over a response are counted. */
  metrics?: Metrics | undefined;
  /** Set when `document_root` is: a backend's HTML error answer is replaced by `<status>.html`. */
  errorPages?: ErrorPages | undefined;
}

/**
 * A body sent to the backend in place of the client's (a rewritten upload): its Content-Type and
 * length replace the client's body headers, and `headers` are added.
 */
export interface BodyReplacement {
  body: Buffer;
  contentType: string;
  headers: string[];
}

/** Forwards one request to the backend and streams the answer back. Never throws. */
export type Forwarder = (req: IncomingMessage, res: ServerResponse, requestId: string, replacement?: BodyReplacement) => void;

/** Bytes of a backend body Outrider reads and drops after an interceptor took over, before it cuts the backend connection. */
const DISCARD_LIMIT = 64 * 1024;

/**
 * The catch-all branch: every request goes to the backend with its body streamed as it arrives,
 * and the response streams back chunk by chunk with backpressure both ways. Bodies are never
 * parsed: the content-type parsers are replaced by one that leaves the stream untouched.
 */
export const forwardPlugin: FastifyPluginCallback<{ forward: Forwarder }> = (app, opts, done) => {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, next) => next(null));
  app.route({
    method: app.supportedMethods,
    url: '*',
    handler(request, reply) {
      reply.hijack();
      opts.forward(request.raw, reply.raw, request.id);
    },
  });
  done();
};

export function createForwarder(options: ForwardOptions): Forwarder {
  const opts: HandlerOptions = { ...options, accessLog: createAccessLog(options.log) };
  return (req, res, requestId, replacement) => {
    const handler = new ForwardHandler(req, res, requestId, opts);
    (res as HandledResponse)[kHandler] = handler;
    res.on('close', onResponseClose);
    if (opts.isClosing()) {
      // Shutting down: new requests on open keep-alive connections are told to go elsewhere.
      res.shouldKeepAlive = false;
      writeError(res, new EdgeShuttingDown());
      return;
    }
    // Only origin-form targets ("/path?query") are forwarded: an absolute-form target would let the
    // client choose the host the backend believes it serves (RFC 9112 §3.2.2); "*" has no path.
    if ((req.url as string).charCodeAt(0) !== 47) {
      res.shouldKeepAlive = false;
      writeError(res, new EdgeRequestInvalid('the request target must be a path'));
      return;
    }
    try {
      const headers = requestHeaders(req, handler.peer, requestId, opts.version);
      let body: IncomingMessage | Buffer | null = headers.hasBody ? req : null;
      if (replacement !== undefined) {
        // The replacement's headers replace the client's of the same names.
        const replaced = replacement.headers.filter((_, i) => i % 2 === 0).map((name) => name.toLowerCase());
        headers.list = withoutNamed(headers.list, [...BODY_HEADERS, ...replaced]);
        headers.list.push(
          'content-type',
          replacement.contentType,
          'content-length',
          String(replacement.body.length),
          ...replacement.headers,
        );
        body = replacement.body;
      }
      opts.upstream.dispatch(
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

type HandlerOptions = ForwardOptions & { accessLog: AccessLog };

const kHandler = Symbol('outrider.forwardHandler');
type HandledResponse = ServerResponse & { [kHandler]: ForwardHandler };

// Shared listeners that find their handler on the response: no closure allocated per request.
function onResponseClose(this: ServerResponse): void {
  (this as HandledResponse)[kHandler].onClientClose();
}
function onResponseDrain(this: ServerResponse): void {
  (this as HandledResponse)[kHandler].onDrain();
}

/**
 * The client's headers minus hop-by-hop and spoofable ones, plus what the backend expects from
 * Workhorse; and whether a body follows, read from the same scan (Node's `req.headers` object is
 * built lazily, and never needed here).
 */
export function requestHeaders(
  req: IncomingMessage,
  peer: string,
  requestId: string,
  version: string,
): { list: string[]; hasBody: boolean } {
  const raw = req.rawHeaders;
  const out: string[] = [];
  let forwardedFor: string | undefined;
  let connection: string | undefined;
  let hasBody = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    const lower = name.toLowerCase();
    if (REQUEST_STRIPPED.has(lower)) {
      if (lower === FORWARDED_FOR) forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
      else if (lower === 'connection') connection = connection === undefined ? value : `${connection}, ${value}`;
      else if (lower === 'transfer-encoding') hasBody = true;
      continue;
    }
    if (lower === 'content-length' && value !== '0') hasBody = true;
    out.push(name, value);
  }
  const filtered = connection === undefined ? out : withoutNamed(out, connectionTokens(connection));
  // Lower-case names: undici validates them without lower-casing again (HTTP names are case-insensitive).
  filtered.push(
    FORWARDED_FOR,
    forwardedFor === undefined ? peer : `${forwardedFor}, ${peer}`,
    WORKHORSE,
    version,
    PROXY_START,
    `${Date.now()}000000`,
    SENDFILE_TYPE,
    'X-Sendfile',
    REQUEST_ID,
    requestId,
  );
  return { list: filtered, hasBody };
}

/** What describes a request body, replaced with the body itself. */
const BODY_HEADERS = ['content-type', 'content-length', 'content-encoding', 'content-md5'];

export function withoutNamed(headers: string[], names: readonly string[]): string[] {
  if (names.length === 0) return headers;
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    if (!names.includes((headers[i] as string).toLowerCase())) out.push(headers[i] as string, headers[i + 1] as string);
  }
  return out;
}

/** The connecting peer; a unix-socket peer counts as loopback, as in Workhorse. */
export function peerAddress(req: IncomingMessage): string {
  const addr = req.socket.remoteAddress;
  if (addr === undefined) return '127.0.0.1';
  return addr.startsWith('::ffff:') ? addr.slice(7) : addr;
}

/** Copies the backend's response head, dropping hop-by-hop headers and setting instruction headers apart. */
export function readHead(statusCode: number, raw: Buffer[], statusMessage: string): ResponseHead {
  const head: ResponseHead = {
    statusCode,
    statusMessage,
    headers: [],
    contentType: undefined,
    sendData: undefined,
    sendfile: undefined,
    detectContentType: false,
  };
  let connection: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1');
    const value = (raw[i + 1] as Buffer).toString('latin1');
    const lower = name.toLowerCase();
    if (RESPONSE_STRIPPED.has(lower)) {
      if (lower === SEND_DATA) head.sendData = value;
      else if (lower === SENDFILE) head.sendfile = value;
      else if (lower === DETECT_CONTENT_TYPE) head.detectContentType = value.toLowerCase() === 'true';
      else if (lower === 'connection') connection = connection === undefined ? value : `${connection}, ${value}`;
      continue;
    }
    // The first Content-Type is the one that counts (as Go's Header.Get in Workhorse).
    if (lower === 'content-type' && head.contentType === undefined) head.contentType = value;
    head.headers.push(name, value);
  }
  if (connection !== undefined) head.headers = withoutNamed(head.headers, connectionTokens(connection));
  return head;
}

/**
 * undici's dispatch handler for one proxied request. It uses the callback API undici runs on
 * internally (`onHeaders` with raw header buffers), which skips a per-response header object.
 */
class ForwardHandler implements Dispatcher.DispatchHandler {
  private abortUpstream: ((err?: Error) => void) | undefined;
  private resume: (() => void) | undefined;
  private intercepted = false;
  private discarded = 0;
  /** Also what the interceptor's call reports as its client's leaving. */
  clientGone = false;
  private readonly started = performance.now();
  private bytes = 0;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly requestId: string;
  private readonly opts: HandlerOptions;
  private childLog: FastifyBaseLogger | undefined;
  /** The interceptor's call, told when the client leaves before its answer is finished. */
  private call: InterceptCall | undefined;
  /** Read now: by the time the response closes, the socket may be detached. */
  readonly peer: string;
  private readonly socket: IncomingMessage['socket'];

  constructor(req: IncomingMessage, res: ServerResponse, requestId: string, opts: HandlerOptions) {
    this.peer = peerAddress(req);
    this.socket = req.socket;
    this.req = req;
    this.res = res;
    this.requestId = requestId;
    this.opts = opts;
  }

  /** A logger bound to this request, made only when something beyond the access line is logged. */
  get log(): FastifyBaseLogger {
    this.childLog ??= this.opts.log.child({ requestId: this.requestId });
    return this.childLog;
  }

  onConnect(abort: (err?: Error) => void): void {
    if (this.clientGone) abort(new Error('client went away'));
    else this.abortUpstream = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusMessage: string): boolean {
    // Interim responses (103 Early Hints…) are not relayed: the final response follows.
    if (statusCode < 200) return true;
    // The backend answered before the client finished sending (an early 413 or 401): undici stops
    // reading the client's body, so the connection cannot be reused and closes after this answer.
    if (!this.req.complete) this.res.shouldKeepAlive = false;
    const head = readHead(statusCode, rawHeaders, statusMessage);
    for (const interceptor of this.opts.interceptors) {
      if (interceptor.match(head)) {
        this.intercepted = true;
        this.runInterceptor(interceptor, head);
        return true;
      }
    }
    if (statusCode >= 400 && this.opts.errorPages !== undefined) {
      const page = pageFor(this.opts.errorPages, head);
      if (page !== undefined) {
        // The backend's body is discarded like an interceptor's; the page goes out with the status kept.
        this.intercepted = true;
        if (this.opts.isClosing()) this.res.shouldKeepAlive = false;
        writeErrorPage(this.res, statusCode, page, head.headers);
        return true;
      }
    }
    this.resume = resume;
    // During shutdown the connection closes after this response instead of going back to idle.
    if (this.opts.isClosing()) this.res.shouldKeepAlive = false;
    try {
      // A standard reason phrase is Node's default; passing it again only costs a validation.
      const reason = statusMessage === '' || statusMessage === STATUS_CODES[statusCode] ? undefined : statusMessage;
      this.res.writeHead(statusCode, reason, head.headers);
    } catch (err) {
      // A header Node refuses to send: the backend's answer cannot be relayed as it is.
      this.log.error({ err, subsystem: 'proxy' }, 'backend response headers cannot be relayed');
      this.intercepted = true;
      writeError(this.res, mapUpstreamError(err));
      this.abortUpstream?.(err as Error);
    }
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.intercepted) {
      this.discarded += chunk.length;
      if (this.discarded > DISCARD_LIMIT) this.abortUpstream?.(new Error('discarding backend body'));
      return true;
    }
    this.bytes += chunk.length;
    if (this.res.write(chunk)) return true;
    this.res.once('drain', onResponseDrain);
    return false;
  }

  onComplete(): void {
    if (!this.intercepted) this.res.end();
  }

  onError(err: Error): void {
    if (this.intercepted || this.clientGone) return;
    const edge = mapUpstreamError(err);
    if (this.res.headersSent) {
      this.log.warn({ err, subsystem: 'proxy' }, 'backend response cut off mid-body');
    } else {
      this.log.warn({ err, subsystem: 'proxy', code: edge.code }, 'backend request failed');
    }
    writeError(this.res, edge);
  }

  onDrain(): void {
    this.resume?.();
  }

  private runInterceptor(interceptor: Interceptor, head: ResponseHead): void {
    const metrics = this.opts.metrics;
    metrics?.intercepted(this.res, interceptor.name);
    const ctx = new InterceptCall(this, head, metrics);
    this.call = ctx;
    interceptor.serve(ctx).catch((err: unknown) => {
      this.log.error({ err, subsystem: interceptor.name }, 'interceptor failed');
      writeError(this.res, new EdgeInternal({ cause: err }));
    });
  }

  /** Runs once per request: cancels the backend request if the client left early, then writes the access-log line. */
  onClientClose(): void {
    const res = this.res;
    const aborted = !res.writableFinished;
    if (aborted) {
      this.clientGone = true;
      this.abortUpstream?.(new Error('client went away'));
      this.call?.clientLeft();
    } else if (this.opts.isClosing()) {
      // A response that began before shutdown: its keep-alive connection must not outlive it.
      this.socket.end();
    }
    this.opts.accessLog(this.req, res, {
      requestId: this.requestId,
      started: this.started,
      peer: this.peer,
      bytes: this.intercepted ? undefined : this.bytes,
    });
  }
}

/**
 * What an interceptor is handed. A class, so that the logger and the abort signal are made on
 * first use through getters every instance shares: an object literal with its own getter per
 * request costs each one a hidden class of its own, and measurably more garbage-collection time
 * under load. The client's leaving reaches it through the handler's one close listener, so an
 * interceptor adds none of its own.
 */
class InterceptCall implements InterceptContext {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly requestId: string;
  readonly head: ResponseHead;
  readonly metrics: Metrics | undefined;
  private readonly handler: ForwardHandler;
  private controller: AbortController | undefined;

  constructor(handler: ForwardHandler, head: ResponseHead, metrics: Metrics | undefined) {
    this.handler = handler;
    this.req = handler.req;
    this.res = handler.res;
    this.requestId = handler.requestId;
    this.head = head;
    this.metrics = metrics;
  }

  get log(): FastifyBaseLogger {
    return this.handler.log;
  }

  get clientGone(): boolean {
    return this.handler.clientGone;
  }

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.clientGone) this.controller.abort();
    }
    return this.controller.signal;
  }

  /** The handler saw the client leave: a signal already handed out is aborted. */
  clientLeft(): void {
    this.controller?.abort();
  }
}
