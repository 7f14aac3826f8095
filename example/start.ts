import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadSecret } from '../backend/index.js';
import { createExampleBackend, prepareAvatars } from './backend.js';

/**
 * `npm start`: the example backend on 127.0.0.1:8080 and Outrider on 127.0.0.1:8181 in front of
 * it (example/outrider.toml), Outrider's logs on stdout, URLs to try once both are up.
 * EXAMPLE_BACKEND_PORT and OUTRIDER_PORT move them (0 picks a free port). Ctrl-C stops both.
 * Each run shares a new secret between the two (a file in a fresh temp dir, removed on exit).
 * EXAMPLE_AVATAR_DIR keeps the avatars somewhere else than <tmpdir>/outrider-example-avatars.
 */
const backendPort = Number(process.env.EXAMPLE_BACKEND_PORT ?? 8080);
const edgePort = Number(process.env.OUTRIDER_PORT ?? 8181);
const cli = fileURLToPath(new URL('../proxy/cli.js', import.meta.url));
// EXAMPLE_OUTRIDER_CONFIG runs Outrider with another config (bench/cold-page.ts compares two).
const config = process.env.EXAMPLE_OUTRIDER_CONFIG || fileURLToPath(new URL('../../example/outrider.toml', import.meta.url));

// The secret Outrider signs upload fields with: 32 random bytes, base64 in a file only this user
// can read (Workhorse's .gitlab_workhorse_secret), handed to Outrider with --secret-path.
const runDir = mkdtempSync(join(tmpdir(), 'outrider-example-'));
const secretPath = join(runDir, 'gitlab_workhorse_secret');
writeFileSync(secretPath, `${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
// The backend reads the file with the toolkit's loadSecret: the same rules as Outrider's secret_path.
const secret = loadSecret(secretPath);
// Where the backend tells Outrider to store avatar uploads until it has moved them (TempPath).
const uploadTempDir = join(runDir, 'uploads');
const cleanUp = () => rmSync(runDir, { recursive: true, force: true });

const avatarDir = await prepareAvatars(process.env.EXAMPLE_AVATAR_DIR || undefined);
const backend = createExampleBackend({ secret, uploadTempDir, avatarDir });
backend.on('error', (err: NodeJS.ErrnoException) => {
  process.stderr.write(`example backend: cannot listen on 127.0.0.1:${backendPort} (${err.code}); set EXAMPLE_BACKEND_PORT\n`);
  cleanUp();
  process.exit(1);
});
backend.listen(backendPort, '127.0.0.1', () => {
  const { port } = backend.address() as AddressInfo;
  const edge = spawn(
    process.execPath,
    [
      // As the `outrider` bin's shebang: a 4 MiB young generation keeps RSS under load ~30 MiB lower (README, Memory).
      '--max-semi-space-size=4',
      cli,
      '--config',
      config,
      '--listen-addr',
      `127.0.0.1:${edgePort}`,
      '--auth-backend',
      `http://127.0.0.1:${port}`,
      '--secret-path',
      secretPath,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let buffer = '';
  edge.stdout.on('data', (chunk: Buffer) => {
    process.stdout.write(chunk);
    buffer += chunk.toString();
    const ready = buffer.split('\n').find((line) => line.includes('"msg":"outrider ready"'));
    if (ready === undefined) return;
    buffer = '';
    const { listen, tls } = JSON.parse(ready) as { listen: string; tls?: boolean };
    const base = `${tls ? 'https' : 'http'}://${listen}`;
    process.stdout.write(
      `\nOutrider is up on ${base} in front of the example backend on http://127.0.0.1:${port}\nTry:\n` +
        `  ${base}/                 the example app's home page, through Outrider\n` +
        `  curl -i ${base}/headers  what the backend receives (Gitlab-Workhorse, X-Forwarded-For, X-Request-Id)\n` +
        `  ${base}/ also shows a live counter: a WebSocket to /live, tunnelled by Outrider (Upgrade)\n` +
        `  curl -N ${base}/stream   a response relayed line by line as the backend writes it\n` +
        `  curl -i '${base}/avatars/ada.png?width=64'   an avatar scaled by Outrider (send-scaled-img)\n` +
        `  curl -i ${base}/avatars/ada.png   the original (X-Sendfile); add -H 'If-Modified-Since: <its Last-Modified>' for a 304\n` +
        `  curl -i ${base}/files/hello.txt   a file the backend hands over with X-Sendfile\n` +
        `  curl -i ${base}/mirror   a URL the backend hands over with send-url\n` +
        `  curl -i ${base}/internal an internal API answer Outrider refuses to leak (500)\n` +
        `  ${base}/upload           a form that uploads an avatar (PNG or JPEG, at most 5 MiB)\n` +
        `  curl -i -F avatar=@some.png ${base}/uploads/avatar   the same upload: Outrider stores the file, the backend moves it (303)\n` +
        `Uploads wait in ${uploadTempDir} until the backend has moved them; the secret shared for this run is in ${secretPath}.\n` +
        'Ctrl-C stops both.\n\n',
    );
  });
  const stop = (signal: NodeJS.Signals) => {
    edge.kill(signal);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  edge.on('exit', (code) => {
    cleanUp();
    backend.closeAllConnections();
    backend.close(() => process.exit(code ?? 0));
  });
});
