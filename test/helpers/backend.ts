import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { onTestFinished } from 'vitest';

export interface Backend {
  url: string;
  port: number;
  server: Server;
  /** Every request the backend received, in order. */
  requests: IncomingMessage[];
  /** Number of TCP connections accepted. */
  connections: () => number;
  close: () => Promise<void>;
}

/** A real node:http backend on 127.0.0.1 with an ephemeral port, closed when the test ends. */
export async function startBackend(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<Backend> {
  const requests: IncomingMessage[] = [];
  let connections = 0;
  const listener: RequestListener = (req, res) => {
    requests.push(req);
    handler(req, res);
  };
  const server = createServer(listener);
  server.on('connection', () => {
    connections++;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  onTestFinished(close);
  return { url: `http://127.0.0.1:${port}`, port, server, requests, connections: () => connections, close };
}

/** Reads a request body whole (test backends only: bodies here are bounded by the test). */
export async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
