import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { onTestFinished } from 'vitest';

/** Debian's redis-server (`.ci/run` installs it); REDIS_SERVER overrides the path. */
export const REDIS_SERVER = process.env.REDIS_SERVER ?? '/usr/bin/redis-server';
export const REDIS_CLI = process.env.REDIS_CLI ?? '/usr/bin/redis-cli';
export const HAVE_REDIS = existsSync(REDIS_SERVER);

export interface RunningRedis {
  port: number;
  url: string;
  /** Stops it at once (SIGKILL), as a crash or an OOM kill would. */
  kill(): Promise<void>;
  /** Starts it again on the same port (empty: no persistence). */
  restart(): Promise<void>;
  /** Runs redis-cli against it and returns its output. */
  cli(...args: string[]): string;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

async function answers(port: number): Promise<boolean> {
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

/**
 * A real redis-server on a free loopback port with its own temp dir and no persistence, stopped
 * (and its dir removed) when the test ends.
 */
export async function startRedis(): Promise<RunningRedis> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'outrider-redis-'));
  let child: ChildProcess | undefined;
  const start = async () => {
    child = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], {
      stdio: 'ignore',
    });
    for (let i = 0; i < 200; i++) {
      if (await answers(port)) return;
      await sleep(25);
    }
    throw new Error(`redis-server did not answer on port ${port}`);
  };
  const kill = async () => {
    const c = child;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  };
  await start();
  onTestFinished(async () => {
    await kill();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill,
    restart: start,
    cli: (...args) => execFileSync(REDIS_CLI, ['-p', String(port), ...args], { encoding: 'utf8' }),
  };
}

/** A server that accepts connections and never answers a byte: a hung Redis. */
export async function startSilentServer(): Promise<{ url: string; connections: () => number }> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server = createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { url: `redis://127.0.0.1:${(server.address() as { port: number }).port}`, connections: () => accepted };
}
