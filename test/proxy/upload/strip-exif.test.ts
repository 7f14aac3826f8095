import { readdirSync } from 'node:fs';
import { Readable } from 'node:stream';
import sharp from 'sharp';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { base, expectNoSecrets, readIfds, SECRET_EXIF } from './exif/helpers.js';
import { cameraTiff } from './exif/tiff-camera.js';
import { form, localAnswer, newDir, routesToml, uploadBackend } from './setup.js';

/** The upload routes of the other upload tests, each with `strip_exif = true`, and `^/keep/` without it. */
function stripToml(tempDir: string): string {
  const routes = routesToml(tempDir).replaceAll('[[uploads.routes]]\n', '[[uploads.routes]]\nstrip_exif = true\n');
  return `${routes}[[uploads.routes]]\nmethod = "POST"\npath = "^/keep/"\n`;
}

/** A camera photo: GPS, Make, Model, a serial number, Orientation 6, Copyright. */
const camera = () => base(120, 80).jpeg({ quality: 90 }).withExif(SECRET_EXIF).withMetadata({ orientation: 6 }).toBuffer();

/** The GPS IFD pointer (34853) of a JPEG's Exif, if any. */
async function hasGps(jpeg: Buffer): Promise<boolean> {
  const exif = (await sharp(jpeg).metadata()).exif;
  if (exif === undefined) return false;
  return readIfds(exif.subarray(6)).ifds[0]?.has(0x8825) === true;
}

