import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import express from 'express';
import sharp from 'sharp';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { outrider } from '../../backend/express.js';
import { decodeSendData } from '../../protocol/send-data.js';
import { startProxy } from '../helpers/app.js';
import { startBackend } from '../helpers/backend.js';
import { listenExpress } from '../helpers/express.js';
import { photo } from '../helpers/images.js';
import { TEST_SECRET_B64 } from '../helpers/uploads.js';

const SECRET = Buffer.from(TEST_SECRET_B64, 'base64');
const dir = mkdtempSync(join(tmpdir(), 'outrider-express-'));

/** An Express 5 app with the adapter, its routes added by `routes`, behind a real Outrider. */
async function behindOutrider(routes: (app: express.Express) => void) {
  const app = express();
  app.use(outrider({ secret: SECRET }));
  routes(app);
  const backend = await listenExpress(app);
  const proxy = await startProxy(backend.url);
  return { backend: backend.url, proxy: proxy.url };
}

describe('the Express adapter answers for Outrider', () => {
  it('res.sendScaledImage has Outrider serve the image at the width asked, with the headers the route set', async () => {
    const location = join(dir, 'ada.png');
    writeFileSync(location, await photo(400, 300, 'png'));
    const { proxy, backend } = await behindOutrider((app) => {
      app.get('/avatars/:name', (req, res) => {
        res.set('Cache-Control', 'max-age=0, private, must-revalidate');
        res.sendScaledImage({ location: join(dir, req.params.name), width: Number(req.query.width), contentType: 'image/png' });
      });
    });

    const res = await request(`${proxy}/avatars/ada.png?width=64`);
    const body = Buffer.from(await res.body.arrayBuffer());
    expect([res.statusCode, res.headers['content-type'], res.headers['cache-control']]).toEqual([
      200,
      'image/png',
      'max-age=0, private, must-revalidate',
    ]);
    expect(res.headers['gitlab-workhorse-send-data']).toBeUndefined();
    const meta = await sharp(body).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 64, 48]);

    // What the app itself answered: an empty 200 carrying the directive, which Outrider turned into the image.
    const direct = await request(`${backend}/avatars/ada.png?width=64`);
    expect([direct.statusCode, await direct.body.text()]).toEqual([200, '']);
    expect(Object.fromEntries(decodeSendData(String(direct.headers['gitlab-workhorse-send-data']), 'send-scaled-img:'))).toEqual({
      location,
      width: 64,
      contenttype: 'image/png',
    });
  });

  it('res.sendFileThroughOutrider has Outrider serve a real file, ranges included, with the disposition the route set', async () => {
    const path = join(dir, 'report.bin');
    const bytes = randomBytes(10_000);
    writeFileSync(path, bytes);
    const { proxy } = await behindOutrider((app) => {
      app.get('/downloads/report', (_req, res) => {
        res.attachment('report.bin').sendFileThroughOutrider(path);
      });
    });

    const res = await request(`${proxy}/downloads/report`);
    expect(Buffer.from(await res.body.arrayBuffer()).equals(bytes)).toBe(true);
    expect([res.statusCode, res.headers['content-disposition'], res.headers['content-type'], res.headers['x-sendfile']]).toEqual([
      200,
      'attachment; filename=report.bin',
      'application/octet-stream',
      undefined,
    ]);
    const part = await request(`${proxy}/downloads/report`, { headers: { range: 'bytes=100-199' } });
    expect(part.statusCode).toBe(206);
    expect(Buffer.from(await part.body.arrayBuffer()).equals(bytes.subarray(100, 200))).toBe(true);
  });

  it('res.sendFileThroughOutrider with detectContentType has Outrider replace the type the route claimed by a safe one', async () => {
    const path = join(dir, 'upload.html');
    writeFileSync(path, '<html><body><script>alert(1)</script></body></html>');
    const { proxy } = await behindOutrider((app) => {
      app.get('/plain', (_req, res) => res.type('html').sendFileThroughOutrider(path));
      app.get('/detected', (_req, res) => res.type('html').sendFileThroughOutrider(path, { detectContentType: true }));
    });
    const plain = await request(`${proxy}/plain`);
    await plain.body.dump();
    expect(plain.headers['content-type']).toBe('text/html; charset=utf-8');
    const detected = await request(`${proxy}/detected`);
    expect(await detected.body.text()).toContain('<script>');
    expect(detected.headers['content-type']).toMatch(/^text\/plain/);
  });

  it('res.sendUrl has Outrider fetch a real origin with the headers the route gave and stream its answer', async () => {
    const origin = await startBackend((req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' }).end(`origin saw ${req.method} ${req.url} with ${req.headers.authorization}`);
    });
    const { proxy } = await behindOutrider((app) => {
      app.get('/mirror', (_req, res) => {
        res.sendUrl(`${origin.url}/objects/1`, {
          headers: { Authorization: 'Bearer t0ken' },
          responseHeaders: { 'Cache-Control': 'private' },
        });
      });
    });
    const res = await request(`${proxy}/mirror`);
    expect([res.statusCode, res.headers['cache-control'], await res.body.text()]).toEqual([
      200,
      'private',
      'origin saw GET /objects/1 with Bearer t0ken',
    ]);
    expect(origin.requests).toHaveLength(1);
  });

  it('a bad argument is the route’s error, as the toolkit throws it', async () => {
    const { backend } = await behindOutrider((app) => {
      app.get('/relative', (_req, res) => res.sendFileThroughOutrider('files/report.pdf'));
      app.use((err: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
        res.status(500).json({ caught: `${err.name}: ${err.message}` });
      });
    });
    const res = await request(`${backend}/relative`);
    expect([res.statusCode, await res.body.json()]).toEqual([
      500,
      { caught: 'TypeError: sendFile: the path must be absolute, got "files/report.pdf"' },
    ]);
  });
});
