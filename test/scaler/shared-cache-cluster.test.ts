import { mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { sendScaledImage } from '../../backend/index.js';
import { startBackend } from '../helpers/backend.js';
import { type Running, startCli } from '../helpers/cli.js';
import { photo } from '../helpers/images.js';
import { HAVE_REDIS, startRedis } from '../helpers/redis.js';

const dir = mkdtempSync(join(tmpdir(), 'outrider-shared-cluster-'));

/** N real `outrider` processes in front of one backend that asks for `file` at ?w=, sharing one Redis. */
async function cluster(n: number, file: string, extra = '') {
  const redis = await startRedis();
  const backend = await startBackend((req, res) => {
    const width = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('w'));
    const { name, value } = sendScaledImage({ location: file, width, contentType: 'image/png' });
    res.writeHead(200, { [name]: value }).end();
  });
  const toml = `listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\n[image_resizer]\nmax_filesize = 20000000\n[image_resizer.shared_cache]\nurl = "${redis.url}"\n${extra}`;
  const nodes = await Promise.all(Array.from({ length: n }, () => startCli(toml)));
  await Promise.all(nodes.map((node) => node.waitFor((l) => l.msg === 'shared cache available', 'the shared cache connected')));
  return { redis, nodes };
}

async function fetchImage(node: Running, width: number) {
  const res = await request(`http://${node.listen}/avatar?w=${width}`);
  const body = Buffer.from(await res.body.arrayBuffer());
  const meta = res.statusCode === 200 ? await sharp(body).metadata() : undefined;
  return { status: res.statusCode, width: meta?.width, height: meta?.height };
}

const outcomes = (node: Running) => node.logs.filter((l) => l.subsystem === 'scaler').map((l) => l.outcome as string);

/** The scaler outcomes a process logged, once it has logged `count` (its lines arrive through a pipe). */
async function outcomesOf(node: Running, count: number): Promise<string[]> {
  for (let waited = 0; outcomes(node).length < count && waited < 5000; waited += 20) await new Promise((r) => setTimeout(r, 20));
  return outcomes(node);
}

describe.skipIf(!HAVE_REDIS && process.env.CI !== 'true')('the shared cache across Outrider processes', () => {
  it('shares a scaled image between two processes, and a changed source is a miss on both', async () => {
    const file = join(dir, 'change.png');
    writeFileSync(file, await photo(600, 600, 'png'));
    const { nodes } = await cluster(2, file);
    const [a, b] = nodes as [Running, Running];
    expect(await fetchImage(a, 64)).toMatchObject({ status: 200, width: 64, height: 64 });
    expect(await fetchImage(b, 64)).toMatchObject({ status: 200, width: 64, height: 64 });
    expect(await outcomesOf(a, 1)).toEqual(['scaled']);
    expect(await outcomesOf(b, 1)).toEqual(['shared-hit']);
    // The avatar is replaced (new bytes, new mtime): neither process serves the old one, from
    // its own cache or from Redis.
    writeFileSync(file, await photo(600, 300, 'png'));
    const later = new Date(Date.now() + 5000);
    utimesSync(file, later, later);
    expect(await fetchImage(b, 64)).toMatchObject({ status: 200, width: 64, height: 32 });
    expect(await fetchImage(a, 64)).toMatchObject({ status: 200, width: 64, height: 32 });
    expect(await outcomesOf(b, 2)).toEqual(['shared-hit', 'scaled']);
    expect(await outcomesOf(a, 2)).toEqual(['scaled', 'shared-hit']);
  });

  it('scales a new avatar once for a stampede of 90 concurrent requests spread over three processes', async () => {
    const file = join(dir, 'stampede.png');
    writeFileSync(file, await photo(1600, 1600, 'png'));
    // Generous limits: a suite running on two busy cores must not turn a slow reply into a second job.
    const { nodes } = await cluster(3, file, 'timeout = "2s"\nlease = "30s"\nlease_wait = "30s"\n');
    const answers = await Promise.all(Array.from({ length: 90 }, (_, i) => fetchImage(nodes[i % 3] as Running, 80)));
    expect(answers.filter((a) => a.status !== 200 || a.width !== 80)).toEqual([]);
    await Promise.all(nodes.map((n) => outcomesOf(n, 30)));
    const all = nodes.flatMap(outcomes);
    expect(all).toHaveLength(90);
    expect(all.filter((o) => o === 'scaled')).toHaveLength(1);
    // The other 89 shared it: in the same process (coalesced) or through Redis (shared-hit).
    expect(all.filter((o) => o !== 'coalesced' && o !== 'shared-hit')).toEqual(['scaled']);
    expect(nodes.flatMap((n) => n.logs).filter((l) => l.subsystem === 'scaler' && l.outcome === 'served-original')).toEqual([]);
  });
});
