import type { ServerResponse } from 'node:http';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyBaseLogger } from 'fastify';
import { toEdgeError } from '../errors.js';

/** Connections already handled: Node's parser stays broken and reports every later segment again. */
const handled = new WeakSet<Socket>();

/**
 * What Node's parser could not read on a client connection (bad syntax, smuggling attempts, headers
 * over 16 KiB, headers too slow): the `clientError` handler, in place of fastify's, which writes
 * its raw 400 on the socket even while a response is being sent there and so corrupts it.
 *
 * - Bytes that cannot be parsed after a whole request (junk, or a bad pipelined request after a
 *   good one): the request already read gets its answer, then the connection closes, as nginx
 *   reads one request at a time.
 * - A request broken inside its own bytes (a bad chunk in its body) whose answer has begun: the
 *   connection is cut, never a status line written into a body.
 * - Otherwise nothing was answered: `400`, `408` or `431` in plain text, then the connection closes.
 *
 * Handled once per connection (the parser stays broken and reports every later segment again).
 * Logged at debug: an attacker must not be able to fill the log with them.
 */
export function onClientError(this: { log: FastifyBaseLogger }, err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed || handled.has(socket)) return;
  handled.add(socket);
  this.log.debug({ err, subsystem: 'proxy' }, 'client sent what is not HTTP');
  const res = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
  if (res !== undefined && res !== null) {
    if (res.req.complete) {
      // What could not be parsed came after this request: it is answered, then the connection closes.
      res.shouldKeepAlive = false;
      if (res.writableFinished) socket.destroySoon();
      else res.once('finish', () => socket.destroySoon());
      return;
    }
    if (res.headersSent) {
      socket.destroy();
      return;
    }
  }
  // No response exists to answer on: the catalogue error is written on the socket as it is.
  const edge = toEdgeError(err, 'client');
  const status = edge.statusCode ?? 400;
  const body = `${edge.message}\n`;
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  // Closed once the answer is out.
  socket.destroySoon();
}
