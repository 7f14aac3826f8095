import { unlinkSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { ListenAddr } from '../../config/schema.js';

/** A listener that could not be opened; `where` names it for the operator. */
export class ListenError extends Error {
  override name = 'ListenError';
  readonly where: string;
  /** The system's error code (EADDRINUSE, EACCES…), logged beside the message. */
  readonly code: string | undefined;
  constructor(where: string, cause: NodeJS.ErrnoException) {
    super(`cannot listen on ${where}: ${cause.message}`, { cause });
    this.where = where;
    this.code = cause.code;
  }
}

/** A configured address as the operator wrote it: "host:port" or "unix:/path". */
export function describeAddr(addr: ListenAddr): string {
  return addr.kind === 'unix' ? `unix:${addr.path}` : `${addr.host}:${addr.port}`;
}

/** Where a server listens once listening: "host:port" ("[::1]:port" for IPv6) or "unix:/path"; undefined before. */
export function boundAddress(bound: AddressInfo | string | null): string | undefined {
  if (bound === null) return undefined;
  if (typeof bound === 'string') return `unix:${bound}`;
  return bound.family === 'IPv6' ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`;
}

/** A socket file left by a process that did not stop cleanly would make listening fail: it is removed first. */
export function removeStaleSocket(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // no stale socket
  }
}
