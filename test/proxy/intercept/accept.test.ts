import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../config/load.js';
import { createFormatChooser, varyWithAccept } from '../../../proxy/intercept/accept.js';

describe('choosing a scaled image format from Accept', () => {
  const choose = createFormatChooser(['avif', 'webp']);

  it('collapses any Accept to one of three variants', () => {
    expect(choose('image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8', 'image/png')).toBe('avif');
    // Safari and Firefox list WebP with the wildcards.
    expect(choose('image/webp,*/*', 'image/png')).toBe('webp');
    expect(choose('image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5', 'image/png')).toBeUndefined();
    expect(choose(undefined, 'image/png')).toBeUndefined();
    expect(choose('', 'image/png')).toBeUndefined();
  });

  it('weighs the source by its most specific range, not the highest', () => {
    // image/png;q=0.1 is more specific than */*: the PNG weighs 0.1, so WebP at 0.5 wins.
    expect(choose('image/webp;q=0.5, image/png;q=0.1, */*', 'image/png')).toBe('webp');
    // The JPEG source is not named: image/* gives it 1, above WebP's 0.5.
    expect(choose('image/webp;q=0.5, image/png;q=0.1, image/*', 'image/jpeg')).toBeUndefined();
  });

  it('skips malformed ranges and weights instead of failing', () => {
    expect(choose('garbage, image/webp;q=abc, image/avif;q=0.9', 'image/png')).toBe('avif');
    expect(choose(';;,/,image/', 'image/png')).toBeUndefined();
    expect(choose('image/webp ; q=1.000', 'image/png')).toBe('webp');
  });

  it('never chooses when no format is configured', () => {
    expect(createFormatChooser([])('image/avif', 'image/png')).toBeUndefined();
  });
});

describe('Vary on a negotiated answer', () => {
  it('adds Accept to what the backend varies on, once', () => {
    expect(varyWithAccept(undefined)).toBe('Accept');
    expect(varyWithAccept('Cookie')).toBe('Cookie, Accept');
    expect(varyWithAccept('Accept-Encoding, accept')).toBe('Accept-Encoding, accept');
    expect(varyWithAccept('*')).toBe('*');
  });
});

describe('[image_resizer] formats', () => {
  it('takes avif and webp, each once, and names what it expected otherwise', () => {
    expect(loadConfig('[image_resizer]\nformats = ["webp"]\n').imageResizer.formats).toEqual(['webp']);
    expect(() => loadConfig('[image_resizer]\nformats = ["gif"]\n', { source: 'edge.toml' })).toThrow(/formats[\s\S]*"avif" or "webp"/);
    expect(() => loadConfig('[image_resizer]\nformats = ["webp", "webp"]\n')).toThrow(/each format once/);
    expect(() => loadConfig('[image_resizer]\nformats = "webp"\n')).toThrow(/formats: expected a list[\s\S]*write it as a list/);
  });
});
