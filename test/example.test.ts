import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';

// What `npm start` runs, after `npm run build` (pretest builds too).
const START = fileURLToPath(new URL('../dist/example/start.js', import.meta.url));

describe('npm start', () => {
  it('brings up Outrider in front of the example backend and stops both on Ctrl-C', async () => {
    const child = spawn(process.execPath, [START], {
      env: { ...process.env, OUTRIDER_PORT: '0', EXAMPLE_BACKEND_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    onTestFinished(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    let out = '';
    const base = await Promise.race([
      new Promise<string>((resolve) => {
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /Outrider is up on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
          if (m) resolve(m[1] as string);
        });
      }),
      sleep(10_000).then(() => Promise.reject(new Error(`npm start did not come up:\n${out}`))),
    ]);
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
});
