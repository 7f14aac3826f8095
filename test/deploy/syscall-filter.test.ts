import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import sharp from 'sharp';
import { FormData, request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { readBody, startBackend } from '../helpers/backend.js';
import { photo } from '../helpers/images.js';
import { API_TYPE, uploadScratch } from '../helpers/uploads.js';
import { CLI, need, parseUnit, UNIT, unitValue, unitValues } from './unit-file.js';

// The unit's SystemCallFilter= lets Outrider do all its work: Node, its cluster workers, libvips
// scaling PNG and JPEG (and encoding AVIF and WebP), files served and stored, metrics, a drained
// stop. systemd is not running here, so strace plays seccomp: every system call outside the
// unit's filter fails with EPERM, as SystemCallErrorNumber=EPERM makes it under systemd. The
// groups (@system-service…) are expanded by `systemd-analyze syscall-filter`, so the filter is
// exactly systemd's. What systemd's other sandboxing does (mount namespaces, address families) is
// not modelled here.

/** Every group `systemd-analyze syscall-filter` knows, with its members (system calls and groups). */
function syscallGroups(): Map<string, string[]> {
  const res = spawnSync('systemd-analyze', ['syscall-filter', '--no-pager'], { encoding: 'utf8' });
  const groups = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of res.stdout.split('\n')) {
    if (line.startsWith('@')) {
      current = [];
      groups.set(line.trim(), current);
    } else if (/^\s+[@a-z_0-9]/.test(line) && current !== undefined) current.push(line.trim());
  }
  return groups;
}

function expand(name: string, groups: Map<string, string[]>): string[] {
  if (!name.startsWith('@')) return [name];
  const members = groups.get(name);
  if (members === undefined) throw new Error(`systemd-analyze does not know the group ${name}`);
  return members.flatMap((m) => expand(m, groups));
}

/** The system calls the unit's SystemCallFilter= lines allow: the allow list, minus the `~` lines. */
function allowedSyscalls(): string[] {
  const unit = parseUnit(readFileSync(UNIT, 'utf8'));
  expect(unitValue(unit, 'Service', 'SystemCallErrorNumber')).toBe('EPERM');
  const groups = syscallGroups();
  const allowed = new Set<string>();
  const lines = unitValues(unit, 'Service', 'SystemCallFilter');
  expect(lines[0]?.startsWith('~'), 'the first SystemCallFilter= is an allow list').toBe(false);
  for (const line of lines) {
    const deny = line.startsWith('~');
    for (const name of (deny ? line.slice(1) : line).split(/\s+/).filter(Boolean)) {
      for (const call of expand(name, groups)) deny ? allowed.delete(call) : allowed.add(call);
    }
  }
  return [...allowed];
}

/** strace's set of every system call but `allowed` (names this strace does not know are ignored). */
const allBut = (allowed: string[]) => `!${allowed.map((s) => `?${s}`).join(',')}`;

/** Whether strace may trace a child here (ptrace can be forbidden in containers). */
const canTrace = () => spawnSync('strace', ['-qq', '-o', '/dev/null', 'true']).status === 0;

interface Running {
  listen: string;
  metrics: string;
  pid: number;
  lines: Record<string, unknown>[];
  exited: Promise<number | null>;
}

/** Starts the built CLI under strace with `allowed` only, and waits for "outrider ready". */
async function startFiltered(allowed: string[], toml: string, dir: string, trace: string): Promise<Running> {
  const file = join(dir, 'outrider.toml');
  writeFileSync(file, toml);
  const outside = allBut(allowed);
  const child = spawn(
    'strace',
    [
      ...['-f', '--seccomp-bpf', '-qq', '-o', trace, '-e', `trace=${outside}`, '-e', `inject=${outside}:error=EPERM`],
      ...[process.execPath, '--max-semi-space-size=4', CLI, '--config', file],
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  onTestFinished(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const lines: Record<string, unknown>[] = [];
  let buffer = '';
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      buffer += d.toString();
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        const line = JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>;
        buffer = buffer.slice(nl + 1);
        lines.push(line);
        if (line.msg === 'outrider ready') resolve(line);
      }
    });
    void exited.then((code) => reject(new Error(`outrider exited with ${code} before it was ready: ${stderr}${injected(trace)}`)));
  });
  const line = await Promise.race([ready, sleep(15_000).then(() => Promise.reject(new Error(`outrider did not start${injected(trace)}`)))]);
  return { listen: line.listen as string, metrics: line.metrics as string, pid: line.pid as number, lines, exited };
}

/** The refused system calls strace recorded, for a failure message. */
function injected(trace: string): string {
  const calls = readFileSync(trace, 'utf8')
    .split('\n')
    .filter((l) => l.includes('(INJECTED)'))
    .map((l) => /^\d+\s+(?:<\.\.\. )?(\w+)/.exec(l)?.[1]);
  return calls.length === 0 ? '' : `\nsystem calls refused: ${[...new Set(calls)].join(', ')}`;
}

