/** Reads a client's multipart body: files stored as they stream in, fields kept in order, within limits. */
import type { IncomingMessage } from 'node:http';
import { Busboy, type BusboyInstance } from '@fastify/busboy';
import { SIGNED_UPLOAD_FIELD, UPLOAD_KEYS } from '../../protocol/upload-fields.js';
import { type SaveStrippedOptions, saveStripped } from './exif/index.js';
import { StoreError } from './store/errors.js';
import { type StoredFile, type StoreOptions, storeFile } from './store/index.js';

/** The fields a file part `<f>` becomes, in the order they are sent (Workhorse's names). */
const FILE_FIELDS = [...UPLOAD_KEYS, SIGNED_UPLOAD_FIELD] as const;
/** Bytes of a non-file field, and of all of them together: the rewritten body is held in memory. */
const FIELD_LIMIT = 1024 * 1024;
const FIELDS_TOTAL_LIMIT = 10 * 1024 * 1024;
const FIELDS_COUNT_LIMIT = 1000;

/** What the multipart reader hands on, in body order: a field as sent, or a file where it was stored. */
export type Part =
  | { kind: 'field'; name: string; value: Buffer; contentType: string }
  | { kind: 'file'; name: string; filename: string; stored: StoredFile };

/**
 * With `defCharset: 'latin1'` busboy reads a field without a charset as one char per byte, so its
 * value goes back byte for byte; one that declared its charset goes back in it. (Names and file
 * names busboy decodes as UTF-8, as browsers send them.)
 */
function encodeField(value: string, contentType: string): Buffer {
  const charset = /;\s*charset="?([^";\s]+)/i.exec(contentType)?.[1]?.toLowerCase();
  if (charset === 'utf-8' || charset === 'utf8') return Buffer.from(value, 'utf8');
  if (charset === 'utf-16le' || charset === 'utf16le' || charset === 'ucs2' || charset === 'ucs-2') return Buffer.from(value, 'utf16le');
  return Buffer.from(value, 'latin1');
}

/** The last segment of a client's file name, with either kind of slash ("C:\\x\\a.png" → "a.png"). */
export function baseName(filename: string): string {
  const parts = filename.split(/[/\\]/);
  return parts[parts.length - 1] ?? '';
}

/**
 * Reads the multipart body part by part with busboy: each file is stored as it streams in (busboy
 * waits while a file is written, so memory stays flat), fields are kept in order. Resolves once
 * the body ended and every file is stored; rejects with a StoreError ('invalid' or 'too-large')
 * for a malformed or refused body, and when the client goes away. With `strip`, each file is
 * stored with its metadata removed, or the body refused with a MetadataError.
 */
export function readMultipart(
  req: IncomingMessage,
  maxFiles: number,
  store: Omit<StoreOptions, 'size'>,
  abort: AbortController,
  strip?: SaveStrippedOptions,
): Promise<Part[]> {
  return new Promise((resolve, reject) => {
    let bb: BusboyInstance;
    try {
      bb = new Busboy({
        headers: req.headers as { 'content-type': string },
        preservePath: true,
        defCharset: 'latin1',
        highWaterMark: 256 * 1024,
        fileHwm: 256 * 1024,
        // A file input left empty is sent with filename="": an ordinary (empty) field, as in Workhorse.
        isPartAFile: (_name, _type, filename) => filename !== undefined && filename !== '',
        limits: { files: maxFiles, fields: FIELDS_COUNT_LIMIT, fieldSize: FIELD_LIMIT, headerPairs: 100 },
      });
    } catch (err) {
      reject(new StoreError('invalid', 'the multipart body has no boundary', { cause: err }));
      return;
    }
    const parts: (Part | Promise<Part>)[] = [];
    const generated = new Set<string>();
    const fieldNames = new Set<string>();
    let fieldBytes = 0;
    let failed = false;
    const fail = (err: unknown) => {
      if (failed) return;
      failed = true;
      abort.abort();
      req.unpipe(bb);
      reject(err);
    };
    bb.on('field', (name, value, nameTruncated, valueTruncated, _encoding, contentType) => {
      if (failed || name === '') return;
      if (nameTruncated || valueTruncated) return fail(new StoreError('too-large', `a form field is larger than ${FIELD_LIMIT} bytes`));
      if (generated.has(name)) return fail(new StoreError('invalid', `the field "${name}" collides with an uploaded file's field`));
      fieldBytes += value.length;
      if (fieldBytes > FIELDS_TOTAL_LIMIT)
        return fail(new StoreError('too-large', `the form fields are larger than ${FIELDS_TOTAL_LIMIT} bytes`));
      fieldNames.add(name);
      parts.push({ kind: 'field', name, value: encodeField(value, contentType), contentType });
    });
    let files = 0;
    bb.on('file', (name, stream, filename) => {
      // busboy reports a part cut short on the part itself, possibly after its reader gave up:
      // the body's own 'error' (below) is what fails the request.
      stream.on('error', () => undefined);
      if (failed || name === '') {
        stream.resume();
        return;
      }
      const base = baseName(filename);
      if (base === '' || base === '.' || base === '..') {
        stream.resume();
        return fail(new StoreError('invalid', 'the file name is not allowed'));
      }
      const names = [name, ...FILE_FIELDS.map((f) => `${name}.${f}`)];
      if (names.some((n) => generated.has(n)) || names.slice(1).some((n) => fieldNames.has(n))) {
        stream.resume();
        return fail(new StoreError('invalid', `the file field "${name}" collides with another field`));
      }
      // One presigned object per request: a second file would overwrite the first.
      if (++files > 1 && store.destination.kind === 'remote') {
        stream.resume();
        return fail(new StoreError('invalid', 'only one file may be uploaded to object storage per request'));
      }
      for (const n of names) generated.add(n);
      const saved = strip === undefined ? storeFile(stream, store) : saveStripped(stream, strip, (clean) => storeFile(clean, store));
      const stored = saved.then((file): Part => ({ kind: 'file', name, filename: base, stored: file }));
      stored.catch(fail);
      parts.push(stored);
    });
    bb.on('filesLimit', () => fail(new StoreError('invalid', `the request has more than ${maxFiles} files`)));
    bb.on('fieldsLimit', () => fail(new StoreError('invalid', `the request has more than ${FIELDS_COUNT_LIMIT} fields`)));
    bb.on('error', (err: Error) => fail(new StoreError('invalid', 'the multipart body is malformed', { cause: err })));
    bb.on('finish', () => {
      Promise.all(parts).then((done) => {
        if (!failed) resolve(done);
      }, fail);
    });
    req.on('error', () => undefined);
    req.on('close', () => {
      if (!req.complete) fail(new StoreError('invalid', 'the client went away mid-upload'));
    });
    req.pipe(bb);
  });
}
