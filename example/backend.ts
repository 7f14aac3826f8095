import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { copyFile, open, rename, unlink } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { WebSocketServer } from 'ws';
// Everything the backend says to Outrider, and every check on what Outrider says, goes through the
// toolkit (`outrider/backend` once installed): no JWT or base64 code of its own.
import {
  authorizeResponse,
  OutriderVerificationError,
  readFields,
  respond,
  sendFile,
  sendScaledImage,
  sendUrl,
  type UploadedFile,
  verifyApiRequest,
  verifyUploadFields,
} from '../backend/index.js';

/** Files the example hands to Outrider with X-Sendfile (example/files, from source or dist/). */
const FILES = fileURLToPath(new URL(import.meta.url.includes('/dist/') ? '../../example/files/' : './files/', import.meta.url));

export interface ExampleBackendOptions {
  /** The 32 bytes shared with Outrider (whose `secret_path` file holds their base64). */
  secret: Buffer;
  /**
   * The `TempPath` the backend hands Outrider for avatar uploads: Outrider stores files there
   * until the backend has moved them. Default: `<tmpdir>/outrider-example-uploads`.
   */
  uploadTempDir?: string;
  /** Where the avatars are (see `prepareAvatars`), uploads included. Default: `<tmpdir>/outrider-example-avatars`. */
  avatarDir?: string;
}

/**
 * The example backend: a plain node:http app of the kind Outrider fronts. It shows what a backend
 * sees behind Outrider (the Workhorse headers), and what Outrider does with its answers.
 */
export function createExampleBackend(options: ExampleBackendOptions): Server {
  const avatarDir = resolve(options.avatarDir ?? DEFAULT_AVATAR_DIR);
  const all: Record<string, Route> = {
    ...routes,
    '/': (req, res) => home(req, res, avatarDir),
    ...uploadRoutes(options.secret, resolve(options.uploadTempDir ?? join(tmpdir(), 'outrider-example-uploads')), avatarDir),
  };
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (path.startsWith('/avatars/')) return void avatar(req, res, avatarDir, path.slice('/avatars/'.length));
    const route = all[path];
    if (route === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('Not found\n');
      return;
    }
    route(req, res);
  });
  attachLive(server);
  return server;
}

/**
 * `/live`: a WebSocket (the `ws` package on this node:http server) that tells every connected
 * page, once a second, a tick number and how many pages are connected. Through Outrider it is an
 * upgrade tunnel like ActionCable's `/-/cable`.
 */
function attachLive(server: Server): void {
  const live = new WebSocketServer({ server, path: '/live' });
  let tick = 0;
  const message = () => JSON.stringify({ tick, clients: live.clients.size });
  const broadcast = () => {
    const text = message();
    for (const ws of live.clients) ws.send(text);
  };
  live.on('connection', (ws) => ws.send(message()));
  const timer = setInterval(() => {
    tick++;
    broadcast();
  }, 1000);
  timer.unref();
  server.on('close', () => {
    clearInterval(timer);
    for (const ws of live.clients) ws.terminate();
  });
}

type Route = (req: IncomingMessage, res: ServerResponse) => void;

/** The widths the home page shows each avatar at (each also asks for twice as many pixels on high-density screens). */
export const HOME_WIDTHS = [16, 24, 32, 48, 64, 96, 160];

/** The avatar at `width` CSS pixels: scaled by Outrider, twice the width for 2x screens (the original when 2x is not an allowed width). */
function avatarImg(name: string, width: number): string {
  const src = `/avatars/${name}`;
  const hidpi = AVATAR_WIDTHS.has(2 * width) ? `${src}?width=${2 * width}` : src;
  return `<img src="${src}?width=${width}" srcset="${hidpi} 2x" width="${width}" alt="${name} at ${width} px" loading="eager">`;
}

