import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import type { FastifyBaseLogger, FastifyError } from 'fastify';
import type { Dispatcher } from 'undici';
import { answeredWhole } from '../connection/http2.js';
import { bodyUnread, closeAfterAnswer } from '../connection/linger.js';
import type { StallWatch } from '../connection/stall-watch.js';
import { EdgeBodyTimeout, EdgeInternal, EdgeUpstreamInvalidResponse, endOnFault, toEdgeError, writeError } from '../errors.js';
import { MAX_DETECT_SIZE, withSafeContentHeaders } from '../intercept/content-type.js';
import type { InterceptContext, Interceptor, ResponseHead } from '../intercept/types.js';
import type { AccessLog } from '../observe/log/access-line.js';
import { type ErrorPages, pageFor, writeErrorPage } from '../routes/error-pages.js';
import type { Exchange } from './exchange.js';
import { writeInformational } from './informational.js';
import { readHead } from './response-head.js';

/** What a handler needs beyond its exchange, the same for every request. */
export interface HandlerOptions {
  interceptors: Interceptor[];
  /** The process logger; the access-log line carries the request id as a field. */
  log: FastifyBaseLogger;
  accessLog: AccessLog;
  /** True once shutdown has begun: responses then ask the client to close the connection. */
  isClosing: () => boolean;
  /** Set when `document_root` is: a backend's HTML error answer is replaced by `<status>.html`, and so are Outrider's own 5xx. */
  errorPages: ErrorPages | undefined;
  /** `client_body_timeout`, for the log line of a body that stopped arriving. */
  stallWatch: StallWatch | undefined;
}

/** Bytes of a backend body Outrider reads and drops after an interceptor took over, before it cuts the backend connection. */
const DISCARD_LIMIT = 64 * 1024;

/** How long the head of an answer without Content-Length waits for its first body byte before it goes out alone. */
const HEAD_HOLD_MS = 1_000;

function flushHeldHead(handler: ForwardHandler): void {
  handler.flushHeld();
}

/** Interim (1xx) answers relayed before the final one, as Go's transport allows (`max1xxResponses`). */
const MAX_INTERIM = 5;

/** Statuses a response may carry (RFC 9110 §15); anything else from the backend is a 502. */
const MIN_STATUS = 100;
const MAX_STATUS = 599;

/** A reason phrase Node can send (RFC 9112 §4: HTAB, SP, VCHAR, obs-text). */
const VALID_REASON = /^[\t\x20-\x7e\x80-\xff]*$/;

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
export class ForwardHandler implements Dispatcher.DispatchHandler {
  private abortUpstream: ((err?: Error) => void) | undefined;
  private resume: (() => void) | undefined;
  private intercepted = false;
  /** The backend's head went out: the access line counts the body bytes relayed, even if it is cut later. */
  private relayed = false;
  private discarded = 0;
  /** 1xx answers relayed so far. */
  private interim = 0;
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
  private bytes = 0;
  readonly exchange: Exchange;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly requestId: string;
  readonly opts: HandlerOptions;
  private childLog: FastifyBaseLogger | undefined;
  /** The interceptor's call, told when the client leaves before its answer is finished. */
  private call: InterceptCall | undefined;
  private drainListener: (() => void) | undefined;
  private readonly socket: IncomingMessage['socket'];
  /** `Gitlab-Workhorse-Detect-Content-Type`: the first body bytes, held until they decide the content headers. */
  private sniffed: Buffer[] | undefined;
  private sniffedBytes = 0;

  constructor(exchange: Exchange, opts: HandlerOptions) {
    this.exchange = exchange;
    this.req = exchange.req;
    this.res = exchange.res;
    this.requestId = exchange.requestId;
    this.socket = exchange.req.socket;
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
    // Interim answers (103 Early Hints…) go to the client ahead of the final one.
    if (statusCode < 200) return this.onInformational(statusCode, rawHeaders, statusMessage);
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
      endOnFault(this.log, this.requestId, this.res, err, 'interceptor match', this.opts.errorPages);
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
    // HTTP/2 has no reason phrase at all.
    const reason =
      statusMessage === '' || statusMessage === STATUS_CODES[statusCode] || this.req.httpVersionMajor === 2 ? undefined : statusMessage;
    if (reason !== undefined && !VALID_REASON.test(reason)) {
      // Node would refuse to send it, and the status line it came in is not HTTP (RFC 9112 §4).
      this.log.error({ subsystem: 'proxy', status: statusCode }, 'backend sent a reason phrase with control characters');
      this.failBeforeBody(new EdgeUpstreamInvalidResponse());
      return true;
    }
    this.pending = head.headers;
    this.pendingStatus = statusCode;
    this.pendingReason = reason;
    // Answers that carry no body (HEAD, 204, 304) end at once: nothing to wait for.
    const bodied = statusCode !== 204 && statusCode !== 304 && this.req.method !== 'HEAD';
    if (head.detectContentType && bodied) {
      // The head waits for the bytes that decide its Content-Type, however slow they are.
      this.sniffed = [];
      return true;
    }
    if (!head.hasLength && bodied) {
      this.holdTimer = setTimeout(flushHeldHead, HEAD_HOLD_MS, this);
    }
    return true;
  }

