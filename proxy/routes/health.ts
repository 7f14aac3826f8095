import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect } from 'node:net';
import type { FastifyBaseLogger, FastifyPluginCallback } from 'fastify';
import type { Config } from '../../config/schema.js';
import type { Metrics } from '../observe/metrics/catalogue.js';

export const LIVENESS_PATH = '/-/outrider/liveness';
export const READINESS_PATH = '/-/outrider/readiness';

/** How long a readiness probe waits for a connection to the backend. */
const PROBE_TIMEOUT_MS = 1_000;
/** How long a probe's answer is reused: a load balancer polling often costs the backend one connection a second. */
const PROBE_CACHE_MS = 1_000;

export interface HealthOptions {
  config: Pick<Config, 'authBackend' | 'authSocket'>;
  /** True once shutdown has begun. */
  isClosing: () => boolean;
  log: FastifyBaseLogger;
}

export interface Health {
  /** Readiness answers 503 from now on, while requests are still served (`shutdown_delay`). */
  drain(): void;
  /**
   * Answers `req` if it is a health request (either path; GET or HEAD, else 405) and returns true;
   * returns false for anything else.
   */
  serve(req: IncomingMessage, res: ServerResponse): boolean;
}

/**
 * Liveness and readiness. Liveness is Outrider answering at all. Readiness is 200 only while a
 * connection to the backend (`auth_socket`, or `auth_backend`'s host and port) opens within a
 * second, checked at most once a second however many probes arrive; and 503 once Outrider is
 * draining or shutting down, so a load balancer stops sending before connections are refused.
 * Bodies are small JSON documents that name no address.
 */
export function createHealth(opts: HealthOptions): Health {
  const target = probeTarget(opts.config);
  let draining = false;
  let cached: { ready: boolean; at: number } | undefined;
  let probing: Promise<boolean> | undefined;
  let lastReady: boolean | undefined;

  const backendReady = (): Promise<boolean> => {
    if (cached !== undefined && performance.now() - cached.at < PROBE_CACHE_MS) return Promise.resolve(cached.ready);
    probing ??= probe(target).then((ready) => {
      cached = { ready, at: performance.now() };
      probing = undefined;
      if (ready !== lastReady) {
        if (ready) opts.log.info({ subsystem: 'health' }, 'backend reachable: ready');
        else opts.log.warn({ subsystem: 'health' }, 'backend unreachable: not ready');
        lastReady = ready;
      }
      return ready;
    });
    return probing;
  };

  const readiness = async (res: ServerResponse): Promise<void> => {
    if (draining || opts.isClosing()) {
      answer(res, 503, { status: 'unavailable', reason: 'shutting down' });
      return;
    }
    const ready = await backendReady();
    if (res.destroyed) return;
    if (ready) answer(res, 200, { status: 'ok' });
    else answer(res, 503, { status: 'unavailable', reason: 'backend unreachable' });
  };

  return {
    drain() {
      draining = true;
    },
    serve(req, res) {
      const url = req.url ?? '/';
      const q = url.indexOf('?');
      const path = q === -1 ? url : url.slice(0, q);
      if (path !== LIVENESS_PATH && path !== READINESS_PATH) return false;
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        answer(res, 405, { status: 'method not allowed' }, ['allow', 'GET, HEAD']);
      } else if (path === LIVENESS_PATH) {
        answer(res, 200, { status: 'ok' });
      } else {
        void readiness(res);
      }
      return true;
    },
  };
}

/**
 * The health routes on the proxy's own listener, measured like any request (their own `route`
 * label). Only GET and HEAD: other methods on these paths go to the backend.
 */
export const healthPlugin: FastifyPluginCallback<{ health: Health; metrics: Metrics | undefined }> = (app, opts, done) => {
  // Never read a body here: the answer does not depend on one.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, next) => next(null));
  for (const path of [LIVENESS_PATH, READINESS_PATH]) {
    app.get(path, (request, reply) => {
      reply.hijack();
      opts.metrics?.begin(request.raw, reply.raw, path);
      opts.health.serve(request.raw, reply.raw);
    });
  }
  done();
};

function answer(res: ServerResponse, status: number, body: Record<string, string>, extra: string[] = []): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, [
    'content-type',
    'application/json; charset=utf-8',
    'content-length',
    String(Buffer.byteLength(text)),
    'cache-control',
    'no-store',
    ...extra,
  ]);
  res.end(text);
}

type ProbeTarget = { path: string } | { host: string; port: number };

function probeTarget(config: Pick<Config, 'authBackend' | 'authSocket'>): ProbeTarget {
  if (config.authSocket !== undefined) return { path: config.authSocket };
  const url = new URL(config.authBackend);
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  return { host, port: url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port) };
}

/** True when a connection opens within the timeout; the connection is closed at once. */
function probe(target: ProbeTarget): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(target);
    const settle = (ready: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ready);
    };
    const timer = setTimeout(() => settle(false), PROBE_TIMEOUT_MS);
    socket.once('connect', () => settle(true));
    socket.once('error', () => settle(false));
  });
}