function home(req: IncomingMessage, res: ServerResponse, avatarDir: string): void {
  const behind =
    req.headers['gitlab-workhorse'] === undefined
      ? 'directly (not through Outrider)'
      : `through Outrider ${req.headers['gitlab-workhorse']}`;
  const rows = listAvatars(avatarDir)
    .map(escapeHtml)
    .map(
      (a) =>
        `    <tr><th scope="row"><a href="/avatars/${a}">${a}</a></th>${HOME_WIDTHS.map((w) => `<td>${avatarImg(a, w)}</td>`).join('')}</tr>`,
    )
    .join('\n');
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache' });
  res.end(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Outrider example backend</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #0f172a; }
  table.avatars { border-collapse: collapse; }
  table.avatars th, table.avatars td { padding: 4px 10px; text-align: center; vertical-align: middle; border-bottom: 1px solid #e2e8f0; }
  table.avatars th[scope=row] { text-align: left; font-weight: normal; }
  table.avatars img { height: auto; display: block; margin: 0 auto; }
  form.upload { margin: 1rem 0; padding: .75rem; border: 1px solid #cbd5e1; border-radius: 6px; display: inline-block; }
</style></head>
<body>
<h1>Outrider example backend</h1>
<p>You reached this page ${escapeHtml(behind)}.</p>
<p class="live">Live, over a WebSocket at <code>/live</code> (tunnelled by Outrider): <output id="live">connecting…</output></p>
<script>
  // The backend sends every page a tick a second, with how many pages are connected.
  (() => {
    const out = document.getElementById('live');
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/live');
    ws.onmessage = (event) => {
      const { tick, clients } = JSON.parse(event.data);
      out.dataset.tick = String(tick);
      out.textContent = 'tick ' + tick + ', ' + clients + (clients === 1 ? ' page' : ' pages') + ' connected';
    };
    ws.onclose = () => { out.textContent = 'disconnected'; };
  })();
</script>
<h2>Avatars</h2>
<p>Scaled by Outrider when the backend asks (<code>send-scaled-img</code>), at each width below and at twice it on
high-density screens (<code>srcset</code>); the name links to the original (<code>X-Sendfile</code>). A reload revalidates
each image with <code>If-Modified-Since</code>, and Outrider answers 304 without scaling it again.</p>
<table class="avatars">
  <thead><tr><th>avatar</th>${HOME_WIDTHS.map((w) => `<th>${w} px</th>`).join('')}</tr></thead>
  <tbody>
${rows}
  </tbody>
</table>
<form class="upload" method="post" action="/uploads/avatar" enctype="multipart/form-data">
  <label>Add an avatar (PNG or JPEG, at most 5 MiB): <input type="file" name="avatar" accept="image/png,image/jpeg" required></label>
  <button>Upload</button>
  <br><small>Outrider asks the backend first, stores the file while it streams in and forwards only signed fields
  (accelerated upload); the backend checks them and moves the file. Also at <a href="/upload">/upload</a>.</small>
</form>
<h2>More to try</h2>
<ul>
  <li><a href="/hello">/hello</a>: a plain response, proxied</li>
  <li><a href="/headers">/headers</a>: the request headers the backend received (Gitlab-Workhorse, X-Forwarded-For, X-Request-Id…)</li>
  <li><a href="/stream">/stream</a>: a response written line by line over two seconds, relayed as it is written</li>
  <li><a href="/avatars/ada.png?width=40">ada.png?width=40</a>, <a href="/avatars/grace.jpg?width=96">grace.jpg?width=96</a>: one scaled avatar</li>
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
}

const routes: Record<string, Route> = {
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
    respond(res, sendFile(`${FILES}hello.txt`), { 'content-type': 'text/plain; charset=utf-8' });
  },

  '/mirror': (req, res) => {
    const { port } = req.socket.address() as AddressInfo;
    respond(res, sendUrl(`http://127.0.0.1:${port}/hello`), { 'cache-control': 'private, max-age=60' });
  },

  '/upload': (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Upload an avatar</title></head>
<body>
<h1>Upload an avatar</h1>
<p>A PNG or JPEG of at most 5 MiB. Outrider asks the backend first (<code>/uploads/avatar/authorize</code>), stores the file
while it streams in, and sends the backend only its path, size and SHA-256, signed; the backend checks the signatures
and moves the file into the avatars.</p>
<form method="post" action="/uploads/avatar" enctype="multipart/form-data">
  <input type="file" name="avatar" accept="image/png,image/jpeg" required>
  <button>Upload</button>
</form>
<p><a href="/">Back to the home page</a></p>
</body></html>
`);
  },

  '/internal': (_req, res) => {
    // What a backend answers to Outrider's own API calls (upload pre-authorization): never for clients.
    res.writeHead(200, { 'content-type': 'application/vnd.gitlab-workhorse+json' }).end('{"TempPath":"/var/tmp/uploads"}');
  },
};

/** The widths GitLab allows for user avatars (avatarable.rb); others get the original. */
const AVATAR_WIDTHS = new Set([16, 20, 23, 24, 26, 32, 36, 38, 40, 48, 60, 64, 90, 96, 120, 160]);
/** The avatars the example starts with; uploads join them in the same directory. */
const STARTER_AVATARS = ['ada.png', 'grace.jpg', 'linus.png'];
const DEFAULT_AVATAR_DIR = join(tmpdir(), 'outrider-example-avatars');
/** What an avatar's file name may look like: the only names served, and what uploads are renamed to. */
const AVATAR_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*\.(png|jpe?g)$/i;

/** Makes the example's 400x400 avatars once (a coloured disc on a gradient, PNG or JPEG). */
export async function prepareAvatars(dir: string = DEFAULT_AVATAR_DIR): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const colours: Record<string, string> = { 'ada.png': '#7c3aed', 'grace.jpg': '#059669', 'linus.png': '#dc2626' };
  for (const name of STARTER_AVATARS) {
    const file = join(dir, name);
    if (existsSync(file)) continue;
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="400" height="400">
      <defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="#f8fafc"/><stop offset="1" stop-color="#94a3b8"/></linearGradient></defs>
      <rect width="400" height="400" fill="url(#g)"/><circle cx="200" cy="170" r="90" fill="${colours[name]}"/>
      <ellipse cx="200" cy="400" rx="160" ry="130" fill="${colours[name]}"/></svg>`;
    const image = sharp(Buffer.from(svg));
    await (name.endsWith('.png') ? image.png() : image.jpeg({ quality: 90 })).toFile(file);
  }
  return dir;
}

/** The avatars on disk, oldest first: the starters, then uploads in the order they came. */
function listAvatars(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir).filter((name) => AVATAR_NAME.test(name));
  } catch {
    return [];
  }
  const mtimes = new Map(names.map((name) => [name, statSync(join(dir, name), { throwIfNoEntry: false })?.mtimeMs ?? 0]));
  return names.sort((a, b) => (mtimes.get(a) ?? 0) - (mtimes.get(b) ?? 0) || a.localeCompare(b));
}

