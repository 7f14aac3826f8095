import { malformed } from './errors.js';

/**
 * Pull-style access to a stream of chunks, so the format filters can be written as straight-line
 * code however the bytes are cut (one byte per chunk included). Only what a caller asks for is
 * held: a few header bytes, at most one JPEG segment, or one source chunk.
 */
export interface ByteReader {
  /** Up to `n` bytes without consuming them; fewer only when the stream ends first. */
  peek(n: number): Promise<Buffer>;
  /** Exactly `n` bytes; a stream that ends first is `malformed`, naming `what`. */
  read(n: number, what: string): Promise<Buffer>;
  /** Up to `n` bytes; fewer only when the stream ends first. */
  readUpTo(n: number): Promise<Buffer>;
  /** The next `n` bytes, as the pieces they arrive in; a stream that ends first is `malformed`. */
  pass(n: number, what: string): AsyncGenerator<Buffer>;
  /** Drops the next `n` bytes without holding them; a stream that ends first is `malformed`. */
  skip(n: number, what: string): Promise<void>;
  /** Everything left, as it arrives. */
  rest(): AsyncGenerator<Buffer>;
}

export function byteReader(source: AsyncIterable<unknown>): ByteReader {
  const it = source[Symbol.asyncIterator]();
  const pending: Buffer[] = [];
  let held = 0;
  let ended = false;

  /** Pulls chunks until `n` bytes are held or the source ends. */
  async function fill(n: number): Promise<void> {
    while (held < n && !ended) {
      const next = await it.next();
      if (next.done === true) ended = true;
      else {
        const chunk = toBuffer(next.value);
        if (chunk.length > 0) {
          pending.push(chunk);
          held += chunk.length;
        }
      }
    }
  }

  /** Takes up to `n` held bytes, as one buffer; copies only when they span chunks. */
  function take(n: number): Buffer {
    const first = pending[0];
    if (first === undefined || n === 0) return Buffer.alloc(0);
    if (first.length >= n) {
      if (first.length === n) pending.shift();
      else pending[0] = first.subarray(n);
      held -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(Math.min(n, held));
    let filled = 0;
    while (filled < out.length) {
      const piece = takePiece(out.length - filled);
      piece.copy(out, filled);
      filled += piece.length;
    }
    return out;
  }

  /** The first held chunk, or the first `max` bytes of it. */
  function takePiece(max: number): Buffer {
    const first = pending[0] as Buffer;
    if (first.length <= max) {
      pending.shift();
      held -= first.length;
      return first;
    }
    pending[0] = first.subarray(max);
    held -= max;
    return first.subarray(0, max);
  }

  async function* pass(n: number, what: string): AsyncGenerator<Buffer> {
    while (n > 0) {
      await fill(1);
      if (held === 0) throw malformed(`${what} is cut short`);
      const piece = takePiece(n);
      n -= piece.length;
      yield piece;
    }
  }

  return {
    async peek(n) {
      await fill(n);
      const out = take(n);
      if (out.length > 0) {
        pending.unshift(out);
        held += out.length;
      }
      return out;
    },
    async read(n, what) {
      await fill(n);
      if (held < n) throw malformed(`${what} is cut short`);
      return take(n);
    },
    async readUpTo(n) {
      await fill(n);
      return take(n);
    },
    pass,
    async skip(n, what) {
      for await (const _ of pass(n, what));
    },
    async *rest() {
      while (pending.length > 0) yield takePiece(Number.POSITIVE_INFINITY);
      while (!ended) {
        const next = await it.next();
        if (next.done === true) ended = true;
        else {
          const chunk = toBuffer(next.value);
          if (chunk.length > 0) yield chunk;
        }
      }
    },
  };
}

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (typeof chunk === 'string') return Buffer.from(chunk);
  throw new TypeError('stripMetadata reads bytes: the source gave something else');
}
