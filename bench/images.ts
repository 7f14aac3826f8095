import { existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';

/**
 * The benchmark's avatars: 400x400 photo-like images (a gradient under smoothed noise, so the
 * encoders have real work), as PNG and JPEG, made once in the temp directory.
 */
export async function avatarFiles(): Promise<{ png: string; jpg: string }> {
  const dir = join(tmpdir(), 'outrider-bench-avatars');
  mkdirSync(dir, { recursive: true });
  const files = { png: join(dir, 'avatar.png'), jpg: join(dir, 'avatar.jpg') };
  if (existsSync(files.png) && existsSync(files.jpg)) return files;
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
  return files;
}
