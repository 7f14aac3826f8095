import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { FormData, request } from 'undici';
import { beforeAll, describe, expect, it, onTestFinished, type TestContext } from 'vitest';
import { startProxy } from '../../../helpers/app.js';
import { readBody, startBackend } from '../../../helpers/backend.js';
import { photo } from '../../../helpers/images.js';
import { parseMetrics, promtoolCheck, type Scrape, scrape } from '../../../helpers/metrics.js';

// Prometheus' own linter on real scrapes of a real Outrider, after traffic that gives every
// family samples: plain proxying (chunked), X-Sendfile (both types), send-url, send-scaled-img,
// an accelerated upload.

// `npm test` builds first (pretest): the cluster case runs the real `outrider` binary.
const CLI = fileURLToPath(new URL('../../../../dist/proxy/cli.js', import.meta.url));
const INSTALL = 'Debian: apt-get install prometheus';
const HAVE_PROMTOOL = promtoolCheck('') !== undefined;

/** Skips the test when promtool is missing, except under CI=true, where that is a failure. */
function needPromtool(ctx: TestContext): void {
  if (HAVE_PROMTOOL) return;
  if (process.env.CI === 'true') throw new Error(`promtool is not installed and CI=true requires it (${INSTALL})`);
  ctx.skip(`promtool is not installed (${INSTALL}): skipped here; with CI=true this test fails instead`);
}

/** `promtool check metrics` on a scrape: its complaints, one a line ('' when clean), and its status. */
function lint(text: string): { status: number; output: string } {
  const result = promtoolCheck(text);
  if (result === undefined) throw new Error('promtool disappeared');
  return result;
}

const dir = mkdtempSync(join(tmpdir(), 'outrider-promtool-'));
const SECRET_PATH = join(dir, 'secret');
writeFileSync(SECRET_PATH, Buffer.alloc(32, 7).toString('base64'));
const FILE = join(dir, 'report.bin');
writeFileSync(FILE, Buffer.alloc(3000, 1));
const PNG = join(dir, 'avatar.png');
const STORE = join(dir, 'store');
mkdirSync(STORE);

beforeAll(async () => {
  writeFileSync(PNG, await photo(400, 400, 'png'));
});

const directive = (prefix: string, params: Record<string, unknown>) =>
  `${prefix}${Buffer.from(JSON.stringify(params)).toString('base64url')}`;

/** A backend that answers with every instruction Outrider measures. */
async function instructingBackend() {
  return startBackend(async (req, res) => {
    const body = await readBody(req);
    if (req.url === '/raw') return void res.writeHead(200, { 'content-length': 2000 }).end(Buffer.alloc(2000, 2));
    if (req.url === '/via-url') {
      return void res
        .writeHead(200, { 'gitlab-workhorse-send-data': directive('send-url:', { URL: `http://${req.headers.host}/raw` }) })
        .end();
    }
    if (req.url === '/avatar') {
      const params = { Location: PNG, Width: 64, ContentType: 'image/png' };
      return void res.writeHead(200, { 'gitlab-workhorse-send-data': directive('send-scaled-img:', params) }).end();
    }
    if (req.url === '/download' || req.url === '/builds/17/artifacts/file') return void res.writeHead(200, { 'x-sendfile': FILE }).end();
    if (req.url?.startsWith('/open/')) return void res.writeHead(201).end(`stored ${body.length}`);
    // No Content-Length: a chunked answer.
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('hello ');
    res.end('world');
  });
}

const TOML = (backendHost: string) =>
  `secret_path = "${SECRET_PATH}"\n` +
  `[uploads]\ntemp_dir = "${STORE}"\n[[uploads.routes]]\nmethod = "POST"\npath = "^/open/"\npreauthorize = false\n` +
  `[outbound]\nallowed_hosts = ["${backendHost.split(':')[0]}"]\n`;

/** One request of every kind Outrider measures; send-url fetches the backend's own /raw, named by Host. */
async function traffic(base: string, backendHost: string): Promise<void> {
  const expectStatus = async (path: string, status: number, headers: Record<string, string> = {}) => {
    const res = await request(`${base}${path}`, { headers });
    await res.body.dump();
    expect(res.statusCode, path).toBe(status);
  };
  await expectStatus('/', 200);
  await expectStatus('/download', 200);
  await expectStatus('/builds/17/artifacts/file', 200);
  await expectStatus('/via-url', 200, { host: backendHost });
  await expectStatus('/avatar', 200);
  const form = new FormData();
  form.append('file', new Blob([Buffer.alloc(4000, 3)]), 'a.bin');
  const upload = await request(`${base}/open/a`, { method: 'POST', body: form });
  await upload.body.dump();
  expect(upload.statusCode).toBe(201);
}

