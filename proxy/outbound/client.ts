import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import type { Readable } from 'node:stream';
import { Agent, type Dispatcher, EnvHttpProxyAgent } from 'undici';
import type { Config } from '../../config/schema.js';
import { addressKind, HostRules, type Narrowing, refusal } from './policy.js';

/** An outbound URL the policy does not allow (scheme, host, address, or too many redirects). */
export class OutboundRefusedError extends Error {
  override name = 'OutboundRefusedError';
  readonly code = 'EDGE_OUTBOUND_REFUSED';
}

/** An origin's answer larger than `[outbound] max_response_bytes`, known from its Content-Length. */
export class OutboundTooLargeError extends Error {
  override name = 'OutboundTooLargeError';
  readonly code = 'EDGE_OUTBOUND_TOO_LARGE';
}

export interface OutboundRequest {
  /** GET by default. */
  method?: string;
  headers?: Record<string, string | string[]>;
  /** A request body: streamed, never buffered. A stream is never sent again on a redirect; a string or Buffer is on a 307 or 308. */
  body?: Readable | Buffer | string;
  /** Follow 3xx Location answers (each hop is checked against the policy). */
  allowRedirects?: boolean;
  signal?: AbortSignal;
  /** What a send-url instruction adds to the policy: it can only refuse more. */
  narrowing?: Narrowing;
  /** Replace `[outbound] connect_timeout` / `headers_timeout` for this request (a send-url instruction's `DialTimeout`, `ResponseHeaderTimeout`). */
  connectTimeoutMs?: number;
  headersTimeoutMs?: number;
}

export interface Outbound {
  /**
   * Sends one request and resolves with the response whose body is still unread: callers stream it
   * (or destroy it). Throws `OutboundRefusedError` before any connection to a URL the policy refuses,
   * and `OutboundTooLargeError` for an answer that says it is larger than `max_response_bytes` (one
   * that grows past it unannounced fails while it is read, with undici's `UND_ERR_RES_EXCEEDED_MAX_SIZE`).
   */
  request(url: string, opts?: OutboundRequest): Promise<Dispatcher.ResponseData>;
  close(): Promise<void>;
}

