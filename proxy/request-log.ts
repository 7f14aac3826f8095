import type { FastifyBaseLogger } from 'fastify';
import type { Bindings, ChildLoggerOptions } from 'pino';

type Level = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';

/**
 * A logger for one request's lines beyond its access line (a scaler or upload outcome, a
 * warning): every line carries `requestId`, as a pino child's would, and reads the same. A pino
 * child costs about 4 µs to make (its bindings are serialised up front), more than the line it
 * writes, and every scaled-image request writes an outcome line; this only adds the field to the
 * object logged. A class, so that the methods are shared and a request allocates one small
 * object. `child()` still gives a real pino child.
 */
class RequestLog {
  private readonly log: FastifyBaseLogger;
  private readonly requestId: string;

  constructor(log: FastifyBaseLogger, requestId: string) {
    this.log = log;
    this.requestId = requestId;
  }

  get level(): string {
    return this.log.level;
  }

  fatal(...args: unknown[]): void {
    this.write('fatal', args);
  }
  error(...args: unknown[]): void {
    this.write('error', args);
  }
  warn(...args: unknown[]): void {
    this.write('warn', args);
  }
  info(...args: unknown[]): void {
    this.write('info', args);
  }
  debug(...args: unknown[]): void {
    this.write('debug', args);
  }
  trace(...args: unknown[]): void {
    this.write('trace', args);
  }
  silent(): void {}

  child(bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.log.child({ requestId: this.requestId, ...bindings }, options);
  }

  private write(level: Level, [first, ...rest]: unknown[]): void {
    const fn = this.log[level] as unknown as (...args: unknown[]) => void;
    const requestId = this.requestId;
    // The shapes pino takes: (err, …), (object, msg, …), (msg, …).
    if (first instanceof Error) fn.call(this.log, { requestId, err: first }, ...rest);
    else if (typeof first === 'object' && first !== null) fn.call(this.log, { requestId, ...first }, ...rest);
    else if (first === undefined) fn.call(this.log, { requestId });
    else fn.call(this.log, { requestId }, first, ...rest);
  }
}

export function requestLog(log: FastifyBaseLogger, requestId: string): FastifyBaseLogger {
  return new RequestLog(log, requestId) as unknown as FastifyBaseLogger;
}