/**
 * GitLab's avatar route: with an allowed ?width=, the backend answers 200 with a send-scaled-img
 * directive and no body; without one, with X-Sendfile for the original. Authorization and caching
 * policy stay with the backend; Outrider does the bytes.
 */
function avatar(req: IncomingMessage, res: ServerResponse, dir: string, name: string): void {
  const location = join(dir, name);
  if (!AVATAR_NAME.test(name) || statSync(location, { throwIfNoEntry: false })?.isFile() !== true) {
    return void res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('No such avatar\n');
  }
  const contentType = name.toLowerCase().endsWith('.png') ? 'image/png' : 'image/jpeg';
  const width = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('width'));
  // Stale at once: browsers revalidate with If-Modified-Since and Outrider answers 304 (GitLab's policy).
  const headers = { 'content-type': contentType, 'cache-control': 'max-age=0, private, must-revalidate' };
  respond(res, AVATAR_WIDTHS.has(width) ? sendScaledImage({ location, width, contentType }) : sendFile(location), headers);
}

/*
 * Accelerated avatar uploads (example/outrider.toml routes POST /uploads/avatar through Outrider's
 * upload acceleration). The backend does three small things: it says yes at /authorize, it checks
 * the signatures on what Outrider forwards, and it moves the file Outrider stored.
 */

/** Bytes allowed per avatar (the authorize answer's MaximumSize): Outrider refuses more with 413. */
const AVATAR_MAX_BYTES = 5 * 1024 * 1024;
/** The rewritten body holds fields only (no file bytes): it is small and read whole. */
const FORM_LIMIT = 64 * 1024;

function uploadRoutes(secret: Buffer, tempPath: string, avatarDir: string): Record<string, Route> {
  const refuse = (res: ServerResponse, status: number, message: string) => {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(`${message}\n`);
  };
  return {
    // Outrider asks before it reads a byte of the file: same method, path + /authorize, no body.
    '/uploads/avatar/authorize': (req, res) => {
      if (req.method !== 'POST') return void res.writeHead(405, { allow: 'POST' }).end();
      try {
        verifyApiRequest(req.headers, secret); // signed with the shared secret, at most 90 s old
      } catch (err) {
        if (!(err instanceof OutriderVerificationError)) throw err;
        return refuse(res, err.statusCode, 'Unauthorized: not a fresh request signed by Outrider');
      }
      // A real app checks the user here (session, permissions, quota) and answers 401/403 if not:
      // Outrider relays any answer but this one to the client and never stores the file.
      respond(res, authorizeResponse({ tempPath, maximumSize: AVATAR_MAX_BYTES, uploadHashFunctions: ['sha256'] }));
    },

    // What arrives after Outrider stored the file: fields only, signed.
    '/uploads/avatar': (req, res) => {
      if (req.method !== 'POST') return void res.writeHead(405, { allow: 'POST' }).end();
      receiveAvatar(req, secret, tempPath, avatarDir).then(
        (outcome) => {
          if ('refused' in outcome) return refuse(res, outcome.status, outcome.refused);
          res.writeHead(303, { location: '/', 'content-type': 'text/plain; charset=utf-8' }).end(`Saved as ${outcome.saved}\n`);
        },
        (err: unknown) => {
          process.stderr.write(`example backend: avatar upload failed: ${(err as Error).stack ?? String(err)}\n`);
          if (!res.headersSent) refuse(res, 500, 'Internal Server Error');
        },
      );
    },
  };
}

