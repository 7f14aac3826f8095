import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';

const MiB = 1024 * 1024;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Resolves when `promise` does, or fails the test with `what` after `ms`. */
function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  return Promise.race([promise, sleep(ms).then(() => Promise.reject(new Error(`timed out: ${what}`)))]);
}

describe('streaming through the proxy', () => {
  it('relays the first bytes of a response before the backend has finished it, and 8 MiB intact', async () => {
    const payload = randomBytes(8 * MiB);
    let clientGotFirst!: () => void;
    const firstSeen = new Promise<void>((r) => {
      clientGotFirst = r;
    });
    const backend = await startBackend(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(payload.subarray(0, 1024));
      // The rest is only sent once the client has seen the first kilobyte through the proxy.
      await within(5000, 'first bytes to reach the client', firstSeen);
      res.end(payload.subarray(1024));
    });
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/big`);
    const chunks: Buffer[] = [];
    for await (const chunk of res.body) {
      chunks.push(chunk as Buffer);
      clientGotFirst();
    }
    const got = Buffer.concat(chunks);
    expect(got.length).toBe(8 * MiB);
    expect(sha256(got)).toBe(sha256(payload));
  });

  it('streams an 8 MiB request body to the backend as it arrives, intact', async () => {
    const payload = randomBytes(8 * MiB);
    let backendGotFirst!: () => void;
    const firstSeen = new Promise<void>((r) => {
      backendGotFirst = r;
    });
    const backend = await startBackend((req, res) => {
      const hash = createHash('sha256');
      let size = 0;
      req.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        size += chunk.length;
        backendGotFirst();
      });
      req.on('end', () => res.end(JSON.stringify({ size, sha256: hash.digest('hex') })));
    });
    const proxy = await startProxy(backend.url);
    async function* body() {
      yield payload.subarray(0, 64 * 1024);
      // The rest is only produced once the backend has received the first part through the proxy.
      await within(5000, 'first request bytes to reach the backend', firstSeen);
      for (let off = 64 * 1024; off < payload.length; off += MiB) yield payload.subarray(off, Math.min(off + MiB, payload.length));
    }
    const res = await request(`${proxy.url}/upload`, {
      method: 'PUT',
      body: Readable.from(body()),
      headers: { 'content-length': String(payload.length) },
    });
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toEqual({ size: payload.length, sha256: sha256(payload) });
  });

  it('holds a slow client to what the sockets buffer instead of reading the whole backend response into memory', async () => {
    const total = 256 * MiB;
    let written = 0;
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-length': String(total) });
      const chunk = Buffer.alloc(MiB, 1);
      const pump = () => {
        while (written < total) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
    });
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/huge`);
    expect(res.statusCode).toBe(200);
    // The client reads nothing for a while: backpressure must stop the backend far short of the whole body.
    await sleep(1000);
    expect(written).toBeLessThan(total / 4);
    let received = 0;
    for await (const chunk of res.body) received += (chunk as Buffer).length;
    expect(received).toBe(total);
  });
});
