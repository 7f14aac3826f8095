import { readdirSync, truncateSync, writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startProxy } from '../helpers/app.js';
import { readBody, startBackend } from '../helpers/backend.js';
import { parseResponse, type RawResponse, rawRequest } from '../helpers/raw.js';
import { API_TYPE, uploadRoutesToml, uploadScratch } from '../helpers/uploads.js';

// Regressions of the hostile-input run: each case here crashed, hung or leaked on the build before.

const { secretPath, newDir } = uploadScratch('outrider-hostile-');

/** A backend that answers at once and streams `text`, without waiting for the request body, and never ends. */
function streamingBackend(text: string) {
  return startBackend((req, res) => {
    req.on('error', () => undefined);
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write(text);
  });
}

const uploadToml = (tempDir: string, top = '') => uploadRoutesToml({ secretPath, tempDir, maxFiles: 10, top });

/** A Rails-like backend: `/authorize` lets uploads into `dir` (with `extra`), the upload route answers 201. */
async function uploadBackend(dir: string, extra: Record<string, unknown> = {}) {
  const received: IncomingMessage[] = [];
  const backend = await startBackend(async (req, res) => {
    if (req.url?.includes('/authorize')) {
      res.writeHead(200, { 'content-type': API_TYPE }).end(JSON.stringify({ TempPath: dir, ...extra }));
      return;
    }
    received.push(req);
    await readBody(req);
    res.writeHead(201, { 'content-type': 'text/plain' }).end('created');
  });
  return { ...backend, received };
}

const waitFor = async (check: () => boolean, ms = 5000) => {
  for (let waited = 0; !check() && waited < ms; waited += 20) await sleep(20);
};

/** A raw client: writes `head`, then whatever the test sends; collects every byte until the server closes. */
async function rawClient(port: number) {
  const socket = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  onTestFinished(() => {
    socket.destroy();
  });
  return {
    socket,
    closed,
    text: () => Buffer.concat(chunks).toString('latin1'),
    response: (): RawResponse => parseResponse(Buffer.concat(chunks).toString('latin1')),
  };
}

