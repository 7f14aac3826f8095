import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { freePort, memoryMiB, type Proc, waitForEdge } from './procs.js';

/**
 * `npm run bench:upload`: one large multipart upload (UPLOAD_MB, default 1024) through Outrider
 * with an accelerated route, against writing the same bytes to disk directly, UPLOAD_ROUNDS times
 * (default 3) interleaved; medians. Every digest Workhorse computes (md5, sha1, sha256, sha512) is
 * computed unless UPLOAD_HASHES narrows it. Outrider runs as its own process; its peak RSS is read from
 * /proc (VmHWM) at the end. The backend (in this process) answers /authorize with a TempPath on
 * the same disk and checks the signed size and sha256 it receives.
 */
const megabytes = Number(process.env.UPLOAD_MB ?? 1024);
const rounds = Number(process.env.UPLOAD_ROUNDS ?? 3);
const size = megabytes * 1024 * 1024;
/** UPLOAD_HASHES=sha256,md5 limits the digests (the authorize answer's UploadHashFunctions); default all four. */
const hashes = (process.env.UPLOAD_HASHES ?? '').split(',').filter(Boolean);
if (hashes.length > 0 && !hashes.includes('sha256')) hashes.push('sha256'); // checked below
const cli = fileURLToPath(new URL('../proxy/cli.js', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'outrider-bench-upload-'));
const store = join(work, 'store');
mkdirSync(store);

// 1 MiB of varied bytes, repeated: the digest of the whole is computed once, up front.
const chunk = randomBytes(1024 * 1024);
const expected = (() => {
  const hash = createHash('sha256');
  for (let sent = 0; sent < size; sent += chunk.length) hash.update(chunk.subarray(0, Math.min(chunk.length, size - sent)));
  return hash.digest('hex');
})();
function* bytes() {
  for (let sent = 0; sent < size; sent += chunk.length) yield chunk.subarray(0, Math.min(chunk.length, size - sent));
}

const received: { size: string; sha256: string }[] = [];
const backend = createServer((req, res) => {
  if (req.url?.endsWith('/authorize')) {
    res.writeHead(200, { 'content-type': 'application/vnd.gitlab-workhorse+json' });
    res.end(JSON.stringify({ TempPath: store, UploadHashFunctions: hashes }));
    return;
  }
  if (req.method !== 'POST') {
    res.end('ok');
    return;
  }
  const parts: Buffer[] = [];
  req.on('data', (c: Buffer) => parts.push(c));
  req.on('end', async () => {
    const form = await new Response(Buffer.concat(parts), { headers: { 'content-type': req.headers['content-type'] ?? '' } }).formData();
    received.push({ size: String(form.get('file.size')), sha256: String(form.get('file.sha256')) });
    res.end('stored');
  });
});
await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
const backendPort = (backend.address() as AddressInfo).port;

const secret = join(work, 'secret');
writeFileSync(secret, randomBytes(32).toString('base64'));
const config = join(work, 'outrider.toml');
writeFileSync(
  config,
  `listen_addr = "127.0.0.1:0"\nauth_backend = "http://127.0.0.1:${backendPort}"\nsecret_path = "${secret}"\nlog_level = "warn"\n` +
    `[uploads]\ntemp_dir = "${store}"\n[[uploads.routes]]\nmethod = "POST"\npath = "^/uploads/"\n`,
);

/** Starts Outrider on a port of our choosing and waits until it answers. */
async function startEdge(): Promise<Proc> {
  const port = await freePort();
  const child = spawn(process.execPath, [cli, '--config', config, '--listen-addr', `127.0.0.1:${port}`], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return waitForEdge({ child, port }, config);
}

async function uploadThrough(port: number): Promise<number> {
  const boundary = 'bench-boundary';
  const head = Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n`);
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/uploads/bench',
        headers: { 'content-type': `multipart/form-data; boundary=${boundary}`, 'content-length': head.length + size + tail.length },
      },
      (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`upload answered ${res.statusCode}`))));
      },
    );
    req.on('error', reject);
    void pipeline(
      Readable.from(
        (function* () {
          yield head;
          yield* bytes();
          yield tail;
        })(),
      ),
      req,
    ).catch(reject);
  });
  return performance.now() - started;
}

async function writeDirect(): Promise<number> {
  const file = join(store, 'direct.bin');
  const started = performance.now();
  await pipeline(Readable.from(bytes()), createWriteStream(file));
  const ms = performance.now() - started;
  rmSync(file);
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const edge = await startEdge();
process.on('exit', () => edge.child.kill('SIGKILL'));
const through: number[] = [];
const direct: number[] = [];
try {
  for (let round = 1; round <= rounds; round++) {
    const a = await uploadThrough(edge.port);
    const b = await writeDirect();
    through.push(a);
    direct.push(b);
    const got = received.at(-1);
    if (got?.size !== String(size) || got.sha256 !== expected)
      throw new Error(`the backend received ${JSON.stringify(got)}, expected size ${size} sha256 ${expected}`);
    process.stdout.write(
      `round ${round}/${rounds}: through Outrider ${(size / 1048576 / (a / 1000)).toFixed(0)} MiB/s, direct to disk ${(size / 1048576 / (b / 1000)).toFixed(0)} MiB/s\n`,
    );
  }
  const peakMiB = memoryMiB(edge.child.pid).peak;
  const left = readdirSync(store);
  const mibps = (ms: number) => Math.round(size / 1048576 / (ms / 1000));
  console.table([
    {
      scenario: `multipart upload through Outrider (${megabytes} MiB)`,
      'MiB/s': mibps(median(through)),
      seconds: (median(through) / 1000).toFixed(2),
    },
    { scenario: 'the same bytes written to disk directly', 'MiB/s': mibps(median(direct)), seconds: (median(direct) / 1000).toFixed(2) },
  ]);
  process.stdout.write(
    `ratio ${(median(direct) / median(through)).toFixed(2)}x of direct; Outrider peak RSS ${peakMiB.toFixed(0)} MiB; hashes verified; temp files left: ${left.length}\n`,
  );
} finally {
  edge.child.kill('SIGTERM');
  backend.close();
  rmSync(work, { recursive: true, force: true });
}
