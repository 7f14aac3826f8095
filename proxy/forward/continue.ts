import { type ClientRequest, request as httpRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { errors } from 'undici';
import type { Exchange } from './exchange.js';
import type { ForwardHandler } from './handler.js';
import { headerValue } from './headers.js';
import type { ContinueTarget } from './upstream.js';

/**
 * How long the backend has to answer `100 Continue` (or a final status) before the body is sent
 * anyway: 1 s, the `ExpectContinueTimeout` of Go's `http.DefaultTransport` (and curl's own wait).
 * A backend that ignores `Expect` costs such a request this much.
 */
export const CONTINUE_TIMEOUT_MS = 1_000;

/**
 * A request whose client sent `Expect: 100-continue` and waits: it goes to the backend with the
 * expectation, as a Go transport relays it, so that the backend decides whether the
 * body is wanted. The backend's `100 Continue` is relayed to the client, whose body then streams
 * through; a final answer instead (a 413 judged on Content-Length, a 401) reaches the client
 * without the body ever being sent, and both connections close after it. A backend silent for
 * `CONTINUE_TIMEOUT_MS` gets the body anyway.
 *
 * undici sends no `Expect` over HTTP/1.1 (it refuses the header, and takes a 100 for a broken
 * response: nodejs/undici#197), so these requests, and only these, go by node:http on a
 * connection of their own; the answer reaches the same `ForwardHandler` as undici would hand it.
 */
export function forwardExpectingContinue(
  target: ContinueTarget,
  exchange: Exchange,
  handler: ForwardHandler,
  headers: string[],
  onBodyStart: () => void,
): void {
  const { req } = exchange;
  const { origin } = target;
  if (headerValue(headers, 'content-length') === undefined) headers.push('transfer-encoding', 'chunked');
  headers.push('expect', '100-continue');
  const options: RequestOptions = {
    method: req.method as string,
    path: req.url as string,
    headers,
    // The client's Host goes as it came, as undici sends it.
    setHost: false,
    // One connection per such request, closed with it: there is nothing to pool or to close at shutdown.
    agent: false,
    ...(target.socketPath === undefined
      ? { hostname: origin.hostname.replace(/^\[(.*)\]$/, '$1'), port: origin.port === '' ? undefined : origin.port }
      : { socketPath: target.socketPath }),
  };
  const creq: ClientRequest = (origin.protocol === 'https:' ? httpsRequest : httpRequest)(options);
  let bodySent = false;
  let answered = false;
  let done = false;
  const fail = (err: Error) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    req.unpipe(creq);
    handler.onError(err);
  };
  const sendBody = () => {
    if (bodySent || answered || done) return;
    bodySent = true;
    clearTimeout(timer);
    exchange.sendContinue();
    onBodyStart();
    req.pipe(creq);
  };
  const timer = setTimeout(sendBody, CONTINUE_TIMEOUT_MS);
  // The client going away mid-body is seen by the handler (its response closes); nothing to do here.
  req.on('error', ignore);
  creq.on('error', fail);
  creq.setTimeout(target.timeoutMs, () => {
    creq.destroy(answered ? new errors.BodyTimeoutError() : new errors.HeadersTimeoutError());
  });
  // The backend's 100 (Node sends one at once unless its app decides): the client's body is wanted.
  creq.on('continue', sendBody);
  creq.on('information', (info) => {
    if (info.statusCode !== 100) handler.onHeaders(info.statusCode, asBuffers(info.rawHeaders), noop, info.statusMessage);
  });
  creq.on('response', (bres: IncomingMessage) => {
    answered = true;
    clearTimeout(timer);
    bres.on('error', fail);
    bres.on('aborted', () => fail(new errors.SocketError('the backend closed the connection mid-answer')));
    bres.on('data', (chunk: Buffer) => {
      if (!done && !handler.onData(chunk)) bres.pause();
    });
    bres.on('end', () => {
      if (done) return;
      done = true;
      handler.onComplete();
      // A body never sent, or still being sent to a backend that has answered: that connection is done.
      if (!creq.writableFinished) {
        req.unpipe(creq);
        creq.destroy();
      }
    });
    handler.onHeaders(bres.statusCode as number, asBuffers(bres.rawHeaders), () => bres.resume(), bres.statusMessage as string);
  });
  handler.onConnect((err) => creq.destroy(err ?? new Error('aborted')));
}

/** node:http's header strings (one byte per char) as the buffers undici's handler API reads. */
function asBuffers(raw: readonly string[]): Buffer[] {
  return raw.map((s) => Buffer.from(s, 'latin1'));
}

const noop = () => undefined;
const ignore = () => undefined;
