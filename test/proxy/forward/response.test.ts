import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import type { Interceptor } from '../../../proxy/intercept/types.js';
import { buildProxy, startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { rawRequest } from '../../helpers/raw.js';

describe('the response the client receives', () => {
  it('keeps status, reason and headers, repeated ones included', async () => {
    const backend = await startBackend((_req, res) => {
      res.statusMessage = 'Made It';
      res.writeHead(201, [
        'Set-Cookie',
        'a=1; Path=/',
        'Set-Cookie',
        'b=2; HttpOnly',
        'Cache-Control',
        'private, max-age=60',
        'Content-Disposition',
        'attachment; filename="r.txt"',
        'X-Custom',
        'kept',
        'Content-Type',
        'text/plain',
      ]);
      res.end('created');
    });
    const proxy = await startProxy(backend.url);
    const res = await rawRequest(proxy.port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(res.statusLine).toBe('HTTP/1.1 201 Made It');
    expect(res.headers.filter(([n]) => n === 'set-cookie').map(([, v]) => v)).toEqual(['a=1; Path=/', 'b=2; HttpOnly']);
    expect(res.header('cache-control')).toBe('private, max-age=60');
    expect(res.header('content-disposition')).toBe('attachment; filename="r.txt"');
    expect(res.header('x-custom')).toBe('kept');
    expect(res.body).toBe('created');
  });

  it('passes error statuses, 304 and HEAD through unchanged', async () => {
    const backend = await startBackend((req, res) => {
      if (req.url === '/missing') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not here');
      } else if (req.url === '/fresh') {
        res.writeHead(304, { etag: '"v1"' }).end();
      } else {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '5' }).end(req.method === 'HEAD' ? undefined : 'hello');
      }
    });
    // Real sockets (the path production traffic takes) and inject() (fastify's route) alike.
    const proxy = await startProxy(backend.url);
    const app = buildProxy(backend.url);
    const viaSocket = async (method: 'GET' | 'HEAD', path: string, headers: Record<string, string> = {}) => {
      const r = await request(`${proxy.url}${path}`, { method, headers });
      return { statusCode: r.statusCode, headers: r.headers, body: await r.body.text() };
    };
    const viaInject = async (method: 'GET' | 'HEAD', path: string, headers: Record<string, string> = {}) => {
      const r = await app.inject({ method, url: path, headers });
      return { statusCode: r.statusCode, headers: r.headers, body: r.body };
    };
    for (const send of [viaSocket, viaInject]) {
      const missing = await send('GET', '/missing');
      expect(missing.statusCode).toBe(404);
      expect(missing.body).toBe('not here');
      const fresh = await send('GET', '/fresh', { 'if-none-match': '"v1"' });
      expect(fresh.statusCode).toBe(304);
      expect(fresh.headers.etag).toBe('"v1"');
      expect(fresh.body).toBe('');
      const head = await send('HEAD', '/');
      expect(head.statusCode).toBe(200);
      expect(head.headers['content-length']).toBe('5');
      expect(head.body).toBe('');
    }
  });

  it('relays the final response after interim 1xx responses such as 103 Early Hints', async () => {
    const backend = await startBackend((_req, res) => {
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      res.writeHead(200, { 'content-type': 'text/html' }).end('<p>page</p>');
    });
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/page`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('<p>page</p>');
  });

  it('never lets instruction or hop-by-hop headers reach the client', async () => {
    const backend = await startBackend((req, res) => {
      // A status other than 200: no interceptor acts, yet the instruction headers are still stripped.
      res.writeHead(req.url === '/ok' ? 200 : 403, [
        'Gitlab-Workhorse-Send-Data',
        'unknown-injecter:e30=',
        'X-Sendfile',
        '/etc/passwd',
        'Gitlab-Workhorse-Detect-Content-Type',
        'true',
        'Connection',
        'X-Hop-Private',
        'X-Hop-Private',
        'secret',
        'Keep-Alive',
        'timeout=1',
        'Content-Type',
        'text/plain',
      ]);
      res.end('body');
    });
    // No interceptor: only the stripping rules are under test here.
    const proxy = await startProxy(backend.url, { interceptors: [] });
    for (const path of ['/ok', '/denied']) {
      const res = await rawRequest(proxy.port, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      const names = res.headers.map(([n]) => n);
      for (const hidden of ['gitlab-workhorse-send-data', 'x-sendfile', 'gitlab-workhorse-detect-content-type', 'x-hop-private']) {
        expect(names).not.toContain(hidden);
      }
      expect(res.header('keep-alive')).toBeUndefined();
      expect(res.body).toBe('body');
    }
  });

  it('replaces an internal API answer (application/vnd.gitlab-workhorse+json) with a 500 that leaks nothing', async () => {
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.gitlab-workhorse+json; charset=utf-8' });
      res.end('{"TempPath":"/secret/tmp","RemoteObject":{"StoreURL":"http://internal"}}');
    });
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/uploads/authorize`);
    const body = await res.body.text();
    expect(res.statusCode).toBe(500);
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(body).toBe('Internal Server Error\n');
    expect(body).not.toContain('TempPath');
    // The backend connection is still usable afterwards: the small body was read and dropped.
    const again = await request(`${proxy.url}/x`);
    await again.body.text();
    expect(again.statusCode).toBe(500);
    expect(backend.connections()).toBe(1);
  });

  it('judges an internal API answer by its first Content-Type, as Workhorse does', async () => {
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, ['Content-Type', 'application/vnd.gitlab-workhorse+json', 'Content-Type', 'text/plain']);
      res.end('{"TempPath":"/secret"}');
    });
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/`);
    expect(res.statusCode).toBe(500);
    expect(await res.body.text()).toBe('Internal Server Error\n');
  });
});

describe('the interceptor list', () => {
  const sendGreeting: Interceptor = {
    name: 'send-greeting',
    match: (head) => head.statusCode === 200 && head.sendData?.startsWith('greeting:') === true,
    async serve({ res, head }) {
      const who = Buffer.from((head.sendData as string).slice('greeting:'.length), 'base64').toString();
      res.writeHead(200, [...head.headers, 'x-served-by', 'interceptor']);
      res.end(`hello ${who}`);
    },
  };

  it('hands a matching response to its interceptor and discards the backend body', async () => {
    const backend = await startBackend((req, res) => {
      const headers: Record<string, string> = { 'content-type': 'text/plain', 'cache-control': 'max-age=5' };
      if (req.url !== '/plain') headers['gitlab-workhorse-send-data'] = `greeting:${Buffer.from('world').toString('base64')}`;
      res.writeHead(req.url === '/not-200' ? 404 : 200, headers);
      res.end('BACKEND BODY');
    });
    const proxy = await startProxy(backend.url, { interceptors: [sendGreeting] });
    const served = await request(`${proxy.url}/avatar`);
    expect(served.statusCode).toBe(200);
    expect(served.headers['x-served-by']).toBe('interceptor');
    expect(served.headers['cache-control']).toBe('max-age=5');
    expect(served.headers['gitlab-workhorse-send-data']).toBeUndefined();
    expect(await served.body.text()).toBe('hello world');

    const plain = await request(`${proxy.url}/plain`);
    expect(await plain.body.text()).toBe('BACKEND BODY');
    const notOk = await request(`${proxy.url}/not-200`);
    expect(notOk.statusCode).toBe(404);
    expect(await notOk.body.text()).toBe('BACKEND BODY');
  });

  it('answers a generic 500 when an interceptor fails before sending anything', async () => {
    const failing: Interceptor = {
      name: 'failing',
      match: () => true,
      serve: async () => {
        throw new Error('/var/secret/path exploded');
      },
    };
    const backend = await startBackend((_req, res) => res.end('x'));
    const proxy = await startProxy(backend.url, { interceptors: [failing] });
    const res = await request(`${proxy.url}/`);
    const body = await res.body.text();
    expect(res.statusCode).toBe(500);
    expect(body).toBe('Internal Server Error\n');
  });
});

describe('Gitlab-Workhorse-Detect-Content-Type on a proxied answer', () => {
  /** A backend answering `body` in pieces, a pause between them, with the detect header and its own type. */
  async function detecting(pieces: (string | Buffer)[], headers: Record<string, string> = {}) {
    const backend = await startBackend(async (_req, res) => {
      res.writeHead(200, { 'gitlab-workhorse-detect-content-type': 'true', 'content-type': 'text/html', ...headers });
      for (const piece of pieces) {
        res.write(piece);
        await new Promise((r) => setTimeout(r, 20));
      }
      res.end();
    });
    return startProxy(backend.url);
  }

  it('serves HTML as text/plain, inline, the bytes unchanged, when the first 4 KiB arrive in pieces', async () => {
    const html = `<html><body>${'<p>hello</p>'.repeat(1000)}<script>alert(1)</script></body></html>`;
    const proxy = await detecting([html.slice(0, 100), html.slice(100, 2000), html.slice(2000)]);
    const res = await request(`${proxy.url}/raw`);
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(res.headers['content-disposition']).toBe('inline');
    expect(res.headers['gitlab-workhorse-detect-content-type']).toBeUndefined();
    expect(await res.body.text()).toBe(html);
  });

  it('serves an SVG as an attachment, keeping the backend filename; a short body is sniffed whole', async () => {
    const svg = '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>';
    const proxy = await detecting([svg], { 'content-disposition': 'inline; filename="logo.svg"' });
    const res = await request(`${proxy.url}/raw`);
    expect(res.headers['content-type']).toBe('image/svg+xml');
    expect(res.headers['content-disposition']).toBe('attachment; filename="logo.svg"');
    expect(await res.body.text()).toBe(svg);
  });

  it("keeps the backend's headers for an empty body", async () => {
    const proxy = await detecting([]);
    const res = await request(`${proxy.url}/raw`);
    expect(res.headers['content-type']).toBe('text/html');
    expect(res.headers['content-disposition']).toBeUndefined();
    expect(await res.body.text()).toBe('');
  });
});
