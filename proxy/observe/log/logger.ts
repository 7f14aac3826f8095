import pino, { type Logger } from 'pino';
import type { Config } from '../../../config/schema.js';
import { type BatchedDestinationOptions, createBatchedDestination } from './destination.js';

export const LOG_REDACT = ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization', 'headers.cookie'];

/**
 * The process logger: JSON lines on stdout, `authorization` and `cookie` headers redacted.
 * Lines are copied into one buffer and written every 5 ms, many in one system call
 * (destination.ts); whatever is pending is written on exit.
 */
export function createLogger(config: Pick<Config, 'logLevel'>, dest: number | string = 1, opts: BatchedDestinationOptions = {}): Logger {
  const destination = createBatchedDestination(dest, opts);
  process.on('exit', () => destination.flushSync());
  return pino({ level: config.logLevel, redact: LOG_REDACT }, destination);
}
