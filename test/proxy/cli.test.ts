import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Client, request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startBackend } from '../helpers/backend.js';

// `npm test` builds first (pretest): these tests run the real `outrider` binary.
const CLI = fileURLToPath(new URL('../../dist/proxy/cli.js', import.meta.url));

function run(args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 10_000 });
}

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'outrider-cli-'));
}

interface Running {
  child: ChildProcess;
  listen: string;
  logs: Record<string, unknown>[];
  exited: Promise<number | null>;
}

/** Starts `outrider --config <file>` and waits for its "outrider ready" line. */
async function startCli(toml: string): Promise<Running> {
  const file = join(tempDir(), 'outrider.toml');
  writeFileSync(file, toml);
  const child = spawn(process.execPath, [CLI, '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  onTestFinished(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const logs: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let buffer = '';
  const ready = new Promise<string>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      buffer += d.toString();
      let nl = buffer.indexOf('\n');
      while (nl >= 0) {
        const line = JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>;
        logs.push(line);
        if (line.msg === 'outrider ready') resolve(line.listen as string);
        buffer = buffer.slice(nl + 1);
        nl = buffer.indexOf('\n');
      }
    });
    void exited.then((code) => reject(new Error(`outrider exited with ${code} before it was ready`)));
  });
  const listen = await Promise.race([ready, sleep(10_000).then(() => Promise.reject(new Error('outrider did not start')))]);
  return { child, listen, logs, exited };
}

