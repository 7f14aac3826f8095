import { setTimeout as sleep } from 'node:timers/promises';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { isNotModified, lastModified, parseHttpDate } from '../../scaler/conditional.js';
import { parseDirective } from '../../scaler/directive.js';
import { createGate } from '../../scaler/gate.js';
import { precheck, sniffFormat } from '../../scaler/limits.js';

const fields = (o: Record<string, unknown>) => new Map(Object.entries(o).map(([k, v]) => [k.toLowerCase(), v]));

describe('the send-scaled-img directive', () => {
  it('accepts a local path or an http(s) URL, a width within max_width, and a content type', () => {
    expect(parseDirective(fields({ Location: '/srv/avatars/1.png', Width: 64, ContentType: 'image/png' }), { maxWidth: 4096 })).toEqual({
      location: { kind: 'file', path: '/srv/avatars/1.png' },
      width: 64,
      contentType: 'image/png',
      keepFormat: false,
    });
    expect(
      parseDirective(fields({ location: 'https://objects.example/a.jpg?X-Sig=1', width: 4096, contenttype: 'image/jpeg' }), {
        maxWidth: 4096,
      }).location,
    ).toEqual({
      kind: 'url',
      url: 'https://objects.example/a.jpg?X-Sig=1',
    });
  });

  it('names the field and what was expected when it refuses', () => {
    const bad = (o: Record<string, unknown>) => () => parseDirective(fields(o), { maxWidth: 4096 });
    const ok = { Location: '/a.png', Width: 64, ContentType: 'image/png' };
    expect(bad({ ...ok, Location: undefined })).toThrow("send-scaled-img: 'Location' not set");
    expect(bad({ ...ok, Location: 'avatars/1.png' })).toThrow("'Location' must be an absolute path or an http(s) URL");
    expect(bad({ ...ok, ContentType: '' })).toThrow("'ContentType' not set");
    for (const width of [0, -1, 4097, 1.5, '64', null]) {
      expect(bad({ ...ok, Width: width })).toThrow(`'Width' must be an integer from 1 to 4096, got ${JSON.stringify(width)}`);
    }
    let code: unknown;
    try {
      bad({ ...ok, Width: 0 })();
    } catch (err) {
      code = (err as { code: string }).code;
    }
    expect(code).toBe('EDGE_DIRECTIVE_INVALID');
  });
});

describe('conditional requests at whole-second precision', () => {
  const mtime = Date.parse('2026-03-04T05:06:07.250Z'); // sub-second
  it('formats Last-Modified truncated to the second, and none for an unknown time', () => {
    expect(lastModified(mtime)).toBe('Wed, 04 Mar 2026 05:06:07 GMT');
    expect(lastModified(0)).toBeUndefined();
  });

  it('is not modified at or after the mtime, modified before it, and ignores what is not an HTTP date', () => {
    expect(isNotModified('Wed, 04 Mar 2026 05:06:07 GMT', mtime)).toBe(true);
    expect(isNotModified('Wed, 04 Mar 2026 05:06:08 GMT', mtime)).toBe(true);
    expect(isNotModified('Wed, 04 Mar 2026 05:06:06 GMT', mtime)).toBe(false);
    expect(isNotModified('Wednesday, 04-Mar-26 05:06:07 GMT', mtime)).toBe(true);
    expect(isNotModified('Wed Mar  4 05:06:07 2026', mtime)).toBe(true);
    for (const garbage of ['0', '', 'yesterday', '2026-03-04T05:06:07Z', undefined]) {
      expect(isNotModified(garbage, mtime)).toBe(false);
    }
    expect(parseHttpDate('0')).toBeUndefined();
  });
});

describe('the scaling gate', () => {
  const hold = () => {
    let release!: () => void;
    const done = new Promise<void>((r) => {
      release = r;
    });
    return { job: () => done.then(() => 'done'), release };
  };

  it('runs up to its concurrency at once, admitted in the same tick, and refuses the rest when it may not wait', async () => {
    const gate = createGate({ concurrency: 2, maxWaitMs: 0, maxQueue: 10 });
    const a = hold();
    const b = hold();
    const first = gate.run(a.job);
    const second = gate.run(b.job);
    expect(await gate.run(async () => 'third')).toEqual({ admitted: false, reason: 'busy' });
    expect(gate.running).toBe(2);
    a.release();
    b.release();
    expect(await first).toEqual({ admitted: true, value: 'done' });
    expect(await second).toEqual({ admitted: true, value: 'done' });
    expect(gate.running).toBe(0);
    expect(await gate.run(async () => 'again')).toEqual({ admitted: true, value: 'again' });
  });

  it('lets a job wait up to max_scaler_wait in a bounded queue, then refuses it', async () => {
    const gate = createGate({ concurrency: 1, maxWaitMs: 100, maxQueue: 1 });
    const a = hold();
    const running = gate.run(a.job);
    const waiter = gate.run(async () => 'waited');
    expect(await gate.run(async () => 'no room')).toEqual({ admitted: false, reason: 'busy' });
    const started = Date.now();
    expect(await waiter).toEqual({ admitted: false, reason: 'timeout' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(90);
    // A waiter that gets a slot in time runs.
    const late = gate.run(async () => 'got in');
    a.release();
    await running;
    expect(await late).toEqual({ admitted: true, value: 'got in' });
    expect(gate.waiting).toBe(0);
  });

  it('frees a waiting place when its request is aborted, and passes a failing job on', async () => {
    const gate = createGate({ concurrency: 1, maxWaitMs: 5000, maxQueue: 1 });
    const a = hold();
    const running = gate.run(a.job);
    const controller = new AbortController();
    const waiter = gate.run(async () => 'never', controller.signal);
    controller.abort();
    expect(await waiter).toEqual({ admitted: false, reason: 'aborted' });
    expect(gate.waiting).toBe(0);
    const failing = gate.run(async () => {
      throw new Error('sharp failed');
    });
    a.release();
    await running;
    await expect(failing).rejects.toThrow('sharp failed');
    await sleep(1);
    expect(gate.running).toBe(0);
  });
});

describe('input checks before decoding', () => {
  it('tells PNG and JPEG by magic bytes, whatever the name claims', async () => {
    const png = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#f00' } })
      .png()
      .toBuffer();
    const jpeg = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#f00' } })
      .jpeg()
      .toBuffer();
    const gif = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#f00' } })
      .gif()
      .toBuffer();
    expect(sniffFormat(png)).toBe('png');
    expect(sniffFormat(jpeg)).toBe('jpeg');
    expect(sniffFormat(gif)).toBeUndefined();
    expect(sniffFormat(Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"/>'))).toBeUndefined();
  });

  it("serves the original for Workhorse's reasons, in Workhorse's order", async () => {
    const png = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#f00' } })
      .png()
      .toBuffer();
    expect(precheck(png.length, png, 250_000)).toBe('png');
    expect(precheck(300_000, png, 250_000)).toBe('too-large');
    expect(precheck(3, Buffer.from('PNG'), 250_000)).toBe('too-small');
    expect(precheck(20, Buffer.from('GIF89a-not-an-image'), 250_000)).toBe('unsupported-format');
    expect(precheck(undefined, png, 250_000)).toBe('png');
  });
});