type Received = { saved: string } | { status: number; refused: string };

/**
 * Checks an upload Outrider forwarded and moves its file into the avatars. The file must be moved
 * (or copied) before the answer: Outrider deletes it once the request is over.
 */
async function receiveAvatar(req: IncomingMessage, secret: Buffer, tempPath: string, avatarDir: string): Promise<Received> {
  const bad = (refused: string): Received => ({ status: 400, refused: `Bad Request: ${refused}` });
  // 1. The rewritten form: avatar.name, avatar.path, avatar.size, avatar.sha256… (fields only, small).
  // 2. Signed by Outrider? The header (a client cannot forge it: Outrider drops the client's own), the
  //    avatar.gitlab-workhorse-upload token, and every plain field equal to its signed value.
  // 3. Only a file in the directory this backend handed out.
  let file: UploadedFile | undefined;
  try {
    const fields = await readFields(req, { limit: FORM_LIMIT });
    file = verifyUploadFields(req.headers, fields, secret, { tempPath, required: 'avatar' }).find((f) => f.field === 'avatar');
  } catch (err) {
    if (!(err instanceof OutriderVerificationError)) throw err;
    if (err.code === 'EDGE_VERIFY_TOO_LARGE') return { status: 413, refused: 'Request Entity Too Large' };
    if (err.code === 'EDGE_VERIFY_NO_FILE') return bad('choose an image to upload');
    if (err.code === 'EDGE_VERIFY_OUTSIDE') return bad('the avatar is not in the upload directory');
    if (err.code === 'EDGE_VERIFY_MISMATCH') return bad('the avatar fields are not the ones Outrider signed');
    return bad('uploads are accepted through Outrider only');
  }
  const path = file?.path;
  if (file === undefined || path === undefined) return bad('uploads are accepted through Outrider only');
  // 4. An image by its bytes and by its name, and a name safe to serve.
  const ext = extname(file.name).toLowerCase();
  const magic = await firstBytes(path, 8).catch(() => undefined);
  if (magic === undefined) return bad('the uploaded file is gone');
  const kind = magic.subarray(0, 8).equals(PNG_MAGIC) ? 'png' : magic.subarray(0, 3).equals(JPEG_MAGIC) ? 'jpeg' : undefined;
  if (kind === undefined) return bad('the avatar is not a PNG or JPEG image');
  if ((kind === 'png') !== (ext === '.png') || (kind === 'jpeg') !== (ext === '.jpg' || ext === '.jpeg')) {
    return bad(`the avatar's name must end in ${kind === 'png' ? '.png' : '.jpg or .jpeg'}`);
  }
  const stem =
    basename(file.name, extname(file.name))
      .replace(/[^A-Za-z0-9._-]/g, '_')
      .replace(/^[._-]+/, '')
      .slice(0, 64) || 'avatar';
  return { saved: await moveToAvatars(path, avatarDir, stem, ext) };
}

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const JPEG_MAGIC = Buffer.from([0xff, 0xd8, 0xff]);

async function firstBytes(path: string, n: number): Promise<Buffer> {
  const file = await open(path, 'r');
  try {
    const { buffer, bytesRead } = await file.read(Buffer.alloc(n), 0, n, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

/**
 * Moves `from` into the avatars as `<stem><ext>`, or `<stem>-1<ext>`, `<stem>-2<ext>`… when the
 * name is taken. The name is claimed by creating it exclusively, so two uploads never overwrite
 * each other; then the file is renamed over the claim, or copied when it lives on another device.
 */
async function moveToAvatars(from: string, dir: string, stem: string, ext: string): Promise<string> {
  for (let n = 0; n < 1000; n++) {
    const name = n === 0 ? `${stem}${ext}` : `${stem}-${n}${ext}`;
    const to = join(dir, name);
    try {
      await (await open(to, 'wx')).close();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw err;
    }
    try {
      await rename(from, to);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') {
        await unlink(to).catch(() => undefined);
        throw err;
      }
      await copyFile(from, to).catch(async (copyErr: unknown) => {
        await unlink(to).catch(() => undefined);
        throw copyErr;
      });
      await unlink(from).catch(() => undefined); // Outrider removes whatever is left anyway
    }
    return name;
  }
  throw new Error(`no free avatar name for ${stem}${ext}`);
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
