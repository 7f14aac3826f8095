import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import express from 'express';
import { FormData, request } from 'undici';
import { afterEach, describe, expect, it, onTestFinished, vi } from 'vitest';
import { outrider, type UploadedFile } from '../../backend/express.js';
import { signJwt } from '../../protocol/jwt.js';
import { startProxy } from '../helpers/app.js';
import { listenExpress } from '../helpers/express.js';
import { photo } from '../helpers/images.js';
import { uploadRoutesToml, uploadScratch } from '../helpers/uploads.js';

const scratch = uploadScratch('outrider-express-uploads-');
const OTHER = randomBytes(32);

interface Seen {
  uploads: Readonly<Record<string, UploadedFile>> | undefined;
  body: unknown;
  bytes: Buffer | undefined;
}

/**
 * An Express 5 app (NODE_ENV=development, so Express' own error page would show a stack) with an
 * avatar upload route and a package (body) upload route, both accelerated by a real Outrider.
 */
async function uploadApp() {
  const tempPath = scratch.newDir();
  vi.stubEnv('NODE_ENV', 'development');
  const app = express();
  vi.unstubAllEnvs();
  const edge = outrider({ secretPath: scratch.secretPath, tempPath });
  const seen: Seen[] = [];
  const record = (req: express.Request) => {
    const file = Object.values(req.uploads ?? {})[0];
    // Read now: Outrider deletes the file once the answer is relayed.
    seen.push({ uploads: req.uploads, body: req.body, bytes: file?.path === undefined ? undefined : readFileSync(file.path) });
  };
  app.use(edge);
  app.post('/uploads/avatar/authorize', edge.authorizeUpload({ maximumSize: 100_000, uploadHashFunctions: ['sha256'] }));
  app.post('/uploads/avatar', edge.verifyUpload({ required: 'avatar' }), (req, res) => {
    record(req);
    res.status(201).json({ saved: req.uploads?.avatar?.name });
  });
  // A route that takes small forms only: its fields past formLimit are a JSON 413.
  app.post('/uploads/small/authorize', edge.authorizeUpload({ maximumSize: 100_000 }));
  app.post('/uploads/small', edge.verifyUpload({ required: 'avatar', formLimit: 2048 }), (req, res) => {
    record(req);
    res.status(201).end();
  });
  app.put(
    '/packages/:name/authorize',
    edge.authorizeUpload((req: express.Request) => ({ uploadHashFunctions: [String(req.query.hash) as 'md5'] })),
  );
  app.put('/packages/:name', express.urlencoded(), edge.verifyUpload({ required: 'file' }), (req, res) => {
    record(req);
    res.status(201).end();
  });
  app.get('/boom', () => {
    throw new Error('a bug in a route');
  });
  const backend = await listenExpress(app);
  const proxy = await startProxy(backend.url, {
    toml: uploadRoutesToml({ secretPath: scratch.secretPath, tempDir: scratch.newDir(), maxFiles: 4 }),
  });
  return { tempPath, seen, backend: backend.url, proxy: proxy.url };
}

