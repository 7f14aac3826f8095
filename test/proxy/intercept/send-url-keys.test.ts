import { request } from 'undici';
import { describe, expect, it, vi } from 'vitest';
import { buildProxy, startProxy } from '../../helpers/app.js';
import { type Backend, readBody, startBackend } from '../../helpers/backend.js';
import { photo } from '../../helpers/images.js';

/** Every key `Gitlab::Workhorse.send_url` writes, as Rails encodes them. */
function sendUrl(params: Record<string, unknown>): string {
  return `send-url:${Buffer.from(JSON.stringify(params)).toString('base64url')}`;
}

async function railsLike(directive: string, extra: Record<string, string> = {}): Promise<Backend> {
  return startBackend((_req, res) => {
    res.writeHead(200, { 'gitlab-workhorse-send-data': directive, 'cache-control': 'private', ...extra });
    res.end();
  });
}

/** An origin that records what it was sent and answers with what the test sets. */
async function recordingOrigin(answer: { status?: number; headers?: Record<string, string>; body?: string | Buffer } = {}) {
  const seen: { method: string; headers: Record<string, unknown>; body: string }[] = [];
  const server = await startBackend(async (req, res) => {
    const body = (await readBody(req)).toString();
    seen.push({ method: req.method as string, headers: req.headers, body });
    res.writeHead(answer.status ?? 200, { 'content-type': 'application/octet-stream', ...answer.headers });
    res.end(answer.body ?? 'ORIGIN');
  });
  return { ...server, seen };
}

/** `[outbound]` as a site would write it with no loopback opened: the default policy. */
const DEFAULT_POLICY = '[outbound]\nmax_redirects = 5';

