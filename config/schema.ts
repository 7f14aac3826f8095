import { availableParallelism } from 'node:os';
import { isAbsolute } from 'node:path';
import { z } from 'zod';
import { parseDuration } from './duration.js';
import { parseRange } from './network.js';

/** Where Outrider listens: a TCP host and port, or a unix socket path. */
export type ListenAddr = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export function parseListenAddr(text: string): ListenAddr | undefined {
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    return isAbsolute(path) ? { kind: 'unix', path } : undefined;
  }
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]*)):(\d{1,5})$/.exec(text);
  if (m === null) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  const host = m[1] ?? m[2] ?? '';
  return { kind: 'tcp', host: host === '' ? '0.0.0.0' : host, port };
}

const duration = (what: string) =>
  z.string().transform((text, ctx) => {
    const ms = parseDuration(text);
    if (ms === undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `expected ${what} as a duration like "500ms", "30s" or "5m", got "${text}"`,
      });
      return z.NEVER;
    }
    return ms;
  });

const positiveDuration = (what: string) =>
  duration(what)
    .refine((ms) => ms > 0, { message: `expected ${what} greater than zero` })
    // Node timers cannot wait longer than 2^31-1 ms; a day is already far beyond any useful value.
    .refine((ms) => ms <= 86_400_000, { message: `expected ${what} of at most "24h"` });

const wholeNumber = (what: string, min: number) =>
  z
    .number({ error: `expected ${what} as a whole number` })
    .int({ error: `expected ${what} as a whole number` })
    .min(min, { error: `expected ${what} of at least ${min}` });

/** The most worker processes `workers` may ask for; `"auto"` is capped here too. */
export const MAX_WORKERS = 64;

const WORKERS_EXPECTED = (issue: { input?: unknown }) =>
  `expected a number of worker processes from 1 to ${MAX_WORKERS}, or "auto" (one per CPU), got ${JSON.stringify(issue.input)}`;

/** `workers`: a whole number of processes, or `"auto"` for one per CPU this process may run on. */
const workerCount = z
  .union([z.literal('auto'), z.number()], { error: WORKERS_EXPECTED })
  .refine((n) => n === 'auto' || (Number.isInteger(n) && n >= 1 && n <= MAX_WORKERS), { error: WORKERS_EXPECTED })
  .default(1)
  .transform((n) => (n === 'auto' ? Math.min(availableParallelism(), MAX_WORKERS) : n));

export const DEFAULT_MAX_SCALER_PROCS = Math.max(2, Math.floor(availableParallelism() / 2));

/**
 * `[image_resizer.shared_cache]`: scaled images shared by every Outrider through Redis or Valkey,
 * with one scaling job per image across them (README, "Running on several machines").
 */
const sharedCache = z.strictObject({
  url: z
    .string({ error: 'expected a Redis URL like "redis://127.0.0.1:6379/0", "rediss://…" or "unix:/run/redis/redis.sock"' })
    .refine((u) => /^rediss?:\/\/[^\s]+$/i.test(u) || /^unix:\/\S+$/.test(u), {
      error: (issue) =>
        `expected a Redis URL like "redis://127.0.0.1:6379/0", "rediss://…" or "unix:/run/redis/redis.sock", got ${JSON.stringify(issue.input)}`,
    }),
  key_prefix: z.string({ error: 'expected a key prefix like "outrider:img:"' }).default('outrider:img:'),
  // Redis keeps it, not a Node timer: longer than the 24 h timers allow.
  ttl: duration('how long Redis keeps a scaled image')
    .refine((ms) => ms >= 1000 && ms <= 366 * 86_400_000, { message: 'expected a time to live from "1s" to "8784h" (366 days)' })
    .default(7 * 86_400_000),
  // An event loop busy with a burst of requests delays a reply by tens of ms: 100 ms rides that out.
  timeout: positiveDuration('the longest a Redis call may take').default(100),
  lease: positiveDuration('how long a scaling lease is held at most').default(10_000),
  lease_wait: duration('how long a request waits for another node to scale an image').default(2000),
  failure_threshold: wholeNumber('a number of failures in a row', 1).max(1000, { error: 'expected at most 1000' }).default(3),
  retry_after: positiveDuration('how long Redis is left alone after failing').default(5000),
});

