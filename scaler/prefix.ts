import { Readable } from 'node:stream';

/**
 * A byte stream read from its start only as far as a decision needs (the magic bytes, then the
 * whole image once a scaling slot is held), and then either kept in memory or handed on whole:
 * `stream()` yields what was read followed by the rest, without holding more. Whatever way it ends
 * (read through, abandoned, destroyed early) the source is released: its iterator is returned,
 * which destroys the underlying stream and closes a file descriptor.
 */
export class Prefix {
  private readonly chunks: Buffer[] = [];
  private readonly iterator: AsyncIterator<Buffer>;
  private ended = false;
  private released = false;
  /** Bytes read so far. */
  total = 0;

  constructor(body: Readable) {
    this.iterator = body[Symbol.asyncIterator]();
  }

  /** True once the source has no more bytes. */
  get done(): boolean {
    return this.ended;
  }

  /** Reads until at least `n` bytes are held or the source ends. */
  async fill(n: number): Promise<void> {
    while (!this.ended && this.total < n) {
      const next = await this.iterator.next();
      if (next.done === true) {
        this.ended = true;
        break;
      }
      const chunk = next.value;
      this.chunks.push(chunk);
      this.total += chunk.length;
    }
  }

  /** The bytes read so far, as one buffer. */
  bytes(): Buffer {
    if (this.chunks.length > 1) this.chunks.splice(0, this.chunks.length, Buffer.concat(this.chunks, this.total));
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  /** The whole source when it has at most `limit` bytes; undefined (having read `limit` + 1) when it has more. */
  async readAll(limit: number): Promise<Buffer | undefined> {
    await this.fill(limit + 1);
    return this.total > limit ? undefined : this.bytes();
  }

  /** Everything from the first byte: what was read, then the rest. Destroying it releases the source. */
  stream(): Readable {
    const chunks = this.chunks.splice(0);
    const prefix = this;
    return new Readable({
      // Node calls read() again only after a push, so one next() is pending at a time.
      read() {
        const queued = chunks.shift();
        if (queued !== undefined) {
          this.push(queued);
          return;
        }
        if (prefix.ended) {
          this.push(null);
          return;
        }
        prefix.iterator.next().then(
          (next) => {
            if (next.done === true) {
              prefix.ended = true;
              this.push(null);
            } else this.push(next.value);
          },
          (err: Error) => this.destroy(err),
        );
      },
      destroy(err, callback) {
        prefix.release();
        callback(err);
      },
    });
  }

  /** Stops reading and frees the source. Safe to call more than once. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.ended = true;
    void this.iterator.return?.()?.catch(() => undefined);
  }
}
