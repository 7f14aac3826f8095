import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import type { FastifyBaseLogger, FastifyError, FastifyPluginCallback } from 'fastify';
import type { Dispatcher } from 'undici';
import { SENDFILE_HEADER } from '../../protocol/headers.js';
import { bodyUnread, closeAfterAnswer } from '../connection/linger.js';
import type { StallWatch } from '../connection/stall-watch.js';
import {
  EdgeBodyTimeout,
  EdgeInternal,
  EdgeRequestInvalid,
  EdgeShuttingDown,
  EdgeUpstreamInvalidResponse,
  mapUpstreamError,
  writeError,
} from '../errors.js';
import { endOnFault } from '../guard.js';
import type { InterceptContext, Interceptor, ResponseHead } from '../intercept/index.js';
import { type AccessLog, createAccessLog } from '../observe/log/access-line.js';
import type { Metrics } from '../observe/metrics/catalogue.js';
import { type ErrorPages, pageFor, writeErrorPage } from '../routes/error-pages.js';
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
  /** `client_body_timeout`: a request body that stops arriving is answered 408 and its backend request aborted. */
  stallWatch?: StallWatch | undefined;
}

/**
 * A body sent to the backend in place of the client's (a rewritten upload): its Content-Type and
 * length replace the client's body headers, and `headers` are added.
 */
export interface BodyReplacement {
  body: Buffer;
  contentType: string;
  headers: string[];
  /** The client's address, read when the request arrived: by now its socket may be detached. */
  peer: string;
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
export const forwardPlugin: FastifyPluginCallback<{ forward: Forwarder; log: FastifyBaseLogger }> = (app, opts, done) => {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, next) => next(null));
  app.route({
    method: app.supportedMethods,
    url: '*',
    handler(request, reply) {
      reply.hijack();
      try {
        opts.forward(request.raw, reply.raw, request.id);
      } catch (err) {
        endOnFault(opts.log, request.id, reply.raw, err, 'request');
      }
    },
  });
  done();
};

export function createForwarder(options: ForwardOptions): Forwarder {
  const opts: HandlerOptions = { ...options, accessLog: createAccessLog(options.log) };
  return (req, res, requestId, replacement) => {
    const handler = new ForwardHandler(req, res, requestId, opts, replacement?.peer ?? peerAddress(req));
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
      if (headers.invalid !== undefined) {
        res.shouldKeepAlive = false;
        writeError(res, new EdgeRequestInvalid(headers.invalid));
        return;
      }
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
      } else if (body !== null && opts.stallWatch !== undefined) {
        opts.stallWatch.body(req, () => handler.onBodyStall());
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

/** How long the head of an answer without Content-Length waits for its first body byte before it goes out alone. */
const HEAD_HOLD_MS = 1_000;

function flushHeldHead(handler: ForwardHandler): void {
  handler.flushHeld();
}

/** Statuses a response may carry (RFC 9110 §15); anything else from the backend is a 502. */
const MIN_STATUS = 100;
const MAX_STATUS = 599;

/** A reason phrase Node can send (RFC 9112 §4: HTAB, SP, VCHAR, obs-text). */
const VALID_REASON = /^[\t\x20-\x7e\x80-\xff]*$/;

type HandlerOptions = ForwardOptions & { accessLog: AccessLog };

const kHandler = Symbol('outrider.forwardHandler');
type HandledResponse = ServerResponse & { [kHandler]: ForwardHandler };

// Shared listeners that find their handler on the response: no closure allocated per request.
function onResponseClose(this: ServerResponse): void {
  const handler = (this as HandledResponse)[kHandler];
  try {
    handler.onClientClose();
  } catch (err) {
    endOnFault(handler.opts.log, handler.requestId, this, err, 'response close');
  }
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
): { list: string[]; hasBody: boolean; invalid: string | undefined } {
  const raw = req.rawHeaders;
  const out: string[] = [];
  let forwardedFor: string | undefined;
  let connection: string | undefined;
  let hasBody = false;
  let contentTypes = 0;
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    const lower = name.toLowerCase();
    if (lower === 'content-type') contentTypes++;
    else if (lower === 'host') hosts++;
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
    SENDFILE_HEADER,
    REQUEST_ID,
    requestId,
  );
  return {
    list: filtered,
    hasBody,
    invalid: duplicated(contentTypes, hosts),
  };
}

/**
 * Headers a request may carry once only (RFC 9110 §8.3, RFC 9112 §3.2) whose copies would be read
 * differently by Outrider and the backend: Outrider judges an upload route by the first
 * Content-Type, a backend may read the last. Such a request is refused (400), as nginx does for
 * two Host headers and Workhorse's Go server for neither.
 */
export function duplicateSingleton(req: IncomingMessage): string | undefined {
  const raw = req.rawHeaders;
  let contentTypes = 0;
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const lower = (raw[i] as string).toLowerCase();
    if (lower === 'content-type') contentTypes++;
    else if (lower === 'host') hosts++;
  }
  return duplicated(contentTypes, hosts);
}

