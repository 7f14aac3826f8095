import { Pool } from 'undici';
import type { Config } from '../../config/schema.js';

/**
 * One keep-alive connection pool to the backend, shared by every branch (proxying, pre-authorize).
 * The header timeout is `proxy_headers_timeout`; the same value bounds a backend that goes silent
 * mid-body, so a stalled response cannot hold a client forever.
 */
export function createUpstream(config: Config): Pool {
  return new Pool(config.authBackend, {
    connect: {
      timeout: 30_000,
      ...(config.authSocket === undefined ? {} : { socketPath: config.authSocket }),
    },
    headersTimeout: config.proxyHeadersTimeoutMs,
    bodyTimeout: config.proxyHeadersTimeoutMs,
    keepAliveTimeout: 4_000,
    keepAliveMaxTimeout: 60_000,
  });
}
