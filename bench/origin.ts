import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { avatarFiles, COPIES } from './images.js';

/**
 * The benchmark backend, run as its own process: a plain node:http server, the kind of backend
 * Outrider is put in front of. Prints its port once listening.
 * - `/1k`: a fixed 1 KiB body.
 * - `/avatar.png?width=N`, `/avatar.jpg?width=N`: 200 with a send-scaled-img directive, as Rails does;
 *   `&copy=K` names one of COPIES distinct copies of the file (cold scaling: no two requests alike).
 * - `/sendfile/avatar.png`: 200 with `X-Sendfile` naming the PNG original.
 * - `/uploads/...`: an upload sink that reads the whole body and answers 200 (Outrider's rewritten
 *   form, or the raw multipart body when hit directly).
 * - `/static/avatar.png|jpg`: the 400 px originals themselves (for nginx's image_filter).
 */
const oneKiB = Buffer.alloc(1024, 'x');
const files = await avatarFiles();
const originals = { png: readFileSync(files.png), jpg: readFileSync(files.jpg) };

/** The directive per request target, made once: an avatar answer costs the backend what a 1 KiB one does. */
const directives = new Map<string, string>();
function directiveFor(url: URL, ext: 'png' | 'jpg'): string {
  const copy = url.searchParams.get('copy');
  const directive = {
    Location: copy === null ? files[ext] : files.copies[ext][Number(copy) % COPIES],
    Width: Number(url.searchParams.get('width') ?? 64),
    ContentType: ext === 'png' ? 'image/png' : 'image/jpeg',
  };
  return `send-scaled-img:${Buffer.from(JSON.stringify(directive)).toString('base64url')}`;
}

const server = createServer((req, res) => {
  const target = req.url ?? '/';
  if (target.startsWith('/uploads/')) {
    req.resume();
    req.on('end', () => res.end('stored'));
    return;
  }
  req.resume();
  if (target === '/sendfile/avatar.png') {
    res.writeHead(200, { 'x-sendfile': files.png, 'content-type': 'image/png' });
    res.end();
    return;
  }
  // Every route parses its URL, as a framework's router would.
  const url = new URL(target, 'http://origin');
  const ext = url.pathname.endsWith('.png') ? 'png' : 'jpg';
  let directive = directives.get(target);
  if (directive === undefined && url.pathname.startsWith('/avatar.')) {
    directive = directiveFor(url, ext);
    directives.set(target, directive);
  }
  if (directive !== undefined) {
    res.writeHead(200, {
      'gitlab-workhorse-send-data': directive,
      'cache-control': 'max-age=0, private, must-revalidate',
      'content-length': 0,
    });
    res.end();
    return;
  }
  if (url.pathname.startsWith('/static/avatar.')) {
    res.writeHead(200, { 'content-type': ext === 'png' ? 'image/png' : 'image/jpeg', 'content-length': originals[ext].length });
    res.end(originals[ext]);
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': oneKiB.length });
  res.end(oneKiB);
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const addr = server.address();
  process.stdout.write(`${typeof addr === 'object' && addr !== null ? addr.port : ''}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
