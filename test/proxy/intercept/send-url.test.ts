import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { decodeSendData } from '../../../protocol/send-data.js';
import { buildProxy, startProxy } from '../../helpers/app.js';
import { type Backend, startBackend } from '../../helpers/backend.js';

const CONTENT = 'CONTENT!'.repeat(1024); // 8 KiB, as in Workhorse's test

function sendUrl(params: Record<string, unknown>, alphabet: 'base64url' | 'base64' = 'base64url'): string {
  return `send-url:${Buffer.from(JSON.stringify(params)).toString(alphabet)}`;
}

/** The app backend: answers every request with the directive and its own caching headers. */
async function railsLike(directive: string, extra: Record<string, string> = {}): Promise<Backend> {
  return startBackend((_req, res) => {
    res.writeHead(200, {
      'gitlab-workhorse-send-data': directive,
      'content-type': 'text/plain; charset=utf-8',
      'content-disposition': 'attachment; filename="archive.txt"',
      'cache-control': 'no-cache',
      pragma: 'no-cache',
      ...extra,
    });
    res.end('BACKEND BODY');
  });
}

/** An object-storage-like origin with ranges, ETags, redirects and failures. */
async function origin(): Promise<Backend> {
  return startBackend((req, res) => {
    if (req.url === '/redirect') return void res.writeHead(307, { location: '/file' }).end();
    if (req.url === '/missing') {
      return void res
        .writeHead(404, { 'content-type': 'application/xml', 'x-amz-request-id': 'R1' })
        .end('<Error><Code>NoSuchKey</Code><BucketName>secret-bucket</BucketName></Error>');
    }
    if (req.url === '/chunked') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(CONTENT.slice(0, 4096));
      return void setTimeout(() => res.end(CONTENT.slice(4096)), 20);
    }
    if (req.headers['if-none-match'] === '"abc"') return void res.writeHead(304, { etag: '"abc"' }).end();
    const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    const headers = { etag: '"abc"', 'cache-control': 'public, max-age=3600', 'content-type': 'application/octet-stream' };
    if (range) {
      const [start, end] = [Number(range[1]), Number(range[2])];
      res.writeHead(206, { ...headers, 'content-range': `bytes ${start}-${end}/${CONTENT.length}`, 'content-length': end - start + 1 });
      return void res.end(CONTENT.slice(start, end + 1));
    }
    res.writeHead(200, { ...headers, 'content-length': CONTENT.length });
    res.end(CONTENT);
  });
}

