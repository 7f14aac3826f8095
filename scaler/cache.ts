/** One scaled image as it is sent. */
export interface CachedImage {
  body: Buffer;
  contentType: 'image/png' | 'image/jpeg';
  width: number;
  originalBytes: number;
}

/** Bytes an entry costs besides its body: the key, the Map slot, the object. */
const ENTRY_OVERHEAD = 160;

/**
 * Scaled images kept in memory, bounded by bytes (`cache_max_bytes`), least recently used evicted
 * first. Keys carry everything that determines the output (see `cacheKey`), so a changed source
 * is simply a different key and its old entry ages out. A capacity of 0 keeps nothing.
 */
export class ScaledCache {
  private readonly entries = new Map<string, CachedImage>();
  private readonly capacity: number;
  private used = 0;

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  /** Bytes held now. */
  get bytes(): number {
    return this.used;
  }

  /** Entries held now. */
  get size(): number {
    return this.entries.size;
  }

  get(key: string): CachedImage | undefined {
    const hit = this.entries.get(key);
    if (hit === undefined) return undefined;
    // Most recently used last: Map keeps insertion order.
    this.entries.delete(key);
    this.entries.set(key, hit);
    return hit;
  }

  set(key: string, image: CachedImage): void {
    const cost = image.body.length + key.length + ENTRY_OVERHEAD;
    if (cost > this.capacity) return;
    const old = this.entries.get(key);
    if (old !== undefined) {
      this.entries.delete(key);
      this.used -= old.body.length + key.length + ENTRY_OVERHEAD;
    }
    this.entries.set(key, image);
    this.used += cost;
    for (const [oldest, entry] of this.entries) {
      if (this.used <= this.capacity) break;
      this.entries.delete(oldest);
      this.used -= entry.body.length + oldest.length + ENTRY_OVERHEAD;
    }
  }
}

/**
 * The cache key: the source's identity (path or URL with its validators: mtime, size, inode or
 * ETag), the width, and the output settings' version, so a change to any of them is a miss.
 */
export function cacheKey(identity: string, width: number, settings: string): string {
  return `${settings}\u0000${width}\u0000${identity}`;
}
