import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../../helpers/app.js';
import { startBackend } from '../../../helpers/backend.js';

describe('access log', () => {
  it('writes one structured line per request with method, path, status, duration, bytes, client and request id', async () => {
    const backend = await startBackend((req, res) => {
      res.writeHead(req.url === '/missing' ? 404 : 200, { 'content-type': 'text/plain' });
      res.end('x'.repeat(100));
    });
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    for (const path of ['/a?b=1', '/missing']) {
      const res = await request(`${proxy.url}${path}`);
      await res.body.text();
    }
    await new Promise((r) => setTimeout(r, 20));
    const lines = logs.filter((l) => l.msg === 'request');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({ level: 30, method: 'GET', path: '/a?b=1', status: 200, bytes: 100, remoteAddress: '127.0.0.1' });
    expect(lines[1]).toMatchObject({ path: '/missing', status: 404 });
    expect(typeof lines[0]?.durationMs).toBe('number');
    expect(lines[0]?.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(lines[0]?.requestId).toBe(backend.requests[0]?.headers['x-request-id']);
  });

  it('never writes authorization or cookie values', async () => {
    const backend = await startBackend((_req, res) => res.writeHead(502).end());
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const res = await request(`${proxy.url}/private`, {
      headers: { authorization: 'Bearer top-secret-token', cookie: '_session=secret-cookie' },
    });
    await res.body.text();
    await new Promise((r) => setTimeout(r, 20));
    expect(logs.length).toBeGreaterThan(0);
    const text = JSON.stringify(logs);
    expect(text).not.toContain('top-secret-token');
    expect(text).not.toContain('secret-cookie');
  });

  it('marks a request the client abandoned', async () => {
    const backend = await startBackend((_req, res) => {
      res.writeHead(200);
      res.write('partial');
    });
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const controller = new AbortController();
    const res = await request(`${proxy.url}/stream`, { signal: controller.signal });
    controller.abort();
    await expect(res.body.text()).rejects.toThrow();
    await new Promise((r) => setTimeout(r, 100));
    expect(logs.find((l) => l.msg === 'request')).toMatchObject({ path: '/stream', status: 200, aborted: true });
  });
});
