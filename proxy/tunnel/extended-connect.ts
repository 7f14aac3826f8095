import { createHash, randomBytes } from 'node:crypto';
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import { constants, type Http2ServerRequest, type ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import type { FastifyError } from '@fastify/error';
import { LINGER_MS } from '../connection/linger.js';
import {
  EdgeConnectRefused,
  EdgeRequestInvalid,
  EdgeShuttingDown,
  EdgeTunnelsFull,
  EdgeUpstreamInvalidResponse,
  errorCode,
  toEdgeError,
  writeError,
} from '../errors.js';
import { rawHeader } from '../forward/headers.js';
import { requestHeaders } from '../forward/request-headers.js';
import type { TunnelCloseReason } from '../observe/metrics/catalogue.js';
import { backendTimers, recordClose, relayAnswer, responseHeaders, type Tunnel, type TunnelContext } from './shared.js';

/** RFC 6455 §1.3: what the Sec-WebSocket-Accept of a key is made with. */
const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Resets are a peer going away, not a fault of the tunnel. */
const PEER_GONE = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_HTTP2_STREAM_ERROR']);

/**
 * RFC 8441: WebSocket (or another protocol) over one HTTP/2 stream. The client sends `CONNECT`
 * with `:protocol: websocket`; the backend speaks HTTP/1.1, so the stream is turned into the
 * upgrade request it understands: `GET` with the same path and headers (plus Workhorse's, as for
 * any request), `Connection: Upgrade`, `Upgrade: <protocol>`, and for WebSocket a fresh
 * `Sec-WebSocket-Key` (HTTP/2 clients send none: RFC 8441 §5). A 101 becomes the stream's `200`,
 * and the backend connection is then joined to the stream both ways, with HTTP/2 flow control as
 * the backpressure on the client side. Frames pass through unparsed, as over HTTP/1.1.
 *
 * Any other answer is relayed as it came, except a 2xx: on a CONNECT stream a 2xx means the
 * tunnel is open, so a backend that did not switch is a 502 there. The tunnel is counted, limited
 * (`[websocket] max_tunnels`, `idle_timeout`), logged and closed on shutdown like an upgrade.
 */
export function extendedConnect(ctx: TunnelContext, req: IncomingMessage, res: ServerResponse, protocol: string | undefined): void {
  const { opts, open } = ctx;
  const { metrics, pages } = opts;
  const { idleTimeoutMs, maxTunnels } = opts.config.websocket;
  const started = performance.now();
  const requestId = opts.genReqId(req);
  const stream = (req as unknown as Http2ServerRequest).stream as ServerHttp2Stream;
  const peer = stripMapped(req.socket?.remoteAddress ?? '');
  let settled = false;
  let done = false;
  let opened = false;
  let status = 0;
  let reason: TunnelCloseReason | undefined;
  let failure: unknown;
  let out: ClientRequest | undefined;
  let upstream: Socket | undefined;
  let timers: ReturnType<typeof backendTimers> | undefined;
  let lingerTimer: NodeJS.Timeout | undefined;
  let written0 = 0;
  let read0 = 0;
  let downstreamBefore = 0;

  const bytes = () =>
    opened && upstream !== undefined
      ? { upstream: upstream.bytesWritten - written0, downstream: upstream.bytesRead - read0 + downstreamBefore }
      : { upstream: 0, downstream: 0 };

  const finish = (why: TunnelCloseReason) => {
    if (done) return;
    done = true;
    settled = true;
    reason ??= why;
    timers?.clear();
    clearTimeout(lingerTimer);
    recordClose(ctx, tunnel, opened, reason, failure, {
      requestId,
      method: 'CONNECT',
      path: req.url,
      upgrade: protocol ?? '',
      httpVersion: '2',
      status: status === 0 ? 499 : status,
      durationMs: Math.round(performance.now() - started),
      remoteAddress: peer,
    });
  };

  const tunnel: Tunnel = {
    close(why) {
      finish(why);
      out?.destroy();
      upstream?.destroy();
      // CANCEL is HTTP/2's TCP reset (RFC 8441 §4); NO_ERROR would read as a clean end.
      if (!stream.closed) stream.close(constants.NGHTTP2_CANCEL);
      stream.destroy();
    },
    bytes,
  };

  // The stream's end is the answer's end, or the client cancelling: logged once either way.
  stream.once('close', () => {
    // Not joined: the backend request (or the refusal still streaming from it) is dropped.
    if (!opened) out?.destroy();
    if (opened) {
      clearTimeout(lingerTimer);
      upstream?.destroySoon();
      lingerTimer = setTimeout(() => upstream?.destroy(), LINGER_MS);
      lingerTimer.unref();
      upstream?.once('close', () => finish('client'));
      if (upstream?.destroyed) finish('client');
      return;
    }
    finish('client');
  });

  /** Answers with a catalogue error; the backend request, if made, is dropped. */
  const answer = (err: FastifyError, why: TunnelCloseReason) => {
    if (settled) return;
    settled = true;
    out?.destroy();
    status = err.statusCode ?? 500;
    reason = why;
    if (err.statusCode === 405) res.setHeader('allow', 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
    writeError(res, err, pages);
  };

  if (protocol === undefined) {
    answer(new EdgeConnectRefused(), 'rejected');
    return;
  }
  if (opts.isClosing()) {
    answer(new EdgeShuttingDown(), 'refused');
    return;
  }
  if (open.size >= maxTunnels) {
    answer(new EdgeTunnelsFull(), 'refused');
    return;
  }
  const headers = requestHeaders(req, peer, requestId, opts.version);
  if (headers.invalid !== undefined) {
    answer(new EdgeRequestInvalid(headers.invalid), 'rejected');
    return;
  }
  headers.list.push('connection', 'Upgrade', 'upgrade', protocol);
  // HTTP/2 WebSocket clients send no key (RFC 8441 §5): the backend's handshake needs one, and its answer is checked against it.
  let expectedAccept: string | undefined;
  if (protocol.toLowerCase() === 'websocket' && rawHeader(req, 'sec-websocket-key') === undefined) {
    const key = randomBytes(16).toString('base64');
    expectedAccept = createHash('sha1')
      .update(key + WEBSOCKET_GUID)
      .digest('base64');
    headers.list.push('sec-websocket-key', key);
  }

  let request: ClientRequest;
  try {
    request = ctx.send({
      ...ctx.connectTo,
      method: 'GET',
      path: req.url,
      headers: headers.list,
      setHost: false,
      agent: false,
      ...(ctx.servername === undefined ? {} : { servername: ctx.servername }),
    });
  } catch (err) {
    answer(new EdgeRequestInvalid('the request cannot be forwarded', { cause: err }), 'rejected');
    return;
  }
  out = request;
  timers = backendTimers(request, ctx.servername !== undefined, opts.config.proxyHeadersTimeoutMs);
  request.on('error', (err: Error) => {
    if (settled) return;
    failure = err;
    answer(toEdgeError(err), 'failed');
  });
  request.end();

  request.on('response', (backendRes: IncomingMessage) => {
    timers?.headArrived();
    if (settled) return void backendRes.destroy();
    const code = backendRes.statusCode ?? 502;
    if (code >= 200 && code < 300) {
      // On a CONNECT stream a 2xx opens the tunnel: a backend that answered without switching must not look like one.
      backendRes.destroy();
      failure = new Error(`the backend answered ${code} instead of switching to "${protocol}"`);
      return answer(new EdgeUpstreamInvalidResponse({ cause: failure }), 'failed');
    }
    settled = true;
    const outcome = relayAnswer(backendRes, res, pages, (err) => {
      failure ??= err;
      res.destroy();
    });
    ({ status, reason, failure } = outcome);
  });

  request.on('upgrade', (backendRes: IncomingMessage, backendSocket: Socket, backendHead: Buffer) => {
    timers?.headArrived();
    if (settled) return void backendSocket.destroy();
    const switched = (rawHeader(backendRes, 'upgrade') ?? '').trim().toLowerCase();
    const accept = rawHeader(backendRes, 'sec-websocket-accept');
    const wrong =
      switched !== protocol.toLowerCase()
        ? `the backend switched to "${switched}" when "${protocol}" was asked for`
        : expectedAccept !== undefined && accept !== expectedAccept
          ? 'the backend answered the WebSocket handshake with a wrong Sec-WebSocket-Accept'
          : undefined;
    if (wrong !== undefined) {
      backendSocket.destroy();
      failure = new Error(wrong);
      return answer(new EdgeUpstreamInvalidResponse({ cause: failure }), 'failed');
    }
    settled = true;
    opened = true;
    status = 200;
    open.add(tunnel);
    metrics?.tunnelOpened();
    upstream = backendSocket;
    written0 = backendSocket.bytesWritten;
    read0 = backendSocket.bytesRead;
    downstreamBefore = backendHead.length;
    // The handshake's own field is the backend's answer to Outrider's key, not the client's business.
    const head = responseHeaders(backendRes.rawHeaders).filter((_, i, all) => {
      const name = (i % 2 === 0 ? all[i] : all[i - 1]) as string;
      return name.toLowerCase() !== 'sec-websocket-accept';
    });
    try {
      res.writeHead(200, head);
    } catch (err) {
      failure = err;
      return tunnel.close('failed');
    }
    if (backendHead.length > 0) stream.write(backendHead);
    backendSocket.on('error', (err: Error) => {
      failure ??= err;
      tunnel.close(PEER_GONE.has(errorCode(err)) ? 'backend' : 'error');
    });
    stream.on('error', (err: Error) => {
      failure ??= err;
      tunnel.close(PEER_GONE.has(errorCode(err)) ? 'client' : 'error');
    });
    // One side's end is the tunnel's end, as over HTTP/1.1: the other gets what is buffered, then
    // closes: the backend's connection with a FIN, the stream with END_STREAM and, once that is
    // written, RST_STREAM NO_ERROR (the client need not send more: RFC 9113 §8.1).
    const endStream = () => {
      if (stream.closed || stream.destroyed) return;
      const reset = () => {
        if (!stream.closed && !stream.destroyed) stream.close(constants.NGHTTP2_NO_ERROR);
      };
      stream.once('finish', reset);
      stream.end();
      if (lingerTimer === undefined) {
        lingerTimer = setTimeout(() => stream.destroy(), LINGER_MS);
        lingerTimer.unref();
      }
    };
    backendSocket.once('end', () => {
      reason ??= 'backend';
      endStream();
    });
    backendSocket.once('close', () => {
      reason ??= 'backend';
      if (stream.closed) finish('backend');
      else endStream();
    });
    stream.once('end', () => {
      reason ??= 'client';
      backendSocket.destroySoon();
    });
    stream.setTimeout(idleTimeoutMs, () => {
      failure ??= new Error(`no byte either way for ${idleTimeoutMs} ms`);
      tunnel.close('idle');
    });
    backendSocket.pipe(stream, { end: false });
    stream.pipe(backendSocket, { end: false });
  });
}

function stripMapped(addr: string): string {
  return addr.startsWith('::ffff:') ? addr.slice(7) : addr;
}
