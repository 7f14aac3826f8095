import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { EDGE_NODE_ARGS, freePort, median, memoryMiB, type Proc, waitForEdge } from './procs.js';

/**
 * `npm run bench:upload`: one large multipart upload (UPLOAD_MB, default 1024) through Outrider
 * with an accelerated route, against writing the same bytes to disk directly, UPLOAD_ROUNDS times
 * (default 3) interleaved; medians. Every digest Workhorse computes (md5, sha1, sha256, sha512) is
 * computed unless UPLOAD_HASHES narrows it. Outrider runs as its own process; its peak RSS is read from
 * /proc (VmHWM) at the end. The backend (in this process) answers /authorize with a TempPath on
 * the same disk and checks the signed size and sha256 it receives.
 *
 * UPLOAD_TARGET=s3 (or `all`, both) uploads to an S3-protocol server instead: s3rver in its own
 * process on 127.0.0.1, fed in turn by Outrider with its own client ([object_storage], the answer's
 * UseWorkhorseClient), by Outrider through presigned multipart URLs (PartSize as Rails picks it:
 * the size / 100, at least 5 MiB) and by the AWS SDK alone (lib-storage `Upload` in this process,
 * the server's own speed for the same bytes). The backend checks each object's size with
 * HeadObject while it handles the request; Outrider deletes the temp object afterwards. Outrider's
 * RSS is sampled every 100 ms during each upload: the table shows the largest sample per scenario.
 */
const megabytes = Number(process.env.UPLOAD_MB ?? 1024);
const rounds = Number(process.env.UPLOAD_ROUNDS ?? 3);
const size = megabytes * 1024 * 1024;
/** UPLOAD_HASHES=sha256,md5 limits the digests (the authorize answer's UploadHashFunctions); default all four. */
const hashes = (process.env.UPLOAD_HASHES ?? '').split(',').filter(Boolean);
if (hashes.length > 0 && !hashes.includes('sha256')) hashes.push('sha256'); // checked below
/** UPLOAD_TARGET: `disk` (TempPath), `s3` (object storage, three ways), `all`, or `exif` (the cost of strip_exif). */
const target = process.env.UPLOAD_TARGET ?? 'disk';
if (!['disk', 's3', 'all', 'exif'].includes(target)) throw new Error(`UPLOAD_TARGET must be disk, s3, all or exif, not ${target}`);
if (target === 'exif') {
  // The cost of strip_exif: a script of its own (bench/upload-exif.ts).
  await (await import('./upload-exif.js')).run();
  process.exit(0);
}
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

/** s3rver, as its own process: what every S3 scenario writes to. */
const s3 = target === 'disk' ? undefined : await startS3(join(work, 's3'));
const bucket = 'bench';
const s3Client =
  s3 === undefined
    ? undefined
    : new S3Client({
        endpoint: s3.endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });

/** Where the backend's authorize answer sends the next upload. */
let mode: 'disk' | 'client' | 'presigned' = 'disk';
let uploads = 0;

/** The authorize answer for `mode`, as Rails makes it (ObjectStorage::DirectUpload for the S3 ones). */
async function authorizeAnswer(): Promise<Record<string, unknown>> {
  if (mode === 'disk') return { TempPath: store, UploadHashFunctions: hashes };
  const key = `tmp/uploads/${++uploads}`;
  const client = s3Client as S3Client;
  const remote: Record<string, unknown> = {
    ID: String(uploads),
    GetURL: `${s3?.endpoint}/${bucket}/${key}`,
    DeleteURL: await getSignedUrl(client, new DeleteObjectCommand({ Bucket: bucket, Key: key }), { expiresIn: 3600 }),
  };
  if (mode === 'client') {
    Object.assign(remote, {
      UseWorkhorseClient: true,
      RemoteTempObjectID: key,
      ObjectStorage: { Provider: 'AWS', S3Config: { Bucket: bucket, Region: 'us-east-1', Endpoint: s3?.endpoint, PathStyle: true } },
    });
  } else {
    const partSize = Math.max(5 * 1024 * 1024, Math.ceil(size / 100));
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }));
    const parts = Math.ceil(size / partSize);
    const partUrls = await Promise.all(
      Array.from({ length: parts }, (_, i) =>
        getSignedUrl(client, new UploadPartCommand({ Bucket: bucket, Key: key, UploadId, PartNumber: i + 1 }), { expiresIn: 3600 }),
      ),
    );
    const ids = { Bucket: bucket, Key: key, UploadId };
    remote.MultipartUpload = {
      PartSize: partSize,
      PartURLs: partUrls,
      CompleteURL: await getSignedUrl(client, new CompleteMultipartUploadCommand(ids), { expiresIn: 3600 }),
      AbortURL: await getSignedUrl(client, new AbortMultipartUploadCommand(ids), { expiresIn: 3600 }),
    };
  }
  return { RemoteObject: remote, UploadHashFunctions: hashes };
}

