import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { LOG_REDACT } from '../proxy/logger.js';
import { requestLog } from '../proxy/request-log.js';

function capture(level = 'info') {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { log: pino({ level, redact: LOG_REDACT, timestamp: () => ',"time":1' }, stream), lines };
}

describe('the per-request logger', () => {
  it('writes the same lines as a pino child bound to the request id, for every way a line is logged', () => {
    const ours = capture();
    const child = capture();
    const err = new Error('disk full');
    err.stack = 'Error: disk full\n    at test';
    for (const [log, lines] of [
      [requestLog(ours.log, 'req-1'), ours.lines],
      [child.log.child({ requestId: 'req-1' }), child.lines],
    ] as const) {
      log.info({ subsystem: 'scaler', outcome: 'cache-hit', width: 64 }, 'scaler');
      log.warn({ err, subsystem: 'upload' }, 'upload temp file could not be removed');
      log.error(err, 'interceptor failed');
      log.error(err);
      log.warn('plain %s', 'message');
      log.info({ headers: { authorization: 'secret', cookie: 'c' } }, 'redacted');
      log.debug({ below: 'level' }, 'never written');
      log.child({ subsystem: 'x' }).info('from a child');
      expect(lines.length).toBeGreaterThan(0);
    }
    expect(ours.lines).toHaveLength(7);
    expect(ours.lines).toEqual(child.lines);
    expect(ours.lines.join('')).not.toContain('secret');
    expect(JSON.parse(ours.lines[3] as string)).toMatchObject({ requestId: 'req-1', msg: 'disk full', err: { message: 'disk full' } });
  });
});
