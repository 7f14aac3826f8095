import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { onTestFinished } from 'vitest';

/** The Node flag the `outrider` bin runs with (its shebang; README, Memory). */
export const SEMI_SPACE_FLAG = '--max-semi-space-size=4';

export interface StartedEdge {
  /** The pid the command was started as. */
  pid: number;
  /** Its log lines so far (JSON on stdout). */
  logs: Record<string, unknown>[];
  /** The "outrider ready" line. */
  ready: Record<string, unknown>;
  /** SIGTERM, then its exit code. */
  stop: () => Promise<number | null>;
}

/**
 * Runs an Outrider command (`command args…`) and waits for its "outrider ready" line; killed when
 * the test ends if still running.
 */
export async function startEdge(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<StartedEdge> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  onTestFinished(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const logs: Record<string, unknown>[] = [];
  let buffer = '';
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      buffer += d.toString();
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        const line = JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>;
        buffer = buffer.slice(nl + 1);
        logs.push(line);
        if (line.msg === 'outrider ready') resolve(line);
      }
    });
    void exited.then((code) => reject(new Error(`${command} exited with ${code} before it was ready: ${stderr}`)));
  });
  const line = await Promise.race([ready, sleep(15_000).then(() => Promise.reject(new Error(`${command} did not start: ${stderr}`)))]);
  return {
    pid: child.pid as number,
    logs,
    ready: line,
    stop: () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** The command line a running process was started with (Linux /proc): the Node binary, its flags, the script, its arguments. */
export function commandLine(pid: unknown): string[] {
  return readFileSync(`/proc/${String(pid)}/cmdline`, 'utf8')
    .split('\0')
    .slice(0, -1);
}

/** The pids of the cluster workers an edge started with `workers` > 1 reported as ready. */
export function workerPids(edge: StartedEdge): unknown[] {
  return edge.logs.filter((l) => l.msg === 'worker ready').map((l) => l.workerPid);
}
