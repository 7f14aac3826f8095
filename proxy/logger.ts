import pino, { type Logger } from 'pino';
import type { Config } from '../config/schema.js';
import { type BatchedDestinationOptions, createBatchedDestination } from './log-destination.js';

export const LOG_REDACT = ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization', 'headers.cookie'];

/**
 * The process logger: JSON lines on stdout, `authorization` and `cookie` headers redacted.
 * Lines are written once per event-loop turn, many in one system call (log-destination.ts):
 * measured at 2.6 µs of CPU per line, against 3.5 µs for one write per line and 9.6 µs for
 * pino's buffered asynchronous destination. Whatever is pending is written on exit.
 */
export function createLogger(config: Pick<Config, 'logLevel'>, dest: number | string = 1, opts: BatchedDestinationOptions = {}): Logger {
  const destination = createBatchedDestination(dest, opts);
  process.on('exit', () => destination.flushSync());
  return pino({ level: config.logLevel, redact: LOG_REDACT }, destination);
}
