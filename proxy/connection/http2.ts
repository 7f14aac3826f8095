import type { IncomingMessage, ServerResponse } from 'node:http';
import { type Http2SecureServer, type Http2ServerRequest, Http2ServerResponse, type Http2Session, type Http2Stream } from 'node:http2';
import type { Socket } from 'node:net';

/**
 * HTTP/2 on the TLS listener (`[tls] http2`): ALPN offers `h2` beside `http/1.1`, and Node's
 * compatibility layer hands each stream to the same request listener as an HTTP/1.1 request.
 * What differs is made to look like HTTP/1.1 here, once per stream, so that the forwarder,
 * uploads and interceptors read one kind of request:
 *
 * - the pseudo-headers (`:method`, `:path`, `:scheme`, `:authority`) leave the header list, and
 *   `:authority` becomes `Host`, in place of any `Host` the client sent too (RFC 9113 §8.3.1: an
 *   intermediary building an HTTP/1.1 request uses `:authority`);
 * - the cookie fields, which HTTP/2 lets a client split, are joined with "; " into one
 *   (RFC 9113 §8.2.3), as an HTTP/1.1 backend must receive them;
 * - a body without Content-Length, which HTTP/2 allows (its end is the stream's end), is
 *   declared `Transfer-Encoding: chunked`, so it is forwarded (chunked) and never taken for none.
 *
 * An HTTP/1.1 request never comes here: the check that sends HTTP/2 ones is its version number.
 */
export function asHttp1(req: IncomingMessage): void {
  const h2 = req as unknown as Http2ServerRequest;
  const raw = h2.rawHeaders;
  const list: string[] = [];
  let authority: string | undefined;
  let cookie: string | undefined;
  let length = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    if (name.charCodeAt(0) === 58 /* ":" */) {
      if (name === ':authority') authority = value;
      continue;
    }
    if (name === 'cookie') {
      cookie = cookie === undefined ? value : `${cookie}; ${value}`;
      continue;
    }
    // Pseudo-headers come first (RFC 9113 §8.3): `:authority`, when sent, is known here.
    if (name === 'host') {
      if (authority !== undefined) continue;
    } else if (name === 'content-length') length = true;
    list.push(name, value);
  }
  if (authority !== undefined) list.unshift('host', authority);
  if (cookie !== undefined) list.push('cookie', cookie);
  if (!length && !h2.stream.endAfterHeaders && req.method !== 'CONNECT') list.push('transfer-encoding', 'chunked');
  Object.defineProperty(req, 'rawHeaders', { value: list, configurable: true });
  // Made on first use, as Node's HTTP/1.1 parser makes it: the forwarder reads the raw list only.
  Object.defineProperty(req, 'headers', {
    configurable: true,
    get() {
      const headers = headerObject(list);
      Object.defineProperty(req, 'headers', { value: headers, configurable: true });
      return headers;
    },
  });
}

/** A header list as node:http's `req.headers`: lower-case names, repeats joined with ", " (set-cookie kept as an array). */
function headerObject(list: readonly string[]): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = Object.create(null);
  for (let i = 0; i < list.length; i += 2) {
    const name = list[i] as string;
    const value = list[i + 1] as string;
    const had = headers[name];
    if (had === undefined) headers[name] = name === 'set-cookie' ? [value] : value;
    else if (Array.isArray(had)) had.push(value);
    else headers[name] = `${had}, ${value}`;
  }
  return headers;
}

/**
 * True when the response went out whole: over HTTP/1.1 once it is written out; over HTTP/2 also
 * only when its stream was not reset (a client that cancels a stream, or drops the connection,
 * leaves a response that Node ends itself, so `writableFinished` alone reads true).
 */
export function answeredWhole(res: ServerResponse): boolean {
  if (!res.writableFinished) return false;
  const stream = (res as { stream?: Http2Stream }).stream;
  return stream === undefined || !(stream.rstCode > 0);
}

// Node's HTTP/2 response has no `destroyed` (an HTTP/1.1 one has): Outrider's stages read it to
// stop work for a client that is gone. It is the stream's.
if (!('destroyed' in Http2ServerResponse.prototype)) {
  Object.defineProperty(Http2ServerResponse.prototype, 'destroyed', {
    configurable: true,
    get(this: Http2ServerResponse): boolean {
      const stream = this.stream as Http2Stream | undefined;
      return stream === undefined || stream.destroyed || stream.closed;
    },
  });
}

// Without an error, Node resets a destroyed response's stream with NO_ERROR, which tells the
// client its answer is complete (curl exits 0 on a cut 200). An answer Outrider cuts is cut.
const destroyResponse = Http2ServerResponse.prototype.destroy;
Http2ServerResponse.prototype.destroy = function destroy(this: Http2ServerResponse, err?: Error) {
  return destroyResponse.call(this, err ?? new Error('the answer was cut off'));
};

/** True for a request that came over HTTP/2. */
export function isHttp2(req: IncomingMessage): boolean {
  return req.httpVersionMajor === 2;
}

/** The HTTP/2 sessions of a listener, for their idle limit and for shutdown. */
export interface Http2Sessions {
  /** Sends every session GOAWAY: open streams finish, no new one is accepted, and the session closes when its last stream has. */
  closeAll(): void;
  /** Cuts every connection now, HTTP/2 sessions with their streams and HTTP/1.1 ones alike: once `shutdown_timeout` has run out. */
  destroyAll(): void;
  /** Sessions open now. */
  readonly size: number;
}

/**
 * Follows the HTTP/2 sessions of `server`: a session with no open stream for `idleMs` is closed
 * gently (GOAWAY), the HTTP/2 counterpart of the HTTP/1.1 keep-alive timeout. A session with a
 * stream open is never cut for idleness, however long its backend takes: a long poll, a download
 * or a WebSocket over extended CONNECT keeps it.
 */
export function trackSessions(server: Http2SecureServer, idleMs: number): Http2Sessions {
  const sessions = new Set<Http2Session>();
  // Node's HTTP/2 server has no closeAllConnections for its HTTP/1.1 connections: they are followed here.
  const http1 = new Set<Socket>();
  server.on('secureConnection', (socket: Socket & { alpnProtocol?: string | false }) => {
    if (socket.alpnProtocol === 'h2') return;
    http1.add(socket);
    socket.once('close', () => http1.delete(socket));
  });
  server.on('session', (session: Http2Session) => {
    sessions.add(session);
    let streams = 0;
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      timer = setTimeout(() => session.close(), idleMs);
      timer.unref();
    };
    session.on('stream', (stream) => {
      streams++;
      clearTimeout(timer);
      stream.once('close', () => {
        if (--streams === 0 && !session.closed) arm();
      });
    });
    session.once('close', () => {
      clearTimeout(timer);
      sessions.delete(session);
    });
    arm();
  });
  return {
    closeAll() {
      for (const session of sessions) if (!session.closed) session.close();
    },
    destroyAll() {
      for (const session of sessions) session.destroy();
      for (const socket of http1) socket.destroy();
    },
    get size() {
      return sessions.size;
    },
  };
}