/** What is wrong with a request that has these many Content-Type and Host headers, if anything. */
function duplicated(contentTypes: number, hosts: number): string | undefined {
  const name = contentTypes > 1 ? 'Content-Type' : hosts > 1 ? 'Host' : undefined;
  return name === undefined ? undefined : `the request has more than one ${name} header`;
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
  // A destroyed request has no socket any more: read it when the request arrives.
  const addr = (req.socket as IncomingMessage['socket'] | null)?.remoteAddress;
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
    hasLength: false,
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
    else if (lower === 'content-length') head.hasLength = true;
    head.headers.push(name, value);
  }
  if (connection !== undefined) head.headers = withoutNamed(head.headers, connectionTokens(connection));
  return head;
}

/**
 * undici's dispatch handler for one proxied request. It uses the callback API undici runs on
 * internally (`onHeaders` with raw header buffers), which skips a per-response header object.
 *
 * The backend's head is held until the first body byte (or the end) is relayed: until a byte has
 * left, the response has not started, and a backend that fails before its body (a bad chunk, a
 * reset) is still answered 502 instead of cutting a response that never began. (Node sends no
 * head before the first body write either; what is new is that Outrider knows it.) A streaming
 * answer, one without Content-Length, gets its head out after at most `HEAD_HOLD_MS` of silence,
 * as Go's ReverseProxy (Workhorse) flushes the head of such answers without waiting for a body:
 * an EventSource opens, a long poll's client sees its status. undici calls every method here
 * inside a try/catch but `onConnect` and `onError`, which cannot throw.
 */
class ForwardHandler implements Dispatcher.DispatchHandler {
  private abortUpstream: ((err?: Error) => void) | undefined;
  private resume: (() => void) | undefined;
  private intercepted = false;
  /** The backend's head went out: the access line counts the body bytes relayed, even if it is cut later. */
  private relayed = false;
  private discarded = 0;
  /** Flushes a held head of a streaming answer whose first body byte is slow to come. */
  private holdTimer: NodeJS.Timeout | undefined;
  /**
   * The backend's headers, status and reason, held until the first byte of its body goes out with
   * them (kept as fields: no object per response). `pending` is set while a head is held.
   */
  private pending: string[] | undefined;
  private pendingStatus = 0;
  private pendingReason: string | undefined;
  /** Also what the interceptor's call reports as its client's leaving. */
  clientGone = false;
  private readonly started = performance.now();
  private bytes = 0;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly requestId: string;
  readonly opts: HandlerOptions;
  private childLog: FastifyBaseLogger | undefined;
  /** The interceptor's call, told when the client leaves before its answer is finished. */
  private call: InterceptCall | undefined;
  /** Read when the request arrived: by the time the response closes, the socket may be detached. */
  readonly peer: string;
  private readonly socket: IncomingMessage['socket'];

