import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { FormData, request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { signJwt } from '../../protocol/jwt.js';

// What `npm start` runs, after `npm run build` (pretest builds too).
const START = fileURLToPath(new URL('../../dist/example/start.js', import.meta.url));
// Where the example backend keeps its avatars (example/backend.ts), uploads included.
const AVATAR_DIR = join(tmpdir(), 'outrider-example-avatars');

/** Runs `npm start` on free ports and waits for its "Try:" list. */
async function startExample() {
  const child = spawn(process.execPath, [START], {
    env: { ...process.env, OUTRIDER_PORT: '0', EXAMPLE_BACKEND_PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  onTestFinished(async () => {
    // Ctrl-C first, so npm start stops Outrider and removes its temp dir even when a test failed.
    if (child.exitCode === null) child.kill('SIGINT');
    await Promise.race([exited, sleep(5_000)]);
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  const [base, backend] = await Promise.race([
    new Promise<[string, string]>((resolve) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /Outrider is up on (http:\/\/127\.0\.0\.1:\d+) in front of the example backend on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
        if (m && out.includes('Ctrl-C stops both.')) resolve([m[1] as string, m[2] as string]);
      });
    }),
    sleep(10_000).then(() => Promise.reject(new Error(`npm start did not come up:\n${out}`))),
  ]);
  return { child, exited, out, base, backend };
}

describe('npm start', () => {
  it('brings up Outrider in front of the example backend and stops both on Ctrl-C', async () => {
    const { child, exited, out, base } = await startExample();
    expect(out).toContain('Try:');

    const home = await request(`${base}/`);
    expect(await home.body.text()).toContain('through Outrider 0.');
    const seen = (await (await request(`${base}/headers`)).body.json()) as { headers: Record<string, string[]> };
    const headers = Object.fromEntries(Object.entries(seen.headers).map(([name, values]) => [name.toLowerCase(), values]));
    expect(headers['gitlab-workhorse']).toHaveLength(1);
    expect(headers['x-forwarded-for']).toEqual(['127.0.0.1']);
    const internal = await request(`${base}/internal`);
    expect(internal.statusCode).toBe(500);
    expect(await internal.body.text()).toBe('Internal Server Error\n');
    const file = await request(`${base}/files/hello.txt`, { headers: { range: 'bytes=0-8' } });
    expect(file.statusCode).toBe(206);
    expect(await file.body.text()).toBe('Served by');
    const scaled = await request(`${base}/avatars/ada.png?width=64`);
    const scaledBody = Buffer.from(await scaled.body.arrayBuffer());
    expect(scaled.headers['content-type']).toBe('image/png');
    expect((await sharp(scaledBody).metadata()).width).toBe(64);
    const jpeg = await request(`${base}/avatars/grace.jpg?width=96`);
    expect((await sharp(Buffer.from(await jpeg.body.arrayBuffer())).metadata()).format).toBe('jpeg');
    const revalidated = await request(`${base}/avatars/ada.png?width=64`, {
      headers: { 'if-modified-since': scaled.headers['last-modified'] as string },
    });
    expect(revalidated.statusCode).toBe(304);
    await revalidated.body.dump();
    const original = await request(`${base}/avatars/ada.png`);
    expect((await sharp(Buffer.from(await original.body.arrayBuffer())).metadata()).width).toBe(400);
    const mirror = await request(`${base}/mirror`);
    expect(await mirror.body.text()).toBe('Hello from the example backend\n');
    expect(mirror.headers['cache-control']).toBe('private, max-age=60');
    const stream = await request(`${base}/stream`);
    expect((await stream.body.text()).trim().split('\n')).toHaveLength(10);
    const echo = await request(`${base}/echo`, { method: 'POST', body: 'hello' });
    expect(await echo.body.json()).toMatchObject({ method: 'POST', size: 5 });

    child.kill('SIGINT');
    expect(await exited).toBe(0);
  });

  it('accelerates avatar uploads: Outrider stores the file, the backend checks the signatures and moves it', async () => {
    const { child, exited, out, base, backend } = await startExample();
    const tempDir = /Uploads wait in (\S+) until/.exec(out)?.[1] as string;
    const secretPath = /the secret shared for this run is in (\S+)\.\n/.exec(out)?.[1] as string;
    const secret = Buffer.from(readFileSync(secretPath, 'utf8').trim(), 'base64');
    expect(secret).toHaveLength(32);
    expect(out).toContain(`curl -i -F avatar=@some.png ${base}/uploads/avatar`);
    expect(await (await request(`${base}/`)).body.text()).toContain('href="/upload"');
    const page = await (await request(`${base}/upload`)).body.text();
    expect(page).toMatch(/<form method="post" action="\/uploads\/avatar" enctype="multipart\/form-data">/);
    expect(page).toContain('<input type="file" name="avatar" accept="image/png,image/jpeg"');

    const stem = `test-${randomUUID().slice(0, 8)}`;
    onTestFinished(() => {
      for (const name of readdirSync(AVATAR_DIR)) if (name.startsWith(stem)) rmSync(join(AVATAR_DIR, name), { force: true });
    });
    const png = await sharp({ create: { width: 200, height: 120, channels: 3, background: '#f59e0b' } })
      .png()
      .toBuffer();
    const upload = (bytes: Buffer, filename: string, url = `${base}/uploads/avatar`, headers: Record<string, string> = {}) => {
      const form = new FormData();
      form.append('avatar', new Blob([bytes], { type: 'image/png' }), filename);
      return request(url, { method: 'POST', body: form, headers });
    };

    // A form sent with its file input left empty came through Outrider: the backend says what is missing.
    const empty = new FormData();
    empty.append('avatar', new Blob([]), '');
    const none = await request(`${base}/uploads/avatar`, { method: 'POST', body: empty });
    expect(none.statusCode).toBe(400);
    expect(await none.body.text()).toBe('Bad Request: choose an image to upload\n');

    const first = await upload(png, `${stem}.png`);
    expect(first.statusCode).toBe(303);
    expect(first.headers.location).toBe('/');
    expect(await first.body.text()).toBe(`Saved as ${stem}.png\n`);
    // The file left Outrider's temp dir (created for the upload, emptied by the move and the cleanup).
    expect(existsSync(tempDir)).toBe(true);
    expect(readdirSync(tempDir)).toEqual([]);
    // The same name again gets a name of its own; both are on the home page.
    const second = await upload(png, `${stem}.png`);
    expect(second.statusCode).toBe(303);
    expect(await second.body.text()).toBe(`Saved as ${stem}-1.png\n`);
    const home = await (await request(`${base}/`)).body.text();
    expect(home).toContain(`href="/avatars/${stem}.png"`);
    expect(home).toContain(`href="/avatars/${stem}-1.png"`);

    const scaled = await request(`${base}/avatars/${stem}.png?width=32`);
    expect(scaled.statusCode).toBe(200);
    expect(scaled.headers['content-type']).toBe('image/png');
    const meta = await sharp(Buffer.from(await scaled.body.arrayBuffer())).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 32, 19]);
    const original = await request(`${base}/avatars/${stem}-1.png`);
    expect(Buffer.from(await original.body.arrayBuffer()).equals(png)).toBe(true);

    // Not an image, or an image under another type's name: refused by the backend, file removed.
    const text = await upload(Buffer.from('hello, not a picture'), `${stem}-text.png`);
    expect(text.statusCode).toBe(400);
    expect(await text.body.text()).toBe('Bad Request: the avatar is not a PNG or JPEG image\n');
    const misnamed = await upload(png, `${stem}-misnamed.jpg`);
    expect(misnamed.statusCode).toBe(400);
    expect(await misnamed.body.text()).toBe("Bad Request: the avatar's name must end in .png\n");
    // Outrider removes what the backend left once the request is over, just after the answer.
    await expect.poll(() => readdirSync(tempDir), { timeout: 2000 }).toEqual([]);
    expect(
      readdirSync(AVATAR_DIR)
        .filter((n) => n.startsWith(stem))
        .sort(),
    ).toEqual([`${stem}-1.png`, `${stem}.png`]);

    // Straight to the backend, around Outrider: a file of the attacker's choosing stays where it is.
    const elsewhere = mkdtempSync(join(tmpdir(), 'outrider-example-test-'));
    onTestFinished(() => rmSync(elsewhere, { recursive: true, force: true }));
    const victim = join(elsewhere, 'secret.png');
    writeFileSync(victim, png);
    const forge = async (key: Buffer, path: string) => {
      const form = new FormData();
      const upload = { name: `${stem}-forged.png`, path, remote_url: '', remote_id: '', size: String(png.length) };
      for (const [k, v] of Object.entries(upload)) form.append(`avatar.${k}`, v);
      form.append('avatar.gitlab-workhorse-upload', signJwt({ upload, iss: 'gitlab-workhorse' }, key));
      const headers = {
        'gitlab-workhorse-multipart-fields': signJwt({ rewritten_fields: { avatar: path }, iss: 'gitlab-workhorse' }, key),
      };
      const res = await request(`${backend}/uploads/avatar`, { method: 'POST', body: form, headers });
      return { status: res.statusCode, body: await res.body.text() };
    };
    expect(await forge(randomBytes(32), victim)).toEqual({
      status: 400,
      body: 'Bad Request: uploads are accepted through Outrider only\n',
    });
    const unsigned = await upload(png, `${stem}-unsigned.png`, `${backend}/uploads/avatar`);
    expect(unsigned.statusCode).toBe(400);
    await unsigned.body.dump();
    // Even correctly signed, a path outside the backend's own TempPath is not taken.
    expect(await forge(secret, victim)).toEqual({ status: 400, body: 'Bad Request: the avatar is not in the upload directory\n' });
    // A client cannot slip its own fields header through Outrider either: Outrider drops it.
    const through = await upload(png, `${stem}-through.png`, `${base}/uploads/avatar`, {
      'gitlab-workhorse-multipart-fields': signJwt({ rewritten_fields: { avatar: victim }, iss: 'gitlab-workhorse' }, randomBytes(32)),
    });
    expect(through.statusCode).toBe(303);
    expect(await through.body.text()).toBe(`Saved as ${stem}-through.png\n`);
    expect(existsSync(victim)).toBe(true);
    expect(readdirSync(AVATAR_DIR).filter((n) => n.includes('forged') || n.includes('unsigned'))).toEqual([]);

    // The authorize endpoint wants a fresh token signed with the shared secret.
    const authorize = async (token?: string) => {
      const res = await request(`${backend}/uploads/avatar/authorize`, {
        method: 'POST',
        headers: token === undefined ? {} : { 'gitlab-workhorse-api-request': token },
      });
      return { status: res.statusCode, type: res.headers['content-type'], body: await res.body.text() };
    };
    const now = Math.floor(Date.now() / 1000);
    expect((await authorize()).status).toBe(401);
    expect((await authorize(signJwt({ iss: 'gitlab-workhorse', iat: now }, randomBytes(32)))).status).toBe(401);
    expect((await authorize(signJwt({ iss: 'gitlab-workhorse', iat: now - 120 }, secret))).status).toBe(401);
    expect((await authorize(signJwt({ iss: 'someone-else', iat: now }, secret))).status).toBe(401);
    const granted = await authorize(signJwt({ iss: 'gitlab-workhorse', iat: now }, secret));
    expect(granted.status).toBe(200);
    expect(granted.type).toBe('application/vnd.gitlab-workhorse+json');
    expect(JSON.parse(granted.body)).toEqual({ TempPath: tempDir, MaximumSize: 5_242_880, UploadHashFunctions: ['sha256'] });

    child.kill('SIGINT');
    expect(await exited).toBe(0);
    // The run's secret and temp dir go with it.
    expect(existsSync(secretPath)).toBe(false);
  });
});
