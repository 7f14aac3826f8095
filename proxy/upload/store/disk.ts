import { createWriteStream } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { feed, type Meter } from './meter.js';
import type { StoreOptions } from './types.js';

/**
 * Writes the metered stream to a new file in `dir` (never an existing one) and returns its path.
 * The file gets `fileMode` (0600 by default) whatever the umask; `dir`, when it has to be created,
 * 0700 plus the group and other bits a backend running as another user needs to read the file and
 * move it away. The stash owns the file from the moment it is named.
 */
export async function writeLocal(
  input: Readable,
  meter: Meter,
  dir: string,
  opts: Pick<StoreOptions, 'stash' | 'signal' | 'fileMode'>,
): Promise<string> {
  const fileMode = opts.fileMode ?? 0o600;
  await ensureDirectory(dir, fileMode);
  const path = opts.stash.newFile(dir);
  const stop = feed(input, meter);
  try {
    await pipeline(meter, createWriteStream(path, { flags: 'wx', mode: 0o600 }), { signal: opts.signal });
    // Widened once whole, to the exact mode (the umask would take bits away from an open's mode).
    if (fileMode !== 0o600) await chmod(path, fileMode);
  } finally {
    stop();
  }
  return path;
}

/**
 * Creates `dir` and any missing parents for files of `fileMode`: each directory made here gets
 * `directoryMode(fileMode)` (0700 by default) whatever the umask; one that exists is left as it is.
 */
export async function ensureDirectory(dir: string, fileMode = 0o600): Promise<void> {
  const first = await mkdir(dir, { recursive: true, mode: 0o700 });
  if (first === undefined || fileMode === 0o600) return;
  // mkdir names the first directory it made: it and every one below it, down to `dir`, are new.
  const mode = directoryMode(fileMode);
  let path = dir;
  for (;;) {
    await chmod(path, mode);
    if (path === first || path.length <= first.length) break;
    path = dirname(path);
  }
}

/** A directory for files of `mode`: searchable and listable where the file is readable, writable (to move it away) where it is. */
function directoryMode(mode: number): number {
  let dir = 0o700;
  if (mode & 0o040) dir |= 0o050;
  if (mode & 0o020) dir |= 0o020;
  if (mode & 0o004) dir |= 0o005;
  return dir;
}
