import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';

/** Distinct copies of each avatar (own inode: own cache key), so cold-scaling requests never repeat. */
export const COPIES = 256;

export interface AvatarFiles {
  png: string;
  jpg: string;
  copies: { png: string[]; jpg: string[] };
}

/**
 * The benchmark's avatars: 400x400 photo-like images (a gradient under smoothed noise, so the
 * encoders have real work), as PNG and JPEG, and COPIES copies of each, made once in the temp directory.
 */
export async function avatarFiles(): Promise<AvatarFiles> {
  const dir = join(tmpdir(), 'outrider-bench-avatars');
  mkdirSync(dir, { recursive: true });
  const copies = (ext: string) => Array.from({ length: COPIES }, (_, i) => join(dir, `copy-${i}.${ext}`));
  const files = { png: join(dir, 'avatar.png'), jpg: join(dir, 'avatar.jpg'), copies: { png: copies('png'), jpg: copies('jpg') } };
  if (!existsSync(files.png) || !existsSync(files.jpg)) await make(files);
  for (const ext of ['png', 'jpg'] as const) {
    for (const copy of files.copies[ext]) if (!existsSync(copy)) copyFileSync(files[ext], copy);
  }
  return files;
}

async function make(files: { png: string; jpg: string }): Promise<void> {
  const noise = await sharp({
    create: { width: 400, height: 400, channels: 3, background: '#000', noise: { type: 'gaussian', mean: 128, sigma: 6 } },
  })
    .blur(4)
    .png()
    .toBuffer();
  const svg = Buffer.from(
    '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="400"><defs><radialGradient id="g"><stop offset="0" stop-color="#f4c7a1"/><stop offset="1" stop-color="#37526e"/></radialGradient></defs><rect width="400" height="400" fill="url(#g)"/><circle cx="200" cy="160" r="80" fill="#8a5a3c"/></svg>',
  );
  const base = () => sharp(svg).composite([{ input: noise, blend: 'overlay' }]);
  await base().png().toFile(files.png);
  await base().jpeg({ quality: 90 }).toFile(files.jpg);
}
