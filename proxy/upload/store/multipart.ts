import { createReadStream } from 'node:fs';
import { type FileHandle, open, rm } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Outbound } from '../../outbound/client.js';
import { ensureDirectory } from './disk.js';
import { StoreError } from './errors.js';
import type { MultipartDestination, StoreOptions } from './types.js';

/**
 * The presigned multipart upload: the stream is cut into `PartSize` parts, each written to a
 * scratch file first (a part needs its exact length, and memory stays flat whatever PartSize is),
 * PUT to its own URL with the `PutHeaders`, then the list of ETags is POSTed to CompleteURL with
 * only its XML content type (Workhorse `Multipart.Upload`: `readAndUploadOnePart` passes
 * `m.PutHeaders` to every part, `complete` sets none). Any failure aborts the upload at AbortURL.
 * More parts than URLs means the file is too large.
 */
export async function putMultipart(
  stream: Readable,
  mp: MultipartDestination,
  putHeaders: Record<string, string>,
  opts: StoreOptions,
): Promise<void> {
  const etags: string[] = [];
  // Each part's own length replaces any the backend listed.
  const partHeaders = Object.fromEntries(Object.entries(putHeaders).filter(([name]) => name.toLowerCase() !== 'content-length'));
  await ensureDirectory(opts.tempDir, opts.fileMode);
  let part: { path: string; file: FileHandle; size: number } | undefined;
  const startPart = async () => {
    const path = opts.stash.newFile(opts.tempDir);
    part = { path, file: await open(path, 'wx', 0o600), size: 0 };
    return part;
  };
  const sendPart = async () => {
    const current = part as NonNullable<typeof part>;
    part = undefined;
    await current.file.close();
    const index = etags.length;
    const url = mp.partUrls[index];
    if (url === undefined) throw new StoreError('too-large', `the file needs more than the ${mp.partUrls.length} parts allowed`);
    const body = createReadStream(current.path);
    let res: Awaited<ReturnType<Outbound['request']>>;
    try {
      res = await opts.outbound.request(url, {
        method: 'PUT',
        headers: { ...partHeaders, 'content-length': String(current.size) },
        body,
        signal: opts.signal,
      });
    } finally {
      body.destroy();
    }
    await res.body.dump({ limit: 64 * 1024 }).catch(() => undefined);
    await rm(current.path, { force: true });
    const etag = res.headers.etag;
    if (res.statusCode < 200 || res.statusCode > 299 || typeof etag !== 'string') {
      throw new StoreError('object-storage', `object storage answered ${res.statusCode} to part ${index + 1}`);
    }
    etags.push(etag);
  };
  try {
    for await (const chunk of stream) {
      let data = chunk as Buffer;
      while (data.length > 0) {
        const current = part ?? (await startPart());
        const slice = data.subarray(0, Math.min(data.length, mp.partSize - current.size));
        data = data.subarray(slice.length);
        for (let written = 0; written < slice.length; ) {
          written += (await current.file.write(slice, written, slice.length - written)).bytesWritten;
        }
        current.size += slice.length;
        if (current.size === mp.partSize) await sendPart();
      }
    }
    // The last, short part; an empty file is still one (empty) part.
    if (part !== undefined || etags.length === 0) {
      if (part === undefined) await startPart();
      await sendPart();
    }
    const listed = etags.map((etag, i) => `<Part><PartNumber>${i + 1}</PartNumber><ETag>${escapeXml(etag)}</ETag></Part>`);
    const xml = `<CompleteMultipartUpload>${listed.join('')}</CompleteMultipartUpload>`;
    const done = await opts.outbound.request(mp.completeUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/xml', 'content-length': String(Buffer.byteLength(xml)) },
      body: xml,
      signal: opts.signal,
    });
    // S3 may answer 200 and put an <Error> in the body: the first bytes tell.
    let head = '';
    for await (const chunk of done.body) {
      head += (chunk as Buffer).toString('utf8');
      if (head.length > 4096) break;
    }
    done.body.destroy();
    if (done.statusCode < 200 || done.statusCode > 299 || head.includes('<Error>')) {
      throw new StoreError('object-storage', `object storage answered ${done.statusCode} to completing the upload`);
    }
  } catch (err) {
    if (mp.abortUrl !== undefined) {
      await opts.outbound
        .request(mp.abortUrl, { method: 'DELETE', signal: AbortSignal.timeout(30_000) })
        .then((res) => res.body.dump({ limit: 1 }))
        .catch(() => undefined);
    }
    throw err;
  } finally {
    // A part being written when it failed: its descriptor is closed here, its file by the stash.
    await (part as { file: FileHandle } | undefined)?.file.close().catch(() => undefined);
  }
}

/** An ETag as XML text: the five XML specials as numeric character references. */
function escapeXml(text: string): string {
  return text.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}
