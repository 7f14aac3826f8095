import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http';
import { createSecureServer, constants as http2Constants, type ServerHttp2Stream } from 'node:http2';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import type { Config } from '../config/schema.js';

// What a program embedding Outrider needs besides buildServer: its config, read as the CLI reads it.
export { ConfigError } from '../config/errors.js';
export { loadConfig, loadConfigFile } from '../config/load.js';
export type { Config } from '../config/schema.js';

import { createScaler, createSharedCache, type SharedCacheEvents } from '../scaler/index.js';
import { onClientError } from './connection/client-errors.js';
import { asHttp1, type Http2Sessions, isHttp2, trackSessions } from './connection/http2.js';
import { createStallWatch } from './connection/stall-watch.js';
import { setErrorHandler } from './errors.js';
import { createForwarder } from './forward/forwarder.js';
import { createUpstream } from './forward/upstream.js';
import { createImageSource } from './intercept/image-source.js';
import { createInterceptors } from './intercept/index.js';
import type { Interceptor } from './intercept/types.js';
import { createLogger } from './observe/log/logger.js';
import { createMetrics, type Metrics } from './observe/metrics/catalogue.js';
import { answerMetricsRequests } from './observe/metrics/cluster.js';
import { createMetricsServer, type MetricsServer } from './observe/metrics/server.js';
import { createOutbound } from './outbound/client.js';
import { createFastPath, createPipeline, pipelinePlugin, requestIds } from './pipeline.js';
import { createErrorPages } from './routes/error-pages.js';
import { createHealth, healthPlugin } from './routes/health.js';
import { staticPlugin } from './routes/static.js';
import { checkDocumentRoot, loadSecret } from './runtime/start-files.js';
import { loadTlsFiles } from './runtime/tls.js';
import { VERSION } from './runtime/version.js';
import { createTunnels } from './tunnel/upgrade.js';
import { createUploads } from './upload/index.js';
import { createObjectStorage } from './upload/store/index.js';

/** How long an idle client connection is kept: HTTP/1.1 keep-alive, and an HTTP/2 session without streams. */
const KEEP_ALIVE_MS = 75_000;
/** Concurrent streams an HTTP/2 client may open on one connection (SETTINGS_MAX_CONCURRENT_STREAMS). */
const MAX_STREAMS = 250;

export interface BuildServerOptions {
  /** A pino logger to use instead of the one built from `log_level` (tests pass their own, or `false`). */
  logger?: FastifyBaseLogger | false;
  /** Replaces the interceptor list (tests). */
  interceptors?: Interceptor[];
  /**
   * This process is a cluster worker (`workers` > 1): the primary owns the metrics listener and
   * serves the sum of every worker's registry, so this server opens none and answers the
   * primary's scrape requests instead.
   */
  clusterWorker?: boolean;
}

/** What the CLI (and tests) control on a built server, beyond fastify's own API. */
export interface OutriderControls {
  /** Readiness answers 503 from now on while requests are still served: the `shutdown_delay` before closing. */
  drain(): void;
  /** The metrics listener's address once listening ("host:port" or "unix:/path"); undefined when there is none. */
  metricsAddress(): string | undefined;
  /** Closes the open upgrade tunnels (WebSocket…), each logged with reason `shutdown`: once `shutdown_timeout` has run out. */
  closeTunnels(): void;
  /** Reads `[tls]`'s files again for new connections (SIGHUP); throws a `ConfigError` and keeps the old pair when they are bad. */
  reloadTls(): 'reloaded' | 'no [tls] to reload';
  /** Cuts every client connection still open, HTTP/1.1 and HTTP/2 alike: once `shutdown_timeout` has run out. */
  closeAllConnections(): void;
}

declare module 'fastify' {
  interface FastifyInstance {
    outrider: OutriderControls;
  }
}

