/** The store's vocabulary: where a file goes, what storing it needs, and what the backend is told about it. */
import type { UploadHash } from '../../../protocol/upload-fields.js';
import type { Outbound } from '../../outbound/client.js';
import type { Stash } from './stash.js';

/** Where the backend said a file goes (the authorize answer), or `temp_dir` for routes without one. */
export type Destination =
  | { kind: 'local'; dir: string }
  | {
      kind: 'remote';
      /** Where the backend reads the object (`<f>.remote_url`) and its id (`<f>.remote_id`). */
      getUrl: string;
      id: string;
      storeUrl: string;
      deleteUrl: string | undefined;
      putHeaders: Record<string, string>;
      timeoutMs: number;
      multipart: { partSize: number; partUrls: string[]; completeUrl: string; abortUrl: string | undefined } | undefined;
    };

/** An object storage destination, and its presigned multipart upload when the backend gave one. */
export type RemoteDestination = Extract<Destination, { kind: 'remote' }>;
export type MultipartDestination = NonNullable<RemoteDestination['multipart']>;

/** What the backend is told about a stored file (its `<f>.*` fields). */
export interface StoredFile {
  path: string;
  remoteUrl: string;
  remoteId: string;
  size: number;
  hashes: Partial<Record<UploadHash, string>>;
  durationS: number;
}

export interface StoreOptions {
  destination: Destination;
  hashes: readonly UploadHash[];
  /** Bytes allowed (`MaximumSize`); 0: no limit. */
  maxSize: number;
  /** The exact size when the client declared it (a body upload's Content-Length). */
  size?: number;
  stash: Stash;
  outbound: Outbound;
  /** Scratch space for object-storage multipart parts. */
  tempDir: string;
  signal: AbortSignal;
}
