import { mkdtempSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { metricsUrl } from '../../helpers/metrics.js';

const LIVENESS = '/-/outrider/liveness';
const READINESS = '/-/outrider/readiness';

async function get(url: string, method: 'GET' | 'HEAD' | 'POST' = 'GET') {
  const res = await request(url, { method });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

/** Polls readiness until it answers `status` (a probe result is reused for a second). */
async function readinessBecomes(url: string, status: number, ms = 3000) {
  const until = Date.now() + ms;
  let last = await get(url);
  while (last.status !== status && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 100));
    last = await get(url);
  }
  return last;
}

function listen(server: Server, where: number | string): Promise<void> {
  return new Promise((resolve) => (typeof where === 'string' ? server.listen(where, resolve) : server.listen(where, '127.0.0.1', resolve)));
}

describe('health', () => {
  it('answers liveness from Outrider itself, backend up or down, without calling it', async () => {
    const backend = await startBackend((_req, res) => res.end('backend'));
    const proxy = await startProxy(backend.url);
    await backend.close();
    const res = await get(`${proxy.url}${LIVENESS}`);
    expect(res).toMatchObject({ status: 200, body: '{"status":"ok"}\n' });
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(res.headers['cache-control']).toBe('no-store');
    expect(backend.requests).toHaveLength(0);
    const head = await get(`${proxy.url}${LIVENESS}`, 'HEAD');
    expect(head).toMatchObject({ status: 200, body: '' });
  });

  it('answers readiness 200 while the backend accepts connections, 503 once it stops, 200 when it is back', async () => {
    const backend = await startBackend((_req, res) => res.end('backend'));
    const proxy = await startProxy(backend.url);
    const url = `${proxy.url}${READINESS}`;
    expect(await get(url)).toMatchObject({ status: 200, body: '{"status":"ok"}\n' });
    // Probes are reused for a second: ten checks cost the backend at most one more connection.
    const before = backend.connections();
    await Promise.all(Array.from({ length: 10 }, () => get(url)));
    expect(backend.connections() - before).toBeLessThanOrEqual(1);
    expect(backend.requests).toHaveLength(0);

    await backend.close();
    const down = await readinessBecomes(url, 503);
    expect(down).toMatchObject({ status: 503, body: '{"status":"unavailable","reason":"backend unreachable"}\n' });
    expect(down.body).not.toContain(String(backend.port));

    const again = createServer((_req, res) => res.end('back'));
    await listen(again, backend.port);
    onTestFinished(() => new Promise<void>((r) => again.close(() => r())));
    expect((await readinessBecomes(url, 200)).status).toBe(200);
  });

  it('probes the backend through auth_socket when one is set', async () => {
    const socketPath = join(mkdtempSync(join(tmpdir(), 'outrider-health-')), 'backend.sock');
    const backend = createServer((_req, res) => res.end('backend'));
    await listen(backend, socketPath);
    const proxy = await startProxy('http://localhost:1', { toml: `auth_socket = "${socketPath}"\n` });
    const url = `${proxy.url}${READINESS}`;
    expect((await get(url)).status).toBe(200);
    await new Promise<void>((r) => backend.close(() => r()));
    expect((await readinessBecomes(url, 503)).status).toBe(503);
  });

  it('answers readiness 503 while draining, and keeps proxying', async () => {
    const backend = await startBackend((_req, res) => res.end('still here'));
    const proxy = await startProxy(backend.url);
    proxy.app.outrider.drain();
    expect(await get(`${proxy.url}${READINESS}`)).toMatchObject({
      status: 503,
      body: '{"status":"unavailable","reason":"shutting down"}\n',
    });
    expect(await get(`${proxy.url}${LIVENESS}`)).toMatchObject({ status: 200 });
    expect(await get(`${proxy.url}/work`)).toMatchObject({ status: 200, body: 'still here' });
  });

  it('serves health on the metrics listener with health_on_metrics_listener; the proxy then forwards those paths', async () => {
    const backend = await startBackend((req, res) => res.end(`backend ${req.url}`));
    const proxy = await startProxy(backend.url, { toml: 'prometheus_listen_addr = "127.0.0.1:0"\nhealth_on_metrics_listener = true\n' });
    const metrics = metricsUrl(proxy.app);
    expect(await get(`${metrics}${READINESS}`)).toMatchObject({ status: 200, body: '{"status":"ok"}\n' });
    expect(await get(`${metrics}${LIVENESS}?verbose=1`)).toMatchObject({ status: 200, body: '{"status":"ok"}\n' });
    const post = await get(`${metrics}${READINESS}`, 'POST');
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET, HEAD');
    expect(await get(`${proxy.url}${READINESS}`)).toMatchObject({ status: 200, body: `backend ${READINESS}` });
  });

  it('answers readiness 503 during shutdown while in-flight requests finish, then the metrics listener closes', async () => {
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => {
      release = r;
    });
    const backend = await startBackend((_req, res) => void held.then(() => res.end('finished')));
    const proxy = await startProxy(backend.url, { toml: 'prometheus_listen_addr = "127.0.0.1:0"\nhealth_on_metrics_listener = true\n' });
    const metrics = metricsUrl(proxy.app);
    expect((await get(`${metrics}${READINESS}`)).status).toBe(200);
    const inFlight = get(`${proxy.url}/slow`);
    for (let i = 0; i < 50 && backend.requests.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const closed = proxy.app.close();
    await new Promise((r) => setTimeout(r, 50));
    expect(await get(`${metrics}${READINESS}`)).toMatchObject({
      status: 503,
      body: '{"status":"unavailable","reason":"shutting down"}\n',
    });
    expect((await get(`${metrics}${LIVENESS}`)).status).toBe(200);
    release();
    expect(await inFlight).toMatchObject({ status: 200, body: 'finished' });
    await closed;
    await expect(get(`${metrics}${LIVENESS}`)).rejects.toThrow();
  });
});
