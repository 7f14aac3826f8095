import type { Readable } from 'node:stream';
import { Agent, type Dispatcher } from 'undici';
import type { Config } from '../../config/schema.js';

/** An outbound URL the policy does not allow (scheme, host, or too many redirects). */
export class OutboundRefusedError extends Error {
  override name = 'OutboundRefusedError';
  readonly code = 'EDGE_OUTBOUND_REFUSED';
}

export interface OutboundRequest {
  method?: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'DELETE';
  headers?: Record<string, string>;
  /** A request body (object-storage uploads); streamed, never buffered. Never sent again on a redirect. */
  body?: Readable | Buffer | string;
  /** Follow 3xx Location answers (each hop is checked against the policy). */
  allowRedirects?: boolean;
  signal?: AbortSignal;
}

export interface Outbound {
  /**
   * Sends one request and resolves with the response whose body is still unread: callers stream it
   * (or destroy it). Throws `OutboundRefusedError` before any connection to a URL the policy refuses.
   */
  request(url: string, opts?: OutboundRequest): Promise<Dispatcher.ResponseData>;
  close(): Promise<void>;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * The one client for every HTTP call Outrider makes on its own (send-url, remote images, object
 * storage): connect, header and body-silence timeouts from `[outbound]`, redirects only when the
 * caller allows them and at most `max_redirects`, and `allowed_hosts` enforced on every hop, so the
 * network policy lives in one place. Bodies are handed back unread.
 */
export function createOutbound(config: Pick<Config, 'outbound'>): Outbound {
  const policy = config.outbound;
  const agent = new Agent({
    connect: { timeout: policy.connectTimeoutMs },
    headersTimeout: policy.headersTimeoutMs,
    bodyTimeout: policy.bodyTimeoutMs,
    keepAliveTimeout: 10_000,
  });

  const check = (url: URL): void => {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new OutboundRefusedError(`scheme ${url.protocol} is not allowed`);
    if (url.username !== '' || url.password !== '') throw new OutboundRefusedError('credentials in URLs are not allowed');
    if (!hostAllowed(url.hostname, policy.allowedHosts))
      throw new OutboundRefusedError(`host ${url.hostname} is not in [outbound] allowed_hosts`);
  };

  return {
    async request(target, opts = {}) {
      let url = new URL(target);
      for (let hop = 0; ; hop++) {
        check(url);
        const res = await agent.request({
          origin: url.origin,
          path: `${url.pathname}${url.search}`,
          method: opts.method ?? 'GET',
          headers: opts.headers,
          body: opts.body,
          signal: opts.signal,
        });
        const location = res.headers.location;
        if (opts.allowRedirects !== true || !REDIRECTS.has(res.statusCode) || typeof location !== 'string') return res;
        await res.body.dump();
        if (hop >= policy.maxRedirects) throw new OutboundRefusedError(`more than ${policy.maxRedirects} redirects`);
        url = new URL(location, url);
      }
    },
    close: () => agent.close(),
  };
}

/** `allowed` empty: any host. Entries are exact names or `*.example.com` (any subdomain). */
export function hostAllowed(hostname: string, allowed: readonly string[]): boolean {
  if (allowed.length === 0) return true;
  const host = hostname.toLowerCase();
  return allowed.some((entry) => (entry.startsWith('*.') ? host.endsWith(entry.slice(1)) : host === entry));
}
