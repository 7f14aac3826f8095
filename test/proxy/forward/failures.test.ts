import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { get, startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { rawRequest } from '../../helpers/raw.js';

/** A port that was free a moment ago and has nothing listening on it now. */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('when the backend fails', () => {
  it('answers 502 text/plain without internals when the backend is unreachable, then recovers when it is back', async () => {
    const port = await closedPort();
    const proxy = await startProxy(`http://127.0.0.1:${port}`);
    const res = await get(`${proxy.url}/dashboard`);
    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(res.body).toBe('Bad Gateway: the backend is not responding\n');
    expect(res.body).not.toMatch(/ECONNREFUSED|127\.0\.0\.1|at /);

    // The same proxy serves again as soon as a backend listens on that port.
    const { createServer: createHttpServer } = await import('node:http');
    const backend = createHttpServer((_req, r) => r.end('back'));
    await new Promise<void>((r) => backend.listen(port, '127.0.0.1', r));
    try {
      expect((await get(`${proxy.url}/dashboard`)).body).toBe('back');
    } finally {
      backend.closeAllConnections();
      backend.close();
    }
  });

  it('answers 504 when no response headers arrive within proxy_headers_timeout', async () => {
    const backend = await startBackend((req, res) => {
      if (req.url === '/slow') return; // never answers
      res.end('fast');
    });
    const proxy = await startProxy(backend.url, { toml: 'proxy_headers_timeout = "300ms"' });
    const started = Date.now();
    const res = await get(`${proxy.url}/slow`);
    expect(res.status).toBe(504);
    expect(res.body).toBe('Gateway Timeout: the backend did not answer in time\n');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect((await get(`${proxy.url}/fast`)).body).toBe('fast');
  });

  it('cuts the client connection when the backend dies mid-body, never completing a truncated response', async () => {
    const backend = await startBackend((req, res) => {
      if (req.url !== '/partial') return void res.end('ok');
      res.writeHead(200, { 'content-length': '100000' });
      res.write(Buffer.alloc(1000, 'a'));
      setTimeout(() => res.socket?.destroy(), 50);
    });
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/partial`);
    expect(res.statusCode).toBe(200);
    await expect(res.body.text()).rejects.toThrow();
    // And the proxy is still serving.
    expect((await get(`${proxy.url}/next`)).body).toBe('ok');
  });

  it('cuts a chunked response whose backend dies mid-stream', async () => {
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('part one ');
      setTimeout(() => res.socket?.destroy(), 50);
    });
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/chunked`);
    await expect(res.body.text()).rejects.toThrow();
  });
});

describe('when the backend answers before the upload is complete', () => {
  it('relays the answer and closes the client connection instead of leaving it stuck', async () => {
    const backend = await startBackend((_req, res) => {
      // Refuses at once, without reading the body (as a size check or an auth failure would).
      res.writeHead(413, { 'content-type': 'text/plain', connection: 'close' }).end('too large');
    });
    const proxy = await startProxy(backend.url);
    const started = Date.now();
    // rawRequest resolves only when Outrider closes the connection.
    const res = await rawRequest(
      proxy.port,
      `PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${10 * 1024 * 1024}\r\n\r\n${'a'.repeat(64 * 1024)}`,
    );
    expect(res.status).toBe(413);
    expect(res.header('connection')).toBe('close');
    expect(res.body).toBe('too large');
    expect(Date.now() - started).toBeLessThan(5000);
  });
});

describe('when the client goes away', () => {
  it('aborts the backend request at once', async () => {
    let backendSawClose!: () => void;
    const closed = new Promise<void>((r) => {
      backendSawClose = r;
    });
    let backendGotRequest!: () => void;
    const arrived = new Promise<void>((r) => {
      backendGotRequest = r;
    });
    const backend = await startBackend((req, res) => {
      backendGotRequest();
      res.on('close', () => backendSawClose());
      // Keeps the request open, as a long poll would.
      res.writeHead(200);
      res.write('waiting...');
      void req;
    });
    const proxy = await startProxy(backend.url);
    const controller = new AbortController();
    const pending = request(`${proxy.url}/long-poll`, { signal: controller.signal }).then((r) => r.body.text());
    await arrived;
    await sleep(50);
    controller.abort();
    await expect(pending).rejects.toThrow();
    await Promise.race([closed, sleep(2000).then(() => Promise.reject(new Error('backend request was not aborted')))]);
  });

  it('aborts the backend request when the client stops sending its body', async () => {
    let backendSawAbort!: () => void;
    const aborted = new Promise<void>((r) => {
      backendSawAbort = r;
    });
    const backend = await startBackend((req, res) => {
      if (req.method === 'GET') return void res.end('ok');
      req.on('error', () => backendSawAbort());
      req.on('close', () => {
        if (!req.complete) backendSawAbort();
      });
      req.resume();
    });
    const proxy = await startProxy(backend.url);
    const { connect } = await import('node:net');
    const socket = connect(proxy.port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.write('POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n');
    socket.write(Buffer.alloc(10_000, 'z'));
    await sleep(100);
    socket.destroy();
    await Promise.race([aborted, sleep(2000).then(() => Promise.reject(new Error('backend request was not aborted')))]);
    // Nothing crashed: the same proxy still answers.
    expect((await get(`${proxy.url}/after`)).status).toBe(200);
  });
});