const received: { size: string; sha256: string; stored?: number }[] = [];
const backend = createServer((req, res) => {
  if (req.url?.endsWith('/authorize')) {
    authorizeAnswer().then(
      (answer) => {
        res.writeHead(200, { 'content-type': 'application/vnd.gitlab-workhorse+json' });
        res.end(JSON.stringify(answer));
      },
      (err: Error) => res.writeHead(500).end(err.message),
    );
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
    const got: (typeof received)[number] = { size: String(form.get('file.size')), sha256: String(form.get('file.sha256')) };
    // Rails copies the object before it answers: its size is read here, while it exists.
    const remoteUrl = String(form.get('file.remote_url') ?? '');
    if (remoteUrl !== '' && s3Client !== undefined) {
      const key = new URL(remoteUrl).pathname.slice(`/${bucket}/`.length);
      got.stored = (await s3Client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }))).ContentLength;
    }
    received.push(got);
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
    `[uploads]\ntemp_dir = "${store}"\n[[uploads.routes]]\nmethod = "POST"\npath = "^/uploads/"\n` +
    // Presigned URLs point at s3rver on 127.0.0.1, which the outbound policy refuses unless listed.
    `[outbound]\nallowed_hosts = ["127.0.0.1"]\n` +
    `[object_storage]\nprovider = "AWS"\n[object_storage.s3]\naws_access_key_id = "S3RVER"\naws_secret_access_key = "S3RVER"\n`,
);

