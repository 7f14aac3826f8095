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

const dir = mkdtempSync(join(tmpdir(), 'outrider-queue-'));

/** A page of `count` avatars at distinct widths (distinct jobs: identical ones would share one), all asked at once. */
async function coldPage(toml: string, count: number, size = 1200) {
  const file = join(dir, `page-${count}-${toml.length}-${size}.png`);
  writeFileSync(file, await photo(size, size, 'png'));
  const backend = await startBackend((req, res) => {
    const width = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('w'));
    const { name, value } = sendScaledImage({ location: file, width, contentType: 'image/png' });
    res.writeHead(200, { [name]: value }).end();
  });
  const logs: Record<string, unknown>[] = [];
  const proxy = await startProxy(backend.url, { toml: `[image_resizer]\nmax_filesize = 20000000\n${toml}`, logs });
  const answers = await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const res = await request(`${proxy.url}/avatar?w=${40 + i}`);
      const body = Buffer.from(await res.body.arrayBuffer());
      return { status: res.statusCode, width: (await sharp(body).metadata()).width, asked: 40 + i };
    }),
  );
  const originals = logs.filter((l) => l.subsystem === 'scaler' && l.outcome === 'served-original');
  return { answers, originals };
}

describe('a cold page of avatars', () => {
  it('gets every image scaled with the default queue, none as the original', async () => {
    // Two slots, as on a small machine, and a browser's worth of 400 px avatars at once and more.
    const { answers, originals } = await coldPage('max_scaler_procs = 2\n', 12, 400);
    expect(answers.every((a) => a.status === 200 && a.width === a.asked)).toBe(true);
    expect(originals).toEqual([]);
  });

  it('still gets originals at once when more requests wait than the queue holds', async () => {
    const { answers, originals } = await coldPage('max_scaler_procs = 1\nmax_scaler_queue = 2\n', 8);
    expect(answers.every((a) => a.status === 200)).toBe(true);
    const scaled = answers.filter((a) => a.width === a.asked);
    const unscaled = answers.filter((a) => a.width === 1200);
    // One running and two waiting are scaled; those beyond are refused at once rather than queued
    // (all eight would be scaled within the default second of waiting if the queue were unbounded).
    expect(scaled.length).toBeGreaterThanOrEqual(3);
    expect(unscaled.length).toBeGreaterThan(0);
    expect(scaled.length + unscaled.length).toBe(8);
    expect(originals).toHaveLength(unscaled.length);
    expect(originals.every((l) => l.reason === 'busy')).toBe(true);
  });

  it('gets originals rather than a long wait when the wait runs out', async () => {
    const { answers, originals } = await coldPage('max_scaler_procs = 1\nmax_scaler_wait = "1ms"\n', 6);
    expect(answers.every((a) => a.status === 200)).toBe(true);
    expect(answers.filter((a) => a.width === 1200).length).toBeGreaterThan(0);
    expect(originals.length).toBeGreaterThan(0);
    expect(originals.every((l) => l.reason === 'busy')).toBe(true);
  });
});
