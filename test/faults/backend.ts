import { mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

import { API_TYPE } from '../helpers/uploads.js';

/** What the fault backend lets an accelerated upload store: the authorize answer's MaximumSize. */
export const MAX_UPLOAD = 100_000;

/**
 * Backend faults: `GET /fault/<kind>` is answered with these bytes, written straight to the socket
 * (no HTTP library between), then the connection is closed or left hanging as the kind says.
 */
export const RAW_FAULTS: Record<string, { bytes: string; after: 'close' | 'hang' }> = {
  'reason-control-byte': { bytes: 'HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok', after: 'close' },
  'status-999': { bytes: 'HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok', after: 'close' },
  'status-600': { bytes: 'HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok', after: 'close' },
  'status-letters': { bytes: 'HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok', after: 'close' },
  'status-line-garbage': { bytes: 'garbage\r\n\r\n', after: 'close' },
  'http2-preface': { bytes: 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', after: 'close' },
  'nothing-then-close': { bytes: '', after: 'close' },
  'half-status-line': { bytes: 'HTTP/1.1 20', after: 'close' },
  'header-without-colon': { bytes: 'HTTP/1.1 200 OK\r\nBroken header\r\nContent-Length: 2\r\n\r\nok', after: 'close' },
  'header-control-byte': { bytes: 'HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok', after: 'close' },
  'huge-headers': { bytes: `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70_000)}\r\nContent-Length: 2\r\n\r\nok`, after: 'close' },
  'two-content-lengths': { bytes: 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokokok', after: 'close' },
  'content-length-and-chunked': {
    bytes: 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
    after: 'close',
  },
  'bad-chunk-size': { bytes: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n', after: 'close' },
  'chunked-then-death': { bytes: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n', after: 'close' },
  'death-mid-body': { bytes: `HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n${'x'.repeat(10)}`, after: 'close' },
  'death-after-headers': { bytes: 'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n', after: 'close' },
  'hang-before-headers': { bytes: '', after: 'hang' },
  'hang-mid-body': { bytes: `HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n${'x'.repeat(10)}`, after: 'hang' },
  'interim-then-garbage': { bytes: 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\ngarbage\r\n\r\n', after: 'close' },
  'switching-protocols-unasked': { bytes: 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n', after: 'close' },
  'sendfile-path-with-nul': { bytes: 'HTTP/1.1 200 OK\r\nX-Sendfile: /etc/passwd\u0000.png\r\nContent-Length: 0\r\n\r\n', after: 'close' },
  'internal-api-type': { bytes: `HTTP/1.1 200 OK\r\nContent-Type: ${API_TYPE}\r\nContent-Length: 2\r\n\r\n{}`, after: 'close' },
};

/** Instruction headers the backend answers `GET /instruct/<kind>` with (Workhorse's protocol, misused). */
export function instructions(files: FaultFiles, closedPort: number): Record<string, Record<string, string>> {
  const sendData = (prefix: string, params: unknown) => `${prefix}:${Buffer.from(JSON.stringify(params)).toString('base64url')}`;
  const scaled = (params: unknown) => ({ 'gitlab-workhorse-send-data': sendData('send-scaled-img', params) });
  return {
    'sendfile-missing': { 'x-sendfile': join(files.dir, 'missing.bin') },
    'sendfile-directory': { 'x-sendfile': files.dir },
    'sendfile-relative': { 'x-sendfile': 'relative/path.bin' },
    'sendfile-dev-zero': { 'x-sendfile': '/dev/zero' },
    'sendfile-changing': { 'x-sendfile': files.changing },
    'senddata-bad-base64': { 'gitlab-workhorse-send-data': 'send-url:%%%not base64%%%' },
    'senddata-bad-json': { 'gitlab-workhorse-send-data': `send-url:${Buffer.from('{"URL":').toString('base64')}` },
    'senddata-unknown-prefix': { 'gitlab-workhorse-send-data': sendData('git-blob', { x: 1 }) },
    'send-url-closed-port': { 'gitlab-workhorse-send-data': sendData('send-url', { URL: `http://127.0.0.1:${closedPort}/x` }) },
    'send-url-bad-scheme': { 'gitlab-workhorse-send-data': sendData('send-url', { URL: 'file:///etc/passwd' }) },
    'scaled-pixel-bomb': scaled({ Location: files.bomb, Width: 64, ContentType: 'image/png' }),
    'scaled-missing': scaled({ Location: join(files.dir, 'missing.png'), Width: 64, ContentType: 'image/png' }),
    'scaled-width-huge': scaled({ Location: files.bomb, Width: 1e9, ContentType: 'image/png' }),
    'scaled-width-string': scaled({ Location: files.bomb, Width: '64', ContentType: 'image/png' }),
    'scaled-garbage-image': scaled({ Location: files.garbage, Width: 64, ContentType: 'image/png' }),
  };
}

export interface FaultFiles {
  dir: string;
  /** A file that flips between one byte and none while it is served. */
  changing: string;
  bomb: string;
  garbage: string;
  /** A 32 MiB file for slow readers: more than the kernel's socket buffers on both sides hold. */
  large: string;
  stopChanging(): void;
}

/** The files the instruction faults name, made in `dir`. */
export function makeFiles(dir: string, bomb: Buffer): FaultFiles {
  mkdirSync(dir, { recursive: true });
  const changing = join(dir, 'changing.txt');
  writeFileSync(changing, 'x');
  const bombFile = join(dir, 'bomb.png');
  writeFileSync(bombFile, bomb);
  const garbage = join(dir, 'garbage.png');
  // PNG magic bytes, then noise.
  writeFileSync(garbage, Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(5000, 7)]));
  const large = join(dir, 'large.bin');
  writeFileSync(large, Buffer.alloc(32 * 1024 * 1024, 1));
  let flips = 0;
  const timer = setInterval(() => {
    if (flips++ % 2 === 0) truncateSync(changing, 0);
    else writeFileSync(changing, 'x');
  }, 1);
  return { dir, changing, bomb: bombFile, garbage, large, stopChanging: () => clearInterval(timer) };
}

export interface FaultBackend {
  url: string;
  server: Server;
  /** Requests that reached the backend for a path no client should be able to reach (a smuggled request). */
  smuggled: string[];
  /** Rewritten uploads the backend accepted. */
  uploads: number;
  close(): Promise<void>;
}

/**
 * The backend behind Outrider in the fault suite: a Rails-like upload backend (authorize, then a
 * 201 for the rewritten request), plain and echo routes, the raw faults and the instruction faults.
 */
export async function startFaultBackend(opts: { uploadDir: string; files: FaultFiles; closedPort: number }): Promise<FaultBackend> {
  const smuggled: string[] = [];
  let uploads = 0;
  const instructed = instructions(opts.files, opts.closedPort);
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? '';
    req.on('error', () => undefined);
    res.on('error', () => undefined);
    if (url.includes('smuggled')) smuggled.push(`${req.method} ${url}`);
    if (url.endsWith('/authorize')) {
      res.writeHead(200, { 'content-type': API_TYPE }).end(JSON.stringify({ TempPath: opts.uploadDir, MaximumSize: MAX_UPLOAD }));
      return;
    }
    if (url.startsWith('/fault/')) {
      const fault = RAW_FAULTS[url.slice('/fault/'.length)];
      if (fault === undefined) {
        res.writeHead(404).end();
        return;
      }
      const socket = req.socket;
      socket.write(fault.bytes);
      if (fault.after === 'close') socket.destroy();
      return;
    }
    if (url.startsWith('/instruct/')) {
      const headers = instructed[url.slice('/instruct/'.length)];
      res.writeHead(headers === undefined ? 404 : 200, headers ?? {}).end('the backend body, discarded');
      return;
    }
    if (url.startsWith('/large')) {
      res.writeHead(200, { 'x-sendfile': opts.files.large }).end();
      return;
    }
    // Uploads (rewritten by Outrider), plain and echo requests: read the body, say how long it was.
    let length = 0;
    req.on('data', (chunk: Buffer) => {
      length += chunk.length;
    });
    req.on('end', () => {
      if (url.startsWith('/uploads/') || url.startsWith('/open/') || url.startsWith('/packages/')) uploads++;
      res.writeHead(url.startsWith('/uploads/') || url.startsWith('/packages/') ? 201 : 200, { 'content-type': 'text/plain' });
      res.end(`read ${length}`);
    });
  };
  const server = createServer(handler);
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    smuggled,
    get uploads() {
      return uploads;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
