import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { FormData, request } from 'undici';
import { cpuMs, EDGE_NODE_ARGS, freePort, median, waitForEdge } from './procs.js';

/**
 * `UPLOAD_TARGET=exif npm run bench:upload`: the cost of `strip_exif`. A ~5 MiB camera-like JPEG
 * (Exif with GPS, make, model, serial, orientation) is uploaded EXIF_UPLOADS times (default 20) to
 * a route with `strip_exif = true` and to the same route without it, alternating the two in
 * UPLOAD_ROUNDS rounds (default 5); the table gives the medians of wall time and of Outrider's CPU
 * per upload (utime + stime from /proc).
 */
export async function run(): Promise<void> {
  const uploads = Number(process.env.EXIF_UPLOADS ?? 20);
  const rounds = Number(process.env.UPLOAD_ROUNDS ?? 5);
  const cli = fileURLToPath(new URL('../proxy/cli.js', import.meta.url));
  const work = mkdtempSync(join(tmpdir(), 'outrider-bench-exif-'));
  const store = join(work, 'store');
  mkdirSync(store);
  const photo = await sharp({
    create: { width: 3400, height: 2500, channels: 3, background: '#000', noise: { type: 'gaussian', mean: 128, sigma: 30 } },
  })
    .jpeg({ quality: 92 })
    .withExif({
      IFD0: { Make: 'BenchCam', Model: 'B1', Copyright: 'bench' },
      IFD2: { BodySerialNumber: 'SERIAL-1' },
      IFD3: { GPSLatitudeRef: 'N', GPSLatitude: '51/1 30/1 0/1' },
    })
    .withMetadata({ orientation: 6 })
    .toBuffer();

  // The backend reads the small rewritten form and answers; the file is removed when the request ends.
  const backend = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end('stored'));
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  const secret = join(work, 'secret');
  writeFileSync(secret, randomBytes(32).toString('base64'));
  const config = join(work, 'outrider.toml');
  const route = (path: string, strip: boolean) =>
    `[[uploads.routes]]\nmethod = "POST"\npath = "^/${path}/"\npreauthorize = false\nstrip_exif = ${strip}\n`;
  writeFileSync(
    config,
    `listen_addr = "127.0.0.1:0"\nauth_backend = "http://127.0.0.1:${(backend.address() as AddressInfo).port}"\n` +
      `secret_path = "${secret}"\nlog_level = "warn"\n[uploads]\ntemp_dir = "${store}"\n${route('strip', true)}${route('keep', false)}`,
  );
  const port = await freePort();
  const child = spawn(process.execPath, [...EDGE_NODE_ARGS, cli, '--config', config, '--listen-addr', `127.0.0.1:${port}`], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const edge = await waitForEdge({ child, port }, config);

  const measure = async (path: string) => {
    const cpu0 = cpuMs(edge.child.pid) ?? 0;
    const started = performance.now();
    for (let i = 0; i < uploads; i++) {
      const body = new FormData();
      body.append('file', new Blob([photo], { type: 'image/jpeg' }), 'photo.jpg');
      const res = await request(`http://127.0.0.1:${port}/${path}/x`, { method: 'POST', body });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`${path} answered ${res.statusCode}`);
    }
    return { wall: (performance.now() - started) / uploads, cpu: ((cpuMs(edge.child.pid) ?? 0) - cpu0) / uploads };
  };
  const results: Record<string, { wall: number[]; cpu: number[] }> = { keep: { wall: [], cpu: [] }, strip: { wall: [], cpu: [] } };
  try {
    await measure('keep'); // warm-up
    for (let round = 0; round < rounds; round++) {
      for (const path of round % 2 === 0 ? ['keep', 'strip'] : ['strip', 'keep']) {
        const m = await measure(path);
        results[path]?.wall.push(m.wall);
        results[path]?.cpu.push(m.cpu);
      }
    }
    const spread = (xs: number[]) => `${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)}`;
    console.table(
      Object.entries(results).map(([path, r]) => ({
        route: path === 'strip' ? 'strip_exif = true' : 'strip_exif = false',
        'ms per upload': median(r.wall).toFixed(1),
        'ms spread': spread(r.wall),
        'Outrider CPU ms per upload': median(r.cpu).toFixed(1),
        'CPU spread': spread(r.cpu),
      })),
    );
    process.stdout.write(`photo ${(photo.length / 1048576).toFixed(2)} MiB; temp files left: ${readdirSync(store).length}\n`);
  } finally {
    edge.child.kill('SIGTERM');
    backend.close();
    rmSync(work, { recursive: true, force: true });
  }
}