afterEach(() => vi.unstubAllEnvs());

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('accelerated uploads through the Express adapter', () => {
  it('reach the route as verified files on disk and the other fields in req.body', async () => {
    const { proxy, seen, tempPath } = await uploadApp();
    const image = await photo(120, 80, 'png');
    const form = new FormData();
    form.append('title', 'me at the beach');
    form.append('tags', 'a');
    form.append('tags', 'b');
    form.append('avatar', new Blob([image], { type: 'image/png' }), 'holiday/me.png');
    const res = await request(`${proxy}/uploads/avatar`, { method: 'POST', body: form });
    expect([res.statusCode, await res.body.json()]).toEqual([201, { saved: 'me.png' }]);

    expect(seen).toHaveLength(1);
    const avatar = seen[0]?.uploads?.avatar;
    expect(avatar).toMatchObject({ field: 'avatar', name: 'me.png', size: image.length, hashes: { sha256: sha256(image) } });
    expect(Object.keys(avatar?.hashes ?? {})).toEqual(['sha256']); // the authorize answer's uploadHashFunctions
    expect(avatar?.path?.startsWith(`${tempPath}/`)).toBe(true); // where authorizeUpload told Outrider to store it
    expect(seen[0]?.bytes?.equals(image)).toBe(true);
    expect(seen[0]?.body).toEqual({ title: 'me at the beach', tags: ['a', 'b'] });
  });

  it('take authorize options per request, and read a form that express.urlencoded already parsed', async () => {
    const { proxy, seen } = await uploadApp();
    const bytes = randomBytes(5000);
    const res = await request(`${proxy}/packages/p1?hash=md5`, { method: 'PUT', body: bytes });
    expect(res.statusCode).toBe(201);
    await res.body.dump();
    const file = seen[0]?.uploads?.file;
    expect([file?.size, Object.keys(file?.hashes ?? {}), seen[0]?.bytes?.equals(bytes)]).toEqual([5000, ['md5'], true]);
    expect(seen[0]?.body).toEqual({});
  });

  it('are refused by Outrider past the maximumSize that authorizeUpload answered', async () => {
    const { proxy, seen } = await uploadApp();
    const form = new FormData();
    form.append('avatar', new Blob([randomBytes(150_000)]), 'big.png');
    const res = await request(`${proxy}/uploads/avatar`, { method: 'POST', body: form });
    await res.body.dump();
    expect(res.statusCode).toBe(413);
    expect(seen).toEqual([]);
  });

  it('with the required file left empty get a JSON 400 the client can act on', async () => {
    const { proxy, seen } = await uploadApp();
    const form = new FormData();
    form.append('title', 'no picture');
    const res = await request(`${proxy}/uploads/avatar`, { method: 'POST', body: form });
    expect([res.statusCode, res.headers['content-type'], await res.body.json()]).toEqual([
      400,
      'application/json; charset=utf-8',
      { error: { code: 'EDGE_VERIFY_NO_FILE', message: 'no file was sent in the field avatar' } },
    ]);
    expect(seen).toEqual([]);
  });
});