const imageResizer = z.strictObject({
  max_scaler_procs: wholeNumber('a number of concurrent scaling jobs', 1)
    .max(1024, { error: 'expected at most 1024 concurrent scaling jobs' })
    .default(DEFAULT_MAX_SCALER_PROCS),
  max_filesize: wholeNumber('a size in bytes', 0)
    .max(64 * 1024 * 1024, { error: 'expected at most 67108864 bytes (the source is held in memory while it is scaled)' })
    .default(250_000),
  // A cold page of avatars queues for the slots instead of showing originals (README, "The scaler queue").
  max_scaler_wait: duration('the longest wait for a scaling slot').default(1000),
  max_scaler_queue: wholeNumber('a number of requests waiting for a scaling slot', 0)
    .max(65536, { error: 'expected at most 65536 waiting requests' })
    .optional(),
  formats: z
    .array(z.enum(['avif', 'webp'], { error: 'expected "avif" or "webp"' }), { error: 'expected a list of formats like ["avif", "webp"]' })
    .refine((list) => new Set(list).size === list.length, { error: 'expected each format once' })
    .default(['avif', 'webp']),
  shared_cache: sharedCache.optional(),
  max_width: wholeNumber('a width in pixels', 1).max(16384, { error: 'expected at most 16384 pixels' }).default(4096),
  limit_input_pixels: wholeNumber('a number of pixels', 1).default(25_000_000),
  cache_max_bytes: wholeNumber('a size in bytes', 0)
    .max(16 * 1024 * 1024 * 1024, { error: 'expected at most 17179869184 bytes' })
    .default(64 * 1024 * 1024),
});

const HOST_ENTRY = 'expected "*" (any public host), a host name, "*.example.com", an IP address or a CIDR range like "10.0.0.0/8"';

const outbound = z.strictObject({
  allowed_hosts: z
    .array(
      z
        .string({ error: HOST_ENTRY })
        .refine((entry) => entry === '*' || /^(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*$/i.test(entry) || parseRange(entry) !== undefined, {
          error: (issue) => `${HOST_ENTRY}, got ${JSON.stringify(issue.input)}`,
        }),
      { error: 'expected a list of hosts' },
    )
    .default([]),
  connect_timeout: positiveDuration('the outbound connect timeout').default(10_000),
  headers_timeout: positiveDuration('the outbound response-header timeout').default(30_000),
  body_timeout: positiveDuration('the longest silence allowed in an outbound response body').default(300_000),
  max_redirects: wholeNumber('a number of redirects', 0).max(20, { error: 'expected at most 20 redirects' }).default(5),
  // Downloads through send-url can be artifacts, packages or LFS objects of several GiB.
  max_response_bytes: wholeNumber('a size in bytes', 1).default(10 * 1024 ** 3),
});

const uploadRoute = z.strictObject({
  method: z
    .string({ error: 'expected an HTTP method like "POST" or "PUT"' })
    .regex(/^[A-Za-z]+$/, { error: 'expected an HTTP method like "POST" or "PUT"' })
    .transform((m) => m.toUpperCase()),
  path: z.string({ error: 'expected a regular expression on the request path, like "^/uploads/"' }).transform((text, ctx) => {
    try {
      return new RegExp(text);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: `expected a valid regular expression, got "${text}" (${(err as Error).message})` });
      return z.NEVER;
    }
  }),
  preauthorize: z.boolean({ error: 'expected true or false' }).default(true),
  kind: z.enum(['multipart', 'body'], { error: 'expected "multipart" or "body"' }).default('multipart'),
  strip_exif: z.boolean({ error: 'expected true or false' }).default(false),
});

const FILE_MODE = 'expected an octal file mode like "0600" or "0640": read and write for the owner, no execute bit, no write for others';

const uploads = z.strictObject({
  temp_dir: z
    .string()
    .refine((p) => isAbsolute(p), { message: 'expected an absolute directory path' })
    .default('/var/tmp/outrider'),
  max_files: wholeNumber('a number of file parts', 1).max(1000, { error: 'expected at most 1000 file parts' }).default(10),
  file_mode: z
    .string({ error: FILE_MODE })
    .regex(/^0?[0-7]{3}$/, { error: FILE_MODE })
    .transform((text) => Number.parseInt(text, 8))
    .refine((mode) => (mode & 0o600) === 0o600 && (mode & 0o113) === 0, { error: FILE_MODE })
    .default(0o600),
  routes: z.array(uploadRoute, { error: 'expected [[uploads.routes]] tables' }).default([]),
});

