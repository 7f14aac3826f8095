import { fork } from 'node:child_process';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';
import { WebSocket, WebSocketServer } from 'ws';
import { median, startEdge } from './procs.js';

/**
 * `npm run bench:ws`: WebSocket echo through Outrider against the backend direct, alternating,
 * WS_ROUNDS times (default 3): WS_CONNECTIONS connections (50) each keeping 8 messages of 1 KiB
 * in flight for WS_SECONDS (5) after half a second of warm-up. The echo backend runs as its own
 * process (this file, forked with `backend` as argument), Outrider as its own (startEdge); the load
 * runs here. Prints echoed messages per second (each crossed both directions) and the ratio.
 */
const CONNECTIONS = Number(process.env.WS_CONNECTIONS ?? 50);
const SECONDS = Number(process.env.WS_SECONDS ?? 5);
const ROUNDS = Number(process.env.WS_ROUNDS ?? 3);
const IN_FLIGHT = 8;
const SIZE = 1024;

if (process.argv[2] === 'backend') {
  const server = createServer((_req, res) => res.end('ok'));
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (data, binary) => ws.send(data, { binary })));
  server.listen(0, '127.0.0.1', () => process.send?.({ port: (server.address() as { port: number }).port }));
} else {
  const backend = fork(fileURLToPath(import.meta.url), ['backend']);
  const { port } = await new Promise<{ port: number }>((resolve) => backend.once('message', (m) => resolve(m as { port: number })));
  const edge = await startEdge(port, { name: 'ws' });
  const stop = () => {
    edge.child.kill('SIGTERM');
    backend.kill();
  };
  process.on('exit', stop);

  async function run(url: string): Promise<number> {
    const sockets = await Promise.all(
      Array.from(
        { length: CONNECTIONS },
        () =>
          new Promise<WebSocket>((resolve, reject) => {
            const ws = new WebSocket(url);
            ws.once('open', () => resolve(ws));
            ws.once('error', reject);
          }),
      ),
    );
    const payload = Buffer.alloc(SIZE, 1);
    let echoed = 0;
    let done = false;
    for (const ws of sockets) {
      ws.on('message', () => {
        echoed++;
        if (!done) ws.send(payload);
      });
      for (let i = 0; i < IN_FLIGHT; i++) ws.send(payload);
    }
    await new Promise((r) => setTimeout(r, 500));
    const from = echoed;
    const started = performance.now();
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    const rate = (echoed - from) / ((performance.now() - started) / 1000);
    done = true;
    for (const ws of sockets) ws.terminate();
    await new Promise((r) => setTimeout(r, 300));
    return rate;
  }

  const direct: number[] = [];
  const proxied: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    direct.push(await run(`ws://127.0.0.1:${port}/echo`));
    proxied.push(await run(`ws://127.0.0.1:${edge.port}/echo`));
    process.stdout.write(
      `round ${round + 1}: direct ${Math.round(direct.at(-1) ?? 0)}/s, through Outrider ${Math.round(proxied.at(-1) ?? 0)}/s\n`,
    );
  }
  const spread = (xs: number[]) => `${Math.round(median(xs))} (${Math.round(Math.min(...xs))}–${Math.round(Math.max(...xs))})`;
  process.stdout.write(
    `\nWebSocket echo, ${CONNECTIONS} connections x ${IN_FLIGHT} x 1 KiB in flight, ${SECONDS} s, ${ROUNDS} alternating rounds\n` +
      `direct: ${spread(direct)} msgs/s\nthrough Outrider: ${spread(proxied)} msgs/s\nratio of medians: ${(median(proxied) / median(direct)).toFixed(2)}x\n`,
  );
  process.exit(0);
}