describe('send-url: the keys Rails sends', () => {
  it('sends Method, Body and Header to the origin, with the client Range', async () => {
    const origin = await recordingOrigin();
    const backend = await railsLike(
      sendUrl({
        URL: `${origin.url}/v2/token`,
        Method: 'POST',
        Body: '{"scope":"repository:a/b:pull"}',
        Header: { Authorization: ['Bearer upstream-token'], 'X-Multi': ['one', 'two'], Connection: ['close'] },
      }),
    );
    const res = await buildProxy(backend.url).inject({ url: '/x', headers: { range: 'bytes=0-1' } });
    expect(res.statusCode).toBe(200);
    expect(res.body).toBe('ORIGIN');
    expect(origin.seen).toHaveLength(1);
    const [sent] = origin.seen;
    expect(sent?.method).toBe('POST');
    expect(sent?.body).toBe('{"scope":"repository:a/b:pull"}');
    expect(sent?.headers.authorization).toBe('Bearer upstream-token');
    expect(sent?.headers['x-multi']).toBe('one, two');
    expect(sent?.headers.range).toBe('bytes=0-1');
    // A hop-by-hop header in the instruction is not sent: the connection is Outrider's.
    expect(sent?.headers.connection).toBe('keep-alive');
  });

  it('sends a GET with no body when Method and Body are absent', async () => {
    const origin = await recordingOrigin();
    const backend = await railsLike(sendUrl({ URL: `${origin.url}/f`, Body: '' }));
    await buildProxy(backend.url).inject({ url: '/x' });
    expect(origin.seen[0]?.method).toBe('GET');
    expect(origin.seen[0]?.headers['content-length']).toBeUndefined();
  });

  it('sets ResponseHeaders on the answer, replacing the origin and backend headers of those names', async () => {
    const origin = await recordingOrigin({ headers: { 'content-type': 'application/octet-stream', 'x-origin': 'kept' } });
    const backend = await railsLike(
      sendUrl({
        URL: `${origin.url}/f`,
        ResponseHeaders: {
          'Content-Type': ['application/vnd.docker.distribution.manifest.v2+json'],
          'Cache-Control': ['max-age=60'],
          'X-Two': ['a', 'b'],
        },
      }),
    );
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/x`);
    expect(res.headers['content-type']).toBe('application/vnd.docker.distribution.manifest.v2+json');
    expect(res.headers['cache-control']).toBe('max-age=60');
    expect(res.headers['x-two']).toEqual(['a', 'b']);
    expect(res.headers['x-origin']).toBe('kept');
    expect(await res.body.text()).toBe('ORIGIN');
  });

  it("relays an origin error's status and body whatever ErrorResponseStatus says", async () => {
    const origin = await recordingOrigin({
      status: 404,
      headers: { 'content-type': 'application/json' },
      body: '{"errors":[{"code":"MANIFEST_UNKNOWN"}]}',
    });
    const backend = await railsLike(sendUrl({ URL: `${origin.url}/f`, ErrorResponseStatus: 503 }));
    const res = await buildProxy(backend.url).inject({ url: '/x' });
    expect(res.statusCode).toBe(404);
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.body).toBe('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}');
  });

  it('answers ErrorResponseStatus when the origin cannot be reached, and 502 without it', async () => {
    const chosen = await railsLike(sendUrl({ URL: 'http://127.0.0.1:1/f', ErrorResponseStatus: 503, TimeoutResponseStatus: 504 }));
    const res = await buildProxy(chosen.url).inject({ url: '/x' });
    expect(res.statusCode).toBe(503);
    expect(res.body).toBe('Service Unavailable\n');
    const plain = await railsLike(sendUrl({ URL: 'http://127.0.0.1:1/f' }));
    expect((await buildProxy(plain.url).inject({ url: '/x' })).statusCode).toBe(502);
  });

  it('gives up after ResponseHeaderTimeout and answers TimeoutResponseStatus', async () => {
    const silent = await startBackend(() => undefined);
    const backend = await railsLike(
      sendUrl({ URL: `${silent.url}/f`, ResponseHeaderTimeout: '300ms', TimeoutResponseStatus: 503, ErrorResponseStatus: 500 }),
    );
    const started = Date.now();
    const res = await buildProxy(backend.url).inject({ url: '/x' });
    expect(res.statusCode).toBe(503);
    expect(Date.now() - started).toBeLessThan(5_000);
    const plain = await railsLike(sendUrl({ URL: `${silent.url}/f`, ResponseHeaderTimeout: '300ms' }));
    expect((await buildProxy(plain.url).inject({ url: '/x' })).statusCode).toBe(504);
  });

  it('refuses loopback when the instruction says AllowLocalhost: false, even where the config allows it', async () => {
    const origin = await recordingOrigin();
    for (const narrowing of [{ AllowLocalhost: false }, { SSRFFilter: true, AllowLocalhost: false }, { SSRFFilter: true }]) {
      const backend = await railsLike(sendUrl({ URL: `${origin.url}/f`, ErrorResponseStatus: 403, ...narrowing }));
      const logs: Record<string, unknown>[] = [];
      const res = await buildProxy(backend.url, { logs }).inject({ url: '/x' });
      expect(res.statusCode, JSON.stringify(narrowing)).toBe(403);
      expect(res.body).not.toContain('127.0.0.1');
      expect(logs.find((l) => l.status === 'refused')?.reason).toMatch(/loopback/);
    }
    expect(origin.seen).toHaveLength(0);
    const allowed = await railsLike(sendUrl({ URL: `${origin.url}/f`, SSRFFilter: true, AllowLocalhost: true }));
    expect((await buildProxy(allowed.url).inject({ url: '/x' })).statusCode).toBe(200);
  });

  it('never widens the config: AllowLocalhost and AllowedURIs do not open a loopback origin the config refuses', async () => {
    const origin = await recordingOrigin();
    const backend = await railsLike(sendUrl({ URL: `${origin.url}/f`, SSRFFilter: true, AllowLocalhost: true, AllowedURIs: [origin.url] }));
    const res = await buildProxy(backend.url, { toml: DEFAULT_POLICY }).inject({ url: '/x' });
    expect(res.statusCode).toBe(502);
    expect(origin.seen).toHaveLength(0);
  });

  it('answers 502 for keys of the wrong type', async () => {
    for (const bad of [
      { Method: 'GE T' },
      { Header: ['x'] },
      { Header: { 'X-A': ['line\r\nInjected: 1'] } },
      { ResponseHeaders: { 'X-Name': ['Łódź'] } },
      { ErrorResponseStatus: 'bad' },
      { ResponseHeaderTimeout: 'soon' },
      { AllowedURIs: 'x' },
    ]) {
      const backend = await railsLike(sendUrl({ URL: 'http://127.0.0.1:1/f', ...bad }));
      const res = await buildProxy(backend.url).inject({ url: '/x' });
      expect(res.statusCode, JSON.stringify(bad)).toBe(502);
      expect(res.body).toBe('Bad Gateway: the backend sent an invalid instruction\n');
    }
  });
});

describe('send-url: HEAD and failures before the first byte', () => {
  it('answers HEAD with the origin head without reading its body', async () => {
    // An origin whose body never ends: reading it would never finish.
    const origin = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-origin': 'yes' });
      const timer = setInterval(() => res.write(Buffer.alloc(64 * 1024)), 5);
      res.on('close', () => clearInterval(timer));
    });
    const backend = await railsLike(sendUrl({ URL: `${origin.url}/big` }));
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/x`, { method: 'HEAD' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-origin']).toBe('yes');
    expect(await res.body.text()).toBe('');
  });

  it('answers ErrorResponseStatus when the origin dies before the bytes that decide the content type', async () => {
    const origin = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html', 'content-length': '100000' });
      res.write('<html>');
      setTimeout(() => res.destroy(), 20);
    });
    const backend = await railsLike(sendUrl({ URL: `${origin.url}/f`, ErrorResponseStatus: 503 }), {
      'gitlab-workhorse-detect-content-type': 'true',
    });
    const res = await buildProxy(backend.url).inject({ url: '/x' });
    expect(res.statusCode).toBe(503);
    expect(res.body).toBe('Service Unavailable\n');
  });
});

