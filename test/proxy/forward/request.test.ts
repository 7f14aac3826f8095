import { describe, expect, it } from 'vitest';
import { VERSION } from '../../../proxy/runtime/version.js';
import { startProxy } from '../../helpers/app.js';
import { readBody, startBackend } from '../../helpers/backend.js';
import { rawRequest } from '../../helpers/raw.js';

/** A backend that answers with what it received. */
async function echoBackend() {
  return startBackend(async (req, res) => {
    const body = await readBody(req);
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ method: req.method, url: req.url, rawHeaders: req.rawHeaders, body: body.toString() }));
  });
}

interface Echo {
  method: string;
  url: string;
  rawHeaders: string[];
  body: string;
}

function headerValues(echo: Echo, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < echo.rawHeaders.length; i += 2) {
    if (echo.rawHeaders[i]?.toLowerCase() === name) out.push(echo.rawHeaders[i + 1] as string);
  }
  return out;
}

async function send(port: number, requestLine: string, headers: string[] = [], body = ''): Promise<Echo> {
  const res = await rawRequest(
    port,
    `${requestLine}\r\nHost: example.test\r\nConnection: close\r\n${headers.map((h) => `${h}\r\n`).join('')}${body === '' ? '' : `Content-Length: ${Buffer.byteLength(body)}\r\n`}\r\n${body}`,
  );
  expect(res.status).toBe(200);
  return JSON.parse(res.body) as Echo;
}

describe('the request the backend receives', () => {
  it('keeps the method, path and query byte for byte, %2F and odd queries included', async () => {
    const backend = await echoBackend();
    const proxy = await startProxy(backend.url);
    for (const target of [
      '/group%2Fproject/-/raw/a%20b',
      '/api/v4/projects/1?a=1&a=2&&b=%zz;c=d&e',
      '/x/../y//z/?',
      '/%E2%9C%93?q=%E2%9C%93+x',
    ]) {
      const echo = await send(proxy.port, `GET ${target} HTTP/1.1`);
      expect(echo.url).toBe(target);
      expect(echo.method).toBe('GET');
    }
    for (const method of ['POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']) {
      const echo = await send(proxy.port, `${method} /m HTTP/1.1`, [], 'payload');
      expect(echo.method).toBe(method);
      expect(echo.body).toBe('payload');
    }
  });

  it('refuses targets that are not a path (absolute form, "*") with 400, without calling the backend', async () => {
    const backend = await echoBackend();
    const proxy = await startProxy(backend.url);
    for (const line of ['GET http://evil.example/admin HTTP/1.1', 'OPTIONS * HTTP/1.1']) {
      const res = await rawRequest(proxy.port, `${line}\r\nHost: example.test\r\nConnection: close\r\n\r\n`);
      expect(res.status).toBe(400);
      expect(res.body).toBe('Bad Request: the request target must be a path\n');
    }
    expect(backend.requests).toHaveLength(0);
  });

  it('keeps the original Host and appends the peer to X-Forwarded-For', async () => {
    const backend = await echoBackend();
    const proxy = await startProxy(backend.url);
    const plain = await send(proxy.port, 'GET / HTTP/1.1');
    expect(headerValues(plain, 'host')).toEqual(['example.test']);
    expect(headerValues(plain, 'x-forwarded-for')).toEqual(['127.0.0.1']);
    const chained = await send(proxy.port, 'GET / HTTP/1.1', ['X-Forwarded-For: 203.0.113.7', 'X-Forwarded-For: 198.51.100.2, 10.0.0.1']);
    expect(headerValues(chained, 'x-forwarded-for')).toEqual(['203.0.113.7, 198.51.100.2, 10.0.0.1, 127.0.0.1']);
  });

  it('carries the Workhorse headers, which a client cannot forge', async () => {
    const backend = await echoBackend();
    const proxy = await startProxy(backend.url);
    const before = Date.now();
    const echo = await send(proxy.port, 'GET / HTTP/1.1', [
      'Gitlab-Workhorse: forged',
      'Gitlab-Workhorse-Proxy-Start: 1',
      'X-Sendfile-Type: forged',
      'X-Request-Id: client-chosen',
    ]);
    expect(headerValues(echo, 'gitlab-workhorse')).toEqual([VERSION]);
    expect(headerValues(echo, 'x-sendfile-type')).toEqual(['X-Sendfile']);
    const start = headerValues(echo, 'gitlab-workhorse-proxy-start');
    expect(start).toHaveLength(1);
    expect(start[0]).toMatch(/^\d{19}$/);
    const startMs = Number(BigInt(start[0] as string) / 1_000_000n);
    expect(startMs).toBeGreaterThanOrEqual(before);
    expect(startMs).toBeLessThanOrEqual(Date.now());
    const ids = headerValues(echo, 'x-request-id');
    expect(ids).toHaveLength(1);
    expect(ids[0]).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("reuses the client's X-Request-Id only with propagate_correlation_id, and only a safe one", async () => {
    const backend = await echoBackend();
    const proxy = await startProxy(backend.url, { toml: 'propagate_correlation_id = true' });
    const kept = await send(proxy.port, 'GET / HTTP/1.1', ['X-Request-Id: abc-123']);
    expect(headerValues(kept, 'x-request-id')).toEqual(['abc-123']);
    const unsafe = await send(proxy.port, 'GET / HTTP/1.1', [`X-Request-Id: ${'x'.repeat(200)}`]);
    expect(headerValues(unsafe, 'x-request-id')[0]).toMatch(/^[0-9a-f-]{36}$/);
    const none = await send(proxy.port, 'GET / HTTP/1.1');
    expect(headerValues(none, 'x-request-id')[0]).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('drops hop-by-hop headers, those named in Connection, and a client-sent Gitlab-Workhorse-Multipart-Fields', async () => {
    const backend = await echoBackend();
    const proxy = await startProxy(backend.url);
    const echo = await send(proxy.port, 'GET / HTTP/1.1', [
      'Keep-Alive: timeout=5',
      'TE: trailers',
      'Upgrade: websocket',
      'Proxy-Authorization: Basic Zm9vOmJhcg==',
      'Proxy-Connection: keep-alive',
      'Connection: X-Secret-Hop, Keep-Alive',
      'X-Secret-Hop: 1',
      'Gitlab-Workhorse-Multipart-Fields: forged.jwt.value',
      'X-Kept: yes',
      'Authorization: Bearer kept-for-the-backend',
    ]);
    const names = echo.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    for (const dropped of [
      'keep-alive',
      'te',
      'upgrade',
      'proxy-authorization',
      'proxy-connection',
      'x-secret-hop',
      'gitlab-workhorse-multipart-fields',
    ]) {
      expect(names).not.toContain(dropped);
    }
    expect(headerValues(echo, 'x-kept')).toEqual(['yes']);
    expect(headerValues(echo, 'authorization')).toEqual(['Bearer kept-for-the-backend']);
  });

  it('forwards a chunked request body as it came', async () => {
    const backend = await echoBackend();
    const proxy = await startProxy(backend.url);
    const res = await rawRequest(
      proxy.port,
      'POST /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
    );
    expect(res.status).toBe(200);
    expect((JSON.parse(res.body) as Echo).body).toBe('hello world');
  });

  it('reuses pooled keep-alive connections to the backend', async () => {
    const backend = await echoBackend();
    const proxy = await startProxy(backend.url);
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${proxy.url}/n/${i}`);
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    expect(backend.requests).toHaveLength(20);
    expect(backend.connections()).toBe(1);
  });
});
