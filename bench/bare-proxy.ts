import { createServer } from 'node:http';
import { Pool } from 'undici';

/**
 * The floor for a Node proxy, for reference only: node:http in front, undici's dispatch to the
 * backend, hop-by-hop headers dropped, nothing else (no Workhorse headers, no logging, no error
 * mapping). `npm run bench` measures it beside Outrider so the cost of Outrider's own work shows.
 * Usage: node bare-proxy.js <listen port> <backend port>
 */
const [listenPort, backendPort] = process.argv.slice(2).map(Number);
const pool = new Pool(`http://127.0.0.1:${backendPort}`);
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-connection']);

createServer((req, res) => {
  const headers: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (!HOP.has((req.rawHeaders[i] as string).toLowerCase())) headers.push(req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string);
  }
  pool.dispatch(
    { method: 'GET', path: req.url as string, headers },
    {
      onConnect() {},
      onHeaders(status: number, raw: Buffer[]) {
        const out: string[] = [];
        for (let i = 0; i < raw.length; i += 2) {
          const name = (raw[i] as Buffer).toString('latin1');
          if (!HOP.has(name.toLowerCase())) out.push(name, (raw[i + 1] as Buffer).toString('latin1'));
        }
        res.writeHead(status, out);
        return true;
      },
      onData: (chunk: Buffer) => res.write(chunk),
      onComplete: () => res.end(),
      onError: () => res.destroy(),
    },
  );
}).listen(listenPort, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