/** Builds the proxy: branches registered, nothing listening yet. */
export function buildServer(config: Config, opts: BuildServerOptions = {}): FastifyInstance {
  const genReqId = requestIds(config.propagateCorrelationId);

  // Read and checked now: a bad certificate or key is a ConfigError (exit code 2) naming the file.
  const tlsFiles = config.tls === undefined ? undefined : loadTlsFiles(config.tls);

  // Set once the routes are known; until then every request takes fastify's path.
  let fastPath: ((req: IncomingMessage, res: ServerResponse, awaitingContinue?: boolean) => boolean) | undefined;
  // `[tls] http2`: the HTTP/2 sessions, for their idle limit and shutdown.
  let sessions: Http2Sessions | undefined;

  // Clients that go silent mid-body or stop reading their answer (client_body_timeout, send_timeout).
  const stallWatch = createStallWatch({ bodyTimeoutMs: config.clientBodyTimeoutMs, sendTimeoutMs: config.sendTimeoutMs });
  const onSendStall = (socket: Socket) => {
    const res = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
    app.log.warn(
      { subsystem: 'proxy', remoteAddress: socket.remoteAddress, path: res?.req?.url, timeoutMs: config.sendTimeoutMs },
      'send timeout: the client stopped reading',
    );
  };

  /**
   * An HTTP/2 stream arrives: its request is made to read as HTTP/1.1 (connection/http2.ts), and
   * `send_timeout` watches the stream itself, since its connection is shared (a client that
   * stops reading one stream holds that stream's flow-control window shut, not the connection).
   */
  const http2Stream = (req: IncomingMessage, res: ServerResponse) => {
    asHttp1(req);
    const stream = (res as unknown as { stream: ServerHttp2Stream }).stream;
    stallWatch.connection(stream as unknown as Socket, () => {
      app.log.warn(
        { subsystem: 'proxy', remoteAddress: req.socket?.remoteAddress, path: req.url, timeoutMs: config.sendTimeoutMs, httpVersion: '2' },
        'send timeout: the client stopped reading',
      );
      // Reset as cancelled (the watch then destroys it): NO_ERROR would say the answer was whole.
      stream.close(http2Constants.NGHTTP2_CANCEL);
    });
  };

  /**
   * The listener's server: plain HTTP/1.1; with `[tls]` the same over TLS; and with `[tls] http2`
   * (the default) Node's HTTP/2 server, which serves HTTP/1.1 too (`allowHTTP1`): ALPN offers
   * `h2` and `http/1.1`, and an HTTP/1.1 connection gets the very same node:http machinery.
   */
  const listenerServer = (listener: RequestListener) => {
    if (tlsFiles === undefined) return createServer(listener);
    if (!config.tls?.http2) return createHttpsServer({ ...tlsFiles, ALPNProtocols: ['http/1.1'] }, listener);
    const server = createSecureServer(
      {
        ...tlsFiles,
        allowHTTP1: true,
        // Streams at once per connection: Go's server default (Workhorse's), where Node's is unbounded.
        // RFC 8441's extended CONNECT carries WebSocket over an HTTP/2 stream.
        settings: { maxConcurrentStreams: MAX_STREAMS, enableConnectProtocol: true },
        // Header fields per request, as many as node:http takes over HTTP/1.1 (Node's HTTP/2 default is 128).
        maxHeaderListPairs: 2000,
      },
      (req, res) => {
        if (isHttp2(req as unknown as IncomingMessage)) http2Stream(req as unknown as IncomingMessage, res as unknown as ServerResponse);
        listener(req as unknown as IncomingMessage, res as unknown as ServerResponse);
      },
    );
    sessions = trackSessions(server, KEEP_ALIVE_MS);
    // HTTP/2 streams with CONNECT come here with a request and response; HTTP/1.1 CONNECT with a
    // socket, closed as a plain HTTP/1.1 server closes it (Outrider is no forward proxy).
    server.on('connect', (req: IncomingMessage, res: ServerResponse | Socket) => {
      if (!isHttp2(req)) return void (res as Socket).destroy();
      const protocol = req.headers[':protocol'];
      http2Stream(req, res as ServerResponse);
      tunnels.extendedConnect(req, res as ServerResponse, typeof protocol === 'string' ? protocol : undefined);
    });
    return server as unknown as HttpsServer;
  };

  const app = Fastify({
    loggerInstance: opts.logger === false ? undefined : (opts.logger ?? createLogger(config)),
    // One access-log line per request is written by the pipeline (forward/handler.ts, or upload/ for an upload it answers) instead of fastify's two.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'requestId' }),
    genReqId,
    return503OnClosing: true,
    clientErrorHandler: onClientError,
    forceCloseConnections: 'idle',
    // Paths go to the backend byte for byte: no router rewriting of slashes or case.
    routerOptions: { ignoreTrailingSlash: false, ignoreDuplicateSlashes: false, caseSensitive: true, maxParamLength: 8192 },
    serverFactory: (handler: RequestListener) => {
      const listener: RequestListener = (req, res) => {
        if (fastPath === undefined || !fastPath(req, res)) handler(req, res);
      };
      const server = listenerServer(listener);
      // `Expect: 100-continue`: Node sends no 100 of its own; whoever wants the body asks for it
      // (the backend's 100, relayed, or the upload stage once authorized: forward/continue.ts).
      server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
        if (isHttp2(req)) http2Stream(req, res);
        if (fastPath?.(req, res, true)) return;
        res.writeContinue();
        handler(req, res);
      });
      // The stall watch follows the socket HTTP/1.1 is parsed from: the TLS one when there is TLS.
      // An HTTP/2 connection's bytes belong to all its streams; HTTP/2 flow control paces each.
      server.on(tlsFiles === undefined ? 'connection' : 'secureConnection', (socket: Socket & { alpnProtocol?: string | false }) => {
        if (socket.alpnProtocol !== 'h2') stallWatch.connection(socket, onSendStall);
      });
      // Upgrade requests (WebSocket…) only: Node hands every other request to the listener above.
      server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => tunnels.upgrade(req, socket, head));
      server.keepAliveTimeout = KEEP_ALIVE_MS;
      // Uploads and downloads may take as long as they take: no whole-request deadline.
      server.requestTimeout = 0;
      return server;
    },
  });

  const upstream = createUpstream(config);
  const outbound = createOutbound(config);
  const objectStorage = config.objectStorage === undefined ? undefined : createObjectStorage(config.objectStorage);
  // Nothing is measured, and nothing costs, unless Prometheus has somewhere to scrape.
  const metrics =
    config.prometheusListenAddr === undefined
      ? undefined
      : createMetrics({
          namespace: config.metricsNamespace,
          maxScalerProcs: config.imageResizer.maxScalerProcs,
          scalerRunning: () => scaler.gate.running,
          sharedCache: config.imageResizer.sharedCache !== undefined,
        });
  const sharedCache =
    config.imageResizer.sharedCache === undefined
      ? undefined
      : createSharedCache(config.imageResizer.sharedCache, sharedCacheEvents(app.log, metrics));
  const scaler = createScaler(config.imageResizer, createImageSource(outbound), sharedCache);
  const documentRoot = config.documentRoot === undefined ? undefined : checkDocumentRoot(config.documentRoot);
  const errorPages = documentRoot === undefined ? undefined : createErrorPages(documentRoot, app.log);
  let closing = false;
  app.addHook('preClose', (done) => {
    closing = true;
    // fastify closes the idle keep-alive connections once; a response that finishes after that
    // (a file still streaming, a health answer) would leave its connection open until the
    // keep-alive timeout and hold shutdown up. So idle ones are closed as they become idle.
    const sweep = setInterval(() => app.server.closeIdleConnections(), 50);
    sweep.unref();
    app.server.once('close', () => clearInterval(sweep));
    // HTTP/2 sessions are told GOAWAY: their open streams finish, new ones go elsewhere.
    sessions?.closeAll();
    done();
  });
  app.addHook('onClose', async () => {
    stallWatch.close();
    await Promise.all([upstream.close(), outbound.close(), sharedCache?.close()]);
    objectStorage?.close();
  });
  setErrorHandler(app);

  const forwarder = createForwarder({
    upstream,
    interceptors:
      opts.interceptors ??
      createInterceptors({
        outbound,
        scaler,
        maxWidth: config.imageResizer.maxWidth,
        formats: config.imageResizer.formats,
        log: app.log,
        metrics,
      }),
    version: VERSION,
    log: app.log,
    isClosing: () => closing,
    errorPages,
    stallWatch,
  });
  const uploads = createUploads({
    uploads: config.uploads,
    // Read at start, and only when an upload route needs it (Workhorse reads it lazily and fails requests).
    secret: config.uploads.routes.length > 0 ? loadSecret(config.secretPath) : Buffer.alloc(0),
    upstream,
    outbound,
    forward: forwarder,
    version: VERSION,
    log: app.log,
    isClosing: () => closing,
    metrics,
    errorPages,
    stallWatch,
    objectStorage,
  });
  const tunnels = createTunnels({ config, version: VERSION, genReqId, log: app.log, metrics, isClosing: () => closing, pages: errorPages });
  // Every proxied request enters here, by the fast path or the catch-all route alike.
  const pipeline = createPipeline({ metrics, uploads, log: app.log, pages: errorPages });
  app.register(pipelinePlugin, { pipeline });

  const health = createHealth({ config, isClosing: () => closing, log: app.log });
  if (!config.healthOnMetricsListener) app.register(healthPlugin, { health, metrics });
  if (documentRoot !== undefined) app.register(staticPlugin, { root: documentRoot, metrics, log: app.log });
  let metricsServer: MetricsServer | undefined;
  if (metrics !== undefined && opts.clusterWorker) {
    const stop = answerMetricsRequests(metrics.registry);
    app.addHook('onClose', (_app, done) => {
      stop();
      done();
    });
  } else if (metrics !== undefined && config.prometheusListenAddr !== undefined) {
    const server = createMetricsServer({
      addr: config.prometheusListenAddr,
      registry: metrics.registry,
      health: config.healthOnMetricsListener ? health : undefined,
      log: app.log,
    });
    metricsServer = server;
    // Opened with the proxy, closed after it: readiness keeps answering 503 while requests drain.
    app.addHook('onReady', () => server.listen());
    app.addHook('onClose', () => server.close());
  }
  app.decorate('outrider', {
    drain: () => health.drain(),
    metricsAddress: () => metricsServer?.address(),
    closeTunnels: () => tunnels.closeAll('shutdown'),
    reloadTls: () => {
      if (config.tls === undefined) return 'no [tls] to reload';
      // New connections get the new pair; open ones keep the one they were made with.
      const files = loadTlsFiles(config.tls);
      (app.server as HttpsServer).setSecureContext(files);
      return 'reloaded';
    },
    closeAllConnections: () => {
      // The HTTP/2 server (nodejs/node#55459) has no closeAllConnections: its sessions and HTTP/1.1 sockets are followed instead.
      if (sessions !== undefined) sessions.destroyAll();
      else app.server.closeAllConnections();
    },
  } satisfies OutriderControls);

  // Outrider's own routes (anything but the catch-all) go through fastify's full lifecycle.
  const ownPrefixes: string[] = [];
  app.addHook('onRoute', (route) => {
    if (route.url !== '*') ownPrefixes.push(route.url.split(/[:*]/, 1)[0] as string);
  });
  app.addHook('onReady', (done) => {
    fastPath = createFastPath(pipeline, genReqId, ownPrefixes);
    done();
  });
  return app;
}

/**
 * The shared tier's reports: counted when metrics are on, and logged, one line per change of
 * state (available again, or not: Redis down, slow, failing) and per distinct error.
 */
function sharedCacheEvents(log: FastifyBaseLogger, metrics: Metrics | undefined): SharedCacheEvents {
  return {
    lookup: (result) => metrics?.sharedCacheLookup(result),
    leaseWait: (result) => metrics?.sharedCacheLeaseWait(result),
    bytes: (direction, bytes) => metrics?.sharedCacheBytes(direction, bytes),
    state(available, reason) {
      metrics?.sharedCacheAvailable(available);
      if (available) log.info({ subsystem: 'shared-cache', available, reason }, 'shared cache available');
      // Until it is back, images are scaled and cached by this process alone.
      else log.warn({ subsystem: 'shared-cache', available, reason }, 'shared cache unavailable');
    },
    error: (err) => log.warn({ subsystem: 'shared-cache', err }, 'shared cache call failed'),
  };
}
