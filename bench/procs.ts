import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The processes the benchmarks start, and what they read of them from /proc. */
const here = fileURLToPath(new URL('.', import.meta.url));
const cli = join(here, '../proxy/cli.js');

/**
 * The Node flags the `outrider` bin passes in its shebang (`#!/usr/bin/env -S node …`), which
 * `npm start` passes too: Outrider is measured as it runs. Flags given to a benchmark come after
 * them, so they win.
 */
export const EDGE_NODE_ARGS: readonly string[] = (readFileSync(cli, 'utf8').split('\n', 1)[0] ?? '')
  .replace(/^#!.*?\bnode\b/, '')
  .trim()
  .split(/\s+/)
  .filter(Boolean);

export interface Proc {
  child: ChildProcess;
  port: number;
}

/** Files and directories made for the processes a benchmark starts: removed when it exits. */
const scratch: string[] = [];
export function removeOnExit(path: string): void {
  if (scratch.length === 0) {
    process.on('exit', () => {
      for (const p of scratch) {
        try {
          rmSync(p, { recursive: true, force: true });
        } catch {
          // A child still writing into it as it stops: what is left is only a temp file.
        }
      }
    });
    // Ctrl-C or a kill ends the benchmark through 'exit', so its children stop and this runs.
    process.once('SIGINT', () => process.exit(130));
    process.once('SIGTERM', () => process.exit(143));
  }
  scratch.push(path);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/**
 * The origin backend (bench/origin.ts) as its own process. `cpus` ("0") pins it with taskset, so
 * the backend runs "elsewhere" (on a core of its own) when proxies are compared.
 */
export async function startOrigin(cpus?: string): Promise<Proc> {
  const argv = [process.execPath, join(here, 'origin.js')];
  const [cmd, ...args] = cpus === undefined || cpus === '' ? argv : ['taskset', '-c', cpus, ...argv];
  const child = spawn(cmd as string, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('exit', (code) => reject(new Error(`origin exited with ${code}`)));
  });
  return { child, port };
}

export interface EdgeOptions {
  /** Names the config and temp files. */
  name: string;
  /** TOML after the listener, backend, secret and upload route lines (before `[uploads]`). */
  toml?: string;
  nodeArgs?: string;
  /** The Node binary this edge runs on (default: EDGE_NODE, else the benchmark's own). */
  node?: string;
  env?: NodeJS.ProcessEnv;
  /**
   * A file Outrider's stdout (its JSON log lines) is appended to, opened with O_APPEND: the
   * benchmark may read it and truncate it between runs. Default: /dev/null.
   */
  stdout?: string;
}

/**
 * Outrider (dist/proxy/cli.js, with the bin's Node flags) in front of the origin, with an accelerated upload route
 * (`^/uploads/`, no pre-authorization: files go to a temp dir, all four digests). Access logs stay
 * on (a production setting) and go to /dev/null (or to `stdout`). Resolves once it answers. EDGE_NODE names the Node
 * binary Outrider runs on (default: the one running the benchmark), so one run compares two Nodes.
 */
export async function startEdge(originPort: number, opts: EdgeOptions): Promise<Proc> {
  const port = await freePort();
  const stem = join(tmpdir(), `outrider-bench-${process.pid}-${opts.name}`);
  const secretPath = `${stem}.secret`;
  for (const p of [secretPath, `${stem}.toml`, `${stem}-uploads`]) removeOnExit(p);
  writeFileSync(secretPath, randomBytes(32).toString('base64'), { mode: 0o600 });
  const base = `listen_addr = "127.0.0.1:${port}"\nauth_backend = "http://127.0.0.1:${originPort}"\nsecret_path = "${secretPath}"\n`;
  const uploads = `[uploads]\ntemp_dir = "${stem}-uploads"\n[[uploads.routes]]\nmethod = "POST"\npath = "^/uploads/"\npreauthorize = false\n`;
  writeFileSync(`${stem}.toml`, `${base}${opts.toml ?? ''}\n${uploads}`);
  const args = (opts.nodeArgs ?? '').split(' ').filter(Boolean);
  if (opts.stdout !== undefined) removeOnExit(opts.stdout);
  const out = opts.stdout === undefined ? 'ignore' : openSync(opts.stdout, 'a');
  const child = spawn(
    opts.node || process.env.EDGE_NODE || process.execPath,
    [...EDGE_NODE_ARGS, ...args, cli, '--config', `${stem}.toml`],
    {
      stdio: ['ignore', out, 'inherit'],
      env: { ...process.env, ...opts.env },
    },
  );
  if (typeof out === 'number') closeSync(out);
  return waitForEdge({ child, port }, `${stem}.toml`);
}

/** Resolves once the Outrider `edge` answers HTTP; kills it and names `configPath` if it never does. */
export async function waitForEdge(edge: Proc, configPath: string): Promise<Proc> {
  for (let i = 0; i < 100 && edge.child.exitCode === null; i++) {
    try {
      const res = await fetch(`http://127.0.0.1:${edge.port}/`);
      await res.arrayBuffer();
      return edge;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  edge.child.kill('SIGKILL');
  throw new Error(`Outrider did not start (exit code ${edge.child.exitCode}): see ${configPath}`);
}

export interface RedisProc extends Proc {
  url: string;
  /** Stops it at once (SIGKILL), as a crash or an OOM kill would; resolves once it has exited. */
  kill(): Promise<void>;
}

/** Whether a Redis answers PING on `port`. */
async function redisAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.write('PING\r\n');
      socket.once('data', (d) => {
        socket.destroy();
        resolve(d.toString().startsWith('+PONG'));
      });
    });
    socket.once('error', () => resolve(false));
  });
}

