import fs, { closeSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { createBatchedDestination } from '../proxy/log-destination.js';

describe('the batched log destination', () => {
  it('writes the lines of one event-loop turn together, in order, when the turn ends', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'outrider-log-')), 'out.log');
    const dest = createBatchedDestination(file);
    dest.write('{"n":1}\n');
    dest.write('{"n":2}\n');
    expect(readFileSync(file, 'utf8')).toBe('');
    await new Promise(setImmediate);
    expect(readFileSync(file, 'utf8')).toBe('{"n":1}\n{"n":2}\n');
    dest.write('{"n":3}\n');
    dest.flushSync();
    expect(readFileSync(file, 'utf8')).toBe('{"n":1}\n{"n":2}\n{"n":3}\n');
    await new Promise<void>((resolve, reject) => dest.flush((err) => (err ? reject(err) : resolve())));
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
