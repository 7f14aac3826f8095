import { readdirSync } from 'node:fs';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { readBody, startBackend } from '../../helpers/backend.js';
import { API_TYPE } from '../../helpers/uploads.js';
import { newDir, routesToml, waitFor } from './setup.js';

describe('a large upload', () => {
  it('streams hundreds of MB with flat memory, and the hashes match', { timeout: 60_000 }, async () => {
    const dir = newDir();
    const { createHash } = await import('node:crypto');
    let backendSha = '';
    const backend = await startBackend(async (req, res) => {
      if (req.url?.includes('/authorize')) {
        res.writeHead(200, { 'content-type': API_TYPE }).end(JSON.stringify({ TempPath: dir, UploadHashFunctions: ['sha256'] }));
        return;
      }
      const parsed = await new Response(await readBody(req), { headers: { 'content-type': req.headers['content-type'] ?? '' } }).formData();
      const path = String(parsed.get('file.path'));
      const hash = createHash('sha256');
      for await (const chunk of (await import('node:fs')).createReadStream(path)) hash.update(chunk as Buffer);
      backendSha = `${hash.digest('hex')} ${parsed.get('file.sha256')} ${parsed.get('file.md5')}`;
      res.end('ok');
    });
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const size = 300 * 1024 * 1024;
    const chunk = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31) % 251;
    const expected = createHash('sha256');
    const boundary = 'big-boundary';
    async function* body() {
      yield Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n`);
      for (let sent = 0; sent < size; sent += chunk.length) {
        expected.update(chunk);
        yield chunk;
      }
      yield Buffer.from(`\r\n--${boundary}--\r\n`);
    }
    global.gc?.();
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 20);
    const res = await request(`${proxy.url}/uploads/big`, {
      method: 'POST',
      headers: { 'content-type': `multipart/form-data; boundary=${boundary}` },
      body: Readable.from(body()),
    });
    clearInterval(sampler);
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    const sha = expected.digest('hex');
    // Stored bytes hash to the sent bytes; only the asked-for hash is computed (md5 absent).
    expect(backendSha).toBe(`${sha} ${sha} null`);
    // The client, the proxy and the backend share this process: the growth stays far under the file size.
    expect(peak - baseline).toBeLessThan(100 * 1024 * 1024);
    await waitFor(() => readdirSync(dir).length === 0);
    expect(readdirSync(dir)).toEqual([]);
  });
});
