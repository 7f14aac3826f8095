import { mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { sendScaledImage } from '../../../backend/index.js';
import { startProxy } from '../../helpers/app.js';
import { type Backend, startBackend } from '../../helpers/backend.js';
import { gif, photo } from '../../helpers/images.js';

const MTIME = new Date('2026-03-04T05:06:07Z');
const HTTP_MTIME = 'Wed, 04 Mar 2026 05:06:07 GMT';
const dir = mkdtempSync(join(tmpdir(), 'outrider-formats-'));
/** What Chromium sends for an <img>. */
const CHROMIUM_ACCEPT = 'image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8';

function place(name: string, bytes: Buffer): string {
  const file = join(dir, name);
  writeFileSync(file, bytes);
  utimesSync(file, MTIME, MTIME);
  return file;
}

/** A backend answering every request with a scale instruction built by the toolkit, plus `extra` headers. */
async function avatarBackend(
  options: (url: URL) => Parameters<typeof sendScaledImage>[0],
  extra: Record<string, string> = {},
): Promise<Backend> {
  return startBackend((req, res) => {
    const { name, value } = sendScaledImage(options(new URL(req.url ?? '/', 'http://x')));
    res.writeHead(200, { [name]: value, 'cache-control': 'max-age=60', ...extra });
    res.end();
  });
}

async function get(url: string, headers: Record<string, string> = {}) {
  const res = await request(url, { headers });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}

/** The format and width sharp reads from the bytes themselves. */
async function decoded(body: Buffer) {
  const meta = await sharp(body).metadata();
  return { format: meta.format === 'heif' ? meta.compression : meta.format, width: meta.width };
}

let png400: Buffer;
let jpeg400: Buffer;
beforeAll(async () => {
  png400 = await photo(400, 400, 'png');
  jpeg400 = await photo(400, 400, 'jpeg');
});

describe('scaled images in the format the client accepts', () => {
  it('gives a browser that accepts AVIF an AVIF, one that asks for PNG a PNG, both with Vary: Accept', async () => {
    const file = place('ada.png', png400);
    const backend = await avatarBackend(() => ({ location: file, width: 64, contentType: 'image/png' }));
    const proxy = await startProxy(backend.url);

    const avif = await get(`${proxy.url}/ada`, { accept: CHROMIUM_ACCEPT });
    expect(avif.status).toBe(200);
    expect(avif.headers['content-type']).toBe('image/avif');
    expect(avif.headers['content-length']).toBe(String(avif.body.length));
    expect(avif.headers.vary).toBe('Accept');
    expect(await decoded(avif.body)).toEqual({ format: 'av1', width: 64 });

    const png = await get(`${proxy.url}/ada`, { accept: 'image/png' });
    expect(png.headers['content-type']).toBe('image/png');
    expect(png.headers.vary).toBe('Accept');
    expect(await decoded(png.body)).toEqual({ format: 'png', width: 64 });

    // Smaller than the PNG it replaces, and Last-Modified the same for every variant.
    expect(avif.body.length).toBeLessThan(png.body.length);
    expect(avif.headers['last-modified']).toBe(HTTP_MTIME);
    expect(png.headers['last-modified']).toBe(HTTP_MTIME);
  });

  it('answers a revalidation of each variant with 304, Vary: Accept and no body or type', async () => {
    const file = place('grace.jpg', jpeg400);
    const backend = await avatarBackend(() => ({ location: file, width: 48, contentType: 'image/jpeg' }));
    const proxy = await startProxy(backend.url);
    for (const accept of [CHROMIUM_ACCEPT, 'image/webp', 'image/jpeg', '']) {
      const res = await get(`${proxy.url}/grace`, { accept, 'if-modified-since': HTTP_MTIME });
      expect(res.status, accept).toBe(304);
      expect(res.headers.vary, accept).toBe('Accept');
      expect(res.headers['content-type'], accept).toBeUndefined();
      expect(res.body.length).toBe(0);
    }
  });

  it('honours q-values, and counts only an explicit image/webp or image/avif', async () => {
    const file = place('linus.jpg', jpeg400);
    const backend = await avatarBackend(() => ({ location: file, width: 40, contentType: 'image/jpeg' }));
    const proxy = await startProxy(backend.url);
    const typeFor = async (accept: string | undefined) =>
      (await get(`${proxy.url}/linus`, accept === undefined ? {} : { accept })).headers['content-type'];
    expect(await typeFor('image/webp,*/*')).toBe('image/webp');
    expect(await typeFor('image/avif;q=0.5, image/webp')).toBe('image/webp');
    expect(await typeFor('image/avif;q=0, image/webp;q=0.9, */*;q=0.8')).toBe('image/webp');
    expect(await typeFor('image/webp;q=0.5, image/jpeg')).toBe('image/jpeg');
    expect(await typeFor('image/avif;q=0.4, image/jpeg;q=0.3')).toBe('image/avif');
    expect(await typeFor('IMAGE/AVIF')).toBe('image/avif');
    // Wildcards promise no AVIF decoder: curl, old browsers, HTTP libraries.
    expect(await typeFor('*/*')).toBe('image/jpeg');
    expect(await typeFor('image/*')).toBe('image/jpeg');
    expect(await typeFor(undefined)).toBe('image/jpeg');
    // Nothing acceptable on offer: the source's own format, as Workhorse would send.
    expect(await typeFor('text/html')).toBe('image/jpeg');
    // A malformed weight does not count as an acceptance.
    expect(await typeFor('image/avif;q=2')).toBe('image/jpeg');
  });

  it('keeps each variant apart in the cache and among concurrent requests', async () => {
    const file = place('shared.png', png400);
    const backend = await avatarBackend(() => ({ location: file, width: 72, contentType: 'image/png' }));
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const accepts = ['image/avif', 'image/webp', 'image/png'];
    // Concurrent first requests for three variants: three jobs, none shares another's result.
    const cold = await Promise.all(accepts.flatMap((accept) => [get(`${proxy.url}/s`, { accept }), get(`${proxy.url}/s`, { accept })]));
    expect(cold.map((r) => r.headers['content-type'])).toEqual([
      'image/avif',
      'image/avif',
      'image/webp',
      'image/webp',
      'image/png',
      'image/png',
    ]);
    // Then each from the cache, still its own format.
    for (const accept of accepts.reverse()) {
      const warm = await get(`${proxy.url}/s`, { accept });
      expect(warm.headers['content-type']).toBe(accept);
      expect((await decoded(warm.body)).width).toBe(72);
    }
    const outcomes = logs.filter((l) => l.subsystem === 'scaler').map((l) => `${l.format}:${l.outcome}`);
    for (const format of ['avif', 'webp', 'source']) {
      expect(
        outcomes.filter((o) => o === `${format}:scaled`),
        format,
      ).toHaveLength(1);
      expect(
        outcomes.filter((o) => o === `${format}:cache-hit`),
        format,
      ).toHaveLength(1);
    }
  });

  it('converts JPEG sources too, and sends Vary: Accept with an original served as it is', async () => {
    const jpeg = place('j.jpg', jpeg400);
    const animated = place('a.gif', await gif(100, 100));
    const backend = await avatarBackend((u) =>
      u.pathname === '/gif'
        ? { location: animated, width: 50, contentType: 'image/gif' }
        : { location: jpeg, width: Number(u.searchParams.get('w')), contentType: 'image/jpeg' },
    );
    const proxy = await startProxy(backend.url);
    const webp = await get(`${proxy.url}/j?w=100`, { accept: 'image/webp' });
    expect(webp.headers['content-type']).toBe('image/webp');
    expect(await decoded(webp.body)).toEqual({ format: 'webp', width: 100 });
    // Not wider than asked: the original, which the answer may vary from by Accept all the same.
    const original = await get(`${proxy.url}/j?w=800`, { accept: CHROMIUM_ACCEPT });
    expect(original.headers['content-type']).toBe('image/jpeg');
    expect(original.body.equals(jpeg400)).toBe(true);
    expect(original.headers.vary).toBe('Accept');
    const unsupported = await get(`${proxy.url}/gif`, { accept: CHROMIUM_ACCEPT });
    // Served as it is, and as before never labelled as an image type Outrider did not recognise.
    expect(unsupported.headers['content-type']).toBe('application/octet-stream');
    expect(unsupported.body.length).toBeGreaterThan(0);
    expect(unsupported.headers.vary).toBe('Accept');
  });

  it('adds Accept to the backend’s own Vary rather than replacing it', async () => {
    const file = place('vary.png', png400);
    const backend = await avatarBackend(() => ({ location: file, width: 32, contentType: 'image/png' }), { vary: 'Cookie' });
    const proxy = await startProxy(backend.url);
    const res = await get(`${proxy.url}/v`, { accept: 'image/webp' });
    expect(res.headers['content-type']).toBe('image/webp');
    expect(res.headers.vary).toBe('Cookie, Accept');
  });

  it('lets a backend keep the source format for one image with keepFormat, its own Vary untouched', async () => {
    const file = place('keep.png', png400);
    const backend = await avatarBackend(() => ({ location: file, width: 64, contentType: 'image/png', keepFormat: true }), {
      vary: 'Cookie',
    });
    const proxy = await startProxy(backend.url);
    for (const accept of [CHROMIUM_ACCEPT, 'image/webp']) {
      const res = await get(`${proxy.url}/k`, { accept });
      expect(res.headers['content-type']).toBe('image/png');
      expect(res.headers.vary).toBe('Cookie');
      expect(await decoded(res.body)).toEqual({ format: 'png', width: 64 });
    }
  });

  it('keeps the source format and sends no Vary when formats = []', async () => {
    const file = place('off.png', png400);
    const backend = await avatarBackend(() => ({ location: file, width: 64, contentType: 'image/png' }));
    const proxy = await startProxy(backend.url, { toml: '[image_resizer]\nformats = []\n' });
    const res = await get(`${proxy.url}/o`, { accept: CHROMIUM_ACCEPT });
    expect(res.headers['content-type']).toBe('image/png');
    expect(res.headers.vary).toBeUndefined();
  });

  it('prefers the formats in the order the config lists them, and offers only those', async () => {
    const file = place('order.png', png400);
    const backend = await avatarBackend(() => ({ location: file, width: 64, contentType: 'image/png' }));
    const webpFirst = await startProxy(backend.url, { toml: '[image_resizer]\nformats = ["webp", "avif"]\n' });
    expect((await get(`${webpFirst.url}/o`, { accept: CHROMIUM_ACCEPT })).headers['content-type']).toBe('image/webp');
    const webpOnly = await startProxy(backend.url, { toml: '[image_resizer]\nformats = ["webp"]\n' });
    expect((await get(`${webpOnly.url}/o`, { accept: 'image/avif' })).headers['content-type']).toBe('image/png');
    expect((await get(`${webpOnly.url}/o`, { accept: 'image/avif' })).headers.vary).toBe('Accept');
  });

  it('sends Vary: Accept with the 502 for an image that cannot be read', async () => {
    const backend = await avatarBackend(() => ({ location: join(dir, 'missing.png'), width: 64, contentType: 'image/png' }));
    const proxy = await startProxy(backend.url);
    const res = await get(`${proxy.url}/m`, { accept: CHROMIUM_ACCEPT });
    expect(res.status).toBe(502);
    expect(res.headers.vary).toBe('Accept');
  });

  it('answers 502 to a KeepFormat that is not true or false', async () => {
    const file = place('bad.png', png400);
    const backend = await startBackend((_req, res) => {
      const fields = { Location: file, Width: 64, ContentType: 'image/png', KeepFormat: 'yes' };
      res.writeHead(200, { 'gitlab-workhorse-send-data': `send-scaled-img:${Buffer.from(JSON.stringify(fields)).toString('base64url')}` });
      res.end();
    });
    const proxy = await startProxy(backend.url);
    const res = await get(`${proxy.url}/b`, { accept: 'image/webp' });
    expect(res.status).toBe(502);
    expect(res.body.toString()).not.toContain('KeepFormat');
  });
});
