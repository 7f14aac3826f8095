import { createHash } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';

/** Files the example hands to Outrider with X-Sendfile (example/files, from source or dist/). */
const FILES = fileURLToPath(new URL(import.meta.url.includes('/dist/') ? '../../example/files/' : './files/', import.meta.url));

/**
 * The example backend: a plain node:http app of the kind Outrider fronts. It shows what a backend
 * sees behind Outrider (the Workhorse headers), and what Outrider does with its answers.
 */
export function createExampleBackend(): Server {
  return createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (path.startsWith('/avatars/')) return void avatar(req, res, path.slice('/avatars/'.length));
    const route = routes[path];
    if (route === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('Not found\n');
      return;
    }
    route(req, res);
  });
}

type Route = (req: IncomingMessage, res: ServerResponse) => void;

const routes: Record<string, Route> = {
  '/': (req, res) => {
    const behind =
      req.headers['gitlab-workhorse'] === undefined
        ? 'directly (not through Outrider)'
        : `through Outrider ${req.headers['gitlab-workhorse']}`;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Outrider example backend</title></head>
<body>
<h1>Outrider example backend</h1>
<p>You reached this page ${escapeHtml(behind)}.</p>
<ul>
  <li><a href="/hello">/hello</a>: a plain response, proxied</li>
  <li><a href="/headers">/headers</a>: the request headers the backend received (Gitlab-Workhorse, X-Forwarded-For, X-Request-Id…)</li>
  <li><a href="/stream">/stream</a>: a response written line by line over two seconds, relayed as it is written</li>
  <li>Avatars, scaled by Outrider when the backend asks (<code>send-scaled-img</code>), the original otherwise (<code>X-Sendfile</code>):<br>
    ${AVATARS.map((a) => `<a href="/avatars/${a}"><img src="/avatars/${a}?width=64" srcset="/avatars/${a}?width=64 1x, /avatars/${a}?width=160 2x" width="64" height="64" alt="${a}"></a>`).join(' ')}
    <br><a href="/avatars/ada.png?width=40">ada.png?width=40</a>, <a href="/avatars/grace.jpg?width=96">grace.jpg?width=96</a></li>
  <li><a href="/files/hello.txt">/files/hello.txt</a>: the backend answers with <code>X-Sendfile</code>; Outrider serves the file (try a <code>Range</code> header)</li>
  <li><a href="/mirror">/mirror</a>: the backend answers with <code>send-url</code> pointing at its own <code>/hello</code>; Outrider fetches and streams it</li>
  <li><a href="/internal">/internal</a>: an internal API answer, which Outrider refuses to pass to a client (500)</li>
</ul>
<form method="post" action="/echo" enctype="text/plain">
  <p>POST a body to <code>/echo</code>: the backend streams it through a SHA-256 and answers with its size.</p>
  <textarea name="text" rows="3" cols="40">hello</textarea><br><button>Send</button>
</form>
</body></html>
`);
  },

  '/hello': (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end('Hello from the example backend\n');
  },

  '/headers': (req, res) => {
    const headers: Record<string, string[]> = {};
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const name = req.rawHeaders[i] as string;
      headers[name] = [...(headers[name] ?? []), req.rawHeaders[i + 1] as string];
    }
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(`${JSON.stringify({ method: req.method, url: req.url, headers }, null, 2)}\n`);
  },

  '/stream': (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    let n = 0;
    const timer = setInterval(() => {
      n++;
      res.write(`line ${n} at ${new Date().toISOString()}\n`);
      if (n === 10) {
        clearInterval(timer);
        res.end();
      }
    }, 200);
    res.on('close', () => clearInterval(timer));
  },

  '/echo': (req, res) => {
    const hash = createHash('sha256');
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      hash.update(chunk);
    });
    req.on('end', () => {
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(`${JSON.stringify({ method: req.method, size, sha256: hash.digest('hex') })}\n`);
    });
  },

  '/files/hello.txt': (_req, res) => {
    // The backend decides who may download what; Outrider does the sending.
    res.writeHead(200, { 'x-sendfile': `${FILES}hello.txt`, 'content-type': 'text/plain; charset=utf-8' }).end();
  },

  '/mirror': (req, res) => {
    const { port } = req.socket.address() as AddressInfo;
    const data = Buffer.from(JSON.stringify({ URL: `http://127.0.0.1:${port}/hello`, AllowRedirects: false })).toString('base64url');
    res.writeHead(200, { 'gitlab-workhorse-send-data': `send-url:${data}`, 'cache-control': 'private, max-age=60' }).end();
  },

  '/internal': (_req, res) => {
    // What a backend answers to Outrider's own API calls (upload pre-authorization): never for clients.
    res.writeHead(200, { 'content-type': 'application/vnd.gitlab-workhorse+json' }).end('{"TempPath":"/var/tmp/uploads"}');
  },
};

/** The widths GitLab allows for user avatars (avatarable.rb); others get the original. */
const AVATAR_WIDTHS = new Set([16, 20, 23, 24, 26, 32, 36, 38, 40, 48, 60, 64, 90, 96, 120, 160]);
const AVATARS = ['ada.png', 'grace.jpg', 'linus.png'];
const AVATAR_DIR = join(tmpdir(), 'outrider-example-avatars');

/** Makes the example's 400x400 avatars once (a coloured disc on a gradient, PNG or JPEG). */
export async function prepareAvatars(): Promise<string> {
  mkdirSync(AVATAR_DIR, { recursive: true });
  const colours: Record<string, string> = { 'ada.png': '#7c3aed', 'grace.jpg': '#059669', 'linus.png': '#dc2626' };
  for (const name of AVATARS) {
    const file = join(AVATAR_DIR, name);
    if (existsSync(file)) continue;
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="400" height="400">
      <defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="#f8fafc"/><stop offset="1" stop-color="#94a3b8"/></linearGradient></defs>
      <rect width="400" height="400" fill="url(#g)"/><circle cx="200" cy="170" r="90" fill="${colours[name]}"/>
      <ellipse cx="200" cy="400" rx="160" ry="130" fill="${colours[name]}"/></svg>`;
    const image = sharp(Buffer.from(svg));
    await (name.endsWith('.png') ? image.png() : image.jpeg({ quality: 90 })).toFile(file);
  }
  return AVATAR_DIR;
}

/**
 * GitLab's avatar route: with an allowed ?width=, the backend answers 200 with a send-scaled-img
 * directive and no body; without one, with X-Sendfile for the original. Authorization and caching
 * policy stay with the backend; Outrider does the bytes.
 */
function avatar(req: IncomingMessage, res: ServerResponse, name: string): void {
  if (!AVATARS.includes(name)) return void res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('No such avatar\n');
  const location = join(AVATAR_DIR, name);
  const contentType = name.endsWith('.png') ? 'image/png' : 'image/jpeg';
  const width = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('width'));
  const headers: Record<string, string> = { 'content-type': contentType, 'cache-control': 'max-age=0, private, must-revalidate' };
  if (AVATAR_WIDTHS.has(width)) {
    const directive = Buffer.from(JSON.stringify({ Location: location, Width: width, ContentType: contentType })).toString('base64url');
    headers['gitlab-workhorse-send-data'] = `send-scaled-img:${directive}`;
  } else {
    headers['x-sendfile'] = location;
  }
  res.writeHead(200, headers).end();
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