/**
 * `[websocket]`: requests that ask to switch protocols (`Connection: upgrade`, `Upgrade: websocket`
 * or any other token), tunnelled to the backend once it answers 101 (proxy/tunnel/).
 */
const websocket = z.strictObject({
  // Every framework's heartbeat is well inside it (ActionCable 3 s, socket.io 25 s, Phoenix 30 s):
  // what it closes is a peer that vanished without a FIN (a laptop lid, a NAT that forgot).
  idle_timeout: positiveDuration('how long a tunnel may carry no byte either way').default(600_000),
  // Two file descriptors per tunnel: 10000 tunnels hold 20000 of the 65536 the systemd unit allows,
  // leaving the rest for requests, files and the backend pool. Per process (worker).
  max_tunnels: wholeNumber('a number of open tunnels', 0)
    .max(1_000_000, { error: 'expected at most 1000000 open tunnels' })
    .default(10_000),
});

/**
 * `[tls]`: listen_addr speaks HTTPS with this certificate chain and key (PEM files; Workhorse's
 * `[listeners.tls]` keys), reloaded on SIGHUP without dropping connections.
 */
const TLS_VERSION = 'expected "tls1.2" or "tls1.3"';
const tlsVersion = z.enum(['tls1.2', 'tls1.3'], { error: TLS_VERSION });
const nodeTlsVersion = (v: 'tls1.2' | 'tls1.3'): 'TLSv1.2' | 'TLSv1.3' => (v === 'tls1.2' ? 'TLSv1.2' : 'TLSv1.3');
const tls = z
  .strictObject({
    certificate: z
      .string({ error: 'expected the path of a PEM certificate chain' })
      .min(1, { error: 'expected the path of a PEM certificate chain' }),
    key: z.string({ error: 'expected the path of a PEM private key' }).min(1, { error: 'expected the path of a PEM private key' }),
    min_version: tlsVersion.default('tls1.2'),
    max_version: tlsVersion.default('tls1.3'),
    http2: z.boolean({ error: 'expected true or false' }).default(true),
  })
  .refine((t) => t.min_version <= t.max_version, { path: ['min_version'], error: 'expected min_version at most max_version' });

/** A credential key: an empty string is no key, as in Workhorse (omnibus writes `""` for unset ones). */
const credential = (what: string) =>
  z
    .string({ error: `expected ${what} as a string` })
    .optional()
    .transform((v) => (v === '' ? undefined : v));

/**
 * `[object_storage]`: Outrider's own object storage client, for authorize answers with
 * `RemoteObject.UseWorkhorseClient` (Workhorse `ObjectStorageCredentials`, same key names). The
 * bucket, region, endpoint and encryption come from the backend's answer; only credentials live
 * here. Without keys the AWS SDK's default chain is used (environment, shared files, web
 * identity, ECS or EC2 instance role).
 */
const objectStorage = z
  .strictObject({
    provider: z
      .string({ error: 'expected "AWS" (the one provider Outrider has a client for)' })
      .refine((p) => /^(aws|s3)$/i.test(p), {
        error: (issue) => `expected "AWS" (the one provider Outrider has a client for), got ${JSON.stringify(issue.input)}`,
      })
      .transform(() => 'AWS' as const),
    s3: z
      .strictObject({
        aws_access_key_id: credential('an access key id'),
        aws_secret_access_key: credential('a secret access key'),
        aws_session_token: credential('a session token'),
      })
      .prefault({}),
  })
  .superRefine((o, ctx) => {
    const { aws_access_key_id: id, aws_secret_access_key: secret, aws_session_token: token } = o.s3;
    if ((id === undefined) !== (secret === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: ['s3'],
        message: 'expected aws_access_key_id and aws_secret_access_key together, or neither (the default credential chain)',
      });
    } else if (token !== undefined && id === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['s3', 'aws_session_token'],
        message: 'expected aws_access_key_id and aws_secret_access_key with a session token',
      });
    }
  })
  .transform((o) => ({
    provider: o.provider,
    credentials:
      o.s3.aws_access_key_id === undefined || o.s3.aws_secret_access_key === undefined
        ? undefined
        : {
            accessKeyId: o.s3.aws_access_key_id,
            secretAccessKey: o.s3.aws_secret_access_key,
            ...(o.s3.aws_session_token === undefined ? {} : { sessionToken: o.s3.aws_session_token }),
          },
  }));

