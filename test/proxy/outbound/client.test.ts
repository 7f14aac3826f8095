import { createServer, type Server } from 'node:http';
import { connect, type LookupFunction, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { loadConfig } from '../../../config/load.js';
import { createOutbound, type OutboundOptions } from '../../../proxy/outbound/client.js';
import { startBackend } from '../../helpers/backend.js';

function outbound(toml: string, opts: OutboundOptions = {}) {
  const client = createOutbound(loadConfig(`[outbound]\n${toml}`), { env: {}, ...opts });
  onTestFinished(() => client.close());
  return client;
}

/** Names a test controls, resolved without DNS: each maps to the addresses given. */
function fakeDns(names: Record<string, string[]>): LookupFunction {
  return ((hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => {
    const addresses = names[hostname];
    if (addresses === undefined) {
      callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }));
      return;
    }
    const list = addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
    if (options.all === true) callback(null, list);
    else callback(null, list[0]?.address, list[0]?.family);
  }) as unknown as LookupFunction;
}

describe('the outbound client', () => {
  it('refuses a name that resolves to loopback, and fetches it once allowed_hosts lists the name', async () => {
    const origin = await startBackend((_req, res) => res.end('ok'));
    const lookup = fakeDns({ 'evil.test': ['127.0.0.1'] });
    await expect(outbound('max_redirects = 5', { lookup }).request(`http://evil.test:${origin.port}/`)).rejects.toThrow(
      /evil\.test is at 127\.0\.0\.1, a loopback address/,
    );
    expect(origin.connections()).toBe(0);
    const res = await outbound('allowed_hosts = ["evil.test"]', { lookup }).request(`http://evil.test:${origin.port}/`);
    expect(await res.body.text()).toBe('ok');
  });

  it('connects only to the allowed addresses of a name that has several', async () => {
    const origin = await startBackend((_req, res) => res.end('ok'));
    // The same port on 127.0.0.2, counting connections: the refused address must never be tried.
    let refusedConnections = 0;
    const other = createServer((_req, res) => res.end('refused address reached'));
    other.on('connection', () => refusedConnections++);
    await new Promise<void>((r) => other.listen(origin.port, '127.0.0.2', r));
    onTestFinished(() => new Promise<void>((r) => other.close(() => r())));
    const lookup = fakeDns({ 'mixed.test': ['127.0.0.2', '127.0.0.1'] });
    const client = outbound('allowed_hosts = ["127.0.0.1"]', { lookup });
    for (let i = 0; i < 3; i++) expect(await (await client.request(`http://mixed.test:${origin.port}/`)).body.text()).toBe('ok');
    expect(refusedConnections).toBe(0);
  });

  it('refuses a redirect hop to a name that resolves inside', async () => {
    const target = await startBackend((_req, res) => res.end('inside'));
    const lookup = fakeDns({ 'public.test': ['127.0.0.1'], 'rebind.test': ['127.0.0.1'] });
    const bouncer = await startBackend((_req, res) => res.writeHead(302, { location: `http://rebind.test:${target.port}/` }).end());
    const client = outbound('allowed_hosts = ["public.test"]', { lookup });
    await expect(client.request(`http://public.test:${bouncer.port}/`, { allowRedirects: true })).rejects.toThrow(/rebind\.test/);
    expect(target.connections()).toBe(0);
  });

  it('drops credentials on a redirect to another host, keeps them on the same host', async () => {
    const seen: (string | undefined)[] = [];
    const target = await startBackend((req, res) => {
      seen.push(req.headers.authorization);
      res.end('ok');
    });
    const lookup = fakeDns({ 'a.test': ['127.0.0.1'], 'b.test': ['127.0.0.1'] });
    const bouncer = await startBackend((req, res) =>
      res.writeHead(307, { location: req.url === '/other' ? `http://b.test:${target.port}/` : `http://a.test:${target.port}/` }).end(),
    );
    const client = outbound('allowed_hosts = ["a.test", "b.test"]', { lookup });
    const headers = { authorization: 'Bearer secret' };
    await (await client.request(`http://a.test:${bouncer.port}/same`, { allowRedirects: true, headers })).body.text();
    await (await client.request(`http://a.test:${bouncer.port}/other`, { allowRedirects: true, headers })).body.text();
    expect(seen).toEqual(['Bearer secret', undefined]);
  });

  it('goes through HTTP_PROXY, except for NO_PROXY hosts, still refusing what the policy refuses', async () => {
    const origin = await startBackend((_req, res) => res.end('from origin'));
    const tunnels: string[] = [];
    const proxy: Server = createServer((_req, res) => res.writeHead(405).end());
    proxy.on('connect', (req, client: Socket, head: Buffer) => {
      tunnels.push(req.url as string);
      const [host, port] = (req.url as string).split(':');
      const upstream = connect(Number(port), host as string, () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        upstream.write(head);
        upstream.pipe(client).pipe(upstream);
      });
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    onTestFinished(() => new Promise<void>((r) => proxy.close(() => r())));
    proxy.on('connection', (s: Socket) => onTestFinished(() => void s.destroy()));
    const proxyUrl = `http://127.0.0.1:${(proxy.address() as { port: number }).port}`;

    const via = outbound('allowed_hosts = ["127.0.0.1"]', { env: { HTTP_PROXY: proxyUrl } });
    expect(await (await via.request(`${origin.url}/a`)).body.text()).toBe('from origin');
    expect(tunnels).toEqual([`127.0.0.1:${origin.port}`]);

    const bypass = outbound('allowed_hosts = ["127.0.0.1"]', { env: { http_proxy: proxyUrl, NO_PROXY: '127.0.0.1' } });
    expect(await (await bypass.request(`${origin.url}/b`)).body.text()).toBe('from origin');
    expect(tunnels).toHaveLength(1);

    const refusing = outbound('max_redirects = 5', { env: { HTTP_PROXY: proxyUrl } });
    await expect(refusing.request(`${origin.url}/c`)).rejects.toThrow(/loopback/);
    // The proxy resolves the name itself and may take any of its addresses: one refused is enough.
    const lookup = fakeDns({ 'mixed.test': ['127.0.0.1', '10.1.2.3'] });
    const mixed = outbound('allowed_hosts = ["127.0.0.1"]', { env: { HTTP_PROXY: proxyUrl }, lookup });
    await expect(mixed.request(`http://mixed.test:${origin.port}/d`)).rejects.toThrow(/10\.1\.2\.3, a private address/);
    expect(tunnels).toHaveLength(1);
  });
});
