import { createServer } from 'node:http';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it, onTestFinished } from 'vitest';
import { createStallWatch } from '../../../proxy/connection/stall-watch.js';

describe('the send_timeout watch', () => {
  it('sees a slow reader progress inside one large write, and cuts one that stops reading', async () => {
    const watch = createStallWatch({ bodyTimeoutMs: 60_000, sendTimeoutMs: 1500 });
    const stalled: Socket[] = [];
    const size = 8 * 1024 * 1024;
    const server = createServer((req, res) => {
      // One buffer, one write: Node's own counters move only when all of it has gone. `/big` is
      // larger than the kernel's socket buffers on both sides can hold.
      const length = req.url === '/big' ? 4 * size : size;
      res.writeHead(200, { 'content-length': String(length) }).end(Buffer.alloc(length, 1));
    });
    server.on('connection', (socket) => watch.connection(socket, (s) => stalled.push(s)));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    onTestFinished(() => {
      watch.close();
      server.closeAllConnections();
      server.close();
    });
    const { port } = server.address() as { port: number };

    const reader = async (readBytes: number, path = '/') => {
      const socket = connect(port, '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise((r) => socket.once('connect', r));
      socket.pause();
      socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      let received = 0;
      const started = Date.now();
      // 64 KiB every 20 ms until `readBytes`, then nothing.
      while (received < readBytes && Date.now() - started < 15_000 && !socket.readableEnded) {
        const chunk = (socket.read(64 * 1024) ?? socket.read()) as Buffer | null;
        if (chunk !== null) received += chunk.length;
        await sleep(20);
      }
      return { socket, received };
    };

    // Reads all 8 MiB in about three seconds, twice the timeout, the kernel's buffers holding a few
    // MiB of it at a time: never cut.
    const slow = await reader(size);
    expect(slow.received).toBeGreaterThanOrEqual(size);
    expect(stalled).toHaveLength(0);
    slow.socket.destroy();

    // Reads 256 KiB, then stops: cut.
    const quitter = await reader(256 * 1024, '/big');
    for (let waited = 0; stalled.length === 0 && waited < 5000; waited += 50) await sleep(50);
    expect(stalled).toHaveLength(1);
    quitter.socket.destroy();
  });
});
