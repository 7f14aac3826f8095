import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { onTestFinished } from 'vitest';

// `npm test` builds first (pretest): these helpers run the real `outrider` binary.
export const CLI = fileURLToPath(new URL('../../dist/proxy/cli.js', import.meta.url));

export type Line = Record<string, unknown>;

export interface Running {
  child: ChildProcess;
  listen: string;
  ready: Line;
  logs: Line[];
  /** Resolves with the first log line (from now on or already seen) that matches. */
  waitFor(match: (line: Line) => boolean, what: string): Promise<Line>;
  exited: Promise<number | null>;
}

export function configFile(toml: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'outrider-cluster-')), 'outrider.toml');
  writeFileSync(file, toml);
  return file;
}

/** Starts `outrider --config <file> [args]` and waits for its "outrider ready" line. */
export async function startCli(toml: string, args: string[] = [], env: NodeJS.ProcessEnv = process.env): Promise<Running> {
  const child = spawn(process.execPath, [CLI, '--config', configFile(toml), ...args], { stdio: ['ignore', 'pipe', 'inherit'], env });
  onTestFinished(() => {
    // Workers exit on their own when the primary's channel closes.
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const logs: Line[] = [];
  const waiters: { match: (line: Line) => boolean; resolve: (line: Line) => void }[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let buffer = '';
  child.stdout?.on('data', (d: Buffer) => {
    buffer += d.toString();
    for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
      // Every line must be whole JSON: workers and primary share this pipe.
      const line = JSON.parse(buffer.slice(0, nl)) as Line;
      buffer = buffer.slice(nl + 1);
      logs.push(line);
      for (const w of [...waiters]) {
        if (w.match(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  const waitFor = (match: (line: Line) => boolean, what: string) => {
    const seen = logs.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return Promise.race([
      new Promise<Line>((resolve) => waiters.push({ match, resolve })),
      exited.then((code) => Promise.reject(new Error(`outrider exited with ${code} before logging ${what}`))),
      sleep(10_000).then(() => Promise.reject(new Error(`no log line: ${what}`))),
    ]);
  };
  const ready = await waitFor((l) => l.msg === 'outrider ready', '"outrider ready"');
  return { child, listen: ready.listen as string, ready, logs, waitFor, exited };
}