  /**
   * A 1xx other than 100 (relayed by `continue.ts`) and 101 (never seen here: undici takes it for
   * an upgrade) is relayed, as Go's ReverseProxy does; past `MAX_INTERIM` of them the backend is
   * answered for like Go's transport ("too many 1xx informational responses"): a 502.
   */
  private onInformational(statusCode: number, rawHeaders: Buffer[], statusMessage: string): boolean {
    if (this.intercepted || this.clientGone || statusCode === 100 || statusCode === 101) return true;
    if (++this.interim > MAX_INTERIM) {
      this.log.error({ subsystem: 'proxy', status: statusCode }, 'backend sent too many 1xx answers');
      this.failBeforeBody(new EdgeUpstreamInvalidResponse());
      return true;
    }
    writeInformational(this.req, this.res, statusCode, rawHeaders, statusMessage);
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
    // Headers a refused writeHead left set (Node's HTTP/2 response keeps them) must not go out with the error.
    for (const name of this.res.getHeaderNames()) this.res.removeHeader(name);
    writeError(this.res, err, this.opts.errorPages);
    this.abortUpstream?.(err);
  }

  onData(chunk: Buffer): boolean {
    if (this.intercepted) {
      this.discarded += chunk.length;
      if (this.discarded > DISCARD_LIMIT) this.abortUpstream?.(new Error('discarding backend body'));
      return true;
    }
    if (this.sniffed !== undefined) {
      this.sniffed.push(chunk);
      this.sniffedBytes += chunk.length;
      if (this.sniffedBytes < MAX_DETECT_SIZE) return true;
      chunk = this.endSniffing();
    }
    if (this.pending !== undefined && !this.flushHead()) return true;
    this.bytes += chunk.length;
    if (this.res.write(chunk)) return true;
    this.drainListener ??= () => this.onDrain();
    this.res.once('drain', this.drainListener);
    return false;
  }

  onComplete(): void {
    if (this.intercepted) return;
    const rest = this.sniffed === undefined ? undefined : this.endSniffing();
    if (this.pending !== undefined && !this.flushHead()) return;
    if (rest !== undefined && rest.length > 0) {
      this.bytes += rest.length;
      this.res.end(rest);
    } else this.res.end();
  }

  /**
   * Workhorse's contentprocessor: the held bytes set Content-Type and Content-Disposition on the
   * held head (`safeContentHeaders`), then go out as one chunk. An empty body keeps the backend's.
   */
  private endSniffing(): Buffer {
    const sniffed = this.sniffed as Buffer[];
    const held = sniffed.length === 1 ? (sniffed[0] as Buffer) : Buffer.concat(sniffed, this.sniffedBytes);
    this.sniffed = undefined;
    if (this.pending !== undefined) this.pending = withSafeContentHeaders(this.pending, held);
    return held;
  }

  onError(err: Error): void {
    if (this.intercepted || this.clientGone) return;
    this.intercepted = true;
    const edge = toEdgeError(err, 'backend');
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
    writeError(this.res, edge, this.opts.errorPages);
  }

  /** Forgets a held head that will never go out. */
  private dropHeld(): void {
    this.pending = undefined;
    this.sniffed = undefined;
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
    writeError(this.res, new EdgeBodyTimeout(), this.opts.errorPages);
  }

  private runInterceptor(interceptor: Interceptor, head: ResponseHead): void {
    this.exchange.measure?.intercepted(interceptor.name);
    const ctx = new InterceptCall(this, head);
    this.call = ctx;
    const failed = (err: unknown) => {
      this.log.error({ err, subsystem: interceptor.name }, 'interceptor failed');
      writeError(this.res, new EdgeInternal({ cause: err }), this.opts.errorPages);
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

  /** The response closed: never throws, whatever the handler's own code does. */
  onResponseClose(): void {
    try {
      this.onClientClose();
    } catch (err) {
      endOnFault(this.opts.log, this.requestId, this.res, err, 'response close', this.opts.errorPages);
    }
  }

  /** Runs once per request: cancels the backend request if the client left early, then writes the access-log line. */
  private onClientClose(): void {
    const res = this.res;
    const aborted = !answeredWhole(res);
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
      started: this.exchange.started,
      peer: this.exchange.peer,
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
  private readonly handler: ForwardHandler;
  private controller: AbortController | undefined;

  constructor(handler: ForwardHandler, head: ResponseHead) {
    this.handler = handler;
    this.req = handler.req;
    this.res = handler.res;
    this.requestId = handler.requestId;
    this.head = head;
  }

  fail(err: unknown): void {
    // What an interceptor fails on is its source (a file, an origin URL, an image), not the backend.
    writeError(this.res, toEdgeError(err, 'origin'), this.handler.opts.errorPages);
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
