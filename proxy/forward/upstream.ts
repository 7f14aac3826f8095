import type { Dispatcher } from 'undici';
import { Pool } from 'undici';
import type { Config } from '../../config/schema.js';

/** The backend as a node:http request addresses it. */
export interface ContinueTarget {
  origin: URL;
  /** `auth_socket`: the backend listens on this unix socket. */
  socketPath: string | undefined;
  /** `proxy_headers_timeout`: the longest silence of the backend connection, as undici's header and body timeouts. */
  timeoutMs: number;
}

/** Each pool's backend, for the requests that cannot go through it (`continue.ts`). */
const continueTargets = new WeakMap<Dispatcher, ContinueTarget>();

/**
 * One keep-alive connection pool to the backend, shared by every branch (proxying, pre-authorize).
 * The header timeout is `proxy_headers_timeout`; the same value bounds a backend that goes silent
 * mid-body, so a stalled response cannot hold a client forever.
 */
export function createUpstream(config: Config): Pool {
  const pool = new Pool(config.authBackend, {
    connect: {
      timeout: 30_000,
      ...(config.authSocket === undefined ? {} : { socketPath: config.authSocket }),
    },
    headersTimeout: config.proxyHeadersTimeoutMs,
    bodyTimeout: config.proxyHeadersTimeoutMs,
    keepAliveTimeout: 4_000,
    keepAliveMaxTimeout: 60_000,
  });
  continueTargets.set(pool, {
    origin: new URL(config.authBackend),
    socketPath: config.authSocket,
    timeoutMs: config.proxyHeadersTimeoutMs,
  });
  return pool;
}

/**
 * The backend of a pool made by `createUpstream`, for a request with `Expect: 100-continue`
 * (undici cannot send one over HTTP/1.1); undefined for any other dispatcher, whose requests
 * then get Outrider's own 100 at once.
 */
export function continueTarget(upstream: Dispatcher): ContinueTarget | undefined {
  return continueTargets.get(upstream);
}