describe('the outrider command', () => {
  it('prints its version and its usage', () => {
    const version = run(['--version']);
    expect(version.status).toBe(0);
    expect(version.stdout).toMatch(/^outrider \d+\.\d+\.\d+\n$/);
    const help = run(['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('--listen-addr ADDR');
    expect(help.stdout).toContain('--auth-backend URL');
    expect(help.stdout).toContain('--secret-path FILE');
  });

  it('exits with code 2 and one clear message for a bad config, with no stack trace', () => {
    const dir = tempDir();
    const file = join(dir, 'bad.toml');
    writeFileSync(file, 'listen_addr = "localhost"\n[image_resizer]\nmax_scaler_procs = 0\ntypo = 1\n');
    const res = run(['--config', file]);
    expect(res.status).toBe(2);
    expect(res.stderr).toBe(
      `outrider: ${file}: invalid config\n` +
        '  - listen_addr: expected "host:port" (port 0-65535) or "unix:/absolute/path", got "localhost"\n' +
        '  - image_resizer.max_scaler_procs: expected a number of concurrent scaling jobs of at least 1\n' +
        '  - image_resizer.typo: unknown key in [image_resizer] (config.example.toml lists every key)\n',
    );
    expect(res.stdout).toBe('');
  });

  it('exits with code 2 for a missing file, bad TOML, a bad flag value and an unknown flag', () => {
    const dir = tempDir();
    const missing = run(['--config', join(dir, 'nope.toml')]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toBe(`outrider: ${join(dir, 'nope.toml')}: cannot read config file (no such file)\n`);

    const broken = join(dir, 'broken.toml');
    writeFileSync(broken, 'listen_addr = "a:1\n');
    const toml = run(['--config', broken]);
    expect(toml.status).toBe(2);
    expect(toml.stderr).toContain(`outrider: ${broken}: invalid TOML at line 1`);

    const flag = run(['--auth-backend', 'ftp://backend']);
    expect(flag.status).toBe(2);
    expect(flag.stderr).toContain('--auth-backend (auth_backend): expected an http:// or https:// origin');

    const unknown = run(['--listen', 'x']);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain("Unknown option '--listen'");
    expect(unknown.stderr).not.toMatch(/\n\s+at /);
  });

  it('exits with code 2 when an upload route needs the secret and it is missing or malformed', () => {
    const dir = tempDir();
    const config = (secret: string) => {
      const file = join(dir, `c${Math.random()}.toml`);
      writeFileSync(
        file,
        `secret_path = "${secret}"\nlisten_addr = "127.0.0.1:0"\n[[uploads.routes]]\nmethod = "POST"\npath = "^/uploads/"\n`,
      );
      return file;
    };
    const missing = run(['--config', config(join(dir, 'nope'))]);
    expect(missing.status).toBe(2);
    const makeOne = (path: string) =>
      ` — make one with: (umask 077; head -c 32 /dev/urandom | base64 > ${path}) and give the backend the same file\n`;
    expect(missing.stderr).toBe(
      `outrider: ${join(dir, 'nope')}: cannot read the secret (secret_path): no such file${makeOne(join(dir, 'nope'))}`,
    );
    // --secret-path overrides the file's secret_path.
    const flagged = run(['--config', config(join(dir, 'nope')), '--secret-path', join(dir, 'other')]);
    expect(flagged.stderr).toBe(
      `outrider: ${join(dir, 'other')}: cannot read the secret (secret_path): no such file${makeOne(join(dir, 'other'))}`,
    );
    const short = join(dir, 'short');
    writeFileSync(short, Buffer.alloc(16).toString('base64'));
    const bad = run(['--config', config(short)]);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toBe(`outrider: ${short}: the secret (secret_path) must be the base64 of 32 bytes, got 16 bytes${makeOne(short)}`);
    const regex = join(dir, 'regex.toml');
    writeFileSync(regex, '[[uploads.routes]]\nmethod = "POST"\npath = "^/uploads/("\n');
    const badRegex = run(['--config', regex]);
    expect(badRegex.status).toBe(2);
    expect(badRegex.stderr).toContain('uploads.routes.0.path: expected a valid regular expression, got "^/uploads/("');
  });

  it('listens on a unix socket and reaches the backend through auth_socket', async () => {
    const dir = tempDir();
    const backendSocket = join(dir, 'backend.sock');
    const backend = createServer((req, res) => res.end(`backend saw ${req.url} via ${req.headers.host}`));
    await new Promise<void>((r) => backend.listen(backendSocket, r));
    onTestFinished(() => new Promise<void>((r) => backend.close(() => r())));
    const edgeSocket = join(dir, 'edge.sock');
    writeFileSync(edgeSocket, 'stale');
    const edge = await startCli(`listen_addr = "unix:${edgeSocket}"\nauth_socket = "${backendSocket}"\n`);
    expect(edge.listen).toBe(`unix:${edgeSocket}`);
    const client = new Client('http://outrider.local', { socketPath: edgeSocket });
    onTestFinished(() => client.close());
    const res = await client.request({ path: '/over/unix', method: 'GET' });
    expect(await res.body.text()).toBe('backend saw /over/unix via outrider.local');
    edge.child.kill('SIGTERM');
    expect(await edge.exited).toBe(0);
  });

  it('on SIGTERM finishes in-flight requests, refuses new connections, then exits 0', async () => {
    const backend = await startBackend((req, res) => {
      if (req.url === '/slow') setTimeout(() => res.end('finished'), 700);
      else res.end('quick');
    });
    const edge = await startCli(`listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\n`);
    const url = `http://${edge.listen}`;
    // An idle keep-alive connection (its own client, kept open) must not hold shutdown up.
    const idleClient = new Client(url);
    onTestFinished(() => idleClient.destroy());
    const idle = await idleClient.request({ path: '/warm', method: 'GET' });
    expect(await idle.body.text()).toBe('quick');

    const busyClient = new Client(url);
    onTestFinished(() => busyClient.destroy());
    const inFlight = busyClient
      .request({ path: '/slow', method: 'GET' })
      .then(async (r) => ({ status: r.statusCode, connection: r.headers.connection, body: await r.body.text() }));
    await sleep(150);
    const stopAt = Date.now();
    edge.child.kill('SIGTERM');
    await sleep(150);
    await expect(fetch(`${url}/new`, { headers: { connection: 'close' } })).rejects.toThrow();
    // The in-flight request finishes, and its connection closes after it.
    expect(await inFlight).toEqual({ status: 200, connection: 'close', body: 'finished' });
    expect(await edge.exited).toBe(0);
    expect(Date.now() - stopAt).toBeLessThan(5000);
    expect(edge.logs.some((l) => l.msg === 'stopped')).toBe(true);
  });

  it('cuts requests still running when shutdown_timeout runs out, and exits 0', async () => {
    const backend = await startBackend(() => {
      // never answers
    });
    const edge = await startCli(`listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\nshutdown_timeout = "300ms"\n`);
    const stuck = request(`http://${edge.listen}/forever`).then(
      () => 'answered',
      () => 'cut',
    );
    await sleep(150);
    const stopAt = Date.now();
    edge.child.kill('SIGTERM');
    expect(await edge.exited).toBe(0);
    expect(Date.now() - stopAt).toBeLessThan(3000);
    expect(await stuck).toBe('cut');
  });
});
