import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import { answeredWhole } from '../../connection/http2.js';
import { createDirectLine, jsonString, msSince } from './direct-line.js';

/** What the access line says of one request beyond what its request and response carry. */
export interface AccessFields {
  requestId: string;
  /** `performance.now()` when the request arrived. */
  started: number;
  peer: string;
  /** Body bytes relayed from the backend; undefined when Outrider wrote the answer itself. */
  bytes: number | undefined;
}

/** Writes the one access-log line of a request. */
export type AccessLog = (req: IncomingMessage, res: ServerResponse, fields: AccessFields) => void;

const ACCESS_FIELDS = ['method', 'path', 'status', 'durationMs', 'bytes', 'remoteAddress', 'aborted'];

/**
 * The access line of a request (method, path, status — 499 when the client left before any
 * answer — duration, bytes relayed, client address, request id), written when its response closes.
 *
 * It is the line `log.info({ requestId, method, … }, 'request')` writes, by `createDirectLine`:
 * every proxied request writes one, and `npm run bench:log` measures 0.8 µs per line this way
 * against 1.9 µs through `log.info`. The client address (an IP literal) is written without an
 * escaping check; the method (which `inject()` may set to anything) and the path are checked.
 */
export function createAccessLog(log: FastifyBaseLogger): AccessLog {
  const line = createDirectLine(log, 'request', ACCESS_FIELDS);
  if (line === undefined) {
    return (req, res, fields) => log.info(accessObject(req, res, fields), 'request');
  }
  return (req, res, fields) => {
    if (!line.enabled()) return;
    line.write(
      fields.requestId,
      `,"method":${jsonString(req.method as string)},"path":${jsonString(req.url as string)},"status":${statusOf(res)},"durationMs":${msSince(fields.started)}${fields.bytes === undefined ? '' : `,"bytes":${fields.bytes}`},"remoteAddress":"${fields.peer}"${answeredWhole(res) ? '' : ',"aborted":true'}`,
    );
  };
}

/** The fields of the access line as an object, in the order the direct line writes them. */
export function accessObject(req: IncomingMessage, res: ServerResponse, fields: AccessFields): Record<string, unknown> {
  return {
    requestId: fields.requestId,
    method: req.method,
    path: req.url,
    status: statusOf(res),
    durationMs: msSince(fields.started),
    bytes: fields.bytes,
    remoteAddress: fields.peer,
    aborted: !answeredWhole(res) || undefined,
  };
}

/** The status the client got; 499 when it left before any answer. */
function statusOf(res: ServerResponse): number {
  return res.headersSent ? res.statusCode : 499;
}
