import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import type { Http2ServerResponse } from 'node:http2';
import { readHead } from './response-head.js';

/** Node's own writer of 1xx heads (`writeContinue`, `writeProcessing` and `writeEarlyHints` all call it). */
interface RawWriter {
  _writeRaw?: (data: string, encoding: BufferEncoding) => boolean;
}

/** A reason phrase that may go on a status line (RFC 9112 §4). */
const VALID_REASON = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * Relays a backend's interim answer (`103 Early Hints` with its Link headers, `102 Processing`,
 * any other 1xx but 100 and 101) to the client before the final one, as Go's ReverseProxy does
 * since Go 1.20 (its `Got1xxResponse` trace hook writes each 1xx head through). Hop-by-hop and
 * instruction headers are dropped as from any answer. Returns false when nothing could be sent:
 * an HTTP/1.0 client, which must get no 1xx (RFC 9110 §15.2), or a Node without the writer.
 *
 * Node's `writeEarlyHints` is not used: its Link validator refuses valid values (several links
 * joined by commas, quoted parameters with spaces) that the backend meant to send, and it writes
 * 103 only. The head goes through the same internal writer that `writeEarlyHints` uses, which
 * keeps it in order behind an earlier pipelined answer still on the connection.
 */
export function writeInformational(
  req: IncomingMessage,
  res: ServerResponse,
  statusCode: number,
  raw: Buffer[],
  statusMessage: string,
): boolean {
  if (res.headersSent || res.destroyed) return false;
  if (req.httpVersionMajor === 2) return writeHttp2Informational(res, statusCode, raw);
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) return false;
  const write = (res as RawWriter)._writeRaw;
  if (typeof write !== 'function') return false;
  const reason = statusMessage !== '' && VALID_REASON.test(statusMessage) ? statusMessage : (STATUS_CODES[statusCode] ?? 'Informational');
  const { headers } = readHead(statusCode, raw, reason);
  let head = `HTTP/1.1 ${statusCode} ${reason}\r\n`;
  for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  write.call(res, `${head}\r\n`, 'latin1');
  return true;
}

/** Over HTTP/2 a 1xx is a HEADERS frame of its own ahead of the answer's (RFC 9113 §8.1), with no reason phrase. */
function writeHttp2Informational(res: ServerResponse, statusCode: number, raw: Buffer[]): boolean {
  const stream = (res as unknown as Http2ServerResponse).stream;
  if (stream === undefined || stream.destroyed || stream.headersSent) return false;
  const { headers } = readHead(statusCode, raw, '');
  const block: Record<string, string | string[] | number> = { ':status': statusCode };
  for (let i = 0; i < headers.length; i += 2) {
    const name = (headers[i] as string).toLowerCase();
    const value = headers[i + 1] as string;
    const had = block[name];
    block[name] = had === undefined ? value : Array.isArray(had) ? [...had, value] : [String(had), value];
  }
  try {
    stream.additionalHeaders(block);
    return true;
  } catch {
    // A header HTTP/2 cannot carry: the hint is dropped, the answer still comes.
    return false;
  }
}