describe('strip_exif on an upload route', () => {
  it('stores a JPEG without GPS or camera serials, the same pixels and orientation; a route without it keeps them', async () => {
    const temp = newDir();
    const store = newDir();
    const backend = await uploadBackend(localAnswer(store));
    const proxy = await startProxy(backend.url, { toml: stripToml(temp) });
    const photo = await camera();
    expect(await hasGps(photo)).toBe(true);

    for (const path of ['/uploads/avatar', '/open/avatar']) {
      const res = await request(`${proxy.url}${path}`, { method: 'POST', body: form([['file', { data: photo, filename: 'me.jpg' }]]) });
      expect(res.statusCode, path).toBe(201);
      await res.body.dump();
      const stored = backend.received.at(-1)?.files['file.path'] as Buffer;
      expect(await hasGps(stored), path).toBe(false);
      expectNoSecrets(stored);
      expect((await sharp(stored).metadata()).orientation).toBe(6);
      expect(Buffer.compare(await sharp(stored).raw().toBuffer(), await sharp(photo).raw().toBuffer())).toBe(0);
      // The signed size and sha256 describe the stored (stripped) file.
      const fields = Object.fromEntries(backend.received.at(-1)?.fields ?? []);
      expect(Number(fields['file.size'])).toBe(stored.length);
      expect(stored.length).toBeLessThan(photo.length);
    }

    const kept = await request(`${proxy.url}/keep/avatar`, { method: 'POST', body: form([['file', { data: photo, filename: 'me.jpg' }]]) });
    expect(kept.statusCode).toBe(201);
    await kept.body.dump();
    expect(await hasGps(backend.received.at(-1)?.files['file.path'] as Buffer)).toBe(true);
  });

  it('strips a body upload too, and refuses with 422 an image whose metadata it cannot remove, leaving no file behind', async () => {
    const temp = newDir();
    const store = newDir();
    const backend = await uploadBackend(localAnswer(store));
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: stripToml(temp), logs });

    const photo = await camera();
    const body = await request(`${proxy.url}/packages/me.jpg`, { method: 'PUT', body: photo });
    expect(body.statusCode).toBe(201);
    await body.body.dump();
    const fromBody = backend.received.at(-1)?.files['file.path'] as Buffer;
    expect(await hasGps(fromBody)).toBe(false);
    expectNoSecrets(fromBody);
    expect((await sharp(fromBody).metadata()).orientation).toBe(6);

    const webp = await base(40, 40).webp().withExif(SECRET_EXIF).toBuffer();
    const broken = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe1, 0xff, 0xff]), Buffer.alloc(100)]);
    for (const [data, filename] of [
      [webp, 'me.webp'],
      [broken, 'broken.jpg'],
    ] as const) {
      const res = await request(`${proxy.url}/uploads/x`, { method: 'POST', body: form([['file', { data, filename }]]) });
      expect(res.statusCode, filename).toBe(422);
      expect(await res.body.text()).toMatch(
        /^Unprocessable Content: the image (is in a format whose metadata cannot be removed|is malformed)/,
      );
    }
    expect(logs.filter((l) => l.outcome === 'rejected' && l.status === 422)).toHaveLength(2);
    // Nothing stored, nothing left in scratch space.
    await new Promise((r) => setTimeout(r, 100));
    expect(readdirSync(store)).toEqual([]);
    expect(readdirSync(temp)).toEqual([]);
  });

  it('reads past a JPEG end to the end of its part (a phone appends images there), and stores only the image', async () => {
    const store = newDir();
    const backend = await uploadBackend(localAnswer(store));
    const proxy = await startProxy(backend.url, { toml: stripToml(newDir()) });
    const photo = await camera();
    // A large appended image, as Ultra HDR gain maps or MPF previews are, then a field after the file.
    const appended = await base(1200, 900).jpeg({ quality: 95 }).withExif(SECRET_EXIF).toBuffer();
    const withTrailer = Buffer.concat([photo, appended, Buffer.alloc(1 << 20, 7)]);
    const body = form([
      ['file', { data: withTrailer, filename: 'phone.jpg' }],
      ['title', 'after the file'],
    ]);
    const res = await request(`${proxy.url}/uploads/x`, { method: 'POST', body });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    const stored = backend.received.at(-1)?.files['file.path'] as Buffer;
    expect(stored.subarray(-2)).toEqual(Buffer.from([0xff, 0xd9]));
    expect(stored.length).toBeLessThan(photo.length);
    expectNoSecrets(stored);
    expect(Object.fromEntries(backend.received.at(-1)?.fields ?? []).title).toBe('after the file');
  });

  it('refuses with 413 a file over MaximumSize before it is spooled whole (a TIFF is stripped from a scratch copy)', async () => {
    const store = newDir();
    const temp = newDir();
    const backend = await uploadBackend(localAnswer(store, { MaximumSize: 100_000 }));
    const proxy = await startProxy(backend.url, { toml: stripToml(temp) });
    const tiff = await base(400, 400).tiff({ compression: 'none' }).toBuffer();
    expect(tiff.length).toBeGreaterThan(100_000);
    const res = await request(`${proxy.url}/uploads/x`, { method: 'POST', body: form([['file', { data: tiff, filename: 'scan.tiff' }]]) });
    expect(res.statusCode).toBe(413);
    await res.body.dump();

    // A TIFF that does not end: refused once past MaximumSize, not spooled until the disk is full.
    let sent = 0;
    async function* endless() {
      yield Buffer.from('--b\r\nContent-Disposition: form-data; name="file"; filename="x.tiff"\r\n\r\n');
      yield tiff.subarray(0, 8);
      for (sent = 0; sent < 64 << 20; sent += 1 << 20) yield Buffer.alloc(1 << 20);
    }
    const stream = await request(`${proxy.url}/uploads/x`, {
      method: 'POST',
      headers: { 'content-type': 'multipart/form-data; boundary=b' },
      body: Readable.from(endless()),
    }).catch((err: Error) => err);
    // Answered 413 while the client still sends, or cut after that answer: either way, early.
    const status = stream instanceof Error ? 413 : stream.statusCode;
    if (!(stream instanceof Error)) await stream.body.dump();
    expect(status).toBe(413);
    expect(sent).toBeLessThan(16 << 20);
    await new Promise((r) => setTimeout(r, 100));
    expect(readdirSync(store)).toEqual([]);
    expect(readdirSync(temp)).toEqual([]);
  });

  it('stores a TIFF without its GPS, Exif and camera tags, the same pixels and orientation', async () => {
    const store = newDir();
    const backend = await uploadBackend(localAnswer(store));
    const proxy = await startProxy(backend.url, { toml: stripToml(newDir()) });
    const scan = await cameraTiff();
    expect(readIfds(scan).ifds[0]?.has(0x8825)).toBe(true);
    const res = await request(`${proxy.url}/uploads/x`, { method: 'POST', body: form([['file', { data: scan, filename: 'scan.tiff' }]]) });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    const stored = backend.received.at(-1)?.files['file.path'] as Buffer;
    expect(readIfds(stored).ifds[0]?.has(0x8825)).toBe(false);
    expectNoSecrets(stored);
    expect((await sharp(stored).metadata()).orientation).toBe(6);
    expect(Buffer.compare(await sharp(stored).raw().toBuffer(), await sharp(scan).raw().toBuffer())).toBe(0);
  });

  it('passes a file that is not an image unchanged', async () => {
    const store = newDir();
    const backend = await uploadBackend(localAnswer(store));
    const proxy = await startProxy(backend.url, { toml: stripToml(newDir()) });
    const pdf = Buffer.from('%PDF-1.4\n% not an image\n');
    const res = await request(`${proxy.url}/uploads/x`, { method: 'POST', body: form([['file', { data: pdf, filename: 'a.pdf' }]]) });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    expect(backend.received.at(-1)?.files['file.path']).toEqual(pdf);
  });
});