  constructor(req: IncomingMessage, res: ServerResponse, requestId: string, opts: HandlerOptions, peer: string) {
    this.peer = peer;
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
    if (this.clientGone || this.intercepted) abort(new Error('client went away'));
    else this.abortUpstream = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusMessage: string): boolean {
    // Interim responses (103 Early Hints…) are not relayed: the final response follows.
    if (statusCode < 200) return true;
    // Answered already (the client's body timed out): the backend's answer is dropped.
    if (this.intercepted) return true;
    // The backend answered before the client finished sending (an early 413 or 401): undici stops
    // reading the client's body, so the connection cannot be reused and closes after this answer.
    if (bodyUnread(this.req)) closeAfterAnswer(this.res);
    if (statusCode > MAX_STATUS || statusCode < MIN_STATUS) {
      this.log.error({ subsystem: 'proxy', status: statusCode }, 'backend sent a status outside 100-599');
      this.failBeforeBody(new EdgeUpstreamInvalidResponse());
      return true;
    }
    const head = readHead(statusCode, rawHeaders, statusMessage);
    try {
      for (const interceptor of this.opts.interceptors) {
        if (interceptor.match(head)) {
          this.intercepted = true;
          this.runInterceptor(interceptor, head);
          return true;
        }
      }
    } catch (err) {
      this.intercepted = true;
      this.abortUpstream?.(err as Error);
      endOnFault(this.log, this.requestId, this.res, err, 'interceptor match');
      return true;
    }
    if (statusCode >= 400 && this.opts.errorPages !== undefined) {
      const page = pageFor(this.opts.errorPages, head);
      if (page !== undefined) {
        // The backend's body is discarded like an interceptor's; the page goes out with the status kept.
        this.intercepted = true;
        if (this.opts.isClosing()) this.res.shouldKeepAlive = false;
        try {
          writeErrorPage(this.res, statusCode, page, head.headers);
        } catch (err) {
          this.log.error({ err, subsystem: 'proxy' }, 'backend response headers cannot be relayed');
          this.failBeforeBody(new EdgeUpstreamInvalidResponse({ cause: err }));
        }
        return true;
      }
    }
    this.resume = resume;
    // During shutdown the connection closes after this response instead of going back to idle.
    if (this.opts.isClosing()) this.res.shouldKeepAlive = false;
    // A standard reason phrase is Node's default; passing it again only costs a validation.
    const reason = statusMessage === '' || statusMessage === STATUS_CODES[statusCode] ? undefined : statusMessage;
    if (reason !== undefined && !VALID_REASON.test(reason)) {
      // Node would refuse to send it, and the status line it came in is not HTTP (RFC 9112 §4).
      this.log.error({ subsystem: 'proxy', status: statusCode }, 'backend sent a reason phrase with control characters');
      this.failBeforeBody(new EdgeUpstreamInvalidResponse());
      return true;
    }
    this.pending = head.headers;
    this.pendingStatus = statusCode;
    this.pendingReason = reason;
    // Answers that carry no body (HEAD, 204, 304) end at once: no timer for them.
    if (!head.hasLength && statusCode !== 204 && statusCode !== 304 && this.req.method !== 'HEAD') {
      this.holdTimer = setTimeout(flushHeldHead, HEAD_HOLD_MS, this);
    }
    return true;
  }

  /** The head of a streaming answer whose body is slow to start goes out on its own. */
  flushHeld(): void {
    this.holdTimer = undefined;
    if (this.pending === undefined || this.intercepted || this.clientGone) return;
    if (this.flushHead()) this.res.flushHeaders();
  }

  /** Writes the held head; false (and the client answered 502) when Node refuses one of its headers. */
  private flushHead(): boolean {
    const headers = this.pending as string[];
    this.dropHeld();
    try {
      this.res.writeHead(this.pendingStatus, this.pendingReason, headers);
      this.relayed = true;
      return true;
    } catch (err) {
      // A header Node refuses to send: the backend's answer cannot be relayed as it is.
      this.log.error({ err, subsystem: 'proxy' }, 'backend response headers cannot be relayed');
      this.failBeforeBody(new EdgeUpstreamInvalidResponse({ cause: err }));
      return false;
    }
  }