/** A raw TCP backend: once a request's head has arrived, `answer` writes what it likes on the socket. */
async function rawBackend(answer: (socket: Socket) => void): Promise<{ url: string; sockets: Socket[] }> {
  const sockets: Socket[] = [];
  const server: Server = createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
    let seen = '';
    socket.on('data', (d: Buffer) => {
      seen += d.toString('latin1');
      if (seen.includes('\r\n\r\n')) {
        seen = '';
        answer(socket);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  const address = server.address() as { port: number };
  return { url: `http://127.0.0.1:${address.port}`, sockets };
}

describe('a body upload over MaximumSize, still arriving when the 413 goes out', () => {
  it('is answered 413, leaves no temp file, and Outrider keeps serving', async () => {
    const dir = newDir();
    const backend = await uploadBackend(dir, { MaximumSize: 1000 });
    const proxy = await startProxy(backend.url, { toml: uploadToml(newDir()) });
    for (let attempt = 0; attempt < 6; attempt++) {
      const client = await rawClient(proxy.port);
      client.socket.write('PUT /packages/generic/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
      // 4 KiB chunks against a 1,000-byte limit, still being written when the answer arrives: at
      // least 64 KiB, and on until the answer is in (the authorize round trip may take a while on
      // a busy machine; a client that stopped first would have ended its body early, a 400).
      for (let i = 0; i < 2000 && !client.socket.destroyed && (i < 16 || client.text() === ''); i++) {
        client.socket.write(`1000\r\n${'a'.repeat(4096)}\r\n`);
        await sleep(2);
      }
      client.socket.end();
      await Promise.race([client.closed, sleep(3000)]);
      expect(client.response().status).toBe(413);
    }
    await waitFor(() => readdirSync(dir).length === 0);
    expect(readdirSync(dir)).toEqual([]);
    expect(backend.received).toHaveLength(0);
    // Still up: a plain request is proxied.
    const res = await request(`${proxy.url}/plain`);
    expect(res.statusCode).toBe(201);
    await res.body.dump();
  });
});

describe('client_body_timeout', () => {
  it('answers 408 to a plain request whose body stops arriving, and aborts its backend request', async () => {
    let backendAborted = false;
    const backend = await startBackend((req, res) => {
      req.on('aborted', () => {
        backendAborted = true;
      });
      req.on('error', () => undefined);
      req.resume();
      req.on('end', () => res.end('whole body'));
    });
    const proxy = await startProxy(backend.url, { toml: 'client_body_timeout = "300ms"' });
    const client = await rawClient(proxy.port);
    const started = Date.now();
    client.socket.write('POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789');
    await Promise.race([client.closed, sleep(5000)]);
    const res = client.response();
    expect(res.status).toBe(408);
    expect(res.header('connection')).toBe('close');
    expect(res.body).toBe('Request Timeout: the request body stopped arriving\n');
    expect(Date.now() - started).toBeLessThan(2000);
    await waitFor(() => backendAborted);
    expect(backendAborted).toBe(true);
  });

  it('answers 408 to a stalled upload and removes its temp file', async () => {
    const dir = newDir();
    const backend = await uploadBackend(dir);
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: uploadToml(newDir(), 'client_body_timeout = "300ms"'), logs });
    const client = await rawClient(proxy.port);
    client.socket.write('PUT /packages/generic/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n');
    client.socket.write(Buffer.alloc(20_000, 1));
    await waitFor(() => readdirSync(dir).length > 0);
    expect(readdirSync(dir)).toHaveLength(1);
    await Promise.race([client.closed, sleep(5000)]);
    expect(client.response().status).toBe(408);
    await waitFor(() => readdirSync(dir).length === 0);
    expect(readdirSync(dir)).toEqual([]);
    expect(backend.received).toHaveLength(0);
    expect(logs.find((l) => l.outcome === 'timeout')).toMatchObject({ subsystem: 'upload', level: 40 });
  });

  it('never cuts a body that keeps coming, however slowly overall', async () => {
    const dir = newDir();
    const backend = await uploadBackend(dir);
    const proxy = await startProxy(backend.url, { toml: uploadToml(newDir(), 'client_body_timeout = "600ms"') });
    const client = await rawClient(proxy.port);
    const total = 16;
    client.socket.write(`PUT /packages/generic/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${total * 100}\r\n\r\n`);
    // 2.4 s in all, four times the timeout, but never 600 ms without a byte.
    for (let i = 0; i < total; i++) {
      client.socket.write(Buffer.alloc(100, 2));
      await sleep(150);
    }
    await Promise.race([client.closed, sleep(5000)]);
    expect(client.response().status).toBe(201);
    expect(backend.received).toHaveLength(1);
  });

  it('cuts the connection when the answer has begun and the body stalls', async () => {
    const backend = await streamingBackend('started ');
    const proxy = await startProxy(backend.url, { toml: 'client_body_timeout = "300ms"' });
    const client = await rawClient(proxy.port);
    client.socket.write('POST /duplex HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc');
    await Promise.race([client.closed, sleep(5000)]);
    expect(client.socket.destroyed).toBe(true);
    expect(client.text()).toMatch(/^HTTP\/1.1 200 OK/);
    expect(client.text()).toContain('started ');
  });

  it('is a config key with a clear error', async () => {
    const { loadConfig } = await import('../../config/load.js');
    expect(loadConfig('', { source: 'test' }).clientBodyTimeoutMs).toBe(60_000);
    expect(() => loadConfig('client_body_timeout = "soon"', { source: 'x.toml' })).toThrow(/client_body_timeout/);
  });
});

describe('a backend status line Outrider cannot relay', () => {
  it('answers 502 for a reason phrase with a control byte, and drops the backend connection', async () => {
    const backend = await rawBackend((socket) => socket.write('HTTP/1.1 200 O\x01K\r\nContent-Length: 5\r\n\r\nhello'));
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/x`, { headersTimeout: 5000, bodyTimeout: 5000 });
    expect(res.statusCode).toBe(502);
    expect(await res.body.text()).toBe('Bad Gateway: the backend sent an invalid response\n');
    // The connection the answer came on is dropped, not kept for another request.
    await waitFor(() => backend.sockets[0]?.destroyed === true);
    expect(backend.sockets[0]?.destroyed).toBe(true);
    // And the next request is served.
    const again = await request(`${proxy.url}/x`, { headersTimeout: 5000 });
    expect(again.statusCode).toBe(502);
    await again.body.dump();
  });

  it('answers 502 for statuses outside 100-599 (600, 999)', async () => {
    for (const status of [600, 999]) {
      const backend = await rawBackend((socket) => socket.write(`HTTP/1.1 ${status} Odd\r\nContent-Length: 2\r\n\r\nok`));
      const proxy = await startProxy(backend.url);
      const res = await request(`${proxy.url}/x`, { headersTimeout: 5000 });
      expect(res.statusCode, String(status)).toBe(502);
      expect(await res.body.text()).toBe('Bad Gateway: the backend sent an invalid response\n');
    }
  });

  it('still relays a custom reason phrase that is valid', async () => {
    const backend = await rawBackend((socket) =>
      socket.end('HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok'),
    );
    const proxy = await startProxy(backend.url);
    const res = await rawRequest(proxy.port, 'GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(res.statusLine).toBe('HTTP/1.1 200 Fine Thanks');
    expect(res.body).toBe('ok');
  });
});

describe('a backend that fails before the first byte of its body', () => {
  it('gets the client a 502, not a reset, for a bad chunk size', async () => {
    const backend = await rawBackend((socket) => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n');
      setTimeout(() => socket.write('zz\r\nhello\r\n0\r\n\r\n'), 50);
    });
    const proxy = await startProxy(backend.url);
    const res = await rawRequest(proxy.port, 'GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(res.status).toBe(502);
    expect(res.body).toBe('Bad Gateway: the backend is not responding\n');
  });

  it('gets the client a 502 when the backend dies after its headers', async () => {
    const backend = await rawBackend((socket) => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n');
      setTimeout(() => socket.destroy(), 50);
    });
    const proxy = await startProxy(backend.url);
    const res = await rawRequest(proxy.port, 'GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(res.status).toBe(502);
  });

  it('an X-Sendfile file that shrinks between its stat and its first read is a 502 or whole, never a reset', async () => {
    const dir = newDir();
    const file = join(dir, 'one-byte.txt');
    writeFileSync(file, 'x');
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, { 'x-sendfile': file, 'content-type': 'text/plain' }).end();
    });
    const proxy = await startProxy(backend.url);
    // The file flips between one byte and none while requests read it.
    let flipping = true;
    const flip = (async () => {
      for (let i = 0; flipping; i++) {
        if (i % 2 === 0) truncateSync(file, 0);
        else writeFileSync(file, 'x');
        await new Promise((r) => setImmediate(r));
      }
    })();
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 300; i++) {
      let outcome: string;
      try {
        const res = await rawRequest(proxy.port, 'GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
        const length = res.header('content-length');
        outcome =
          res.status === 200 && length === String(res.body.length)
            ? `200/${length}`
            : res.status === 502
              ? '502'
              : `broken ${res.statusLine} ${length} ${JSON.stringify(res.body)}`;
      } catch (err) {
        outcome = `reset ${(err as Error).message}`;
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    }
    flipping = false;
    await flip;
    const allowed = new Set(['200/0', '200/1', '502']);
    expect(
      [...outcomes.keys()].filter((k) => !allowed.has(k)),
      JSON.stringify([...outcomes]),
    ).toEqual([]);
  });
});

describe('a request with two Content-Type headers', () => {
  it('is refused with 400 on an upload route and on any other, and never reaches the backend', async () => {
    const dir = newDir();
    const backend = await uploadBackend(dir);
    const proxy = await startProxy(backend.url, { toml: uploadToml(newDir()) });
    const body = '--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\r\n--b--\r\n';
    for (const [path, first, second] of [
      ['/uploads/x', 'text/plain', 'multipart/form-data; boundary=b'],
      ['/uploads/x', 'multipart/form-data; boundary=b', 'text/plain'],
      ['/other', 'text/plain', 'application/json'],
    ] as const) {
      const res = await rawRequest(
        proxy.port,
        `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: ${first}\r\nContent-Type: ${second}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
      );
      expect(res.status, `${path} ${first}`).toBe(400);
      expect(res.body).toBe('Bad Request: the request has more than one Content-Type header\n');
    }
    const hosts = await rawRequest(proxy.port, 'GET /other HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n');
    expect(hosts.status).toBe(400);
    expect(backend.received).toHaveLength(0);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('bytes that are not HTTP on a client connection', () => {
  it('after a whole request: that request is answered, then the connection closes', async () => {
    const backend = await startBackend(async (req, res) => {
      const body = await readBody(req);
      res.end(`read ${body.length}`);
    });
    const proxy = await startProxy(backend.url);
    const res = await rawRequest(
      proxy.port,
      'POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\u0001\u0002 not a request\r\n\r\n',
    );
    expect(res.status).toBe(200);
    expect(res.body).toBe('read 5');
    expect(backend.requests).toHaveLength(1);
  });

  it('inside a body whose answer has begun: the connection is cut, no status line is written into the answer', async () => {
    const backend = await streamingBackend('streaming ');
    const proxy = await startProxy(backend.url);
    const client = await rawClient(proxy.port);
    client.socket.write('POST /duplex HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n');
    await waitFor(() => client.text().includes('streaming'));
    client.socket.write('zz\r\nnot a chunk\r\n');
    await Promise.race([client.closed, sleep(5000)]);
    expect(client.socket.destroyed).toBe(true);
    expect(client.text().match(/HTTP\/1\.1 /g)).toHaveLength(1);
    expect(client.text()).not.toContain('400');
  });

  it('a header over 16 KiB: 431 in plain text', async () => {
    const proxy = await startProxy((await startBackend((_req, res) => res.end('no'))).url);
    const res = await rawRequest(proxy.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`);
    expect(res.status).toBe(431);
    expect(res.header('content-type')).toBe('text/plain; charset=utf-8');
    expect(res.body).toBe('Request Header Fields Too Large: the request headers are too large\n');
  });
});

describe('send_timeout', () => {
  const bigFile = (size: number) => {
    const file = join(newDir(), 'big.bin');
    writeFileSync(file, Buffer.alloc(size, 7));
    return file;
  };

  it('closes the connection of a client that reads none of its answer, and logs it', async () => {
    // Larger than the kernel's socket buffers on both sides can hold.
    const file = bigFile(32 * 1024 * 1024);
    const backend = await startBackend((_req, res) => res.writeHead(200, { 'x-sendfile': file }).end());
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: 'send_timeout = "300ms"', logs });
    const client = await rawClient(proxy.port);
    client.socket.removeAllListeners('data');
    client.socket.pause();
    const started = Date.now();
    client.socket.write('GET /big HTTP/1.1\r\nHost: x\r\n\r\n');
    // A client that reads nothing sees nothing either: what shows is Outrider closing its side.
    const closed = () => logs.some((l) => l.msg === 'request');
    await waitFor(closed, 10_000);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(logs.find((l) => l.msg === 'send timeout: the client stopped reading')).toMatchObject({ level: 40, timeoutMs: 300 });
    expect(logs.find((l) => l.msg === 'request')).toMatchObject({ status: 200, aborted: true });
  });

  it('never cuts a client that keeps reading, however slowly overall', async () => {
    const size = 3 * 1024 * 1024;
    const file = bigFile(size);
    const backend = await startBackend((_req, res) => res.writeHead(200, { 'x-sendfile': file }).end());
    const proxy = await startProxy(backend.url, { toml: 'send_timeout = "800ms"' });
    const client = await rawClient(proxy.port);
    client.socket.removeAllListeners('data');
    client.socket.pause();
    client.socket.write('GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    // 64 KiB every 60 ms: some 3 s in all, nearly four times the timeout, but never 800 ms without reading.
    let received = 0;
    const started = Date.now();
    while (!client.socket.readableEnded && Date.now() - started < 20_000) {
      const chunk = (client.socket.read(64 * 1024) ?? client.socket.read()) as Buffer | null;
      if (chunk !== null) received += chunk.length;
      await sleep(60);
    }
    expect(received).toBeGreaterThan(size);
    expect(Date.now() - started).toBeGreaterThan(1000);
  });
});

describe('review regressions', () => {
  it('junk sent again and again after a parse error is handled once, with no listener piling up', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    onTestFinished(() => {
      process.off('warning', onWarning);
    });
    const backend = await streamingBackend('streaming ');
    const proxy = await startProxy(backend.url);
    const client = await rawClient(proxy.port);
    client.socket.write('GET /stream HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => client.text().includes('streaming'));
    for (let i = 0; i < 40; i++) {
      client.socket.write('\u0001');
      await sleep(5);
    }
    await sleep(100);
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
    expect(client.text().match(/HTTP\/1\.1 /g)).toHaveLength(1);
  });

  it('a bodiless request answered with an error closes at once, without the lingering wait', async () => {
    const proxy = await startProxy((await startBackend((_req, res) => res.end('no'))).url);
    const started = Date.now();
    const res = await rawRequest(proxy.port, 'GET http://evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(res.status).toBe(400);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('the head of a streaming answer whose body is slow to start reaches the client within a second or so', async () => {
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.flushHeaders();
      setTimeout(() => res.end('data: late\n\n'), 4000);
    });
    const proxy = await startProxy(backend.url);
    const started = Date.now();
    const res = await request(`${proxy.url}/events`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream');
    expect(Date.now() - started).toBeLessThan(2500);
    res.body.destroy();
  });
});
