import pino, { type Logger } from 'pino';
import type { Config } from '../config/schema.js';

export const LOG_REDACT = ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization', 'headers.cookie'];

/** How long a buffered log line may wait before it is written. */
const FLUSH_INTERVAL_MS = 500;

/**
 * The process logger: JSON lines on stdout, `authorization` and `cookie` headers redacted.
 * Lines are buffered and written 4 KiB at a time (or every half second, and on exit): one write
 * per access-log line cost more CPU than the rest of the line's handling.
 */
export function createLogger(config: Pick<Config, 'logLevel'>, dest: number | string = 1): Logger {
  const stream = pino.destination({ dest, sync: false, minLength: 4096 });
  setInterval(() => {
    if (!(stream as { destroyed?: boolean }).destroyed) stream.flush();
  }, FLUSH_INTERVAL_MS).unref();
  return pino({ level: config.logLevel, redact: LOG_REDACT }, stream);
}