/** Debian's redis-server (`apt-get install redis-server`), or REDIS_SERVER; undefined when neither exists. */
export const REDIS_SERVER = [process.env.REDIS_SERVER, '/usr/bin/redis-server', '/usr/local/bin/redis-server'].find(
  (p): p is string => p !== undefined && p !== '' && existsSync(p),
);

/**
 * A redis-server on a free loopback port with its own temp dir (removed on exit) and no
 * persistence, with the memory policy the README recommends. The caller stops it.
 */
export async function startRedis(): Promise<RedisProc> {
  if (REDIS_SERVER === undefined) throw new Error('redis-server is not installed (apt-get install -y redis-server, or set REDIS_SERVER)');
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'outrider-bench-redis-'));
  removeOnExit(dir);
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'];
  const child = spawn(REDIS_SERVER, [...args, '--maxmemory', '256mb', '--maxmemory-policy', 'allkeys-lru'], { stdio: 'ignore' });
  for (let i = 0; !(await redisAnswers(port)); i++) {
    if (i === 200 || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not answer on port ${port}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    child,
    port,
    url: `redis://127.0.0.1:${port}/0`,
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** A one-file multipart body of `size` bytes, made once per size. */
const uploadBodies = new Map<number, { body: Buffer; contentType: string }>();
export function uploadBody(size: number): { body: Buffer; contentType: string } {
  let made = uploadBodies.get(size);
  if (made === undefined) {
    const boundary = 'outrider-bench-boundary';
    const head = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="bench.bin"\r\nContent-Type: application/octet-stream\r\n\r\n`,
    );
    const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
    made = { body: Buffer.concat([head, randomBytes(size), tail]), contentType: `multipart/form-data; boundary=${boundary}` };
    uploadBodies.set(size, made);
  }
  return made;
}

/** The pids of a process and all its descendants (cluster workers, nginx workers). */
function tree(pid: number): number[] {
  let children: string[] = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ').filter(Boolean);
  } catch {
    return [];
  }
  return [pid, ...children.flatMap((c) => tree(Number(c)))];
}

/** user+system CPU time of a process and its descendants, in ms, from /proc. */
export function cpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  let total = 0;
  for (const p of tree(pid)) {
    try {
      const fields = readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
      total += ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
    } catch {
      // exited in between
    }
  }
  return total;
}

/** Resident memory of a process and its descendants now, and the sum of their peaks, in MiB. */
export function memoryMiB(pid: number | undefined): { rss: number; peak: number } {
  let rss = 0;
  let peak = 0;
  for (const p of pid === undefined ? [] : tree(pid)) {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'utf8');
      rss += Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
      peak += Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
    } catch {
      // exited in between
    }
  }
  return { rss, peak };
}

/** The median of `xs` (the mean of the middle two for an even count). */
export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

/** Debian's nginx, when installed. */
export const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p));

/**
 * nginx with its prefix and temp paths in `home`: one worker (or `workers`: "auto" is one per
 * CPU), errors on stderr, the access log buffered to /dev/null, and `http` inside the http block
 * (`head` before everything: modules).
 */
export function spawnNginx(home: string, http: string, head = '', workers: number | 'auto' = 1): ChildProcess {
  if (NGINX === undefined) throw new Error('nginx is not installed: apt-get install -y nginx');
  const conf = `${head}
worker_processes ${workers};
error_log stderr error;
pid ${home}/nginx.pid;
events { worker_connections 4096; }
http {
  access_log /dev/null combined buffer=64k;
  client_body_temp_path ${home}/body; proxy_temp_path ${home}/proxy;
  fastcgi_temp_path ${home}/fcgi; uwsgi_temp_path ${home}/uwsgi; scgi_temp_path ${home}/scgi;
${http}
}
`;
  writeFileSync(join(home, 'nginx.conf'), conf);
  return spawn(NGINX, ['-p', home, '-c', join(home, 'nginx.conf'), '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'inherit'] });
}
