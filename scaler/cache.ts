import type { OutputType } from './limits.js';

/** One scaled image as it is sent. */
export interface CachedImage {
  body: Buffer;
  contentType: OutputType;
  width: number;
  originalBytes: number;
}

/** Bytes an entry costs besides its body: the key, the Map slot, the object. */
const ENTRY_OVERHEAD = 160;

/** An entry in recency order: a doubly linked list, so a hit moves it without touching the Map. */
interface Node {
  key: string;
  image: CachedImage;
  cost: number;
  older: Node | undefined;
  newer: Node | undefined;
}

/**
 * Scaled images kept in memory, bounded by bytes (`cache_max_bytes`), least recently used evicted
 * first. Keys carry everything that determines the output (see `cacheKey`), so a changed source
 * is simply a different key and its old entry ages out. A capacity of 0 keeps nothing.
 */
export class ScaledCache {
  private readonly entries = new Map<string, Node>();
  private readonly capacity: number;
  private used = 0;
  private oldest: Node | undefined;
  private newest: Node | undefined;

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
    const node = this.entries.get(key);
    if (node === undefined) return undefined;
    if (node !== this.newest) {
      this.unlink(node);
      this.append(node);
    }
    return node.image;
  }

  set(key: string, image: CachedImage): void {
    const cost = image.body.length + key.length + ENTRY_OVERHEAD;
    if (cost > this.capacity) return;
    const old = this.entries.get(key);
    if (old !== undefined) this.remove(old);
    const node: Node = { key, image, cost, older: undefined, newer: undefined };
    this.entries.set(key, node);
    this.append(node);
    this.used += cost;
    while (this.used > this.capacity && this.oldest !== undefined) this.remove(this.oldest);
  }

  private remove(node: Node): void {
    this.entries.delete(node.key);
    this.unlink(node);
    this.used -= node.cost;
  }

  private unlink(node: Node): void {
    if (node.older === undefined) this.oldest = node.newer;
    else node.older.newer = node.newer;
    if (node.newer === undefined) this.newest = node.older;
    else node.newer.older = node.older;
    node.older = undefined;
    node.newer = undefined;
  }

  private append(node: Node): void {
    node.older = this.newest;
    if (this.newest === undefined) this.oldest = node;
    else this.newest.newer = node;
    this.newest = node;
  }
}

/**
 * The cache key: the source's identity (path or URL with its validators: mtime, size, inode or
 * ETag), the width, the output format (`source` for the source's own) and the output settings'
 * version, so a change to any of them is a miss.
 */
export function cacheKey(identity: string, width: number, format: string, settings: string): string {
  return `${settings}\u0000${format}\u0000${width}\u0000${identity}`;
}
