import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyBaseLogger, FastifyPluginCallback } from 'fastify';
import { endOnFault } from './errors.js';
import { Exchange } from './forward/exchange.js';
import type { Forwarder } from './forward/forwarder.js';
import { REQUEST_ID } from './forward/headers.js';
import type { Metrics } from './observe/metrics/catalogue.js';
import type { ErrorPages } from './routes/error-pages.js';

/**
 * Where every proxied request enters and the order it goes through, in one place:
 *
 *   measure (metrics, when Prometheus scrapes)
 *     → uploads (`upload/`: a request matching an upload route is stored, then forwarded rewritten)
 *     → forward (`forward/`: to the backend, its answer streamed back)
 *     → interceptors (`intercept/`: an answer carrying an instruction header is served by Outrider)
 *
 * `uploads` is the forwarder itself when no upload route is configured. The request reaches the
 * pipeline by the fast path (a plain node:http listener) or by fastify's catch-all route, alike.
 */
export type Pipeline = (req: IncomingMessage, res: ServerResponse, requestId: string, awaitingContinue?: boolean) => void;

/**
 * The pipeline never throws: a stage that throws synchronously ends its own request (500, or a
 * cut once the answer began), logged with the request id, and no other (`endOnFault`).
 */
export function createPipeline(stages: {
  metrics: Metrics | undefined;
  uploads: Forwarder;
  log: FastifyBaseLogger;
  pages: ErrorPages | undefined;
}): Pipeline {
  const { metrics, uploads, log, pages } = stages;
  return (req, res, requestId, awaitingContinue) => {
    try {
      uploads(new Exchange(req, res, requestId, metrics?.begin(req, res), awaitingContinue === true));
    } catch (err) {
      endOnFault(log, requestId, res, err, 'request', pages);
    }
  };
}

/** A client-sent request id is reused only if it is short, printable ASCII (it lands in logs and headers). */
const SAFE_REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

/** Each request's id: a new UUID, or with `propagate_correlation_id` the client's safe `X-Request-Id`. */
export function requestIds(propagate: boolean): (req: IncomingMessage) => string {
  if (!propagate) return () => randomUUID();
  return (req) => {
    const id = req.headers[REQUEST_ID];
    return typeof id === 'string' && SAFE_REQUEST_ID.test(id) ? id : randomUUID();
  };
}

/**
 * The catch-all route: requests fastify routed (`inject()`, and any the fast path passed on) enter
 * the pipeline here. Bodies are never parsed: the content-type parsers are replaced by one that
 * leaves the stream untouched.
 */
export const pipelinePlugin: FastifyPluginCallback<{ pipeline: Pipeline }> = (app, opts, done) => {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, next) => next(null));
  app.route({
    method: app.supportedMethods,
    url: '*',
    handler(request, reply) {
      reply.hijack();
      opts.pipeline(request.raw, reply.raw, request.id);
    },
  });
  done();
};

/**
 * Requests that only the catch-all would match go straight to the pipeline, skipping fastify's
 * per-request lifecycle (routing, Request/Reply objects, a child logger, body-parser lookup):
 * measured at about a sixth of the proxy's CPU per request (bench/README.md). The catch-all
 * route calls the same pipeline, so `inject()` and the fast path behave alike; during shutdown
 * the forwarder answers 503 with `Connection: close` itself. Returns false for a request that
 * is one of Outrider's own routes (`ownPrefixes`): fastify serves it.
 *
 * `awaitingContinue` is true for a request Node handed over by `checkContinue` (`Expect:
 * 100-continue`, not answered yet): the stage that wants its body sends the 100 (`Exchange`).
 */
export function createFastPath(
  pipeline: Pipeline,
  genReqId: (req: IncomingMessage) => string,
  ownPrefixes: string[],
): (req: IncomingMessage, res: ServerResponse, awaitingContinue?: boolean) => boolean {
  // Outrider's own paths share a leading part ("/-/"): most requests are told apart by it alone.
  const shared = ownPrefixes.reduce((common, prefix) => {
    let n = 0;
    while (n < common.length && common[n] === prefix[n]) n++;
    return common.slice(0, n);
  }, ownPrefixes[0] ?? '');
  return (req, res, awaitingContinue) => {
    const url = req.url as string;
    if (url.startsWith(shared)) for (const prefix of ownPrefixes) if (url.startsWith(prefix)) return false;
    pipeline(req, res, genReqId(req), awaitingContinue);
    return true;
  };
}
