import { readdirSync, readFileSync, type Stats, statSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { FastifyBaseLogger } from 'fastify';
import type { ResponseHead } from '../intercept/types.js';

/** `<document_root>/<code>.html` for an error status. */
const PAGE_NAME = /^([45][0-9][0-9])\.html$/;
/** Pages are held in memory: a larger file is not a page. */
const PAGE_LIMIT = 1024 * 1024;
/** How old the pages in memory may be before the next error reads the directory again. */
const REFRESH_MS = 5_000;

/** Workhorse's headers for an error page (`staticpages/error_pages.go`): never cached. */
const NO_CACHE = [
  'Cache-Control',
  'no-cache, no-store, max-age=0, must-revalidate',
  'Pragma',
  'no-cache',
  'Expires',
  'Fri, 01 Jan 1990 00:00:00 GMT',
];

/** The backend's headers that describe its own body, which the page replaces. */
const REPLACED = new Set([
  'content-type',
  'content-length',
  'content-encoding',
  'content-range',
  'content-disposition',
  'accept-ranges',
  'etag',
  'last-modified',
  'cache-control',
  'pragma',
  'expires',
]);

/** A backend answer carrying this header has its own error page (Workhorse `X-GitLab-Custom-Error`). */
const CUSTOM_ERROR = 'x-gitlab-custom-error';

export interface ErrorPages {
  /** The page for this status, if `<document_root>/<status>.html` exists. */
  get(status: number): Buffer | undefined;
}

/**
 * The error pages in `document_root`, read at start and read again in the background when an error
 * finds them older than a few seconds, so a page changed on deploy shows without a restart and no
 * error waits for the disk.
 */
export function createErrorPages(root: string, log: FastifyBaseLogger, refreshMs = REFRESH_MS): ErrorPages {
  let pages = loadSync(root, log);
  let loadedAt = Date.now();
  let loading = false;
  return {
    get(status) {
      if (!loading && Date.now() - loadedAt > refreshMs) {
        loading = true;
        load(root, log)
          .then((fresh) => {
            pages = fresh;
          })
          .catch((err: unknown) => log.warn({ err, subsystem: 'error-pages' }, 'error pages could not be read again'))
          .finally(() => {
            loading = false;
            loadedAt = Date.now();
          });
      }
      return pages.get(status);
    },
  };
}

/** The status a file in `document_root` is the page of (`404.html` → 404), if any. */
function statusOf(name: string): number | undefined {
  const m = PAGE_NAME.exec(name);
  return m === null ? undefined : Number(m[1]);
}

/** A page is a regular file of at most PAGE_LIMIT bytes (they are held in memory). */
function usable(info: Stats, file: string, log: FastifyBaseLogger): boolean {
  if (!info.isFile()) return false;
  if (info.size <= PAGE_LIMIT) return true;
  log.warn({ subsystem: 'error-pages', file, bytes: info.size }, `error page larger than ${PAGE_LIMIT} bytes ignored`);
  return false;
}

/** At start: read once, before anything listens. */
function loadSync(root: string, log: FastifyBaseLogger): Map<number, Buffer> {
  const pages = new Map<number, Buffer>();
  for (const name of readdirSync(root)) {
    const status = statusOf(name);
    if (status === undefined) continue;
    const file = join(root, name);
    try {
      if (usable(statSync(file), file, log)) pages.set(status, readFileSync(file));
    } catch (err) {
      log.warn({ err, subsystem: 'error-pages', file }, 'error page cannot be read');
    }
  }
  return pages;
}

/** In the background while serving: the same, without blocking the event loop. */
async function load(root: string, log: FastifyBaseLogger): Promise<Map<number, Buffer>> {
  const pages = new Map<number, Buffer>();
  for (const name of await readdir(root)) {
    const status = statusOf(name);
    if (status === undefined) continue;
    const file = join(root, name);
    try {
      if (usable(await stat(file), file, log)) pages.set(status, await readFile(file));
    } catch (err) {
      log.warn({ err, subsystem: 'error-pages', file }, 'error page cannot be read');
    }
  }
  return pages;
}

/**
 * The page replacing a backend's error answer, or undefined to relay the answer as it is: a 4xx or
 * 5xx whose Content-Type is HTML or absent, without `X-GitLab-Custom-Error`, when the page exists.
 * JSON, plain text and every other type are the backend's to say.
 */
export function pageFor(pages: ErrorPages, head: ResponseHead): Buffer | undefined {
  if (head.statusCode < 400 || head.statusCode > 599 || !isHtmlish(head.contentType)) return undefined;
  for (let i = 0; i < head.headers.length; i += 2) {
    if ((head.headers[i] as string).toLowerCase() === CUSTOM_ERROR) return undefined;
  }
  return pages.get(head.statusCode);
}

function isHtmlish(type: string | undefined): boolean {
  if (type === undefined) return true;
  const semi = type.indexOf(';');
  const media = (semi === -1 ? type : type.slice(0, semi)).trim().toLowerCase();
  return media === '' || media === 'text/html' || media === 'application/xhtml+xml';
}

/** Answers with the page, the status kept; `headers` are the backend's, minus what described its body. */
export function writeErrorPage(res: ServerResponse, status: number, page: Buffer, headers: readonly string[] = []): void {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    if (!REPLACED.has((headers[i] as string).toLowerCase())) out.push(headers[i] as string, headers[i + 1] as string);
  }
  out.push('Content-Type', 'text/html; charset=utf-8', 'Content-Length', String(page.length), ...NO_CACHE);
  res.writeHead(status, out);
  res.end(page);
}