describe('send-url: the default outbound policy', () => {
  it('refuses loopback, by address or by a name that resolves to it, without connecting', async () => {
    const origin = await recordingOrigin();
    for (const url of [`${origin.url}/f`, `http://localhost:${origin.port}/f`, `http://[::ffff:127.0.0.1]:${origin.port}/f`]) {
      const backend = await railsLike(sendUrl({ URL: url }));
      const logs: Record<string, unknown>[] = [];
      const res = await buildProxy(backend.url, { toml: DEFAULT_POLICY, logs }).inject({ url: '/x' });
      expect(res.statusCode, url).toBe(502);
      expect(res.body).toBe('Bad Gateway: the requested content is not available\n');
      expect(logs.find((l) => l.status === 'refused')?.reason, url).toMatch(/loopback address/);
    }
    expect(origin.connections()).toBe(0);
  });

  it('refuses the cloud metadata address and private ranges at once, naming the kind of address', async () => {
    for (const [url, kind] of [
      ['http://169.254.169.254/latest/meta-data/', 'metadata'],
      ['http://10.1.2.3/', 'private'],
      ['http://192.168.0.1/', 'private'],
      ['http://100.64.0.1/', 'shared (CGNAT)'],
      ['http://[fd00::1]/', 'private'],
      ['http://0.0.0.0/', 'unspecified'],
    ]) {
      const backend = await railsLike(sendUrl({ URL: url }));
      const logs: Record<string, unknown>[] = [];
      const started = Date.now();
      const res = await buildProxy(backend.url, { toml: DEFAULT_POLICY, logs }).inject({ url: '/x' });
      expect(res.statusCode, url).toBe(502);
      expect(Date.now() - started, url).toBeLessThan(1_000);
      // Refused by the policy, not failed on the network.
      expect(logs.find((l) => l.status === 'refused')?.reason, url).toContain(`a ${kind} address`);
    }
  });

  it('opens an internal host listed by name, and refuses a redirect from it to an address not listed', async () => {
    const target = await recordingOrigin();
    const bouncer = await startBackend((_req, res) => res.writeHead(302, { location: `${target.url}/f` }).end());
    const direct = await railsLike(sendUrl({ URL: `http://localhost:${target.port}/f` }));
    const toml = '[outbound]\nallowed_hosts = ["localhost"]';
    expect((await buildProxy(direct.url, { toml }).inject({ url: '/x' })).statusCode).toBe(200);
    const bounced = await railsLike(sendUrl({ URL: `http://localhost:${bouncer.port}/go`, AllowRedirects: true }));
    const res = await buildProxy(bounced.url, { toml }).inject({ url: '/x' });
    expect(res.statusCode).toBe(502);
    expect(bouncer.requests).toHaveLength(1);
    expect(target.seen).toHaveLength(1);
  });

  it('opens a listed CIDR range', async () => {
    const origin = await recordingOrigin();
    const backend = await railsLike(sendUrl({ URL: `${origin.url}/f` }));
    expect((await buildProxy(backend.url, { toml: '[outbound]\nallowed_hosts = ["127.0.0.0/8"]' }).inject({ url: '/x' })).statusCode).toBe(
      200,
    );
  });
});

