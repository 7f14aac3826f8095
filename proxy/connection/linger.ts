import type { IncomingMessage, ServerResponse } from 'node:http';
import { constants, type Http2ServerResponse } from 'node:http2';
import type { Socket } from 'node:net';

/** How long a connection answered before its request body arrived is kept reading after the answer. */
export const LINGER_MS = 5_000;

/** Sockets closing gently, with the request whose answer closes them: what it still sends is read and dropped. */
const lingering = new WeakMap<Socket, IncomingMessage>();

/**
 * True while `req` declared a body (a Content-Length other than 0, or Transfer-Encoding) that has
 * not arrived whole. (`req.complete` alone is false for a bodiless request too, until Node's
 * parser has finished with it, which is after the request handler ran.)
 */
export function bodyUnread(req: IncomingMessage): boolean {
  if (req.complete) return false;
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * The answer goes out before the client has sent its whole body (a 413 past MaximumSize, a 408,
 * a backend that answered early): the connection must close after it, and close gently. Closing
 * a socket with unread bytes in its receive buffer makes the kernel send a reset that discards
 * the answer still queued for sending, so the client, busy writing its body, never sees the 413.
 * As nginx's lingering close does, Outrider sends its FIN after the answer and goes on reading
 * (and dropping) what the client sends until the client closes, or for at most `LINGER_MS`.
 *
 * Node's server closes such a connection with `socket.destroySoon()` once the answer is written;
 * this swaps that call, for this socket only, for the lingering close.
 */
export function closeAfterAnswer(res: ServerResponse): void {
  if (res.req?.httpVersionMajor === 2) {
    closeStreamAfterAnswer(res);
    return;
  }
  res.shouldKeepAlive = false;
  const socket = res.socket;
  if (socket === null || lingering.has(socket) || socket.destroyed) return;
  lingering.set(socket, res.req);
  socket.destroySoon = lingeringClose;
}

function lingeringClose(this: Socket): void {
  if (this.writable) this.end();
  // The request may have been left paused (a store that failed stopped reading it): its parser
  // would stop reading the socket too, and the client's FIN would never be seen. Dropped from now on.
  const req = lingering.get(this);
  if (req !== undefined && !req.destroyed) {
    req.unpipe();
    req.resume();
  }
  const timer = setTimeout(() => this.destroy(), LINGER_MS);
  timer.unref();
  this.once('close', () => clearTimeout(timer));
  // The client's FIN: it has stopped sending, nothing more can be lost.
  this.once('end', () => this.destroy());
  this.resume();
}

/**
 * HTTP/2: a stream is not a connection, and nothing else on the connection is lost. Once the
 * answer is written, the client is asked to stop sending the rest of its body with RST_STREAM
 * NO_ERROR (RFC 9113 §8.1); without it the stream would stay half open, waiting for a body the
 * client may hold back for a 100 it will not get.
 */
const closing = new WeakSet<object>();
function closeStreamAfterAnswer(res: ServerResponse): void {
  const stream = (res as unknown as Http2ServerResponse).stream;
  if (stream === undefined || closing.has(stream)) return;
  closing.add(stream);
  const reset = () => {
    if (stream.closed || stream.destroyed) return;
    stream.close(constants.NGHTTP2_NO_ERROR);
    // Node keeps a reset stream open until the client's unread bytes are consumed, which no one
    // will do: it is released now (the RST_STREAM is already submitted, the answer written out).
    res.req?.unpipe();
    stream.destroy();
  };
  // RST_STREAM NO_ERROR may only follow a complete answer: after its END_STREAM. Node's response
  // sends that with (empty) trailers, on the turn after it asks for them ('wantTrailers'); an answer
  // without a body ends with its HEADERS frame, already gone when the stream's side is written out.
  stream.once('wantTrailers', () => setImmediate(reset));
  const afterWritten = () => {
    if (stream.closed || stream.destroyed) return;
    if ((stream.state as { localClose?: number }).localClose === 1) return reset();
    // Written out: the stream is not kept beyond the lingering time, whatever happens.
    const timer = setTimeout(reset, LINGER_MS);
    timer.unref();
    stream.once('close', () => clearTimeout(timer));
  };
  if (stream.writableFinished) afterWritten();
  else stream.once('finish', afterWritten);
}
