import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const START = fileURLToPath(new URL('../../dist/example/start.js', import.meta.url));

/** `npm start` (built) running: where Outrider answers, what it logged, and how to stop it. */
export interface ExampleApp {
  /** Outrider's base URL, as npm start printed it (https:// when its config has [tls]). */
  base: string;
  /** Every JSON line Outrider logged (npm start relays them on stdout), as they come. */
  logs: Record<string, unknown>[];
  /** SIGINT, as Ctrl-C; resolves with the exit code, or null if it had to be killed after 5 s. */
  stop(): Promise<number | null>;
}

/** Starts the example app on free ports with `env` added (EXAMPLE_AVATAR_DIR, EXAMPLE_OUTRIDER_CONFIG…). */
export async function startExampleApp(env: Record<string, string>): Promise<ExampleApp> {
  const child = spawn(process.execPath, [START], {
    env: { ...process.env, OUTRIDER_PORT: '0', EXAMPLE_BACKEND_PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const stop = async () => {
    if (child.exitCode === null) child.kill('SIGINT');
    const code = await Promise.race([exited, sleep(5_000).then(() => 'timeout' as const)]);
    if (code === 'timeout') child.kill('SIGKILL');
    return code === 'timeout' ? null : code;
  };
  const logs: Record<string, unknown>[] = [];
  let out = '';
  let pending = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    pending += d.toString();
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) if (line.startsWith('{')) logs.push(JSON.parse(line) as Record<string, unknown>);
  });
  const base = await Promise.race([
    new Promise<string>((resolve) => {
      child.stdout.on('data', () => {
        const m = /Outrider is up on (https?:\/\/127\.0\.0\.1:\d+)/.exec(out);
        if (m && out.includes('Ctrl-C stops both.')) resolve(m[1] as string);
      });
    }),
    sleep(15_000).then(() => Promise.reject(new Error(`npm start did not come up:\n${out}`))),
  ]);
  return { base, logs, stop };
}