describe('send-url: [outbound] max_response_bytes', () => {
  it('refuses an answer that says it is too large before sending anything', async () => {
    const origin = await recordingOrigin({ headers: { 'content-length': '4096' }, body: 'x'.repeat(4096) });
    const backend = await railsLike(sendUrl({ URL: `${origin.url}/f` }));
    const res = await buildProxy(backend.url, { toml: '[outbound]\nallowed_hosts = ["127.0.0.1"]\nmax_response_bytes = 1000' }).inject({
      url: '/x',
    });
    expect(res.statusCode).toBe(502);
  });

  it('cuts the connection when an unannounced body grows past it: never a truncated 200', async () => {
    const origin = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write('x'.repeat(800));
      setTimeout(() => res.end('y'.repeat(800)), 30);
    });
    const backend = await railsLike(sendUrl({ URL: `${origin.url}/f` }));
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: '[outbound]\nallowed_hosts = ["127.0.0.1"]\nmax_response_bytes = 1000', logs });
    const res = await request(`${proxy.url}/x`);
    expect(res.statusCode).toBe(200);
    await expect(res.body.text()).rejects.toThrow();
    // Logged once the cut response has closed, which the client may notice first.
    await vi.waitFor(() => expect(logs.find((l) => l.status === 'too-large')).toMatchObject({ subsystem: 'send-url', level: 40 }));
  });
});

describe('send-url: Gitlab-Workhorse-Detect-Content-Type', () => {
  const cases: [string, string | Buffer, string, string][] = [
    ['an HTML page', '<!DOCTYPE html><html><body><script>alert(1)</script></body></html>', 'text/plain; charset=utf-8', 'inline'],
    ['an SVG with a script', '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 'image/svg+xml', 'attachment'],
    ['plain text', 'just some notes\n', 'text/plain; charset=utf-8', 'inline'],
  ];
  for (const [what, body, type, disposition] of cases) {
    it(`serves ${what} as ${type}, ${disposition}`, async () => {
      const origin = await recordingOrigin({ headers: { 'content-type': 'text/html' }, body });
      const backend = await railsLike(sendUrl({ URL: `${origin.url}/f.html` }), { 'gitlab-workhorse-detect-content-type': 'true' });
      const proxy = await startProxy(backend.url);
      const res = await request(`${proxy.url}/x`);
      expect(res.headers['content-type']).toBe(type);
      expect(res.headers['content-disposition']).toBe(disposition);
      expect(res.headers['gitlab-workhorse-detect-content-type']).toBeUndefined();
      expect(await res.body.text()).toBe(String(body));
    });
  }

  it('serves a PNG named .html as image/png inline, the whole of a large body intact', async () => {
    const png = await photo(300, 300, 'png');
    const origin = await recordingOrigin({ headers: { 'content-type': 'text/html' }, body: png });
    const backend = await railsLike(sendUrl({ URL: `${origin.url}/avatar.html` }), {
      'gitlab-workhorse-detect-content-type': 'true',
      'content-disposition': 'attachment; filename="avatar.html"',
    });
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/x`);
    expect(res.headers['content-type']).toBe('image/png');
    // An attachment the backend chose stays one.
    expect(res.headers['content-disposition']).toBe('attachment; filename="avatar.html"');
    expect(Buffer.from(await res.body.arrayBuffer()).equals(png)).toBe(true);
  });
});
