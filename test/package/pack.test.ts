import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackend } from '../helpers/backend.js';
import { commandLine, SEMI_SPACE_FLAG, startEdge, workerPids } from './edge.js';

// `npm test` builds first (pretest). The tarball is packed from that build with --ignore-scripts:
// `prepack` would delete and rebuild dist/ under the tests that are running it at the same time.
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  version: string;
  bin: Record<string, string>;
  exports: Record<string, string | { types: string; default: string }>;
};
const TYPESCRIPT = join(ROOT, 'node_modules/typescript/bin/tsc');

let dir: string;
let app: string;
let packed: string[];

function run(command: string, args: string[], cwd: string) {
  const res = spawnSync(command, args, { cwd, encoding: 'utf8', timeout: 120_000 });
  if (res.status !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${res.status}:\n${res.stdout}\n${res.stderr}`);
  return res;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'outrider-pack-'));
  const [tarball] = JSON.parse(run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], ROOT).stdout) as {
    filename: string;
    files: { path: string }[];
  }[];
  if (tarball === undefined) throw new Error('npm pack made no tarball');
  packed = tarball.files.map((f) => f.path);
  // A new user's project, as `npm init -y` leaves it (plus "type": "module" for the import below).
  app = join(dir, 'app');
  mkdirSync(app);
  writeFileSync(
    join(app, 'package.json'),
    `${JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }, null, 2)}\n`,
  );
  // From npm's cache where it can: the packages are the ones this checkout installed.
  run('npm', ['install', join(dir, tarball.filename), '--prefer-offline', '--no-audit', '--no-fund'], app);
}, 180_000);

afterAll(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe('the outrider package, packed and installed into a new project', () => {
  it('ships the built code with its types, the example config and the README, and no sources, tests, benchmarks, example app or source maps', () => {
    const targets = [
      ...Object.values(pkg.bin),
      ...Object.values(pkg.exports).flatMap((t) => (typeof t === 'string' ? [t] : [t.types, t.default])),
    ].map((t) => t.replace(/^\.\//, ''));
    expect(targets).toContain('dist/backend/express.js');
    for (const target of targets) expect(packed).toContain(target);
    expect(packed).toContain('config.example.toml');
    expect(packed).toContain('README.md');
    const unwanted = packed.filter((p) => /\.map$|(?<!\.d)\.ts$|^(test|bench|example)\/|^dist\/(test|bench|example)\//.test(p));
    expect(unwanted).toEqual([]);
  });

  it('gives the project an `outrider` command: `npx outrider --version` and `--help`', () => {
    // --no: npx must run the installed command, never fetch one.
    expect(run('npx', ['--no', '--', 'outrider', '--version'], app).stdout).toBe(`outrider ${pkg.version}\n`);
    const help = run('npx', ['--no', '--', 'outrider', '--help'], app).stdout;
    expect(help).toMatch(/^Usage: outrider \[--config FILE\]/);
    expect(help).toContain('--workers N');
  });

  it('the installed command proxies to a backend, and it and its workers run with its Node flag', async () => {
    const backend = await startBackend((_req, res) => res.end('from the backend'));
    const { NODE_OPTIONS: _, ...env } = process.env;
    const edge = await startEdge(
      join(app, 'node_modules/.bin/outrider'),
      ['--listen-addr', '127.0.0.1:0', '--auth-backend', backend.url, '--workers', '2'],
      env,
    );
    expect(commandLine(edge.pid)).toContain(SEMI_SPACE_FLAG);
    const workers = workerPids(edge);
    expect(workers).toHaveLength(2);
    for (const pid of workers) expect(commandLine(pid)).toContain(SEMI_SPACE_FLAG);
    const res = await fetch(`http://${String(edge.ready.listen)}/`);
    expect(await res.text()).toBe('from the backend');
    expect(await edge.stop()).toBe(0);
  });

  it('a backend imports the toolkit from `outrider/backend` and `outrider/express`, with their types', () => {
    writeFileSync(
      join(app, 'backend.ts'),
      [
        "import { sendScaledImage, verifyUploadFields } from 'outrider/backend';",
        "import { outrider } from 'outrider/express';",
        "const header: { name: string; value: string } = sendScaledImage({ location: '/srv/a.png', width: 64, contentType: 'image/png' });",
        'const middleware = outrider({ secret: Buffer.alloc(32) });',
        'console.log(JSON.stringify({ header, verify: typeof verifyUploadFields, middleware: typeof middleware }));',
        '',
      ].join('\n'),
    );
    // The types resolve through the package's "exports" as a TypeScript user's would (nodenext).
    run(
      process.execPath,
      [
        TYPESCRIPT,
        '--noEmit',
        '--strict',
        '--skipLibCheck',
        '--module',
        'nodenext',
        '--moduleResolution',
        'nodenext',
        '--target',
        'es2022',
        '--typeRoots',
        join(ROOT, 'node_modules/@types'),
        '--types',
        'node',
        'backend.ts',
      ],
      app,
    );
    const script = [
      "import * as backend from 'outrider/backend';",
      "import * as express from 'outrider/express';",
      "import * as edge from 'outrider';",
      'console.log(JSON.stringify({ backend: typeof backend.sendScaledImage, verify: typeof backend.verifyUploadFields, express: typeof express.outrider, edge: typeof edge.buildServer }));',
    ].join('\n');
    writeFileSync(join(app, 'import.mjs'), script);
    const out = JSON.parse(run(process.execPath, ['import.mjs'], app).stdout) as Record<string, string>;
    expect(out).toEqual({ backend: 'function', verify: 'function', express: 'function', edge: 'function' });
  });
});
