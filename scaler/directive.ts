import { isAbsolute } from 'node:path';
import { ScaleError } from './errors.js';

/** Where the original image is: a local file, or an object-storage URL. */
export type ImageLocation = { kind: 'file'; path: string } | { kind: 'url'; url: string };

/** A validated `send-scaled-img` directive. */
export interface ScaleDirective {
  location: ImageLocation;
  width: number;
  contentType: string;
  /**
   * `KeepFormat: true` (Outrider's own key): the source's format whatever the client accepts, for
   * a backend that must keep PNG (a download, an image processed further). Absent: negotiated.
   */
  keepFormat: boolean;
}

export interface DirectiveOptions {
  /** `[image_resizer] max_width`: the largest width a backend may ask for. */
  maxWidth: number;
}

type Validator<T> = (value: unknown) => T;

const invalid = (message: string) => new ScaleError('EDGE_DIRECTIVE_INVALID', `send-scaled-img: ${message}`);

/** A non-empty string field (ipx `VArg`-style validators: each names its field and what it expected). */
const vString =
  (field: string): Validator<string> =>
  (value) => {
    if (value === undefined || value === null || value === '') throw invalid(`'${field}' not set`);
    if (typeof value !== 'string') throw invalid(`'${field}' must be a string, got ${typeof value}`);
    return value;
  };

const vInteger =
  (field: string, min: number, max: number): Validator<number> =>
  (value) => {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      throw invalid(`'${field}' must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
    }
    return value;
  };

const vOptionalBoolean =
  (field: string): Validator<boolean> =>
  (value) => {
    if (value === undefined || value === null) return false;
    if (typeof value !== 'boolean') throw invalid(`'${field}' must be true or false, got ${JSON.stringify(value)}`);
    return value;
  };

const vLocation =
  (field: string): Validator<ImageLocation> =>
  (value) => {
    const text = vString(field)(value);
    if (/^https?:\/\//i.test(text)) {
      try {
        return { kind: 'url', url: new URL(text).href };
      } catch {
        throw invalid(`'${field}' is not a valid URL`);
      }
    }
    if (!isAbsolute(text) || text.includes('\0')) throw invalid(`'${field}' must be an absolute path or an http(s) URL`);
    return { kind: 'file', path: text };
  };

/**
 * Validates the decoded directive `{"Location", "Width", "ContentType"}`, plus Outrider's optional
 * `"KeepFormat"` (keys already lower-cased by the send-data decoder). Unlike Workhorse, Width is
 * range-checked here, not left to fail later.
 */
export function parseDirective(fields: ReadonlyMap<string, unknown>, opts: DirectiveOptions): ScaleDirective {
  return {
    location: vLocation('Location')(fields.get('location')),
    width: vInteger('Width', 1, opts.maxWidth)(fields.get('width')),
    contentType: vString('ContentType')(fields.get('contenttype')),
    keepFormat: vOptionalBoolean('KeepFormat')(fields.get('keepformat')),
  };
}