/** A listener address key: "host:port" or "unix:/absolute/path", like listen_addr. */
const listenAddress = (what: string) =>
  z.string({ error: `expected ${what} as "host:port" or "unix:/absolute/path"` }).transform((text, ctx) => {
    const addr = parseListenAddr(text);
    if (addr === undefined) {
      ctx.addIssue({ code: 'custom', message: `expected "host:port" (port 0-65535) or "unix:/absolute/path", got "${text}"` });
      return z.NEVER;
    }
    return addr;
  });

const fileSchema = z.strictObject({
  listen_addr: z
    .string()
    .default('localhost:8181')
    .transform((text, ctx) => {
      const addr = parseListenAddr(text);
      if (addr === undefined) {
        ctx.addIssue({
          code: 'custom',
          message: `expected "host:port" (port 0-65535) or "unix:/absolute/path", got "${text}"`,
        });
        return z.NEVER;
      }
      return addr;
    }),
  auth_backend: z
    .string()
    .default('http://localhost:8080')
    .transform((text, ctx) => {
      let url: URL;
      try {
        url = new URL(text);
      } catch {
        url = new URL('invalid:');
      }
      const ok =
        (url.protocol === 'http:' || url.protocol === 'https:') &&
        url.pathname === '/' &&
        url.search === '' &&
        url.hash === '' &&
        url.username === '' &&
        url.password === '';
      if (!ok) {
        ctx.addIssue({
          code: 'custom',
          message: `expected an http:// or https:// origin like "http://localhost:8080" (no path, query or credentials), got "${text}"`,
        });
        return z.NEVER;
      }
      return url.origin;
    }),
  auth_socket: z
    .string()
    .refine((p) => isAbsolute(p), { message: 'expected an absolute path to a unix socket' })
    .optional(),
  secret_path: z.string().min(1, { error: 'expected a file path' }).default('.gitlab_workhorse_secret'),
  proxy_headers_timeout: positiveDuration('the backend response-header timeout').default(300_000),
  client_body_timeout: positiveDuration('the longest silence allowed in a request body').default(60_000),
  send_timeout: positiveDuration('the longest time a client may go without reading its answer').default(60_000),
  shutdown_timeout: duration('the shutdown grace period')
    .refine((ms) => ms <= 86_400_000, { message: 'expected the shutdown grace period of at most "24h"' })
    .default(60_000),
  propagate_correlation_id: z.boolean({ error: 'expected true or false' }).default(false),
  log_level: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
      error: 'expected one of "fatal", "error", "warn", "info", "debug", "trace", "silent"',
    })
    .default('info'),
  prometheus_listen_addr: listenAddress('the metrics listener address').optional(),
  metrics_namespace: z
    .string({ error: 'expected a metric name prefix like "outrider" or "gitlab_workhorse"' })
    .regex(/^[a-zA-Z_][a-zA-Z0-9_]*$/, { error: 'expected a metric name prefix of letters, digits and "_", like "outrider"' })
    .default('outrider'),
  health_on_metrics_listener: z.boolean({ error: 'expected true or false' }).default(false),
  shutdown_delay: duration('the delay before shutdown begins')
    .refine((ms) => ms <= 3_600_000, { message: 'expected the delay before shutdown begins of at most "1h"' })
    .default(0),
  document_root: z
    .string({ error: 'expected an absolute directory path' })
    .refine((p) => isAbsolute(p), { message: 'expected an absolute directory path' })
    .optional(),
  workers: workerCount,
  image_resizer: imageResizer.prefault({}),
  outbound: outbound.prefault({}),
  uploads: uploads.prefault({}),
  object_storage: objectStorage.optional(),
  websocket: websocket.prefault({}),
  tls: tls.optional(),
});