  /** Nothing of the backend's answer went out: the client gets `err`, the backend request is dropped. */
  private failBeforeBody(err: FastifyError): void {
    this.intercepted = true;
    this.dropHeld();
    writeError(this.res, err);
    this.abortUpstream?.(err);
  }

  onData(chunk: Buffer): boolean {
    if (this.intercepted) {
      this.discarded += chunk.length;
      if (this.discarded > DISCARD_LIMIT) this.abortUpstream?.(new Error('discarding backend body'));
      return true;
    }
    if (this.pending !== undefined && !this.flushHead()) return true;
    this.bytes += chunk.length;
    if (this.res.write(chunk)) return true;
    this.res.once('drain', onResponseDrain);
    return false;
  }

  onComplete(): void {
    if (this.intercepted) return;
    if (this.pending !== undefined && !this.flushHead()) return;
    this.res.end();
  }

  onError(err: Error): void {
    if (this.intercepted || this.clientGone) return;
    this.intercepted = true;
    const edge = mapUpstreamError(err);
    try {
      if (this.relayed) {
        this.log.warn({ err, subsystem: 'proxy' }, 'backend response cut off mid-body');
      } else {
        this.log.warn({ err, subsystem: 'proxy', code: edge.code }, 'backend request failed');
      }
    } catch {
      // Logging must not keep the client from its answer.
    }
    this.dropHeld();
    writeError(this.res, edge);
  }

  /** Forgets a held head that will never go out. */
  private dropHeld(): void {
    this.pending = undefined;
    if (this.holdTimer !== undefined) {
      clearTimeout(this.holdTimer);
      this.holdTimer = undefined;
    }
  }

  onDrain(): void {
    this.resume?.();
  }

  /**
   * `client_body_timeout` ran out: the client stopped sending its body. The backend request is
   * aborted, and the client gets a 408 if nothing was answered yet, else its connection is cut.
   */
  onBodyStall(): void {
    if (this.clientGone || this.res.writableEnded) return;
    const answered = this.intercepted || this.relayed;
    try {
      this.log.warn(
        { subsystem: 'proxy', timeoutMs: this.opts.stallWatch?.bodyTimeoutMs },
        'client body timeout: the body stopped arriving',
      );
    } catch {
      // as above
    }
    this.intercepted = true;
    this.dropHeld();
    this.abortUpstream?.(new Error('client body timeout'));
    if (answered) {
      this.res.destroy();
      return;
    }
    // The body is unread: writeError closes the connection after the 408, gently.
    writeError(this.res, new EdgeBodyTimeout());
  }

  private runInterceptor(interceptor: Interceptor, head: ResponseHead): void {
    const metrics = this.opts.metrics;
    metrics?.intercepted(this.res, interceptor.name);
    const ctx = new InterceptCall(this, head, metrics);
    this.call = ctx;
    const failed = (err: unknown) => {
      this.log.error({ err, subsystem: interceptor.name }, 'interceptor failed');
      writeError(this.res, new EdgeInternal({ cause: err }));
    };
    let served: Promise<void>;
    try {
      served = interceptor.serve(ctx);
    } catch (err) {
      // An interceptor that throws before its first await.
      failed(err);
      return;
    }
    served.catch(failed);
  }

  /** Runs once per request: cancels the backend request if the client left early, then writes the access-log line. */
  onClientClose(): void {
    const res = this.res;
    const aborted = !res.writableFinished;
    if (aborted) {
      this.clientGone = true;
      this.dropHeld();
      this.abortUpstream?.(new Error('client went away'));
      this.call?.clientLeft();
    } else if (this.opts.isClosing()) {
      // A response that began before shutdown: its keep-alive connection must not outlive it.
      this.socket?.end();
    }
    this.opts.accessLog(this.req, res, {
      requestId: this.requestId,
      started: this.started,
      peer: this.peer,
      bytes: this.relayed ? this.bytes : undefined,
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
