import { closeSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
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
