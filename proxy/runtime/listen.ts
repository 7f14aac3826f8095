import { existsSync, unlinkSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { dirname } from 'node:path';
import type { ListenAddr } from '../../config/schema.js';

/**
 * A listener that could not be opened; `where` names it for the operator (the config key and the
 * address: "listen_addr 127.0.0.1:8181"), and the message says what usually causes the error.
 */
export class ListenError extends Error {
  override name = 'ListenError';
  readonly where: string;
  /** The system's error code (EADDRINUSE, EACCES…), logged beside the message. */
  readonly code: string | undefined;
  constructor(where: string, cause: NodeJS.ErrnoException, addr?: ListenAddr) {
    const hint = addr === undefined ? undefined : listenHint(cause.code, addr);
    super(`cannot listen on ${where}: ${cause.message}${hint === undefined ? '' : ` — ${hint}`}`, { cause });
    this.where = where;
    this.code = cause.code;
  }
}

/** What usually causes a listen error, and what to do about it. */
function listenHint(code: string | undefined, addr: ListenAddr): string | undefined {
  if (addr.kind === 'unix') {
    // libuv reports a missing directory as EACCES.
    if ((code === 'ENOENT' || code === 'EACCES') && !existsSync(dirname(addr.path)))
      return `the directory ${dirname(addr.path)} does not exist`;
    if (code === 'EACCES') return `the user running Outrider cannot create files in ${dirname(addr.path)}`;
    if (code === 'EADDRINUSE') return 'another process is serving this socket';
    return undefined;
  }
  switch (code) {
    case 'EADDRINUSE':
      return `another process is listening on port ${addr.port} (see which with: ss -ltnp 'sport = :${addr.port}'); stop it or choose another port`;
    case 'EACCES':
      return addr.port < 1024
        ? 'ports below 1024 need root or CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE), or use a port above 1023'
        : undefined;
    case 'EADDRNOTAVAIL':
      return `no network interface of this machine has the address ${addr.host}`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `the host name ${addr.host} does not resolve`;
    default:
      return undefined;
  }
}

/**
 * Says why Outrider did not start, as one line of text on stderr ("outrider: …"), where a
 * configuration error is said too: what a terminal shows and systemd's journal keeps. The JSON
 * log on stdout records the failure as well where a logger exists.
 */
export function reportStartFailure(message: string): void {
  process.stderr.write(`outrider: ${message}\n`);
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
