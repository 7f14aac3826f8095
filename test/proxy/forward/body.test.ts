import { createReadStream, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { type BodyResult, sendBody, whenOpen } from '../../../proxy/forward/body.js';
import { Prefix } from '../../../scaler/prefix.js';
import { startBackend } from '../../helpers/backend.js';

const dir = mkdtempSync(join(tmpdir(), 'outrider-body-'));

/**
 * A real server whose handler promises `length` bytes and streams `source` with sendBody; when
 * the source fails before its first byte, it answers 502 as the interceptors do.
 */
async function serve(source: () => Readable, length: number) {
  const results: BodyResult[] = [];
  const server = await startBackend((_req, res) => {
    void sendBody(source(), res, length, () => res.writeHead(200, { 'content-length': String(length) })).then((r) => {
      results.push(r);
      if (!r.complete && !r.started) res.writeHead(502, { 'content-length': '0' }).end();
    });
  });
  return { url: server.url, results };
}

describe('sending a body of a promised length', () => {
  it('ends the response when every promised byte went through', async () => {
    const { url, results } = await serve(() => Readable.from([Buffer.from('hello '), Buffer.from('world')]), 11);
    const res = await request(url);
    expect(await res.body.text()).toBe('hello world');
    expect(results).toEqual([{ complete: true }]);
  });

  it('cuts the connection when the source ends short, so the client never takes it for the whole body', async () => {
    const { url, results } = await serve(() => Readable.from([Buffer.from('hello')]), 11);
    // Cut before or after the head reached the client: either way no whole response.
    await expect(request(url).then((res) => res.body.text())).rejects.toThrow();
    expect(results[0]?.complete).toBe(false);
  });

  it('cuts the connection when the source fails mid-way', async () => {
    const failing = () => {
      let reads = 0;
      return new Readable({
        read() {
          if (reads++ === 0) this.push(Buffer.from('part'));
          else this.destroy(new Error('disk went away'));
        },
      });
    };
    const { url, results } = await serve(failing, 100);
    await expect(request(url).then((res) => res.body.text())).rejects.toThrow();
    expect(results[0]).toMatchObject({ complete: false, started: true, err: { message: 'disk went away' } });
  });

  it('leaves the response unstarted when the source fails or ends before its first byte, so a status can still be sent', async () => {
    const failing = () =>
      new Readable({
        read() {
          this.destroy(new Error('disk went away'));
        },
      });
    const failed = await serve(failing, 100);
    const res = await request(failed.url);
    expect(res.statusCode).toBe(502);
    await res.body.dump();
    expect(failed.results[0]).toMatchObject({ complete: false, started: false, err: { message: 'disk went away' } });

    // A file truncated to nothing after its stat: no byte ever comes.
    const file = join(dir, 'shrunk.txt');
    const empty = await serve(() => {
      writeFileSync(file, '');
      return createReadStream(file);
    }, 10);
    const shrunk = await request(empty.url);
    expect(shrunk.statusCode).toBe(502);
    await shrunk.body.dump();
    expect(empty.results[0]).toMatchObject({ complete: false, started: false });
  });
});

describe('waiting for a file to open', () => {
  it('resolves for a readable file and rejects with the open error for a missing one', async () => {
    const file = join(dir, 'present.txt');
    writeFileSync(file, 'x');
    const present = createReadStream(file);
    await expect(whenOpen(present)).resolves.toBeUndefined();
    present.destroy();
    await expect(whenOpen(createReadStream(join(dir, 'missing.txt')))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('reading only the start of a source', () => {
  /** A source of `count` 1 KiB chunks that records how many were pulled and whether it was destroyed. */
  function counted(count: number) {
    const state = { pulled: 0, destroyed: false };
    const stream = new Readable({
      highWaterMark: 1, // no read-ahead: every pull is asked for
      read() {
        if (state.pulled === count) return void this.push(null);
        state.pulled++;
        this.push(Buffer.alloc(1024, state.pulled));
      },
      destroy(err, cb) {
        state.destroyed = true;
        cb(err);
      },
    });
    return { stream, state };
  }

  it('pulls only the chunks a decision needs, then hands on every byte in order', async () => {
    const { stream, state } = counted(10);
    const prefix = new Prefix(stream);
    await prefix.fill(8);
    expect(prefix.total).toBe(1024);
    expect(state.pulled).toBeLessThanOrEqual(2);
    const all = Buffer.concat(await prefix.stream().toArray());
    expect(all.length).toBe(10 * 1024);
    expect(all[0]).toBe(1);
    expect(all[all.length - 1]).toBe(10);
  });

  it('reads whole up to a limit, and refuses past it without reading much further', async () => {
    expect((await new Prefix(counted(3).stream).readAll(3 * 1024))?.length).toBe(3 * 1024);
    const big = counted(100);
    expect(await new Prefix(big.stream).readAll(4 * 1024)).toBeUndefined();
    expect(big.state.pulled).toBeLessThanOrEqual(6);
  });

  it('releases the source when its stream is destroyed before it is read, or when it is released', async () => {
    const a = counted(10);
    const pa = new Prefix(a.stream);
    await pa.fill(8);
    pa.stream().destroy();
    await new Promise((r) => setImmediate(r));
    expect(a.state.destroyed).toBe(true);
    const b = counted(10);
    const pb = new Prefix(b.stream);
    await pb.fill(8);
    pb.release();
    await new Promise((r) => setImmediate(r));
    expect(b.state.destroyed).toBe(true);
  });
});