/** Starts Outrider on a port of our choosing and waits until it answers. */
async function startEdge(): Promise<Proc> {
  const port = await freePort();
  const child = spawn(process.execPath, [...EDGE_NODE_ARGS, cli, '--config', config, '--listen-addr', `127.0.0.1:${port}`], {
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

/** The same bytes to s3rver with the AWS SDK alone (lib-storage, its default 5 MiB parts, 4 at a time), then deleted. */
async function writeWithSdk(): Promise<number> {
  const client = s3Client as S3Client;
  const key = `direct/${++uploads}`;
  const started = performance.now();
  await new Upload({ client, params: { Bucket: bucket, Key: key, Body: Readable.from(bytes()) } }).done();
  const ms = performance.now() - started;
  await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
  return ms;
}

/** s3rver's own CLI as a child process on a free port; resolves once it listens. */
async function startS3(directory: string): Promise<Proc & { endpoint: string }> {
  mkdirSync(directory);
  const bin = createRequire(import.meta.url).resolve('s3rver/bin/s3rver.js');
  const port = await freePort();
  const args = [bin, '-d', directory, '-a', '127.0.0.1', '-p', String(port), '--silent', '--configure-bucket', 'bench'];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
    child.once('exit', (code) => reject(new Error(`s3rver exited with ${code}`)));
  });
  return { child, port, endpoint: `http://127.0.0.1:${port}` };
}

/** The largest RSS of `pid` seen every 100 ms while `work` runs, in MiB. */
async function sampled<T>(pid: number | undefined, work: () => Promise<T>): Promise<{ result: T; rssMiB: number }> {
  let rssMiB = memoryMiB(pid).rss;
  const timer = setInterval(() => {
    rssMiB = Math.max(rssMiB, memoryMiB(pid).rss);
  }, 100);
  try {
    const result = await work();
    return { result, rssMiB: Math.max(rssMiB, memoryMiB(pid).rss) };
  } finally {
    clearInterval(timer);
  }
}

const mibps = (ms: number) => Math.round(size / 1048576 / (ms / 1000));
const edge = await startEdge();
process.on('exit', () => {
  edge.child.kill('SIGKILL');
  s3?.child.kill('SIGKILL');
});

/** A scenario: what it runs, and whether it goes through Outrider (then its RSS is sampled and the backend's check applies). */
interface Scenario {
  name: string;
  run: () => Promise<number>;
  edge: boolean;
  times: number[];
  rss: number[];
}
const scenarios: Scenario[] = [];
const viaEdge = (name: string, m: typeof mode) => ({
  name,
  edge: true,
  run: () => {
    mode = m;
    return uploadThrough(edge.port);
  },
  times: [],
  rss: [],
});
if (target !== 's3') {
  scenarios.push(viaEdge(`multipart upload through Outrider to disk (${megabytes} MiB)`, 'disk'));
  scenarios.push({ name: 'the same bytes written to disk directly', edge: false, run: writeDirect, times: [], rss: [] });
}
if (target !== 'disk') {
  scenarios.push(viaEdge(`through Outrider to s3rver, own client (${megabytes} MiB)`, 'client'));
  scenarios.push(viaEdge(`through Outrider to s3rver, presigned multipart (${megabytes} MiB)`, 'presigned'));
  scenarios.push({ name: 'the same bytes to s3rver by the AWS SDK alone', edge: false, run: writeWithSdk, times: [], rss: [] });
}
try {
  for (let round = 1; round <= rounds; round++) {
    const line: string[] = [];
    for (const scenario of scenarios) {
      const { result: ms, rssMiB } = await sampled(edge.child.pid, scenario.run);
      scenario.times.push(ms);
      if (scenario.edge) {
        scenario.rss.push(rssMiB);
        const got = received.at(-1);
        const storedOk = mode === 'disk' || got?.stored === size;
        if (got?.size !== String(size) || got.sha256 !== expected || !storedOk)
          throw new Error(`the backend received ${JSON.stringify(got)}, expected size ${size} sha256 ${expected}`);
      }
      line.push(`${scenario.name.replace(/ \(\d+ MiB\)$/, '')} ${mibps(ms)} MiB/s`);
    }
    process.stdout.write(`round ${round}/${rounds}: ${line.join(', ')}\n`);
  }
  const peakMiB = memoryMiB(edge.child.pid).peak;
  const left = readdirSync(store);
  const disk = scenarios.find((x) => x.name.startsWith('the same bytes written'));
  const sdk = scenarios.find((x) => x.name.startsWith('the same bytes to s3rver'));
  console.table(
    scenarios.map((x) => {
      const base = x.name.includes('s3rver') ? sdk : disk;
      return {
        scenario: x.name,
        'MiB/s': mibps(median(x.times)),
        seconds: (median(x.times) / 1000).toFixed(2),
        'of direct': x.edge && base !== undefined ? `${(median(base.times) / median(x.times)).toFixed(2)}x` : '',
        'Outrider max RSS MiB': x.edge ? Math.round(Math.max(...x.rss)) : '',
      };
    }),
  );
  // Temp objects are deleted once each request ended; a moment for the last one's DELETE.
  await new Promise((r) => setTimeout(r, 500));
  const objects = s3Client === undefined ? 0 : ((await s3Client.send(new ListObjectsV2Command({ Bucket: bucket }))).KeyCount ?? 0);
  process.stdout.write(
    `Outrider peak RSS ${peakMiB.toFixed(0)} MiB (VmHWM); hashes verified; temp files left: ${left.length}; objects left: ${objects}\n`,
  );
} finally {
  edge.child.kill('SIGTERM');
  s3?.child.kill('SIGTERM');
  s3Client?.destroy();
  backend.close();
  rmSync(work, { recursive: true, force: true });
}