export interface OutboundOptions {
  /** Name resolution (tests give names that resolve to loopback); `dns.lookup` by default. */
  lookup?: LookupFunction;
  /** Where HTTP_PROXY, HTTPS_PROXY and NO_PROXY are read from; `process.env` by default. */
  env?: NodeJS.ProcessEnv;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Credentials a redirect to another site must not carry (as Go's http.Client drops them). */
const SENSITIVE = new Set(['authorization', 'proxy-authorization', 'cookie', 'cookie2', 'www-authenticate']);
/** Agents kept, by connect timeout and narrowing: send-url instructions come in a few shapes, not thousands. */
const MAX_AGENTS = 32;

/**
 * The one client for every HTTP call Outrider makes on its own (send-url, remote images, object
 * storage), so the network policy lives in one place:
 * - `allowed_hosts` is checked on the address actually connected to, after name resolution, on
 *   every redirect hop: a name that resolves to 127.0.0.1 is refused like 127.0.0.1 itself, and a
 *   name with both kinds of addresses is only ever connected to at its allowed ones;
 * - answers larger than `max_response_bytes` are refused or cut;
 * - connect, header and body-silence timeouts from `[outbound]`; redirects only when the caller
 *   allows them and at most `max_redirects`;
 * - HTTP_PROXY / HTTPS_PROXY / NO_PROXY through undici's EnvHttpProxyAgent. Through a proxy the
 *   target's name is resolved and checked here before the request, and the proxy resolves it again.
 */
export function createOutbound(config: Pick<Config, 'outbound'>, opts: OutboundOptions = {}): Outbound {
  const policy = config.outbound;
  const rules = new HostRules(policy.allowedHosts);
  const baseLookup = opts.lookup ?? (dnsLookup as LookupFunction);
  const proxy = proxySettings(opts.env ?? process.env);
  const agents = new Map<string, Dispatcher>();

  /**
   * The addresses of `hostname` the policy allows, or the refusal when there are none; with
   * `every`, the refusal as soon as one is refused (through a proxy, which picks the address itself).
   */
  const allowedAddresses = async (hostname: string, narrowing: Narrowing | undefined, every = false): Promise<LookupAddress[]> => {
    const addresses = await resolve(baseLookup, hostname);
    // The instruction's AllowedURIs only matter for an internal address its SSRFFilter would refuse.
    const exempt =
      narrowing?.ssrfFilter === true && addresses.some((a) => addressKind(a.address) !== 'public')
        ? await resolveAll(baseLookup, narrowing.allowedHosts)
        : [];
    const allowed: LookupAddress[] = [];
    let reason: string | undefined;
    for (const a of addresses) {
      const why = refusal(hostname, a.address, rules, narrowing, exempt);
      if (why === undefined) allowed.push(a);
      else if (every) throw new OutboundRefusedError(why);
      else reason ??= why;
    }
    if (allowed.length === 0) throw new OutboundRefusedError(reason ?? `${hostname} has no address`);
    return allowed;
  };

  const agentFor = (connectTimeout: number, narrowing: Narrowing | undefined): Dispatcher => {
    const key = narrowing === undefined ? String(connectTimeout) : `${connectTimeout} ${JSON.stringify(narrowing)}`;
    const known = agents.get(key);
    if (known !== undefined) return known;
    const lookup: LookupFunction = (hostname, options, callback) => {
      allowedAddresses(hostname, narrowing).then(
        (allowed) => {
          const family = options.family === 4 || options.family === 6 ? options.family : 0;
          const fitting = family === 0 ? allowed : allowed.filter((a) => a.family === family);
          if (fitting.length === 0) callback(new OutboundRefusedError(`${hostname} has no allowed IPv${family} address`), '', 0);
          else if (options.all === true) (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, fitting);
          else callback(null, (fitting[0] as LookupAddress).address, (fitting[0] as LookupAddress).family);
        },
        (err: NodeJS.ErrnoException) => callback(err, '', 0),
      );
    };
    const agentOpts = {
      connect: { timeout: connectTimeout, lookup },
      headersTimeout: policy.headersTimeoutMs,
      bodyTimeout: policy.bodyTimeoutMs,
      keepAliveTimeout: 10_000,
      maxResponseSize: policy.maxResponseBytes,
    };
    const agent = proxy === undefined ? new Agent(agentOpts) : new EnvHttpProxyAgent({ ...agentOpts, ...proxy });
    // The oldest is forgotten, not closed: a request may still be using it (a redirect's next
    // hop); its idle sockets close after keepAliveTimeout.
    if (agents.size >= MAX_AGENTS) agents.delete(agents.keys().next().value as string);
    agents.set(key, agent);
    return agent;
  };

  /** Refusals that need no connection: scheme, credentials, and an address written in the URL. */
  const check = async (url: URL, narrowing: Narrowing | undefined): Promise<void> => {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new OutboundRefusedError(`scheme ${url.protocol} is not allowed`);
    if (url.username !== '' || url.password !== '') throw new OutboundRefusedError('credentials in URLs are not allowed');
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    // An address in the URL is connected to without a lookup. Through a proxy, the proxy looks the
    // name up again and may pick any of its addresses: every one must be allowed.
    if (isIP(host) !== 0 || proxy !== undefined) await allowedAddresses(host, narrowing, true);
  };

  return {
    async request(target, opts = {}) {
      let url = new URL(target);
      let method = (opts.method ?? 'GET').toUpperCase();
      let body = opts.body;
      let headers = opts.headers;
      const agent = agentFor(opts.connectTimeoutMs ?? policy.connectTimeoutMs, opts.narrowing);
      for (let hop = 0; ; hop++) {
        await check(url, opts.narrowing);
        const res = await agent.request({
          origin: url.origin,
          path: `${url.pathname}${url.search}`,
          method: method as Dispatcher.HttpMethod,
          headers,
          body,
          signal: opts.signal,
          headersTimeout: opts.headersTimeoutMs ?? policy.headersTimeoutMs,
        });
        const location = res.headers.location;
        if (opts.allowRedirects !== true || !REDIRECTS.has(res.statusCode) || typeof location !== 'string') {
          const length = Number(res.headers['content-length']);
          if (method !== 'HEAD' && Number.isFinite(length) && length > policy.maxResponseBytes) {
            // Dropped unread: undici may still fail the body for its size once this has returned.
            res.body.on('error', () => undefined).destroy();
            throw new OutboundTooLargeError(
              `the answer is ${length} bytes, more than [outbound] max_response_bytes (${policy.maxResponseBytes})`,
            );
          }
          return res;
        }
        const keepsBody = res.statusCode === 307 || res.statusCode === 308;
        if (keepsBody && body !== undefined && typeof body !== 'string' && !Buffer.isBuffer(body)) return res;
        await res.body.dump();
        if (hop >= policy.maxRedirects) throw new OutboundRefusedError(`more than ${policy.maxRedirects} redirects`);
        const next = new URL(location, url);
        if (!keepsBody && (res.statusCode === 303 || method === 'POST')) {
          if (method !== 'HEAD') method = 'GET';
          body = undefined;
          headers = withoutHeaders(headers, (name) => name === 'content-type' || name === 'content-length');
        }
        if (!sameSite(url.hostname, next.hostname)) headers = withoutHeaders(headers, (name) => SENSITIVE.has(name));
        url = next;
      }
    },
    close: async () => {
      await Promise.all([...agents.values()].map((agent) => agent.close()));
      agents.clear();
    },
  };
}

/** Go's rule: credentials follow a redirect to the same host or one of its subdomains only. */
function sameSite(from: string, to: string): boolean {
  return to === from || to.endsWith(`.${from}`);
}

function withoutHeaders(
  headers: Record<string, string | string[]> | undefined,
  drop: (lowerName: string) => boolean,
): Record<string, string | string[]> | undefined {
  if (headers === undefined) return undefined;
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !drop(name.toLowerCase())));
}

