import type { ClientRequest, request as httpRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyBaseLogger } from 'fastify';
import type { Config } from '../../config/schema.js';
import { EdgeUpstreamInvalidResponse, errorCode, writeError } from '../errors.js';
import { connectionTokens, RESPONSE_STRIPPED } from '../forward/headers.js';
import type { Metrics, TunnelCloseReason } from '../observe/metrics/catalogue.js';
import type { ErrorPages } from '../routes/error-pages.js';

/** The connect timeout of the backend pool (forward/upstream.ts): a backend that accepts no connection in this long is down. */
const CONNECT_TIMEOUT_MS = 30_000;

export interface TunnelsOptions {
  config: Pick<Config, 'authBackend' | 'authSocket' | 'proxyHeadersTimeoutMs' | 'websocket'>;
  version: string;
  genReqId: (req: IncomingMessage) => string;
  log: FastifyBaseLogger;
  metrics: Metrics | undefined;
  isClosing: () => boolean;
  pages?: ErrorPages;
}

/** One tunnel, from its request until both its connections are closed. */
export interface Tunnel {
  close(reason: TunnelCloseReason): void;
  bytes(): { upstream: number; downstream: number };
}

/** What both kinds of tunnel (an HTTP/1.1 upgrade, an HTTP/2 extended CONNECT) share: the backend, the limits, the open set. */
export interface TunnelContext {
  opts: TunnelsOptions;
  /** Opens the backend connection the upgrade request goes on (node:http or node:https, never pooled). */
  send: typeof httpRequest;
  connectTo: { host: string; port: string } | { socketPath: string };
  /** The TLS server name, when the backend is https. */
  servername: string | undefined;
  open: Set<Tunnel>;
  /** Bytes of tunnels already closed; open ones are added at scrape time. */
  carried: { upstream: number; downstream: number };
}

/** The fields of a tunnel's one log line; logged at warn when it failed. */
export function logTunnel(log: FastifyBaseLogger, fields: Record<string, unknown> & { reason: TunnelCloseReason }): void {
  if (fields.reason === 'error' || fields.reason === 'failed') log.warn(fields, 'tunnel closed');
  else log.info(fields, 'tunnel closed');
}

/** The backend-side timers every tunnel request runs: connect, then the head (`proxy_headers_timeout`). */
export function backendTimers(request: ClientRequest, tls: boolean, headersTimeoutMs: number): { clear(): void; headArrived(): void } {
  const fail = (code: string, message: string) => request.destroy(Object.assign(new Error(message), { code }));
  const connectTimer = setTimeout(() => fail('UND_ERR_CONNECT_TIMEOUT', 'connect timeout'), CONNECT_TIMEOUT_MS);
  const headTimer = setTimeout(() => fail('UND_ERR_HEADERS_TIMEOUT', 'headers timeout'), headersTimeoutMs);
  request.on('socket', (s: Socket) => {
    s.once(tls ? 'secureConnect' : 'connect', () => clearTimeout(connectTimer));
  });
  return {
    clear() {
      clearTimeout(connectTimer);
      clearTimeout(headTimer);
    },
    headArrived() {
      clearTimeout(headTimer);
    },
  };
}

/** The backend's response headers for the client: hop-by-hop ones, those its Connection names and Outrider's instructions removed. */
export function responseHeaders(raw: readonly string[]): string[] {
  const named: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() === 'connection') named.push(...connectionTokens(raw[i + 1] as string));
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = (raw[i] as string).toLowerCase();
    if (!RESPONSE_STRIPPED.has(lower) && !named.includes(lower)) out.push(raw[i] as string, raw[i + 1] as string);
  }
  return out;
}

/** What a relayed refusal ends as, for the tunnel's record: the status the client got, and why. */
export interface RelayOutcome {
  status: number;
  reason: 'declined' | 'failed';
  /** Node's refusal of the backend's headers, when the client got a 502 instead. */
  failure?: unknown;
}

/**
 * Relays the answer of a backend that did not switch protocols: its status, its headers as the
 * client may see them, and its body. When Node refuses the headers (it checks less on reading
 * than on writing), the client gets a 502 instead.
 */
export function relayAnswer(
  backendRes: IncomingMessage,
  relay: ServerResponse,
  pages: ErrorPages | undefined,
  onBodyError: (err: Error) => void,
): RelayOutcome {
  const status = backendRes.statusCode ?? 502;
  try {
    relay.writeHead(status, responseHeaders(backendRes.rawHeaders));
  } catch (err) {
    backendRes.destroy();
    writeError(relay, new EdgeUpstreamInvalidResponse({ cause: err }), pages);
    return { status: 502, reason: 'failed', failure: err };
  }
  backendRes.on('error', onBodyError);
  backendRes.pipe(relay);
  return { status, reason: 'declined' };
}

/**
 * A tunnel request's outcome, counted and logged once (`fields` says which request it was): an
 * open tunnel leaves the open set, its bytes carried over to the totals.
 */
export function recordClose(
  ctx: TunnelContext,
  tunnel: Tunnel,
  opened: boolean,
  reason: TunnelCloseReason,
  failure: unknown,
  fields: Record<string, unknown>,
): void {
  const b = tunnel.bytes();
  if (opened) {
    ctx.open.delete(tunnel);
    ctx.carried.upstream += b.upstream;
    ctx.carried.downstream += b.downstream;
  }
  ctx.opts.metrics?.tunnelClosed(reason);
  const code = failure === undefined ? undefined : errorCode(failure) || (failure as Error).message;
  logTunnel(ctx.opts.log, {
    subsystem: 'tunnel',
    ...fields,
    reason,
    upstreamBytes: b.upstream,
    downstreamBytes: b.downstream,
    ...(code === undefined ? {} : { error: code }),
  });
}