describe("Outrider under outrider.service's system call filter", () => {
  it('proxies, scales, serves and stores files, reports metrics and drains to exit 0 with two workers', async (ctx) => {
    need(ctx, 'systemd-analyze', 'systemd');
    need(ctx, 'strace', 'strace');
    if (!canTrace()) {
      if (process.env.CI === 'true') throw new Error('strace cannot trace here (ptrace is not permitted) and CI=true requires it');
      ctx.skip('strace cannot trace here (ptrace is not permitted): skipped; with CI=true this test fails instead');
    }
    const allowed = allowedSyscalls();
    // The filter is not empty by mistake, and it does shut something out.
    expect(allowed).toEqual(expect.arrayContaining(['read', 'write', 'epoll_wait', 'clone3', 'execve']));
    expect(allowed).not.toContain('ptrace');

    const { root, secretPath, newDir } = uploadScratch('outrider-syscalls-');
    onTestFinished(() => rmSync(root, { recursive: true, force: true }));
    const images = newDir();
    writeFileSync(join(images, 'a.png'), await photo(400, 300, 'png'));
    writeFileSync(join(images, 'a.jpg'), await photo(400, 300, 'jpeg'));
    const uploads = newDir();
    const stored: { size: number; mode: number }[] = [];
    const backend = await startBackend(async (req, res) => {
      const url = new URL(req.url ?? '/', 'http://backend');
      if (url.pathname === '/hello') return void res.end('hello');
      if (url.pathname === '/file') return void res.writeHead(200, { 'x-sendfile': join(images, 'a.jpg') }).end();
      if (url.pathname.startsWith('/img/')) {
        const params = { Location: join(images, url.pathname.slice(5)), Width: 64, ContentType: 'image/png' };
        const directive = `send-scaled-img:${Buffer.from(JSON.stringify(params)).toString('base64url')}`;
        return void res.writeHead(200, { 'gitlab-workhorse-send-data': directive }).end();
      }
      if (url.pathname === '/uploads/authorize')
        return void res.writeHead(200, { 'content-type': API_TYPE }).end(JSON.stringify({ TempPath: uploads }));
      if (url.pathname === '/uploads') {
        // The stored file, as the backend sees it while the request is in flight.
        const path = /name="file\.path"\r\n\r\n([^\r]*)/.exec((await readBody(req)).toString())?.[1] ?? '';
        const { size, mode } = statSync(path);
        stored.push({ size, mode: mode & 0o777 });
        return void res.end('stored');
      }
      res.writeHead(404).end();
    });
    const trace = join(root, 'strace.txt');
    const toml = `listen_addr = "127.0.0.1:0"
auth_backend = "${backend.url}"
secret_path = "${secretPath}"
workers = 2
prometheus_listen_addr = "127.0.0.1:0"
[uploads]
temp_dir = "${newDir()}"
file_mode = "0640"
[[uploads.routes]]
method = "POST"
path = "^/uploads$"
`;
    const edge = await startFiltered(allowed, toml, root, trace);
    const base = `http://${edge.listen}`;
    const get = async (path: string, accept = '*/*') => {
      const res = await request(`${base}${path}`, { headers: { accept } });
      return { status: res.statusCode, type: res.headers['content-type'], body: Buffer.from(await res.body.arrayBuffer()) };
    };

    expect(await get('/hello')).toMatchObject({ status: 200, body: Buffer.from('hello') });
    for (const [path, accept] of [
      ['/img/a.png', '*/*'],
      ['/img/a.jpg', '*/*'],
      ['/img/a.png', 'image/avif'],
      ['/img/a.jpg', 'image/webp'],
    ] as const) {
      const res = await get(path, accept);
      expect({ path, accept, status: res.status, width: (await sharp(res.body).metadata()).width }).toEqual({
        path,
        accept,
        status: 200,
        width: 64,
      });
    }
    const file = await get('/file');
    expect({ status: file.status, bytes: file.body.length }).toEqual({ status: 200, bytes: readFileSync(join(images, 'a.jpg')).length });

    const form = new FormData();
    form.append('file', new Blob([Buffer.alloc(200_000, 1)]), 'big.bin');
    const upload = await request(`${base}/uploads`, { method: 'POST', body: form });
    expect({ status: upload.statusCode, body: await upload.body.text() }).toEqual({ status: 200, body: 'stored' });
    expect(stored).toEqual([{ size: 200_000, mode: 0o640 }]);

    const metrics = await request(`http://${edge.metrics}/metrics`);
    expect(metrics.statusCode).toBe(200);
    expect(await metrics.body.text()).toContain('outrider_http_requests_total{');

    process.kill(edge.pid, 'SIGTERM');
    const code = await edge.exited;
    const problems = edge.lines.filter((l) => (l.level as number) >= 50);
    expect({ code, problems }, injected(trace)).toEqual({ code: 0, problems: [] });
  });
});
