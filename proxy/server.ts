import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import type { Config } from '../config/schema.js';
import { createScaler } from '../scaler/index.js';
import { setErrorHandler } from './errors.js';
import { createForwarder, type Forwarder, forwardPlugin } from './forward.js';
import { REQUEST_ID } from './headers.js';
import { createImageSource } from './image-source.js';
import { createInterceptors, type Interceptor } from './intercept.js';
import { createLogger } from './logger.js';
import { createOutbound } from './outbound.js';
import { loadSecret } from './secret.js';
import { createUploads } from './upload.js';
import { createUpstream } from './upstream.js';
import { VERSION } from './version.js';

export interface BuildServerOptions {
  /** A pino logger to use instead of the one built from `log_level` (tests pass their own, or `false`). */
  logger?: FastifyBaseLogger | false;
  /** Replaces the interceptor list (tests). */
  interceptors?: Interceptor[];
}

/** A client-sent request id is reused only if it is short, printable ASCII (it lands in logs and headers). */
const SAFE_REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

/** Builds the proxy: branches registered, nothing listening yet. */
export function buildServer(config: Config, opts: BuildServerOptions = {}): FastifyInstance {
  const genReqId = config.propagateCorrelationId
    ? (req: IncomingMessage) => {
        const id = req.headers[REQUEST_ID];
        return typeof id === 'string' && SAFE_REQUEST_ID.test(id) ? id : randomUUID();
      }
    : () => randomUUID();

  // Set once the routes are known; until then every request takes fastify's path.
  let fastPath: ((req: IncomingMessage, res: ServerResponse) => boolean) | undefined;

  const app = Fastify({
    loggerInstance: opts.logger === false ? undefined : (opts.logger ?? createLogger(config)),
    // One access-log line per request is written by the forward branch instead of fastify's two.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'requestId' }),
    genReqId,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    // Paths go to the backend byte for byte: no router rewriting of slashes or case.
    routerOptions: { ignoreTrailingSlash: false, ignoreDuplicateSlashes: false, caseSensitive: true, maxParamLength: 8192 },
    serverFactory: (handler: RequestListener) => {
      const server = createServer((req, res) => {
        if (fastPath === undefined || !fastPath(req, res)) handler(req, res);
      });
      server.keepAliveTimeout = 75_000;
      // Uploads and downloads may take as long as they take: no whole-request deadline.
      server.requestTimeout = 0;
      return server;
    },
  });

  const upstream = createUpstream(config);
  const outbound = createOutbound(config);
  const scaler = createScaler(config.imageResizer, createImageSource(outbound));
  let closing = false;
  app.addHook('preClose', (done) => {
    closing = true;
    done();
  });
  app.addHook('onClose', async () => {
    await Promise.all([upstream.close(), outbound.close()]);
  });
  setErrorHandler(app);

  const forwarder = createForwarder({
    upstream,
    interceptors: opts.interceptors ?? createInterceptors({ outbound, scaler, maxWidth: config.imageResizer.maxWidth }),
    version: VERSION,
    log: app.log,
    isClosing: () => closing,
  });
  const forward = createUploads({
    uploads: config.uploads,
    // Read at start, and only when an upload route needs it (Workhorse reads it lazily and fails requests).
    secret: config.uploads.routes.length > 0 ? loadSecret(config.secretPath) : Buffer.alloc(0),
    upstream,
    outbound,
    forward: forwarder,
    version: VERSION,
    log: app.log,
    isClosing: () => closing,
  });
  app.register(forwardPlugin, { forward });

  // Outrider's own routes (anything but the catch-all) go through fastify's full lifecycle.
  const ownPrefixes: string[] = [];
  app.addHook('onRoute', (route) => {
    if (route.url !== '*') ownPrefixes.push(route.url.split(/[:*]/, 1)[0] as string);
  });
  app.addHook('onReady', (done) => {
    fastPath = createFastPath(forward, genReqId, ownPrefixes);
    done();
  });
  return app;
}

/**
 * Requests that only the catch-all would match go straight to the forwarder, skipping fastify's
 * per-request lifecycle (routing, Request/Reply objects, a child logger, body-parser lookup):
 * measured at about a sixth of the proxy's CPU per request (bench/README.md). The catch-all
 * route calls the same forwarder, so `inject()` and the fast path behave alike; during shutdown
 * the forwarder answers 503 with `Connection: close` itself.
 */
function createFastPath(
  forward: Forwarder,
  genReqId: (req: IncomingMessage) => string,
  ownPrefixes: string[],
): (req: IncomingMessage, res: ServerResponse) => boolean {
  return (req, res) => {
    const url = req.url as string;
    for (const prefix of ownPrefixes) if (url.startsWith(prefix)) return false;
    forward(req, res, genReqId(req));
    return true;
  };
}
