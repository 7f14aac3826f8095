import type { IncomingMessage, ServerResponse } from 'node:http';
import { Writable } from 'node:stream';
import pino, { type LoggerOptions } from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { rawHeader } from '../../../../proxy/forward/headers.js';
import { accessObject, createAccessLog } from '../../../../proxy/observe/log/access-line.js';
import { createDirectLine, jsonString } from '../../../../proxy/observe/log/direct-line.js';
import { LOG_REDACT } from '../../../../proxy/observe/log/logger.js';
import { startBackend } from '../../../helpers/backend.js';
import { rawRequest } from '../../../helpers/raw.js';

function capture(options: LoggerOptions = {}) {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const log = pino({ level: 'info', redact: LOG_REDACT, timestamp: () => ',"time":1764547200000', ...options }, stream);
  return { log, lines };
}

/**
 * Serves `target` over a real socket; when the response closes, `onClose` gets the request and
 * response as the forwarder's access log sees them.
 */
async function serve(target: string, answer: (res: ServerResponse) => void, onClose: (req: IncomingMessage, res: ServerResponse) => void) {
  let closed!: () => void;
  const done = new Promise<void>((resolve) => {
    closed = resolve;
  });
  const backend = await startBackend((req, res) => {
    res.on('close', () => {
      onClose(req, res);
      closed();
    });
    answer(res);
  });
  const raw = await rawRequest(backend.port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`).catch(() => undefined);
  // Node answers a target it refuses itself, without calling the handler.
  expect(raw === undefined || raw.status !== 400).toBe(true);
  await done;
}

const normalise = (line: string | undefined) => line?.replace(/"durationMs":[0-9.e-]+/, '"durationMs":0');

describe('the access-log line', () => {
  it('is byte for byte the line pino writes for the same fields, quotes and backslashes in the path and request id included', async () => {
    const fast = capture();
    const slow = capture();
    const line = createAccessLog(fast.log);
    // The line is put together directly, not through pino's generic path (what makes it cheap).
    const info = vi.spyOn(fast.log, 'info');
    await serve(
      '/a"b\\c/d?q=1&x="y"',
      (res) => res.end('hello'),
      (req, res) => {
        const fields = { requestId: 'req-"1"', started: performance.now(), peer: '127.0.0.1', bytes: 5 };
        line(req, res, fields);
        slow.log.info(accessObject(req, res, fields), 'request');
      },
    );
    expect(info).not.toHaveBeenCalled();
    expect(fast.lines).toHaveLength(1);
    expect(normalise(fast.lines[0])).toBe(normalise(slow.lines[0]));
    expect(JSON.parse(fast.lines[0] as string)).toMatchObject({
      level: 30,
      time: 1764547200000,
      pid: process.pid,
      requestId: 'req-"1"',
      method: 'GET',
      path: '/a"b\\c/d?q=1&x="y"',
      status: 200,
      bytes: 5,
      remoteAddress: '127.0.0.1',
      msg: 'request',
    });
    expect(JSON.parse(fast.lines[0] as string)).not.toHaveProperty('aborted');
  });

  it('marks an abandoned request 499 and aborted, and leaves out bytes Outrider did not relay', async () => {
    const fast = capture();
    const line = createAccessLog(fast.log);
    await serve(
      '/gone',
      (res) => res.socket?.destroy(),
      (req, res) => line(req, res, { requestId: 'r', started: performance.now(), peer: '10.0.0.1', bytes: undefined }),
    );
    const parsed = JSON.parse(fast.lines[0] as string);
    expect(parsed).toMatchObject({ status: 499, aborted: true, remoteAddress: '10.0.0.1' });
    expect(parsed).not.toHaveProperty('bytes');
  });

  it('follows the logger: nothing below its level, and a mixin or log formatter still applies', async () => {
    const quiet = capture({ level: 'warn' });
    const mixed = capture({ mixin: () => ({ node: 'edge-1' }) });
    const formatted = capture({ formatters: { log: (o) => ({ ...o, shape: 'formatted' }) } });
    const lines = [quiet, mixed, formatted].map((c) => createAccessLog(c.log));
    await serve(
      '/x',
      (res) => res.end(),
      (req, res) => {
        for (const line of lines) line(req, res, { requestId: 'r', started: performance.now(), peer: '127.0.0.1', bytes: 0 });
        // The level is read on every line: raising it later silences the next one.
        mixed.log.level = 'error';
        lines[1]?.(req, res, { requestId: 'r2', started: performance.now(), peer: '127.0.0.1', bytes: 0 });
      },
    );
    expect(quiet.lines).toEqual([]);
    expect(mixed.lines).toHaveLength(1);
    expect(JSON.parse(mixed.lines[0] as string)).toMatchObject({ node: 'edge-1', path: '/x', msg: 'request' });
    expect(JSON.parse(formatted.lines[0] as string)).toMatchObject({ shape: 'formatted', path: '/x' });
  });

  it('keeps the bindings of a child logger', async () => {
    const { log, lines } = capture();
    const line = createAccessLog(log.child({ worker: 2 }));
    await serve(
      '/c',
      (res) => res.end(),
      (req, res) => line(req, res, { requestId: 'r', started: performance.now(), peer: '127.0.0.1', bytes: 0 }),
    );
    expect(JSON.parse(lines[0] as string)).toMatchObject({ worker: 2, path: '/c' });
  });
});

describe('a direct line', () => {
  it("is byte for byte what a request's child logger writes, an id needing escapes and a non-ASCII value included", () => {
    const fast = capture();
    const slow = capture();
    const line = createDirectLine(fast.log, 'scaler', ['subsystem', 'width', 'contentType']);
    expect(line).toBeDefined();
    const child = vi.spyOn(fast.log, 'child');
    for (const requestId of ['4f1c-plain', 'id-"quoted"-\\-back']) {
      for (const contentType of ['image/png', 'image/"odd"', 'image/é']) {
        line?.write(requestId, `,"subsystem":"scaler","width":64,"contentType":${jsonString(contentType)}`);
        slow.log.child({ requestId }).info({ subsystem: 'scaler', width: 64, contentType }, 'scaler');
      }
    }
    expect(child).not.toHaveBeenCalled();
    expect(fast.lines).toHaveLength(6);
    expect(fast.lines).toEqual(slow.lines);
  });

  it('is not offered when pino would change the line, and reports a raised level', () => {
    expect(createDirectLine(capture({ mixin: () => ({ a: 1 }) }).log, 'scaler', ['width'])).toBeUndefined();
    expect(createDirectLine(capture({ serializers: { width: (w: number) => w * 2 } }).log, 'scaler', ['width'])).toBeUndefined();
    const { log } = capture();
    const line = createDirectLine(log, 'scaler', ['width']);
    expect(line?.enabled()).toBe(true);
    log.level = 'warn';
    expect(line?.enabled()).toBe(false);
  });
});

describe('rawHeader', () => {
  it('finds a request header by name in any case, the first of repeated ones, as req.headers does', async () => {
    let seen: (string | undefined)[] = [];
    let expected: (string | undefined)[] = [];
    const backend = await startBackend((req, res) => {
      seen = ['if-modified-since', 'x-absent', 'accept'].map((name) => rawHeader(req, name));
      expected = [req.headers['if-modified-since'], req.headers['x-absent'] as undefined, req.headers.accept];
      res.end();
    });
    await rawRequest(
      backend.port,
      'GET / HTTP/1.1\r\nHost: x\r\nIF-MODIFIED-SINCE: Tue, 01 Dec 2026 10:00:00 GMT\r\nIf-Modified-Since: Mon, 30 Nov 2026 10:00:00 GMT\r\nAccept: a/b\r\nConnection: close\r\n\r\n',
    );
    expect(seen).toEqual(['Tue, 01 Dec 2026 10:00:00 GMT', undefined, 'a/b']);
    expect(seen).toEqual(expected);
  });
});
