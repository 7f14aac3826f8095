import { createServer } from 'node:http';
import { createIPX, createIPXNodeServer, ipxFSStorage } from 'ipx';

/**
 * ipx (unjs/ipx, the image server Nuxt Image uses) on its own, as `npx ipx serve` runs it: the
 * peer bench/formats.ts compares Outrider's scaling with. Serves the directory given as the
 * first argument; URLs like `/w_64,f_webp/avatar.png`. Prints its port once listening.
 */
const dir = process.argv[2];
if (dir === undefined) throw new Error('usage: ipx-server.js <dir>');
const ipx = createIPX({ storage: ipxFSStorage({ dir }) });
const server = createServer(createIPXNodeServer(ipx));
server.listen(0, '127.0.0.1', () => {
  const addr = server.address();
  process.stdout.write(`${typeof addr === 'object' && addr !== null ? addr.port : 0}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
