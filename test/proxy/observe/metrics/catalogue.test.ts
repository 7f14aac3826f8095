import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FormData, Pool, request } from 'undici';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { startProxy } from '../../../helpers/app.js';
import { readBody, startBackend } from '../../../helpers/backend.js';
import { photo, SVG } from '../../../helpers/images.js';
import { scrape } from '../../../helpers/metrics.js';

const METRICS = 'prometheus_listen_addr = "127.0.0.1:0"\n';
const dir = mkdtempSync(join(tmpdir(), 'outrider-metrics-'));
const SECRET_PATH = join(dir, 'secret');
writeFileSync(SECRET_PATH, Buffer.alloc(32, 7).toString('base64'));
const API_TYPE = 'application/vnd.gitlab-workhorse+json';

const directive = (prefix: string, params: Record<string, unknown>) =>
  `${prefix}${Buffer.from(JSON.stringify(params)).toString('base64url')}`;

let png400: Buffer;
beforeAll(async () => {
  png400 = await photo(400, 400, 'png');
});

async function get(url: string, headers: Record<string, string> = {}) {
  const res = await request(url, { headers });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}

describe('Prometheus metrics', () => {
  it('are off unless prometheus_listen_addr is set: no listener, and /metrics is the backend’s', async () => {
    const backend = await startBackend((req, res) => res.end(`backend ${req.url}`));
    const proxy = await startProxy(backend.url);
    expect(proxy.app.outrider.metricsAddress()).toBeUndefined();
    expect((await get(`${proxy.url}/metrics`)).body.toString()).toBe('backend /metrics');
  });

  it('count proxied requests by code, method and route, with their duration and sizes', async () => {
    const backend = await startBackend(async (req, res) => {
      const body = await readBody(req);
      if (req.url === '/missing') return void res.writeHead(404, { 'content-type': 'text/plain' }).end('no');
      const text = req.method === 'POST' ? `got ${body.length}` : 'x'.repeat(1000);
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': text.length }).end(text);
    });
    const proxy = await startProxy(backend.url, { toml: METRICS });
    for (const path of ['/a', '/b?q=1']) expect((await get(`${proxy.url}${path}`)).body.length).toBe(1000);
    expect((await get(`${proxy.url}/missing`)).status).toBe(404);
    const post = await request(`${proxy.url}/form`, { method: 'POST', body: 'y'.repeat(5000) });
    expect(await post.body.text()).toBe('got 5000');

    const m = await scrape(proxy.app);
    const ok = { code: '200', method: 'GET', route: '*' };
    expect(m.value('outrider_http_requests_total', ok)).toBe(2);
    expect(m.value('outrider_http_requests_total', { code: '404', method: 'GET', route: '*' })).toBe(1);
    expect(m.value('outrider_http_requests_total', { code: '200', method: 'POST', route: '*' })).toBe(1);
    expect(m.value('outrider_http_request_duration_seconds_count', ok)).toBe(2);
    expect(m.value('outrider_http_request_duration_seconds_sum', ok)).toBeGreaterThan(0);
    // 1000-byte bodies: above the 256 bucket, within 1 KiB (headers are not body).
    expect(m.value('outrider_http_response_size_bytes_bucket', { ...ok, le: '256' })).toBe(0);
    expect(m.value('outrider_http_response_size_bytes_bucket', { ...ok, le: '1024' })).toBe(2);
    expect(m.value('outrider_http_response_size_bytes_sum', ok)).toBe(2000);
    // The request size counts what the client sent: line, headers and the 5000-byte body.
    const posted = { code: '200', method: 'POST', route: '*' };
    expect(m.value('outrider_http_request_size_bytes_bucket', { ...posted, le: '1024' })).toBe(0);
    expect(m.value('outrider_http_request_size_bytes_bucket', { ...posted, le: '65536' })).toBe(1);
    expect(m.value('outrider_http_request_size_bytes_sum', posted)).toBeGreaterThan(5000);
    expect(m.value('outrider_http_request_size_bytes_sum', posted)).toBeLessThan(5400);
    expect(m.value('outrider_http_in_flight_requests')).toBe(0);
  });

  it('count the bytes after the header block as the response size: a body, with its chunk framing when chunked', async () => {
    const backend = await startBackend((_req, res) => {
      // No Content-Length: chunked, every chunk framed by its hex size and CRLFs.
      res.writeHead(200, { 'content-type': 'text/plain', 'x-padding': 'p'.repeat(500) }).end('x'.repeat(1000));
    });
    const proxy = await startProxy(backend.url, { toml: METRICS });
    const res = await request(`${proxy.url}/chunked`);
    expect(res.headers['transfer-encoding']).toBe('chunked');
    expect((await res.body.text()).length).toBe(1000);
    const m = await scrape(proxy.app);
    // "3e8\r\n" + 1000 bytes + "\r\n" + "0\r\n\r\n": the 500-byte header is not counted, the framing is.
    expect(m.value('outrider_http_response_size_bytes_sum', { code: '200', method: 'GET', route: '*' })).toBe(1012);
    expect(m.text).toContain(
      '# HELP outrider_http_response_size_bytes Bytes sent to the client per request, headers not included: the body, plus chunked-encoding framing when the response is chunked.',
    );
  });

  it('keep the route label bounded: 1000 distinct paths are one series, named by the pattern that matched', async () => {
    const backend = await startBackend((_req, res) => res.end('ok'));
    const proxy = await startProxy(backend.url, {
      toml: `${METRICS}secret_path = "${SECRET_PATH}"\n[[uploads.routes]]\nmethod = "POST"\npath = "^/open/\\\\d+$"\npreauthorize = false\n`,
    });
    const pool = new Pool(proxy.url, { connections: 20 });
    onTestFinished(() => pool.close());
    await Promise.all(
      Array.from({ length: 1000 }, async (_, i) => {
        const res = await pool.request({ path: `/projects/${i}/issues?page=${i}`, method: 'GET' });
        await res.body.dump();
      }),
    );
    // A request on an upload route that is not multipart is proxied, labelled by its route.
    await (await request(`${proxy.url}/open/42`, { method: 'POST', body: 'plain' })).body.dump();
    await (await request(`${proxy.url}/-/outrider/liveness`)).body.dump();

    const m = await scrape(proxy.app);
    expect(m.series('outrider_http_requests_total')).toEqual([
      { name: 'outrider_http_requests_total', labels: { code: '200', method: 'GET', route: '*' }, value: 1000 },
      { name: 'outrider_http_requests_total', labels: { code: '200', method: 'POST', route: '^/open/\\d+$' }, value: 1 },
      { name: 'outrider_http_requests_total', labels: { code: '200', method: 'GET', route: '/-/outrider/liveness' }, value: 1 },
    ]);
    expect(m.series('outrider_http_request_duration_seconds_count')).toHaveLength(3);
    expect(m.text).not.toContain('/projects/');
  });

  it('show the requests in flight while they run', async () => {
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => {
      release = r;
    });
    const backend = await startBackend((_req, res) => void held.then(() => res.end('done')));
    const proxy = await startProxy(backend.url, { toml: METRICS });
    const slow = get(`${proxy.url}/slow`);
    for (let i = 0; i < 50 && backend.requests.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect((await scrape(proxy.app)).value('outrider_http_in_flight_requests')).toBe(1);
    release();
    expect((await slow).body.toString()).toBe('done');
    await new Promise((r) => setTimeout(r, 20));
    expect((await scrape(proxy.app)).value('outrider_http_in_flight_requests')).toBe(0);
  });

  it('count scaled-image requests by status, their durations, and the bytes of the send-scaled-img injecter', async () => {
    const png = join(dir, 'avatar.png');
    writeFileSync(png, png400);
    const svg = join(dir, 'logo.svg');
    writeFileSync(svg, SVG);
    const backend = await startBackend((req, res) => {
      const params =
        req.url === '/logo'
          ? { Location: svg, Width: 64, ContentType: 'image/svg+xml' }
          : req.url === '/bad'
            ? { Location: 'relative.png', Width: 64, ContentType: 'image/png' }
            : { Location: png, Width: 64, ContentType: 'image/png' };
      res.writeHead(200, { 'gitlab-workhorse-send-data': directive('send-scaled-img:', params) }).end();
    });
    const proxy = await startProxy(backend.url, { toml: `${METRICS}[image_resizer]\nmax_scaler_procs = 3\n` });
    const scaled = await get(`${proxy.url}/avatar`);
    expect(scaled.status).toBe(200);
    expect((await get(`${proxy.url}/avatar`)).body.equals(scaled.body)).toBe(true);
    const revalidated = await get(`${proxy.url}/avatar`, { 'if-modified-since': scaled.headers['last-modified'] as string });
    expect(revalidated.status).toBe(304);
    const original = await get(`${proxy.url}/logo`);
    expect(original.body.equals(SVG)).toBe(true);
    const failed = await get(`${proxy.url}/bad`);
    expect(failed.status).toBe(502);

    const m = await scrape(proxy.app);
    expect(m.series('outrider_image_resize_requests_total').map((s) => [s.labels.status, s.value])).toEqual([
      ['success', 1],
      ['success-client-cache', 1],
      ['served-original', 1],
      ['request-failed', 1],
      ['cache-hit', 1],
    ]);
    const png64 = { content_type: 'image/png', width: '64' };
    expect(m.value('outrider_image_resize_duration_seconds_count', png64)).toBe(3);
    expect(m.value('outrider_image_resize_duration_seconds_sum', png64)).toBeGreaterThan(0);
    expect(m.value('outrider_image_resize_concurrency_limit_exceeds_total')).toBe(0);
    expect(m.value('outrider_image_resize_max_processes')).toBe(3);
    expect(m.value('outrider_image_resize_processes')).toBe(0);
    // Every response the injecter took over, and every body byte it sent (the 502's included).
    expect(m.value('outrider_senddata_responses_total', { injecter: 'send-scaled-img' })).toBe(5);
    expect(m.value('outrider_senddata_response_bytes_total', { injecter: 'send-scaled-img' })).toBe(
      2 * scaled.body.length + original.body.length + failed.body.length,
    );
    expect(m.value('outrider_senddata_responses_total', { injecter: 'send-url' })).toBe(0);
  });

  it('keep the width label of image_resize_duration_seconds bounded: exact widths for the first 64, then "other"', async () => {
    const png = join(dir, 'widths.png');
    writeFileSync(png, png400);
    const backend = await startBackend((req, res) => {
      const width = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('w'));
      res.writeHead(200, {
        'gitlab-workhorse-send-data': directive('send-scaled-img:', { Location: png, Width: width, ContentType: 'image/png' }),
      });
      res.end();
    });
    const proxy = await startProxy(backend.url, { toml: METRICS });
    // Revalidations are timed too, and cost no scaling: 100 distinct widths, the first again at the end.
    const ims = { 'if-modified-since': 'Fri, 01 Jan 2100 00:00:00 GMT' };
    for (let w = 1; w <= 100; w++) expect((await get(`${proxy.url}/a?w=${w}`, ims)).status).toBe(304);
    expect((await get(`${proxy.url}/a?w=1`, ims)).status).toBe(304);
    const m = await scrape(proxy.app);
    const counts = m.series('outrider_image_resize_duration_seconds_count', { content_type: 'image/png' });
    expect(counts).toHaveLength(65);
    expect(m.value('outrider_image_resize_duration_seconds_count', { content_type: 'image/png', width: '1' })).toBe(2);
    expect(m.value('outrider_image_resize_duration_seconds_count', { content_type: 'image/png', width: '64' })).toBe(1);
    expect(m.value('outrider_image_resize_duration_seconds_count', { content_type: 'image/png', width: 'other' })).toBe(36);
  });

  it('count originals served because every scaling slot was busy', async () => {
    const big = join(dir, 'big.jpg');
    writeFileSync(big, await photo(1600, 1600, 'jpeg'));
    const backend = await startBackend((req, res) => {
      const width = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('w'));
      res.writeHead(200, {
        'gitlab-workhorse-send-data': directive('send-scaled-img:', { Location: big, Width: width, ContentType: 'image/jpeg' }),
      });
      res.end();
    });
    // No waiting for a slot (the default waits a while): a busy scaler serves the original at once.
    const proxy = await startProxy(backend.url, {
      toml: `${METRICS}[image_resizer]\nmax_scaler_procs = 1\nmax_scaler_wait = "0s"\nmax_filesize = 20000000\n`,
    });
    // Distinct widths: no two requests can share one scaling job.
    const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => get(`${proxy.url}/big?w=${100 + i}`)));
    expect(answers.every((a) => a.status === 200)).toBe(true);
    const m = await scrape(proxy.app);
    const busy = m.value('outrider_image_resize_concurrency_limit_exceeds_total');
    expect(busy).toBeGreaterThan(0);
    expect(m.value('outrider_image_resize_requests_total', { status: 'served-original' })).toBe(busy);
    expect(m.value('outrider_image_resize_requests_total', { status: 'success' })).toBe(6 - busy);
  });

  it('count X-Sendfile responses by type and send-url responses, with their body bytes', async () => {
    const file = join(dir, 'report.bin');
    writeFileSync(file, Buffer.alloc(3000, 1));
    const backend = await startBackend((req, res) => {
      if (req.url === '/raw') return void res.writeHead(200, { 'content-length': 2000 }).end(Buffer.alloc(2000, 2));
      if (req.url === '/via-url') {
        return void res
          .writeHead(200, { 'gitlab-workhorse-send-data': directive('send-url:', { URL: `http://${req.headers.host}/raw` }) })
          .end();
      }
      res.writeHead(200, { 'x-sendfile': file }).end();
    });
    const proxy = await startProxy(backend.url, { toml: METRICS });
    expect((await get(`${proxy.url}/download`)).body.length).toBe(3000);
    expect((await get(`${proxy.url}/group/project/-/jobs/builds/17/artifacts/file`)).body.length).toBe(3000);
    expect((await get(`${proxy.url}/download`, { range: 'bytes=0-99' })).body.length).toBe(100);
    // send-url fetches the backend's own /raw: the Host header names it.
    const backendHost = new URL(backend.url).host;
    expect((await get(`${proxy.url}/via-url`, { host: backendHost })).body.length).toBe(2000);

    const m = await scrape(proxy.app);
    expect(m.value('outrider_sendfile_requests_total', { type: 'other' })).toBe(2);
    expect(m.value('outrider_sendfile_bytes_total', { type: 'other' })).toBe(3100);
    expect(m.value('outrider_sendfile_requests_total', { type: 'artifacts' })).toBe(1);
    expect(m.value('outrider_sendfile_bytes_total', { type: 'artifacts' })).toBe(3000);
    expect(m.value('outrider_senddata_responses_total', { injecter: 'send-url' })).toBe(1);
    expect(m.value('outrider_senddata_response_bytes_total', { injecter: 'send-url' })).toBe(2000);
  });

  it('count uploads by outcome with the bytes read from the client, labelled by their route', async () => {
    const store = join(dir, 'store');
    mkdirSync(store, { recursive: true });
    const blocker = join(dir, 'a-file');
    writeFileSync(blocker, '');
    const backend = await startBackend(async (req, res) => {
      if (req.url === '/uploads/refuse/authorize') return void res.writeHead(403, { 'content-type': 'text/plain' }).end('no');
      if (req.url === '/uploads/small/authorize') {
        return void res.writeHead(200, { 'content-type': API_TYPE }).end(JSON.stringify({ TempPath: store, MaximumSize: 1000 }));
      }
      if (req.url === '/uploads/broken/authorize') {
        // A directory that cannot exist (its parent is a file): Outrider's own failure, a 500.
        return void res.writeHead(200, { 'content-type': API_TYPE }).end(JSON.stringify({ TempPath: join(blocker, 'not-a-directory') }));
      }
      await readBody(req);
      res.writeHead(201).end('created');
    });
    const toml = `${METRICS}secret_path = "${SECRET_PATH}"\n[uploads]\ntemp_dir = "${store}"\n[[uploads.routes]]\nmethod = "POST"\npath = "^/open/"\npreauthorize = false\n[[uploads.routes]]\nmethod = "POST"\npath = "^/uploads/"\n`;
    const proxy = await startProxy(backend.url, { toml });
    const upload = async (path: string, bytes: number) => {
      const form = new FormData();
      form.append('file', new Blob([Buffer.alloc(bytes, 3)]), 'a.bin');
      const res = await request(`${proxy.url}${path}`, { method: 'POST', body: form }).catch(() => undefined);
      await res?.body.dump();
      return res?.statusCode;
    };
    expect(await upload('/open/a', 4000)).toBe(201);
    expect(await upload('/uploads/refuse', 4000)).toBe(403);
    expect(await upload('/uploads/small', 50_000)).toBe(413);
    expect(await upload('/uploads/broken', 4000)).toBe(500);
    // A malformed body is the client's fault too.
    const malformed = await request(`${proxy.url}/open/b`, {
      method: 'POST',
      headers: { 'content-type': 'multipart/form-data; boundary=x' },
      body: '--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\ncut short',
    });
    expect(malformed.statusCode).toBe(400);
    await malformed.body.dump();
    await new Promise((r) => setTimeout(r, 50));

    const m = await scrape(proxy.app);
    expect(m.value('outrider_upload_requests_total', { outcome: 'stored' })).toBe(1);
    expect(m.value('outrider_upload_requests_total', { outcome: 'refused' })).toBe(1);
    // An oversized file is the client's fault, not a failure an alert should fire on.
    expect(m.value('outrider_upload_requests_total', { outcome: 'rejected' })).toBe(2);
    expect(m.value('outrider_upload_requests_total', { outcome: 'failed' })).toBe(1);
    // Stored: the whole request, file and multipart framing. Refused: read before the answer.
    // Rejected: read until the file passed MaximumSize.
    const stored = m.value('outrider_upload_bytes_total', { outcome: 'stored' });
    expect(stored).toBeGreaterThan(4000);
    expect(stored).toBeLessThan(5000);
    expect(m.value('outrider_upload_bytes_total', { outcome: 'refused' })).toBeGreaterThan(0);
    expect(m.value('outrider_upload_bytes_total', { outcome: 'rejected' })).toBeGreaterThan(1000);
    expect(m.value('outrider_http_requests_total', { code: '201', method: 'POST', route: '^/open/' })).toBe(1);
    expect(m.value('outrider_http_requests_total', { code: '403', method: 'POST', route: '^/uploads/' })).toBe(1);
    expect(m.value('outrider_http_requests_total', { code: '413', method: 'POST', route: '^/uploads/' })).toBe(1);
    expect(m.value('outrider_http_requests_total', { code: '500', method: 'POST', route: '^/uploads/' })).toBe(1);
  });

  it('use metrics_namespace: "gitlab_workhorse" gives Workhorse’s names; Node process metrics come along', async () => {
    const backend = await startBackend((_req, res) => res.end('ok'));
    const proxy = await startProxy(backend.url, { toml: `${METRICS}metrics_namespace = "gitlab_workhorse"\n` });
    await (await request(`${proxy.url}/x`)).body.dump();
    const m = await scrape(proxy.app);
    expect(m.value('gitlab_workhorse_http_requests_total', { code: '200', method: 'GET', route: '*' })).toBe(1);
    for (const name of [
      'gitlab_workhorse_http_request_duration_seconds_bucket',
      'gitlab_workhorse_http_request_size_bytes_bucket',
      'gitlab_workhorse_http_response_size_bytes_bucket',
      'gitlab_workhorse_http_in_flight_requests',
      'gitlab_workhorse_image_resize_requests_total',
      'gitlab_workhorse_image_resize_processes',
      'gitlab_workhorse_image_resize_max_processes',
      'gitlab_workhorse_image_resize_concurrency_limit_exceeds_total',
      'gitlab_workhorse_senddata_responses',
      'gitlab_workhorse_senddata_response_bytes',
      'gitlab_workhorse_sendfile_requests',
      'gitlab_workhorse_sendfile_bytes',
      'gitlab_workhorse_upload_requests_total',
      'gitlab_workhorse_upload_bytes_total',
      'process_cpu_user_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_eventloop_lag_seconds',
      'nodejs_heap_size_used_bytes',
    ]) {
      expect(m.series(name).length, name).toBeGreaterThan(0);
    }
    expect(m.samples.some((s) => s.name.startsWith('outrider_'))).toBe(false);
    expect(m.text).toContain('# TYPE gitlab_workhorse_http_request_duration_seconds histogram');
  });

  it('are served only at GET /metrics on their own listener, in the Prometheus text format', async () => {
    const backend = await startBackend((_req, res) => res.end('backend'));
    const proxy = await startProxy(backend.url, { toml: METRICS });
    const base = `http://${proxy.app.outrider.metricsAddress()}`;
    const ok = await get(`${base}/metrics`);
    expect(ok.status).toBe(200);
    expect(ok.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect((await get(`${base}/`)).status).toBe(404);
    const post = await request(`${base}/metrics`, { method: 'POST', body: 'x' });
    expect(post.statusCode).toBe(405);
    expect(post.headers.allow).toBe('GET, HEAD');
    await post.body.dump();
    // Health stays on the proxy's listener unless health_on_metrics_listener is set.
    expect((await get(`${base}/-/outrider/liveness`)).status).toBe(404);
    expect((await get(`${proxy.url}/metrics`)).body.toString()).toBe('backend');
  });
});