/** The TOML file's shape (snake_case), mapped once to the camelCase `Config`. */
export const configSchema = fileSchema.superRefine(checkListeners).transform((f) => ({
  listenAddr: f.listen_addr,
  authBackend: f.auth_backend,
  authSocket: f.auth_socket,
  secretPath: f.secret_path,
  proxyHeadersTimeoutMs: f.proxy_headers_timeout,
  clientBodyTimeoutMs: f.client_body_timeout,
  sendTimeoutMs: f.send_timeout,
  shutdownTimeoutMs: f.shutdown_timeout,
  propagateCorrelationId: f.propagate_correlation_id,
  logLevel: f.log_level,
  prometheusListenAddr: f.prometheus_listen_addr,
  metricsNamespace: f.metrics_namespace,
  healthOnMetricsListener: f.health_on_metrics_listener,
  shutdownDelayMs: f.shutdown_delay,
  documentRoot: f.document_root,
  workers: f.workers,
  imageResizer: {
    maxScalerProcs: f.image_resizer.max_scaler_procs,
    maxFilesize: f.image_resizer.max_filesize,
    maxScalerWaitMs: f.image_resizer.max_scaler_wait,
    // Eight waiting requests per slot: a browser's six connections per page, and some to spare.
    maxScalerQueue: f.image_resizer.max_scaler_queue ?? f.image_resizer.max_scaler_procs * 8,
    formats: f.image_resizer.formats,
    sharedCache:
      f.image_resizer.shared_cache === undefined
        ? undefined
        : {
            url: f.image_resizer.shared_cache.url,
            keyPrefix: f.image_resizer.shared_cache.key_prefix,
            // Redis takes whole milliseconds (PX).
            ttlMs: Math.ceil(f.image_resizer.shared_cache.ttl),
            timeoutMs: f.image_resizer.shared_cache.timeout,
            leaseMs: Math.ceil(f.image_resizer.shared_cache.lease),
            leaseWaitMs: f.image_resizer.shared_cache.lease_wait,
            failureThreshold: f.image_resizer.shared_cache.failure_threshold,
            retryAfterMs: f.image_resizer.shared_cache.retry_after,
          },
    maxWidth: f.image_resizer.max_width,
    limitInputPixels: f.image_resizer.limit_input_pixels,
    cacheMaxBytes: f.image_resizer.cache_max_bytes,
  },
  uploads: {
    tempDir: f.uploads.temp_dir,
    maxFiles: f.uploads.max_files,
    fileMode: f.uploads.file_mode,
    routes: f.uploads.routes,
  },
  outbound: {
    allowedHosts: f.outbound.allowed_hosts.map((h) => h.toLowerCase()),
    connectTimeoutMs: f.outbound.connect_timeout,
    headersTimeoutMs: f.outbound.headers_timeout,
    bodyTimeoutMs: f.outbound.body_timeout,
    maxRedirects: f.outbound.max_redirects,
    maxResponseBytes: f.outbound.max_response_bytes,
  },
  objectStorage: f.object_storage,
  tls:
    f.tls === undefined
      ? undefined
      : {
          certificate: f.tls.certificate,
          key: f.tls.key,
          minVersion: nodeTlsVersion(f.tls.min_version),
          maxVersion: nodeTlsVersion(f.tls.max_version),
          http2: f.tls.http2,
        },
  websocket: {
    idleTimeoutMs: f.websocket.idle_timeout,
    maxTunnels: f.websocket.max_tunnels,
  },
}));

export type Config = z.output<typeof configSchema>;

/** The metrics listener cannot share the proxy's address, and only it can carry the health routes. */
function checkListeners(f: z.output<typeof fileSchema>, ctx: z.RefinementCtx): void {
  const metrics = f.prometheus_listen_addr;
  if (metrics === undefined) {
    if (f.health_on_metrics_listener) {
      ctx.addIssue({ code: 'custom', path: ['health_on_metrics_listener'], message: 'expected prometheus_listen_addr to be set as well' });
    }
    return;
  }
  const main = f.listen_addr;
  const same =
    metrics.kind === 'unix'
      ? main.kind === 'unix' && main.path === metrics.path
      : main.kind === 'tcp' &&
        metrics.port !== 0 &&
        main.port === metrics.port &&
        (main.host === metrics.host || isWildcard(main.host) || isWildcard(metrics.host));
  if (same) ctx.addIssue({ code: 'custom', path: ['prometheus_listen_addr'], message: 'expected an address other than listen_addr' });
}

const isWildcard = (host: string) => host === '0.0.0.0' || host === '::' || host === '';
