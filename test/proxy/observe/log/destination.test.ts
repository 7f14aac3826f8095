import { spawn } from 'node:child_process';
import fs, { closeSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { createBatchedDestination, FLUSH_DELAY_MS } from '../../../../proxy/observe/log/destination.js';

describe('the batched log destination', () => {
  it('writes the lines logged within a few milliseconds together, in order, and none later than that', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'outrider-log-')), 'out.log');
    const dest = createBatchedDestination(file);
    const writes = vi.spyOn(fs, 'writeSync');
    syncBuiltinESMExports();
    try {
      dest.write('{"n":1}\n');
      await new Promise(setImmediate);
      dest.write('{"n":2}\n');
      expect(readFileSync(file, 'utf8')).toBe('');
      await new Promise((r) => setTimeout(r, FLUSH_DELAY_MS + 20));
      expect(readFileSync(file, 'utf8')).toBe('{"n":1}\n{"n":2}\n');
      expect(writes).toHaveBeenCalledTimes(1);
    } finally {
      writes.mockRestore();
      syncBuiltinESMExports();
    }
    dest.write('{"n":3}\n');
    dest.flushSync();
    expect(readFileSync(file, 'utf8')).toBe('{"n":1}\n{"n":2}\n{"n":3}\n');
    await new Promise<void>((resolve, reject) => dest.flush((err) => (err ? reject(err) : resolve())));
  });

  it('writes at once when its buffer fills, without waiting for the delay, and a line longer than the buffer whole', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'outrider-log-')), 'out.log');
    const dest = createBatchedDestination(file);
    const line = `{"pad":"${'x'.repeat(1000)}"}\n`;
    for (let i = 0; i < 70; i++) dest.write(line);
    expect(readFileSync(file, 'utf8').length).toBeGreaterThan(16 * 1024);
    const long = `{"long":"${'é'.repeat(100_000)}"}\n`;
    dest.write(long);
    dest.write(line);
    dest.flushSync();
    expect(readFileSync(file, 'utf8')).toBe(line.repeat(70) + long + line);
  });

  it('keeps what a full pipe does not take, in order, and writes it once the reader catches up', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'outrider-log-'));
    const out = join(dir, 'out.log');
    // A reader that starts reading only after the pipe has been filled.
    const reader = spawn('sh', ['-c', `sleep 0.5; cat > '${out}'`], { stdio: ['pipe', 'ignore', 'inherit'] });
    const fd = (reader.stdin as unknown as { _handle: { fd: number } })._handle.fd;
    const filler = Buffer.alloc(4096, 0x20);
    let filled = 0;
    for (;;) {
      try {
        filled += fs.writeSync(fd, filler);
      } catch (err) {
        expect((err as NodeJS.ErrnoException).code).toBe('EAGAIN');
        break;
      }
    }
    const dest = createBatchedDestination(fd);
    const lines = Array.from({ length: 500 }, (_, i) => `{"n":${i},"pad":"${'y'.repeat(200)}"}\n`);
    for (const line of lines) dest.write(line);
    dest.flushSync();
    const exited = new Promise((resolve) => reader.on('exit', resolve));
    await new Promise((r) => setTimeout(r, 1500));
    dest.flushSync();
    reader.stdin?.end();
    await exited;
    const text = readFileSync(out, 'utf8');
    expect(text.length).toBe(filled + lines.join('').length);
    expect(text.slice(filled)).toBe(lines.join(''));
  });

  it('with a write limit, writes whole lines in chunks no larger than it, so processes sharing a pipe never interleave mid-line', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'outrider-log-')), 'out.log');
    const dest = createBatchedDestination(file, { maxWriteBytes: 100 });
    const lines = Array.from({ length: 30 }, (_, i) => `{"n":${i},"pad":"${'x'.repeat(i % 7)}"}\n`);
    const long = `{"long":"${'y'.repeat(300)}"}\n`;
    for (const line of [...lines.slice(0, 20), long, ...lines.slice(20)]) dest.write(line);
    const writes: number[] = [];
    // The destination imports writeSync by name: sync the builtin's named exports with the spy.
    const spy = vi.spyOn(fs, 'writeSync');
    syncBuiltinESMExports();
    dest.flushSync();
    for (const call of spy.mock.calls) writes.push((call[1] as unknown as Buffer).length);
    spy.mockRestore();
    syncBuiltinESMExports();
    expect(readFileSync(file, 'utf8')).toBe([...lines.slice(0, 20), long, ...lines.slice(20)].join(''));
    // Every write but the over-long line's is at most 100 bytes and ends a line.
    expect(writes.filter((n) => n > 100)).toEqual([long.length]);
    expect(writes.length).toBeGreaterThan(4);
  });

  it('never throws when the output is gone: the lines are dropped instead', async () => {
    const fd = openSync(join(mkdtempSync(join(tmpdir(), 'outrider-log-')), 'gone.log'), 'a');
    closeSync(fd);
    const dest = createBatchedDestination(fd);
    dest.write('{"n":1}\n');
    expect(() => dest.flushSync()).not.toThrow();
    dest.write('{"n":2}\n');
    await new Promise(setImmediate);
  });
});