describe('requests that did not come through Outrider', () => {
  /** A form as an attacker would send it straight to the app: the fields Outrider would have written. */
  const forgedForm = (path: string, key: Buffer) => {
    const upload = { name: 'me.png', path, remote_url: '', remote_id: '', size: '3' };
    const form = new FormData();
    for (const [k, v] of Object.entries(upload)) form.append(`avatar.${k}`, v);
    form.append('avatar.gitlab-workhorse-upload', signJwt({ upload, iss: 'gitlab-workhorse' }, key));
    return {
      form,
      headers: { 'gitlab-workhorse-multipart-fields': signJwt({ rewritten_fields: { avatar: path }, iss: 'gitlab-workhorse' }, key) },
    };
  };

  /** Express' answer must be JSON with the toolkit's code: no HTML page, no stack, no file path. */
  const expectJsonRefusal = async (res: Awaited<ReturnType<typeof request>>, status: number, code: string) => {
    const text = await res.body.text();
    expect([res.statusCode, res.headers['content-type']]).toEqual([status, 'application/json; charset=utf-8']);
    expect(JSON.parse(text)).toEqual({ error: { code, message: expect.any(String) } });
    expect(text).not.toMatch(/<|\bat |express|node_modules|\.ts\b/);
  };

  it('the app in development mode would show a stack trace on its own error page (the control)', async () => {
    const { backend } = await uploadApp();
    const logged = vi.spyOn(console, 'error').mockImplementation(() => undefined); // Express logs the stack too
    const res = await request(`${backend}/boom`);
    onTestFinished(() => logged.mockRestore());
    const text = await res.body.text();
    expect([res.statusCode, res.headers['content-type']]).toEqual([500, 'text/html; charset=utf-8']);
    expect(text).toMatch(/Error: a bug in a route<br> &nbsp; &nbsp;at /);
    await vi.waitFor(() => expect(logged).toHaveBeenCalledOnce());
  });

  it('a form larger than formLimit gets a JSON 413, through Outrider, and never reaches the route', async () => {
    const { proxy, seen } = await uploadApp();
    const form = new FormData();
    form.append('avatar', new Blob([randomBytes(500)]), 'small.png');
    form.append('bio', 'x'.repeat(5000));
    await expectJsonRefusal(await request(`${proxy}/uploads/small`, { method: 'POST', body: form }), 413, 'EDGE_VERIFY_TOO_LARGE');
    expect(seen).toEqual([]);
  });

  it('an unsigned upload sent straight to the app gets a JSON 400 and never reaches the route', async () => {
    const { backend, seen, tempPath } = await uploadApp();
    const plain = new FormData();
    plain.append('avatar', new Blob([Buffer.from('GIF89a')]), 'evil.gif');
    await expectJsonRefusal(await request(`${backend}/uploads/avatar`, { method: 'POST', body: plain }), 400, 'EDGE_VERIFY_MISSING');
    // Refused on its headers, before a byte of the body is read: not a 413 for a form too large.
    const large = new FormData();
    large.append('avatar', new Blob([randomBytes(3 * 1024 * 1024)]), 'big.png');
    await expectJsonRefusal(await request(`${backend}/uploads/avatar`, { method: 'POST', body: large }), 400, 'EDGE_VERIFY_MISSING');
    const { form } = forgedForm(join(tempPath, 'x'), OTHER);
    await expectJsonRefusal(await request(`${backend}/uploads/avatar`, { method: 'POST', body: form }), 400, 'EDGE_VERIFY_MISSING');
    expect(seen).toEqual([]);
  });

  it('a forged upload signed with another secret, or naming a file outside tempPath, gets a JSON 400', async () => {
    const { backend, seen, tempPath } = await uploadApp();
    const forged = forgedForm(join(tempPath, 'x'), OTHER);
    await expectJsonRefusal(
      await request(`${backend}/uploads/avatar`, { method: 'POST', body: forged.form, headers: forged.headers }),
      400,
      'EDGE_VERIFY_SIGNATURE',
    );
    // Signed with the real secret (as a leaked token would be), but naming a file the app never handed out.
    const outside = forgedForm('/etc/passwd', readSecretBytes());
    await expectJsonRefusal(
      await request(`${backend}/uploads/avatar`, { method: 'POST', body: outside.form, headers: outside.headers }),
      400,
      'EDGE_VERIFY_OUTSIDE',
    );
    expect(seen).toEqual([]);
  });

  it('an authorize call without Outrider’s fresh token gets a JSON 401 and no upload directory', async () => {
    const { backend } = await uploadApp();
    const headers = { 'gitlab-workhorse-api-request': signJwt({ iss: 'gitlab-workhorse', iat: Math.floor(Date.now() / 1000) }, OTHER) };
    await expectJsonRefusal(await request(`${backend}/uploads/avatar/authorize`, { method: 'POST' }), 401, 'EDGE_VERIFY_MISSING');
    await expectJsonRefusal(
      await request(`${backend}/uploads/avatar/authorize`, { method: 'POST', headers }),
      401,
      'EDGE_VERIFY_SIGNATURE',
    );
    const stale = {
      'gitlab-workhorse-api-request': signJwt({ iss: 'gitlab-workhorse', iat: Math.floor(Date.now() / 1000) - 600 }, readSecretBytes()),
    };
    await expectJsonRefusal(
      await request(`${backend}/uploads/avatar/authorize`, { method: 'POST', headers: stale }),
      401,
      'EDGE_VERIFY_EXPIRED',
    );
  });
});

function readSecretBytes(): Buffer {
  return Buffer.from(readFileSync(scratch.secretPath, 'utf8').trim(), 'base64');
}