describe('send-url', () => {
  it("streams the URL's content with its length, keeping the backend's caching and disposition headers", async () => {
    const store = await origin();
    const backend = await railsLike(sendUrl({ URL: `${store.url}/file`, AllowRedirects: false }));
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/artifacts/1/download`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe(CONTENT);
    expect(res.headers['content-length']).toBe(String(CONTENT.length));
    expect(res.headers['content-type']).toBe('application/octet-stream');
    expect(res.headers['content-disposition']).toBe('attachment; filename="archive.txt"');
    expect(res.headers['cache-control']).toBe('no-cache');
    expect(res.headers.pragma).toBe('no-cache');
    expect(res.headers['x-accel-buffering']).toBe('no');
    expect(res.headers['gitlab-workhorse-send-data']).toBeUndefined();
  });

  it('relays a chunked origin response as chunked', async () => {
    const store = await origin();
    const backend = await railsLike(sendUrl({ url: `${store.url}/chunked` }));
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/x`);
    expect(res.headers['content-length']).toBeUndefined();
    expect(res.headers['transfer-encoding']).toBe('chunked');
    expect(await res.body.text()).toBe(CONTENT);
  });

  it("passes the client's Range and conditional headers to the origin", async () => {
    const store = await origin();
    const backend = await railsLike(sendUrl({ URL: `${store.url}/file` }));
    const app = buildProxy(backend.url);
    const part = await app.inject({ url: '/x', headers: { range: 'bytes=1-2' } });
    expect(part.statusCode).toBe(206);
    expect(part.headers['content-range']).toBe(`bytes 1-2/${CONTENT.length}`);
    expect(part.body).toBe('ON');
    const fresh = await app.inject({ url: '/x', headers: { 'if-none-match': '"abc"' } });
    expect(fresh.statusCode).toBe(304);
    expect(fresh.body).toBe('');
  });

  it('follows redirects only when AllowRedirects is true', async () => {
    const store = await origin();
    const noFollow = await railsLike(sendUrl({ URL: `${store.url}/redirect`, AllowRedirects: false }));
    const stay = await buildProxy(noFollow.url).inject({ url: '/x' });
    expect(stay.statusCode).toBe(307);
    expect(stay.headers.location).toBe('/file');
    const follow = await railsLike(sendUrl({ URL: `${store.url}/redirect`, AllowRedirects: true }));
    const moved = await buildProxy(follow.url).inject({ url: '/x' });
    expect(moved.statusCode).toBe(200);
    expect(moved.body).toBe(CONTENT);
  });

  it("relays the origin's error status, headers and body, as Workhorse does", async () => {
    const store = await origin();
    const backend = await railsLike(sendUrl({ URL: `${store.url}/missing` }));
    const res = await buildProxy(backend.url).inject({ url: '/x' });
    expect(res.statusCode).toBe(404);
    expect(res.body).toBe('<Error><Code>NoSuchKey</Code><BucketName>secret-bucket</BucketName></Error>');
    expect(res.headers['content-type']).toBe('application/xml');
    expect(res.headers['x-amz-request-id']).toBe('R1');
    expect(res.headers['cache-control']).toBe('no-cache');
  });

  it('refuses hosts outside [outbound] allowed_hosts without contacting them', async () => {
    const store = await origin();
    const backend = await railsLike(sendUrl({ URL: `${store.url}/file` }));
    const app = buildProxy(backend.url, { toml: '[outbound]\nallowed_hosts = ["objects.example.com", "*.storage.internal"]' });
    const res = await app.inject({ url: '/x' });
    expect(res.statusCode).toBe(502);
    expect(res.body).toBe('Bad Gateway: the requested content is not available\n');
    expect(store.requests).toHaveLength(0);
  });

  it('answers 502 without detail for an invalid instruction or an unreachable origin', async () => {
    for (const directive of [
      'send-url:!!!notbase64',
      'send-url:bm90IGpzb24=',
      sendUrl({ AllowRedirects: true }),
      sendUrl({ URL: 'x', AllowRedirects: 'yes' }),
    ]) {
      const backend = await railsLike(directive);
      const res = await buildProxy(backend.url).inject({ url: '/x' });
      expect(res.statusCode).toBe(502);
      expect(res.body).toBe('Bad Gateway: the backend sent an invalid instruction\n');
      expect(res.body).not.toContain('BACKEND BODY');
    }
    const gone = await railsLike(sendUrl({ URL: 'http://127.0.0.1:1/file' }));
    const res = await buildProxy(gone.url).inject({ url: '/x' });
    expect(res.statusCode).toBe(502);
    expect(res.body).not.toContain('127.0.0.1');
  });
  it('cancels the origin request when the client leaves, before the origin answers or mid-body, and logs no failure', async () => {
    // An origin that holds /slow unanswered and sends half of /half, each until its connection closes.
    const closed: string[] = [];
    const store = await startBackend((req, res) => {
      req.socket.once('close', () => closed.push(req.url as string));
      if (req.url === '/file') return void res.end(CONTENT);
      if (req.url === '/half') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 2 * CONTENT.length });
        res.write(CONTENT);
      }
    });
    let target = '/slow';
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, { 'gitlab-workhorse-send-data': sendUrl({ URL: `${store.url}${target}`, AllowRedirects: false }) });
      res.end();
    });
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const until = async (what: string) => {
      for (let i = 0; i < 200 && !closed.includes(what); i++) await new Promise((r) => setTimeout(r, 10));
      return closed.includes(what);
    };

    const early = new AbortController();
    const pending = request(`${proxy.url}/a`, { signal: early.signal }).catch((err: Error) => err);
    for (let i = 0; i < 200 && !store.requests.some((r) => r.url === '/slow'); i++) await new Promise((r) => setTimeout(r, 10));
    early.abort();
    expect(await pending).toBeInstanceOf(Error);
    expect(await until('/slow')).toBe(true);

    target = '/half';
    const res = await request(`${proxy.url}/b`);
    expect(res.statusCode).toBe(200);
    for await (const chunk of res.body) {
      expect(chunk.length).toBeGreaterThan(0);
      res.body.destroy();
      break;
    }
    expect(await until('/half')).toBe(true);

    const failures = logs.filter((l) => l.subsystem === 'send-url' && (l.level as number) >= 40);
    expect(failures).toEqual([]);
    // Outrider keeps serving.
    target = '/file';
    expect((await request(`${proxy.url}/c`)).statusCode).toBe(200);
  });
});

describe('the send-data payload', () => {
  it('accepts URL-safe and standard base64, with or without padding, keys in any case', () => {
    const payload = { URL: 'http://a/?x=>>>', AllowRedirects: true };
    const json = Buffer.from(JSON.stringify(payload));
    for (const encoded of [json.toString('base64url'), json.toString('base64'), json.toString('base64').replace(/=+$/, '')]) {
      const data = decodeSendData(`send-url:${encoded}`, 'send-url:');
      expect(data.get('url')).toBe('http://a/?x=>>>');
      expect(data.get('allowredirects')).toBe(true);
    }
    expect(() => decodeSendData('send-url:W10=', 'send-url:')).toThrow('not a JSON object');
  });
});