function resolve(lookup: LookupFunction, hostname: string): Promise<LookupAddress[]> {
  if (isIP(hostname) !== 0) return Promise.resolve([{ address: hostname, family: isIP(hostname) }]);
  return new Promise((done, fail) => {
    lookup(hostname, { all: true }, ((err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => {
      if (err !== null) fail(err);
      else done(addresses);
    }) as unknown as Parameters<LookupFunction>[2]);
  });
}

/** The addresses of hosts an instruction names; one that does not resolve adds nothing. */
async function resolveAll(lookup: LookupFunction, hosts: readonly string[]): Promise<string[]> {
  const lists = await Promise.all(hosts.map((h) => resolve(lookup, h).catch(() => [])));
  return lists.flat().map((a) => a.address);
}

/** The proxy variables, upper or lower case as curl reads them; undefined when no proxy is set. */
function proxySettings(env: NodeJS.ProcessEnv): { httpProxy?: string; httpsProxy?: string; noProxy?: string } | undefined {
  const pick = (name: string) => {
    const value = env[name.toLowerCase()] ?? env[name];
    return value === undefined || value === '' ? undefined : value;
  };
  const httpProxy = pick('HTTP_PROXY');
  const httpsProxy = pick('HTTPS_PROXY');
  if (httpProxy === undefined && httpsProxy === undefined) return undefined;
  // EnvHttpProxyAgent falls back to HTTP_PROXY for https URLs; the empty string keeps it from
  // reading the variables again on its own.
  return { httpProxy: httpProxy ?? '', httpsProxy: httpsProxy ?? httpProxy ?? '', noProxy: pick('NO_PROXY') ?? '' };
}
