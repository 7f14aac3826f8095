import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { sendScaledImage } from '../../../backend/index.js';
import { startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { photo } from '../../helpers/images.js';

// Found by the browser test (issue 7): a page asking for many avatars at once got some originals
// because every slot was busy, with Last-Modified; on reload Chromium revalidated them, got 304s and
// kept showing the 1600 px original where a 100 px image was asked for.
describe('an original served because every scaling slot was busy', () => {
  it('carries no Last-Modified, so a browser never revalidates it in place of the scaled image', async () => {
    const big = join(mkdtempSync(join(tmpdir(), 'outrider-fix-7-')), 'big.jpg');
    writeFileSync(big, await photo(1600, 1600, 'jpeg'));
    const backend = await startBackend((req, res) => {
      const width = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('w'));
      const { name, value } = sendScaledImage({ location: big, width, contentType: 'image/jpeg' });
      res.writeHead(200, { [name]: value, 'cache-control': 'max-age=0, private, must-revalidate' }).end();
    });
    const proxy = await startProxy(backend.url, {
      toml: '[image_resizer]\nmax_scaler_procs = 1\nmax_scaler_wait = "0s"\nmax_filesize = 20000000\n',
    });
    // Distinct widths: no two requests share one scaling job.
    const answers = await Promise.all(
      Array.from({ length: 6 }, async (_, i) => {
        const res = await request(`${proxy.url}/big?w=${100 + i}`);
        const body = Buffer.from(await res.body.arrayBuffer());
        return { status: res.statusCode, lastModified: res.headers['last-modified'], width: (await sharp(body).metadata()).width };
      }),
    );
    expect(answers.every((a) => a.status === 200)).toBe(true);
    const originals = answers.filter((a) => a.width === 1600);
    const scaled = answers.filter((a) => a.width !== 1600);
    expect(originals.length).toBeGreaterThan(0);
    expect(scaled.length).toBeGreaterThan(0);
    expect(originals.map((a) => a.lastModified)).toEqual(originals.map(() => undefined));
    for (const a of scaled) expect(a.lastModified).toMatch(/ GMT$/);
  });
});
