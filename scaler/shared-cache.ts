import { createHash, randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import type { CachedImage } from './cache.js';
import { OUTPUT_TYPES, type OutputType } from './limits.js';

export interface SharedCacheOptions {
  /** `redis://[:password@]host:port/db`, `rediss://` for TLS, or `unix:/path/to/redis.sock`. */
  url: string;
  /** Put before every key, so several sites can share one Redis. */
  keyPrefix: string;
  /** How long a scaled image is kept in Redis. */
  ttlMs: number;
  /** The longest any one call may take before it counts as a failure and the request goes on without it. */
  timeoutMs: number;
  /** How long a scaling lease is held at most: a holder that died frees the key after this. */
  leaseMs: number;
  /** How long a request waits for another node's scaling before it scales itself. */
  leaseWaitMs: number;
  /** Failures in a row that open the circuit breaker. */
  failureThreshold: number;
  /** How long the breaker stays open before one call is tried again. */
  retryAfterMs: number;
}

/** What the shared tier reports, for metrics and logs (wired in `proxy/`). */
export interface SharedCacheEvents {
  lookup(result: 'hit' | 'miss' | 'error' | 'skipped'): void;
  /** A request waited for another node's lease: `filled` by it, the holder `gone` without a result, or `timeout`. */
  leaseWait(result: 'filled' | 'gone' | 'timeout', ms: number): void;
  bytes(direction: 'read' | 'written', bytes: number): void;
  /** The breaker opened (Redis unreachable, slow or failing) or closed again. */
  state(available: boolean, reason: string): void;
  /** A call failed (once per distinct message while it keeps failing). */
  error(err: unknown): void;
}

export type SharedLookup =
  | { kind: 'hit'; image: CachedImage }
  /** This request holds the lease: it scales, then `fill`s (or `release`s when it scaled nothing). */
  | { kind: 'lease'; fill(image: CachedImage): void; release(): void }
  /** Another request, on this node or another, holds the lease. */
  | { kind: 'held' }
  /** Redis cannot help now (down, slow, breaker open): go on alone. */
  | { kind: 'unavailable' };

export interface SharedCache {
  /** One round trip: the stored image, else the lease to make it, else who holds it. Never throws. */
  lookup(key: string): Promise<SharedLookup>;
  /** Waits for the lease holder's result, polling; undefined when it is gone, slow, or Redis fails. */
  wait(key: string, signal: AbortSignal | undefined): Promise<CachedImage | undefined>;
  close(): Promise<void>;
}

/** GET the image; when missing, take the lease (SET NX PX) in the same round trip. */
const LOOKUP = `local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}`;
/** The image, else whether the lease is still held. */
const POLL = `local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {3} end
return {0}`;
/** Store the image (when given) and drop the lease if this request still holds it. */
const FILL = `if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1`;

type Reply = [number, Buffer?];
interface Scripts {
  outriderLookupBuffer(value: string, lease: string, token: string, leaseMs: number): Promise<Reply>;
  outriderPollBuffer(value: string, lease: string): Promise<Reply>;
  outriderFill(value: string, lease: string, token: string, image: Buffer | string, ttlMs: number): Promise<number>;
}

/** The stored form: a version, the type, width and original size, then the bytes. */
const FORMAT_VERSION = 'outrider-scaled-v1\u0000';
const TYPES: OutputType[] = Object.values(OUTPUT_TYPES);
const HEADER = 10;
function encode(image: CachedImage): Buffer {
  const out = Buffer.allocUnsafe(HEADER + image.body.length);
  out[0] = 1;
  out[1] = TYPES.indexOf(image.contentType);
  out.writeUInt32BE(image.width, 2);
  out.writeUInt32BE(image.originalBytes, 6);
  image.body.copy(out, HEADER);
  return out;
}
function decode(value: Buffer): CachedImage | undefined {
  const type = TYPES[value[1] ?? -1];
  if (value.length <= HEADER || value[0] !== 1 || type === undefined) return undefined;
  // A copy: ioredis hands back a view into the socket chunk it read, which a cached entry would
  // otherwise keep alive whole (tens of images' worth for one small avatar).
  return {
    contentType: type,
    width: value.readUInt32BE(2),
    originalBytes: value.readUInt32BE(6),
    body: Buffer.from(value.subarray(HEADER)),
  };
}

class Timeout extends Error {
  constructor(ms: number) {
    super(`Redis did not answer within ${ms} ms`);
  }
}

/**
 * The second cache tier, shared by every worker of every Outrider: scaled images in Redis (or
 * Valkey), under the same identity as the local cache, plus a lease per key so one request in the
 * cluster scales a new image while the others wait for its result.
 *
 * Redis is never on the path of correctness: every call is bounded by `timeoutMs`; a failure is
 * "unavailable" and the request goes on alone; `failureThreshold` failures in a row open a circuit
 * breaker for `retryAfterMs`, during which no call is made; then one call is tried. Commands are
 * never queued while disconnected (they fail at once), and a connection that stops answering is
 * dropped and made again when the breaker opens, so nothing piles up behind it.
 */
export function createSharedCache(opts: SharedCacheOptions, events: SharedCacheEvents): SharedCache {
  const unixPath = opts.url.startsWith('unix:') ? opts.url.slice('unix:'.length) : undefined;
  const settings = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout: Math.max(opts.timeoutMs, 1000),
    lazyConnect: false,
    // Reconnect for ever, at most once a second: Redis restarting must not need an Outrider restart.
    retryStrategy: (times: number) => Math.min(times * 100, 1000),
  };
  const client = unixPath === undefined ? new Redis(opts.url, settings) : new Redis({ ...settings, path: unixPath });
  client.defineCommand('outriderLookup', { numberOfKeys: 2, lua: LOOKUP });
  client.defineCommand('outriderPoll', { numberOfKeys: 2, lua: POLL });
  client.defineCommand('outriderFill', { numberOfKeys: 2, lua: FILL });
  const scripts = client as unknown as Scripts;

  let failures = 0;
  let openUntil = 0;
  let open = false;
  let trial = false;
  let closed = false;
  // Set while a connection this tier dropped is going away: what fails with it is not news.
  let dropping = false;
  // Leases taken and not yet filled or released, with how to release each: released at close.
  const leases = new Set<() => void>();
  // What was last reported: the tier starts unavailable until its connection is ready.
  let reported = false;
  const report = (reason: string) => {
    // Closing at shutdown is not an outage to warn about.
    if (closed) return;
    const now = client.status === 'ready' && !open;
    if (now === reported) return;
    reported = now;
    events.state(now, reason);
  };
  client.on('ready', () => {
    dropping = false;
    report('connected');
  });
  client.on('close', () => report('connection lost'));
  // Each distinct error once until Redis answers again (a full Redis fails every write alike).
  const errorsSaid = new Set<string>();
  const reportError = (err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    if (errorsSaid.has(message) || errorsSaid.size >= 16) return;
    errorsSaid.add(message);
    events.error(err);
  };
  // Connection errors are reported through the state and the breaker; an unhandled 'error' would crash.
  client.on('error', reportError);

  /** Whether a call may be made now: connected, and the breaker closed, or open long enough for one trial. */
  const admit = (): boolean => {
    if (closed || client.status !== 'ready') return false;
    if (!open) return true;
    if (trial || Date.now() < openUntil) return false;
    trial = true;
    return true;
  };

  const succeeded = () => {
    failures = 0;
    errorsSaid.clear();
    if (open) {
      open = false;
      report('answering again');
    }
  };
  const failed = (err: unknown) => {
    // Calls cut by the connection this tier dropped itself: the failure that caused it is counted.
    if (dropping && !(err instanceof Timeout)) return;
    const message = err instanceof Error ? err.message : String(err);
    reportError(err);
    failures++;
    if (open || failures >= opts.failureThreshold) {
      open = true;
      openUntil = Date.now() + opts.retryAfterMs;
      report(message);
      probeLater();
      // A Redis that stopped answering holds every command sent since: drop them with the socket,
      // once per connection, when the breaker opens on timeouts.
      if (err instanceof Timeout && !dropping && client.status === 'ready') {
        dropping = true;
        client.disconnect(true);
      }
    }
  };

  // While the breaker is open, one PING after retry_after tries Redis again, traffic or not.
  let probing = false;
  const probeLater = () => {
    if (probing || closed) return;
    probing = true;
    setTimeout(() => {
      probing = false;
      if (open && admit()) void call(() => client.ping());
      else if (open) probeLater();
    }, opts.retryAfterMs).unref();
  };

  /** One admitted call, bounded by the timeout; undefined on any failure (`onTimeout` told of a timeout). */
  async function call<T>(run: () => Promise<T>, onTimeout?: () => void): Promise<T | undefined> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const result = await Promise.race([
        run(),
        new Promise<never>((_, reject) => {
          // Rejected a turn later: a reply that arrived while the event loop was busy elsewhere is
          // read first, so a stalled loop is not counted against Redis.
          timer = setTimeout(() => setImmediate(() => reject(new Timeout(opts.timeoutMs))), opts.timeoutMs);
        }),
      ]);
      succeeded();
      return result;
    } catch (err) {
      failed(err);
      if (err instanceof Timeout) onTimeout?.();
      return undefined;
    } finally {
      clearTimeout(timer);
      trial = false;
    }
  }

  const keysOf = (key: string) => {
    // The hash in braces is a Redis Cluster hash tag: an image and its lease land in one slot.
    // The stored form's version is hashed in: a node storing another form never shares its keys.
    const value = `${opts.keyPrefix}{${createHash('sha256').update(FORMAT_VERSION).update(key).digest('base64url')}}`;
    return { value, lease: `${value}:lease` };
  };

  const hit = (value: Buffer | undefined): CachedImage | undefined => {
    const image = value === undefined ? undefined : decode(value);
    if (image !== undefined) events.bytes('read', image.body.length);
    return image;
  };

  return {
    async lookup(key) {
      if (!admit()) {
        events.lookup('skipped');
        return { kind: 'unavailable' };
      }
      const keys = keysOf(key);
      const token = randomBytes(12).toString('base64url');
      // Stores the image (or nothing) and drops the lease if it is still ours. Sent whenever
      // connected, breaker or not: a lease left behind would make every node wait for it.
      const fill = (stored: Buffer | string) => {
        if (client.status !== 'ready') return;
        void call(() => scripts.outriderFill(keys.value, keys.lease, token, stored, opts.ttlMs));
      };
      // Timed out, the script may yet run and take the lease: let it go, or every node would wait for it.
      const reply = await call(
        () => scripts.outriderLookupBuffer(keys.value, keys.lease, token, opts.leaseMs),
        () => fill(''),
      );
      if (reply === undefined) {
        events.lookup('error');
        return { kind: 'unavailable' };
      }
      if (reply[0] === 1) {
        const image = hit(reply[1]);
        if (image !== undefined) {
          events.lookup('hit');
          return { kind: 'hit', image };
        }
        // Something else under the key (not written by this version): go on alone.
        events.lookup('error');
        return { kind: 'unavailable' };
      }
      events.lookup('miss');
      if (reply[0] !== 2) return { kind: 'held' };
      let done = false;
      const finish = (image: CachedImage | undefined) => {
        if (done) return;
        done = true;
        leases.delete(release);
        if (image !== undefined) events.bytes('written', image.body.length);
        fill(image === undefined ? '' : encode(image));
      };
      const release = () => finish(undefined);
      leases.add(release);
      return { kind: 'lease', fill: (image) => finish(image), release };
    },
    async wait(key, signal) {
      const keys = keysOf(key);
      const started = performance.now();
      let delay = 5;
      while (performance.now() - started < opts.leaseWaitMs) {
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 50);
        if (signal?.aborted || !admit()) return undefined;
        const reply = await call(() => scripts.outriderPollBuffer(keys.value, keys.lease));
        if (reply === undefined) return undefined;
        if (reply[0] === 1) {
          const image = hit(reply[1]);
          if (image !== undefined) events.leaseWait('filled', performance.now() - started);
          return image;
        }
        if (reply[0] === 0) {
          events.leaseWait('gone', performance.now() - started);
          return undefined;
        }
      }
      events.leaseWait('timeout', performance.now() - started);
      return undefined;
    },
    async close() {
      // Leases of requests still scaling go first, so no other node waits for them.
      for (const release of [...leases]) release();
      closed = true;
      try {
        await Promise.race([client.quit(), new Promise((r) => setTimeout(r, opts.timeoutMs))]);
      } catch {
        // Not connected: nothing to say goodbye to.
      }
      client.disconnect();
    },
  };
}
