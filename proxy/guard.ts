import type { ServerResponse } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import { EdgeInternal, writeError } from './errors.js';

/**
 * A callback of one request threw (a defect of Outrider's, or of an interceptor): the error is
 * logged with the request id, and that request alone ends, answered 500 when nothing was sent
 * yet, else with its connection cut. Every per-request entry point (the request listener, event
 * and timer callbacks, undici's handler calls, interceptors) ends up here instead of letting the
 * error reach `uncaughtException`, where it would take every other request of the process with it.
 * Never throws.
 */
export function endOnFault(log: FastifyBaseLogger, requestId: string, res: ServerResponse, err: unknown, where: string): void {
  try {
    log.error({ err, requestId, subsystem: 'proxy', where }, 'request callback threw: this request is ended');
  } catch {
    // A logger that throws must not stop the request from being ended.
  }
  writeError(res, new EdgeInternal({ cause: err }));
}
