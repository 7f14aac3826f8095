import { createServer } from 'node:http';

/**
 * The benchmark backend, run as its own process: a plain node:http server, the kind of backend
 * Outrider is put in front of. `/1k` answers a fixed 1 KiB body. Prints its port once listening.
 */
const oneKiB = Buffer.alloc(1024, 'x');

const server = createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': oneKiB.length });
    res.end(oneKiB);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const addr = server.address();
  process.stdout.write(`${typeof addr === 'object' && addr !== null ? addr.port : ''}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
