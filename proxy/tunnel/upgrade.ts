import { type ClientRequest, request as httpRequest, type IncomingMessage, ServerResponse } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import type { FastifyError } from '@fastify/error';
import { closeAfterAnswer, LINGER_MS } from '../connection/linger.js';
import {
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
import { extendedConnect } from './extended-connect.js';
import {
  backendTimers,
  recordClose,
  relayAnswer,
  responseHeaders,
  type Tunnel,
  type TunnelContext,
  type TunnelsOptions,
} from './shared.js';

/** Client bytes read and held while the backend has not answered (a client that speaks first); reading stops beyond this. */
const EARLY_BYTES = 64 * 1024;
/** Resets are a peer going away, not a fault of the tunnel. */
const PEER_GONE = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ERR_STREAM_PREMATURE_CLOSE']);

/**
 * Upgrade tunnelling: a request asking to switch protocols (`Connection: upgrade` with `Upgrade:
 * websocket`, or any other token) is forwarded to the backend with the headers every request gets
 * (forward/request-headers.ts) plus `Connection: Upgrade` and its `Upgrade`. A 101 is passed to
 * the client and the two connections are joined byte for byte, both ways, with backpressure
 * (`pipe`). Any other answer is relayed as it came, and the connection closed. Nothing here runs
 * for a request that is not an upgrade: Node hands those to the server's `upgrade` listener only.
 */
export interface Tunnels {
  /** The node:http server's `upgrade` listener. */
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void;
  /**
   * An HTTP/2 stream's CONNECT (the server's `connect` listener): RFC 8441's extended CONNECT with
   * `:protocol` (WebSocket over HTTP/2) is tunnelled as an HTTP/1.1 upgrade (`extended-connect.ts`);
   * a plain CONNECT is refused with 405. `protocol` is the `:protocol` pseudo-header.
   */
  extendedConnect(req: IncomingMessage, res: ServerResponse, protocol: string | undefined): void;
  /** Closes every open tunnel now, each logged with `reason` (`shutdown` once `shutdown_timeout` has run out). */
  closeAll(reason: 'shutdown'): void;
}

export function createTunnels(opts: TunnelsOptions): Tunnels {
  const { config, metrics, pages } = opts;
  const backend = new URL(config.authBackend);
  const tls = backend.protocol === 'https:';
  // An IPv6 literal comes from URL in brackets, which a lookup would not find.
  const connectTo =
    config.authSocket === undefined
      ? { host: backend.hostname.replace(/^\[(.*)\]$/, '$1'), port: backend.port }
      : { socketPath: config.authSocket };
  const send = tls ? httpsRequest : httpRequest;
  const { idleTimeoutMs, maxTunnels } = config.websocket;
  const open = new Set<Tunnel>();
  const carried = { upstream: 0, downstream: 0 };
  const context: TunnelContext = { opts, send, connectTo, servername: tls ? backend.hostname : undefined, open, carried };
  metrics?.readTunnels({
    open: () => open.size,
    bytes() {
      let { upstream, downstream } = carried;
      for (const t of open) {
        const b = t.bytes();
        upstream += b.upstream;
        downstream += b.downstream;
      }
      return { upstream, downstream };
    },
  });

  function upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const started = performance.now();
    const requestId = opts.genReqId(req);
    const peer = socket.remoteAddress ?? '';
    const protocol = rawHeader(req, 'upgrade') ?? '';
    /** The outcome is decided: answered, relayed, joined, or the client is gone. */
    let settled = false;
    /** Logged and counted. */
    let done = false;
    let opened = false;
    let status = 0;
    let reason: TunnelCloseReason | undefined;
    let failure: unknown;
    let out: ClientRequest | undefined;
    let upstream: Socket | undefined;
    let timers: ReturnType<typeof backendTimers> | undefined;
    // What the client sent past its request head (and its body, if it had one) before the 101.
    const early: Buffer[] = [];
    let earlyBytes = 0;
    // Byte counters when the tunnel opened, and what each side had sent past its head before.
    let clientRead0 = 0;
    let upstreamRead0 = 0;
    let upstreamBefore = 0;
    let downstreamBefore = 0;
    let closedSockets = 0;
    let lingerTimer: NodeJS.Timeout | undefined;

    const bytes = () =>
      opened
        ? {
            upstream: socket.bytesRead - clientRead0 + upstreamBefore,
            downstream: (upstream?.bytesRead ?? upstreamRead0) - upstreamRead0 + downstreamBefore,
          }
        : { upstream: 0, downstream: 0 };

    /** Logs and counts the outcome, once. */
    const finish = (why: TunnelCloseReason) => {
      if (done) return;
      done = true;
      settled = true;
      reason ??= why;
      timers?.clear();
      clearTimeout(lingerTimer);
      recordClose(context, tunnel, opened, reason, failure, {
        requestId,
        method: req.method,
        path: req.url,
        upgrade: protocol,
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
        socket.destroy();
      },
      bytes,
    };

    /** The client left (or half-closed) before the outcome was decided: the backend request is dropped. */
    const clientGone = () => {
      if (settled) return;
      out?.destroy();
      finish('client');
      socket.destroy();
    };

    // Before the 101: body bytes go to the backend request, anything after them is held.
    let remaining = 0;
    const hold = (chunk: Buffer) => {
      early.push(chunk);
      earlyBytes += chunk.length;
      if (earlyBytes > EARLY_BYTES) socket.pause();
    };
    const onData = (chunk: Buffer) => {
      let rest: Buffer | undefined = chunk;
      if (remaining > 0 && out !== undefined) {
        const part = chunk.length <= remaining ? chunk : chunk.subarray(0, remaining);
        remaining -= part.length;
        rest = part.length === chunk.length ? undefined : chunk.subarray(part.length);
        const request = out;
        if (!request.write(part)) {
          socket.pause();
          request.once('drain', () => socket.resume());
        }
        if (remaining === 0) request.end();
      }
      if (rest !== undefined && rest.length > 0) hold(rest);
    };
    const stopReading = () => {
      socket.removeListener('data', onData);
      socket.removeListener('end', clientGone);
    };

    /** The client's connection from now on carries one answer, then closes (read and dropped meanwhile: linger.ts). */
    const answerOn = (): ServerResponse => {
      settled = true;
      stopReading();
      const res = new ServerResponse(req);
      res.assignSocket(socket);
      closeAfterAnswer(res);
      res.once('finish', () => socket.destroySoon());
      return res;
    };

    /** Answers the client with a catalogue error and closes its connection; the backend request, if made, is dropped. */
    const answer = (err: FastifyError, why: TunnelCloseReason) => {
      if (settled) return;
      out?.destroy();
      if (socket.destroyed) return finish('client');
      status = err.statusCode ?? 500;
      reason = why;
      writeError(answerOn(), err, pages);
    };

    socket.on('error', (err: Error) => {
      failure ??= err;
      if (opened) return void tunnel.close(PEER_GONE.has(errorCode(err)) ? 'client' : 'error');
      clientGone();
      socket.destroy();
    });
    socket.on('close', () => {
      if (opened) return void onSideClosed('client');
      clientGone();
      // An answer written or relayed: logged once the connection that carried it is gone.
      finish('client');
    });

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
    // A chunked body's end cannot be found without decoding it; a Content-Length body is forwarded exactly.
    if (rawHeader(req, 'transfer-encoding') !== undefined) {
      answer(new EdgeRequestInvalid('an upgrade request cannot have a chunked body'), 'rejected');
      return;
    }
    const length = rawHeader(req, 'content-length');
    const contentLength = length === undefined ? 0 : /^\d{1,15}$/.test(length) ? Number(length) : -1;
    if (contentLength < 0) {
      answer(new EdgeRequestInvalid('the Content-Length header is not a number'), 'rejected');
      return;
    }
    headers.list.push('connection', 'Upgrade', 'upgrade', protocol);

    let request: ClientRequest;
    try {
      request = send({
        ...connectTo,
        method: req.method,
        path: req.url,
        headers: headers.list,
        setHost: false,
        agent: false,
        ...(context.servername === undefined ? {} : { servername: context.servername }),
      });
    } catch (err) {
      answer(new EdgeRequestInvalid('the request cannot be forwarded', { cause: err }), 'rejected');
      return;
    }
    out = request;
    timers = backendTimers(request, tls, config.proxyHeadersTimeoutMs);
    request.on('error', (err: Error) => {
      if (settled) return;
      failure = err;
      // A backend that could not be reached, or reached and silent: 502 or 504, as for any request.
      answer(toEdgeError(err), 'failed');
    });

    remaining = contentLength;
    if (remaining === 0) request.end();
    if (head.length > 0) onData(head);
    socket.on('data', onData);
    socket.on('end', clientGone);

    request.on('response', (res: IncomingMessage) => {
      // Not switched: the answer goes to the client as it came, then the connection closes.
      timers?.headArrived();
      if (settled) return void res.destroy();
      const outcome = relayAnswer(res, answerOn(), pages, (err) => {
        failure ??= err;
        socket.destroy();
      });
      ({ status, reason, failure } = outcome);
    });

    request.on('upgrade', (res: IncomingMessage, backendSocket: Socket, backendHead: Buffer) => {
      timers?.headArrived();
      if (settled) return void backendSocket.destroy();
      const switched = rawHeader(res, 'upgrade') ?? '';
      const asked = protocol.split(',').map((t) => t.trim().toLowerCase());
      if (!asked.includes(switched.trim().toLowerCase())) {
        backendSocket.destroy();
        failure = new Error(`the backend switched to "${switched}" when "${protocol}" was asked for`);
        return answer(new EdgeUpstreamInvalidResponse({ cause: failure }), 'failed');
      }
      // Joined: the 101 head, what each side sent past its head, then everything both ways.
      settled = true;
      opened = true;
      status = 101;
      open.add(tunnel);
      metrics?.tunnelOpened();
      upstream = backendSocket;
      stopReading();
      backendSocket.allowHalfOpen = true;
      clientRead0 = socket.bytesRead;
      upstreamRead0 = backendSocket.bytesRead;
      upstreamBefore = earlyBytes;
      downstreamBefore = backendHead.length;
      socket.write(switchingHead(res.rawHeaders, switched));
      if (backendHead.length > 0) socket.write(backendHead);
      for (const chunk of early) backendSocket.write(chunk);
      early.length = 0;
      backendSocket.on('error', (err: Error) => {
        failure ??= err;
        tunnel.close(PEER_GONE.has(errorCode(err)) ? 'backend' : 'error');
      });
      backendSocket.on('end', () => onSideEnded('backend'));
      socket.on('end', () => onSideEnded('client'));
      backendSocket.on('close', () => onSideClosed('backend'));
      socket.setTimeout(idleTimeoutMs, () => {
        failure ??= new Error(`no byte either way for ${idleTimeoutMs} ms`);
        tunnel.close('idle');
      });
      socket.pipe(backendSocket);
      backendSocket.pipe(socket);
      socket.resume();
    });

    /**
     * One side ended its connection (FIN): the tunnel is over, as Go's ReverseProxy and nginx
     * have it (no half-closed tunnels: WebSocket closes with frames of its own). Each side gets
     * what is already buffered for it, then its connection closes; a peer that does not take it
     * within `LINGER_MS` is cut.
     */
    function onSideEnded(side: 'client' | 'backend'): void {
      reason ??= side;
      if (lingerTimer !== undefined) return;
      lingerTimer = setTimeout(() => {
        upstream?.destroy();
        socket.destroy();
      }, LINGER_MS);
      lingerTimer.unref();
      upstream?.destroySoon();
      socket.destroySoon();
    }

    /** One side's connection is closed: the other gets what is buffered for it, then closes too. Done when both are closed. */
    function onSideClosed(side: 'client' | 'backend'): void {
      onSideEnded(side);
      if (++closedSockets === 2) {
        clearTimeout(lingerTimer);
        finish(side);
      }
    }
  }

  return {
    upgrade,
    extendedConnect: (req, res, protocol) => extendedConnect(context, req, res, protocol),
    closeAll(reason) {
      for (const t of [...open]) t.close(reason);
    },
  };
}

/** The 101 head for the client: the backend's headers (as for any answer), then `Connection: Upgrade` and the protocol switched to. */
function switchingHead(raw: readonly string[], protocol: string): string {
  const headers = responseHeaders(raw);
  let head = 'HTTP/1.1 101 Switching Protocols\r\n';
  for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${head}Connection: Upgrade\r\nUpgrade: ${protocol}\r\n\r\n`;
}