/** The samples the traffic above must have left, under the default namespace. */
function expectTrafficCounted(m: Scrape): void {
  expect(m.value('outrider_http_requests_total', { code: '200', method: 'GET', route: '*' })).toBe(5);
  expect(m.value('outrider_sendfile_requests_total', { type: 'other' })).toBe(1);
  expect(m.value('outrider_sendfile_requests_total', { type: 'artifacts' })).toBe(1);
  expect(m.value('outrider_sendfile_bytes_total', { type: 'other' })).toBe(3000);
  expect(m.value('outrider_senddata_responses_total', { injecter: 'send-url' })).toBe(1);
  expect(m.value('outrider_senddata_response_bytes_total', { injecter: 'send-url' })).toBe(2000);
  expect(m.value('outrider_senddata_responses_total', { injecter: 'send-scaled-img' })).toBe(1);
  expect(m.value('outrider_image_resize_requests_total', { status: 'success' })).toBe(1);
  expect(m.value('outrider_image_resize_duration_seconds_count', { content_type: 'image/png', width: '64' })).toBe(1);
  expect(m.value('outrider_upload_requests_total', { outcome: 'stored' })).toBe(1);
  expect(m.value('outrider_upload_bytes_total', { outcome: 'stored' })).toBeGreaterThan(4000);
  expect(m.series('process_resident_memory_bytes')).toHaveLength(1);
  expect(m.series('nodejs_active_handles').length).toBeGreaterThan(0);
}

interface Cli {
  child: ChildProcess;
  ready: Record<string, unknown>;
}

/** `outrider --config FILE` from dist/, once its "outrider ready" line is out. */
async function startCli(toml: string): Promise<Cli> {
  const file = join(mkdtempSync(join(dir, 'cli-')), 'outrider.toml');
  writeFileSync(file, toml);
  const child = spawn(process.execPath, [CLI, '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  onTestFinished(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(5_000).then(() => child.kill('SIGKILL'))]);
  });
  let out = '';
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      for (const line of out.split('\n')) {
        if (!line.startsWith('{')) continue;
        const parsed = JSON.parse(line) as Record<string, unknown>;
        if (parsed.msg === 'outrider ready') resolve(parsed);
      }
    });
    child.once('exit', (code) => reject(new Error(`outrider exited with ${code} before it was ready: ${err}${out}`)));
    setTimeout(() => reject(new Error(`outrider did not start: ${err}${out}`)), 15_000).unref();
  });
  return { child, ready };
}

describe('promtool check metrics', () => {
  it('passes on a scrape of one Outrider process after every kind of traffic, under the default namespace', async (ctx) => {
    needPromtool(ctx);
    const backend = await instructingBackend();
    const backendHost = new URL(backend.url).host;
    const proxy = await startProxy(backend.url, { toml: `prometheus_listen_addr = "127.0.0.1:0"\n${TOML(backendHost)}` });
    await traffic(proxy.url, backendHost);
    const m = await scrape(proxy.app);
    expectTrafficCounted(m);
    expect(lint(m.text)).toEqual({ status: 0, output: '' });
  });

  it('passes on the cluster-wide sum the primary serves with workers = 2', async (ctx) => {
    needPromtool(ctx);
    const backend = await instructingBackend();
    const backendHost = new URL(backend.url).host;
    const { ready } = await startCli(
      `listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\nworkers = 2\nprometheus_listen_addr = "127.0.0.1:0"\n${TOML(backendHost)}`,
    );
    expect(ready.workers).toBe(2);
    await traffic(`http://${ready.listen as string}`, backendHost);
    // A response is counted when it closes on the worker, a moment after the client has read it.
    await sleep(50);
    const res = await request(`http://${ready.metrics as string}/metrics`);
    expect(res.statusCode).toBe(200);
    const m = parseMetrics(await res.body.text());
    expectTrafficCounted(m);
    expect(lint(m.text)).toEqual({ status: 0, output: '' });
  });

  it('flags only the four Workhorse counters without _total under metrics_namespace = "gitlab_workhorse", which keeps Workhorse’s names', async (ctx) => {
    needPromtool(ctx);
    const backend = await instructingBackend();
    const backendHost = new URL(backend.url).host;
    const proxy = await startProxy(backend.url, {
      toml: `prometheus_listen_addr = "127.0.0.1:0"\nmetrics_namespace = "gitlab_workhorse"\n${TOML(backendHost)}`,
    });
    await traffic(proxy.url, backendHost);
    const m = await scrape(proxy.app);
    expect(m.samples.some((s) => s.name.startsWith('outrider_'))).toBe(false);
    // What promtool says is Workhorse's own naming, kept on purpose so GitLab's dashboards work.
    expect(lint(m.text)).toEqual({
      status: 3,
      output: [
        'gitlab_workhorse_senddata_response_bytes counter metrics should have "_total" suffix',
        'gitlab_workhorse_senddata_responses counter metrics should have "_total" suffix',
        'gitlab_workhorse_sendfile_bytes counter metrics should have "_total" suffix',
        'gitlab_workhorse_sendfile_requests counter metrics should have "_total" suffix',
      ].join('\n'),
    });
  });
});

