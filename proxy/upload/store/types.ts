/** The store's vocabulary: where a file goes, what storing it needs, and what the backend is told about it. */
import type { UploadHash } from '../../../protocol/upload-fields.js';
import type { Outbound } from '../../outbound/client.js';
import type { ClientTarget, ObjectStorage } from './client.js';
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
      /**
       * `SkipDelete`: the object is stored at its final path, so it is kept once stored. It is
       * still deleted (and a multipart upload aborted) when storing it failed (Workhorse
       * `ConsumeWithoutDelete`).
       */
      skipDelete: boolean;
      putHeaders: Record<string, string>;
      timeoutMs: number;
      multipart: { partSize: number; partUrls: string[]; completeUrl: string; abortUrl: string | undefined } | undefined;
      /** `UseWorkhorseClient`: Outrider's own client (`[object_storage]`) stores the file instead of the URLs above. */
      client: ClientTarget | undefined;
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
  /** `[uploads] file_mode`: the mode of a stored file (0600 by default); its directory, when created, gets the matching bits. */
  fileMode?: number;
  signal: AbortSignal;
  /** The own object storage client, when `[object_storage]` is configured. */
  objectStorage?: ObjectStorage | undefined;
}
