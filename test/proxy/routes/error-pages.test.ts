import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { createErrorPages } from '../../../proxy/routes/error-pages.js';
import { get, startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';

const PAGE_404 = '<!doctype html><h1>The page you were looking for doesn’t exist</h1>\n';
const PAGE_500 = '<!doctype html><h1>We’re sorry, but something went wrong</h1>\n';
const PAGE_502 = '<!doctype html><h1>Whoops, the app is restarting</h1>\n';

/** A document root with error pages for 404, 500 and 502 (none for 403). */
function documentRoot(): string {
  const root = mkdtempSync(join(tmpdir(), 'outrider-pages-'));
  writeFileSync(join(root, '404.html'), PAGE_404);
  writeFileSync(join(root, '500.html'), PAGE_500);
  writeFileSync(join(root, '502.html'), PAGE_502);
  return root;
}

/** A backend answering `/<status>?type=<content type>[&custom=1]` with that status and a body of its own. */
async function erroringBackend() {
  return startBackend((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const status = Number(url.pathname.slice(1)) || 200;
    const headers: Record<string, string> = { 'x-backend': 'yes', 'cache-control': 'max-age=3600', etag: '"backend"' };
    const type = url.searchParams.get('type');
    if (type !== null && type !== '') headers['content-type'] = type;
    if (url.searchParams.has('custom')) headers['x-gitlab-custom-error'] = '1';
    res.writeHead(status, headers).end(`backend body ${status}`);
  });
}

describe('error pages from document_root', () => {
  it('replace an HTML or untyped 4xx/5xx body with <status>.html, keeping the status and the other headers', async () => {
    const backend = await erroringBackend();
    const proxy = await startProxy(backend.url, { toml: `document_root = "${documentRoot()}"\n` });
    for (const [path, page, status] of [
      ['/404?type=text/html; charset=utf-8', PAGE_404, 404],
      ['/404', PAGE_404, 404],
      ['/500?type=application/xhtml%2Bxml', PAGE_500, 500],
    ] as const) {
      const res = await get(`${proxy.url}${path}`);
      expect(res.status, path).toBe(status);
      expect(res.body, path).toBe(page);
      expect(res.headers['content-type'], path).toBe('text/html; charset=utf-8');
      expect(res.headers['content-length'], path).toBe(String(Buffer.byteLength(page)));
      expect(res.headers['x-backend'], path).toBe('yes');
      // The page is Outrider's, not the backend's body: never cached, no validator of the backend's.
      expect(res.headers['cache-control'], path).toBe('no-cache, no-store, max-age=0, must-revalidate');
      expect(res.headers.etag, path).toBeUndefined();
    }
  });

  it('leave JSON, plain text, X-GitLab-Custom-Error answers, statuses without a page and successes as the backend sent them', async () => {
    const backend = await erroringBackend();
    const proxy = await startProxy(backend.url, { toml: `document_root = "${documentRoot()}"\n` });
    for (const [path, status] of [
      ['/404?type=application/json', 404],
      ['/500?type=text/plain', 500],
      ['/404?type=text/html&custom=1', 404],
      ['/403?type=text/html', 403],
      ['/200?type=text/html', 200],
    ] as const) {
      const res = await get(`${proxy.url}${path}`);
      expect(res.status, path).toBe(status);
      expect(res.body, path).toBe(`backend body ${status}`);
      expect(res.headers['cache-control'], path).toBe('max-age=3600');
    }
  });

  it("use 502.html for Outrider's own answer when the backend is down, and plain text without a page", async () => {
    const backend = await startBackend((_req, res) => res.end());
    await backend.close();
    const withPage = await startProxy(backend.url, { toml: `document_root = "${documentRoot()}"\n` });
    const paged = await get(`${withPage.url}/anything`);
    expect(paged.status).toBe(502);
    expect(paged.body).toBe(PAGE_502);
    expect(paged.headers['content-type']).toBe('text/html; charset=utf-8');

    const bare = await startProxy(backend.url, { toml: `document_root = "${mkdtempSync(join(tmpdir(), 'outrider-nopages-'))}"\n` });
    const plain = await get(`${bare.url}/anything`);
    expect(plain.status).toBe(502);
    expect(plain.headers['content-type']).toBe('text/plain; charset=utf-8');
  });

  it('are off without document_root: the backend’s error body goes through', async () => {
    const backend = await erroringBackend();
    const proxy = await startProxy(backend.url);
    const res = await get(`${proxy.url}/404?type=text/html`);
    expect(res.status).toBe(404);
    expect(res.body).toBe('backend body 404');
  });

  it('are read again in the background once older than their refresh time: a page changed on deploy shows without a restart', async () => {
    const root = documentRoot();
    const pages = createErrorPages(root, pino({ level: 'silent' }), 50);
    expect(pages.get(404)?.toString()).toBe(PAGE_404);
    writeFileSync(join(root, '404.html'), 'new 404');
    rmSync(join(root, '500.html'));
    writeFileSync(join(root, '503.html'), 'maintenance');
    // Within the refresh time the pages in memory answer; the first error after it starts a reload.
    expect(pages.get(404)?.toString()).toBe(PAGE_404);
    await new Promise((r) => setTimeout(r, 80));
    expect(pages.get(404)?.toString()).toBe(PAGE_404);
    for (let i = 0; i < 100 && pages.get(404)?.toString() !== 'new 404'; i++) await new Promise((r) => setTimeout(r, 20));
    expect(pages.get(404)?.toString()).toBe('new 404');
    expect(pages.get(500)).toBeUndefined();
    expect(pages.get(503)?.toString()).toBe('maintenance');
  });
});