describe('metrics_namespace = "gitlab_workhorse"', () => {
  it('exports the families under the names GitLab Workhorse gives them, with the same types', async () => {
    const backend = await instructingBackend();
    const backendHost = new URL(backend.url).host;
    const proxy = await startProxy(backend.url, {
      toml: `prometheus_listen_addr = "127.0.0.1:0"\nmetrics_namespace = "gitlab_workhorse"\n${TOML(backendHost)}`,
    });
    await traffic(proxy.url, backendHost);
    const m = await scrape(proxy.app);
    // Workhorse's names, as in gitlab-org/gitlab workhorse/internal/upstream/metrics.go,
    // senddata/senddata.go, sendfile/sendfile.go and imageresizer/image_resizer.go.
    const workhorse: Record<string, string> = {
      gitlab_workhorse_http_requests_total: 'counter',
      gitlab_workhorse_http_request_duration_seconds: 'histogram',
      gitlab_workhorse_http_request_size_bytes: 'histogram',
      gitlab_workhorse_http_response_size_bytes: 'histogram',
      gitlab_workhorse_http_in_flight_requests: 'gauge',
      gitlab_workhorse_senddata_responses: 'counter',
      gitlab_workhorse_senddata_response_bytes: 'counter',
      gitlab_workhorse_sendfile_requests: 'counter',
      gitlab_workhorse_sendfile_bytes: 'counter',
      gitlab_workhorse_image_resize_requests_total: 'counter',
      gitlab_workhorse_image_resize_duration_seconds: 'histogram',
      gitlab_workhorse_image_resize_processes: 'gauge',
      gitlab_workhorse_image_resize_max_processes: 'gauge',
      gitlab_workhorse_image_resize_concurrency_limit_exceeds_total: 'counter',
    };
    for (const [name, type] of Object.entries(workhorse)) expect(m.text, name).toContain(`\n# TYPE ${name} ${type}\n`);
    expect(m.value('gitlab_workhorse_senddata_responses', { injecter: 'send-url' })).toBe(1);
    expect(m.value('gitlab_workhorse_senddata_responses', { injecter: 'send-scaled-img' })).toBe(1);
    expect(m.value('gitlab_workhorse_senddata_response_bytes', { injecter: 'send-url' })).toBe(2000);
    expect(m.value('gitlab_workhorse_sendfile_requests', { type: 'artifacts' })).toBe(1);
    expect(m.value('gitlab_workhorse_sendfile_requests', { type: 'other' })).toBe(1);
    expect(m.value('gitlab_workhorse_sendfile_bytes', { type: 'other' })).toBe(3000);
    expect(m.value('gitlab_workhorse_image_resize_requests_total', { status: 'success' })).toBe(1);
    // Outrider's own upload families carry the namespace too.
    expect(m.value('gitlab_workhorse_upload_requests_total', { outcome: 'stored' })).toBe(1);
    expect(m.series('gitlab_workhorse_sendfile_requests_total')).toEqual([]);
    expect(m.series('gitlab_workhorse_senddata_responses_total')).toEqual([]);
  });
});
