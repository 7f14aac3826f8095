import { readdirSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { onTestFinished } from 'vitest';
import { type RawData, WebSocket, WebSocketServer } from 'ws';

/** An answer the backend gives an upgrade request instead of switching. */
export interface Refusal {
  status: number;
  reason: string;
  body: string;
  headers?: Record<string, string>;
}

export interface WsBackendOptions {
  /** What a connected socket does: echo every message back by default. */
  onConnection?: (ws: WebSocket, req: IncomingMessage) => void;
  /** Answers an upgrade request without switching when it returns a refusal. */
  refuse?: (req: IncomingMessage) => Refusal | undefined;
  /** Listen on this unix socket instead of 127.0.0.1:0. */
  socketPath?: string;
  /** Listen on this loopback address (`::1` for IPv6) instead of 127.0.0.1. */
  host?: string;
}

export interface WsBackend {
  /** http://127.0.0.1:port (or http://localhost for a unix socket: Outrider dials auth_socket). */
  url: string;
  server: Server;
  wss: WebSocketServer;
  /** Every upgrade request the backend received, in order. */
  upgrades: IncomingMessage[];
  /** Sockets connected now. */
  clients: Set<WebSocket>;
  /** Resolves with the next socket that connects. */
  nextConnection(): Promise<WebSocket>;
  close(): Promise<void>;
}

/** A real WebSocket backend (`ws` on a node:http server), echoing by default; closed when the test ends. */
export async function startWsBackend(opts: WsBackendOptions = {}): Promise<WsBackend> {
  const upgrades: IncomingMessage[] = [];
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('plain\n');
  });
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 * 1024 });
  const waiting: ((ws: WebSocket) => void)[] = [];
  // Upgraded sockets are no longer Node's to close (closeAllConnections): every one is destroyed on close.
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  const echo = (ws: WebSocket) => ws.on('message', (data: RawData, isBinary: boolean) => ws.send(data, { binary: isBinary }));
  wss.on('connection', (ws: WebSocket, req: IncomingMessage) => {
    (opts.onConnection ?? echo)(ws, req);
    waiting.shift()?.(ws);
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    upgrades.push(req);
    const refusal = opts.refuse?.(req);
    if (refusal !== undefined) {
      const headers = { 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(refusal.body)), ...refusal.headers };
      socket.end(
        `HTTP/1.1 ${refusal.status} ${refusal.reason}\r\n${Object.entries(headers)
          .map(([k, v]) => `${k}: ${v}\r\n`)
          .join('')}Connection: close\r\n\r\n${refusal.body}`,
      );
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  if (opts.socketPath !== undefined) {
    rmSync(opts.socketPath, { force: true });
    await new Promise<void>((resolve) => server.listen(opts.socketPath, resolve));
  } else {
    await new Promise<void>((resolve) => server.listen(0, opts.host ?? '127.0.0.1', resolve));
  }
  const address = server.address();
  const host = opts.host?.includes(':') ? `[${opts.host}]` : (opts.host ?? '127.0.0.1');
  const url = typeof address === 'string' ? 'http://localhost' : `http://${host}:${(address as AddressInfo).port}`;
  const close = () =>
    new Promise<void>((resolve) => {
      for (const ws of wss.clients) ws.terminate();
      for (const socket of sockets) socket.destroy();
      server.closeAllConnections();
      server.close(() => resolve());
    });
  onTestFinished(close);
  return {
    url,
    server,
    wss,
    upgrades,
    clients: wss.clients,
    nextConnection: () => new Promise<WebSocket>((resolve) => waiting.push(resolve)),
    close,
  };
}

/** What a client saw of an upgrade request that was not switched. */
export interface Unexpected {
  status: number;
  headers: IncomingMessage['headers'];
  body: string;
}

/** Opens a WebSocket to `url` (http:// or ws://); resolves once open, or with the answer when it was not switched. */
export function connect(url: string, headers: Record<string, string> = {}, protocols: string[] = []): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), protocols, { headers, maxPayload: 64 * 1024 * 1024 });
    onTestFinished(() => ws.terminate());
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        reject(
          Object.assign(new Error(`not switched: ${res.statusCode}`), {
            answer: { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() } satisfies Unexpected,
          }),
        ),
      );
    });
  });
}

/** The answer to an upgrade request that was not switched (fails when it was). */
export async function refusedWith(url: string, headers: Record<string, string> = {}): Promise<Unexpected> {
  try {
    await connect(url, headers);
  } catch (err) {
    const answer = (err as { answer?: Unexpected }).answer;
    if (answer !== undefined) return answer;
    throw err;
  }
  throw new Error('the upgrade was switched');
}

/** The next message on `ws`. */
export function nextMessage(ws: WebSocket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    ws.once('message', (data: RawData) => resolve(Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[])));
    ws.once('close', () => reject(new Error('closed before a message')));
  });
}

/** Resolves with the close code once `ws` is closed. */
export function closed(ws: WebSocket): Promise<number> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve(1006);
  return new Promise((resolve) => ws.once('close', (code: number) => resolve(code)));
}

/** File descriptors this process holds now. */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

export { until } from './wait.js';
