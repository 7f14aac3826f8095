import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';

/** Files the example hands to Outrider with X-Sendfile (example/files, from source or dist/). */
const FILES = fileURLToPath(new URL(import.meta.url.includes('/dist/') ? '../../example/files/' : './files/', import.meta.url));

/**
 * The example backend: a plain node:http app of the kind Outrider fronts. It shows what a backend
 * sees behind Outrider (the Workhorse headers), and what Outrider does with its answers.
 */
export function createExampleBackend(): Server {
  return createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const route = routes[path ?? '/'];
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

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
