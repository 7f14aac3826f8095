import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { Agent, Client, request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { WebSocket } from 'ws';
import { buildProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { CLI, configFile, startCli } from '../../helpers/cli.js';
import { certificate, tlsDir as dir } from '../../helpers/tls.js';
import { startWsBackend } from '../../helpers/ws.js';

/** The common name of the certificate a new TLS connection to `port` is given. */
function servedName(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      const name = socket.getPeerCertificate().subject?.CN;
      socket.destroy();
      resolve(String(name));
    });
    socket.once('error', reject);
  });
}

const trusting = (ca: string) => {
  const agent = new Agent({ connect: { ca: execFileSync('cat', [ca]) } });
  onTestFinished(() => agent.close());
  return agent;
};

describe('[tls] on the listener', () => {
  it('serves HTTPS: proxied answers stream, instruction headers work, and WebSocket runs over TLS', async () => {
    const pair = certificate('edge-a');
    const backend = await startBackend((req, res) => {
      if (req.url === '/file') {
        const file = join(dir, 'hello.txt');
        writeFileSync(file, 'hello over tls\n');
        res.writeHead(200, { 'x-sendfile': file, 'content-type': 'text/plain' }).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first ');
      setTimeout(() => res.end('second'), 50);
    });
    const app = buildProxy(backend.url, { toml: `[tls]\ncertificate = "${pair.cert}"\nkey = "${pair.key}"\n` });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const port = (app.server.address() as { port: number }).port;
    const dispatcher = trusting(pair.cert);
    const streamed = await request(`https://127.0.0.1:${port}/stream`, { dispatcher });
    expect(streamed.statusCode).toBe(200);
    expect(await streamed.body.text()).toBe('first second');
    const file = await request(`https://127.0.0.1:${port}/file`, { dispatcher });
    expect(await file.body.text()).toBe('hello over tls\n');
    // Plain HTTP to the TLS port is not served.
    await expect(request(`http://127.0.0.1:${port}/stream`, { headersTimeout: 2000 })).rejects.toThrow();

    const ws = await startWsBackend();
    const wsApp = buildProxy(ws.url, { toml: `[tls]\ncertificate = "${pair.cert}"\nkey = "${pair.key}"\n` });
    await wsApp.listen({ port: 0, host: '127.0.0.1' });
    const wsPort = (wsApp.server.address() as { port: number }).port;
    const client = new WebSocket(`wss://127.0.0.1:${wsPort}/cable`, { ca: execFileSync('cat', [pair.cert]) });
    await new Promise((resolve, reject) => {
      client.once('open', resolve);
      client.once('error', reject);
    });
    const echoed = new Promise<string>((resolve) => client.once('message', (d) => resolve(d.toString())));
    client.send('over wss');
    expect(await echoed).toBe('over wss');
    client.close();
  });

  it('stops at start with exit code 2 naming the file when the certificate or key is missing or bad', () => {
    const pair = certificate('edge-bad');
    const other = certificate('edge-other');
    const junk = join(dir, 'junk.pem');
    writeFileSync(junk, 'not a certificate\n');
    const run = (tls: string) =>
      spawnSync(process.execPath, [CLI, '--config', configFile(`listen_addr = "127.0.0.1:0"\n[tls]\n${tls}`)], {
        encoding: 'utf8',
        timeout: 10_000,
      });
    const missing = run(`certificate = "${join(dir, 'nope.crt')}"\nkey = "${pair.key}"\n`);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain(`${join(dir, 'nope.crt')}: cannot read the TLS certificate ([tls] certificate): no such file`);
    const notPem = run(`certificate = "${junk}"\nkey = "${pair.key}"\n`);
    expect(notPem.status).toBe(2);
    expect(notPem.stderr).toContain(junk);
    const mismatch = run(`certificate = "${pair.cert}"\nkey = "${other.key}"\n`);
    expect(mismatch.status).toBe(2);
    expect(mismatch.stderr).toContain(`the key ${other.key} ([tls] key) does not belong to this certificate`);
    const version = run(`certificate = "${pair.cert}"\nkey = "${pair.key}"\nmin_version = "tls1.1"\n`);
    expect(version.status).toBe(2);
    expect(version.stderr).toMatch(/tls\.min_version/);
  });

  it('takes a new certificate on SIGHUP without dropping open connections, and keeps the old one when the new is bad', async () => {
    const a = certificate('edge-one');
    const b = certificate('edge-two');
    const live = { cert: join(dir, 'live.crt'), key: join(dir, 'live.key') };
    copyFileSync(a.cert, live.cert);
    copyFileSync(a.key, live.key);
    const backend = await startBackend((_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('ok'));
    const edge = await startCli(
      `listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\n[tls]\ncertificate = "${live.cert}"\nkey = "${live.key}"\n`,
    );
    const port = Number(edge.listen.split(':').at(-1));
    expect(await servedName(port)).toBe('edge-one');
    // A keep-alive connection made with the first certificate.
    const kept = new Client(`https://127.0.0.1:${port}`, { connect: { rejectUnauthorized: false } });
    onTestFinished(() => kept.close());
    expect((await kept.request({ path: '/', method: 'GET' })).statusCode).toBe(200);

    copyFileSync(b.cert, live.cert);
    copyFileSync(b.key, live.key);
    edge.child.kill('SIGHUP');
    await edge.waitFor((l) => l.msg === 'tls certificate reloaded', 'the reload');
    expect(await servedName(port)).toBe('edge-two');
    const again = await kept.request({ path: '/', method: 'GET' });
    expect(again.statusCode).toBe(200);
    await again.body.text();

    // A bad pair on reload: logged, and the one in use stays.
    writeFileSync(live.cert, 'garbage\n');
    edge.child.kill('SIGHUP');
    await edge.waitFor((l) => l.msg === 'tls reload failed: keeping the certificate in use', 'the failed reload');
    expect(await servedName(port)).toBe('edge-two');
    expect(edge.child.exitCode).toBeNull();
  });

  it('has the primary pass SIGHUP to every worker, each reloading its own listener', async () => {
    const pair = certificate('edge-workers');
    const backend = await startBackend((_req, res) => res.writeHead(200).end('ok'));
    const edge = await startCli(
      `listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\nworkers = 2\n[tls]\ncertificate = "${pair.cert}"\nkey = "${pair.key}"\n`,
    );
    edge.child.kill('SIGHUP');
    for (let waited = 0; edge.logs.filter((l) => l.msg === 'tls certificate reloaded').length < 2 && waited < 5000; waited += 50) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const reloaded = edge.logs.filter((l) => l.msg === 'tls certificate reloaded');
    expect(new Set(reloaded.map((l) => l.pid)).size).toBe(2);
    expect(edge.child.exitCode).toBeNull();
  });
});
