import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Outbound } from '../../outbound/client.js';

/** A temp object's deletion once the request ended (presigned DELETE or the own client's): bounded, as Workhorse's 60 s delete context. */
export const DELETE_TIMEOUT_MS = 60_000;

/** Everything one request stored, removed when the request is over, whatever way it ends. */
export class Stash {
  private readonly files: string[] = [];
  private readonly removals: (() => Promise<void>)[] = [];
  private readonly outbound: Outbound;

  constructor(outbound: Outbound) {
    this.outbound = outbound;
  }

  /** A new file name inside `dir`, never derived from the client's file name. */
  newFile(dir: string): string {
    const path = join(dir, `outrider-upload-${randomUUID()}`);
    this.files.push(path);
    return path;
  }

  /** A remote temporary object to delete (`DeleteURL`, a presigned DELETE) when the request ends. */
  remoteObject(deleteUrl: string): void {
    this.onClear(async () => {
      const res = await this.outbound.request(deleteUrl, { method: 'DELETE', signal: AbortSignal.timeout(DELETE_TIMEOUT_MS) });
      await res.body.dump({ limit: 1 });
    });
  }

  /** Any other removal to run when the request ends (an object deleted with the own client). */
  onClear(remove: () => Promise<void>): void {
    // Registered by a store before it settles: clearing waits for the store, then runs it.
    this.removals.push(remove);
  }

  private readonly pending: Promise<unknown>[] = [];
  private cleared = false;

  /**
   * A store in progress: clearing waits for it, so a file it is still creating is removed too; one
   * that starts after the request ended (a late authorize answer) is cleared when it settles.
   */
  track(work: Promise<unknown>): void {
    this.pending.push(work);
    if (this.cleared) void work.catch(() => undefined).finally(() => void this.clear());
  }

  /** Removes every file and remote object; failures are returned for the log, never thrown. */
  async clear(): Promise<unknown[]> {
    this.cleared = true;
    // Stores stop at once when the request is aborted; the bound only guards against one that does not.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled(this.pending.splice(0)),
      new Promise((resolve) => {
        timer = setTimeout(resolve, 30_000);
      }),
    ]);
    clearTimeout(timer);
    const errors: unknown[] = [];
    const files = this.files.splice(0);
    const removals = this.removals.splice(0);
    await Promise.all([
      ...files.map((f) => rm(f, { force: true }).catch((err: unknown) => errors.push(err))),
      ...removals.map((remove) => remove().catch((err: unknown) => errors.push(err))),
    ]);
    return errors;
  }
}
