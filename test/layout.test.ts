import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const FOLDERS = ['protocol', 'proxy', 'scaler', 'config', 'backend'];

/** Every source file's local imports (type imports included), as paths relative to the repository. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith('.ts')) {
        const { importedFiles } = ts.preProcessFile(readFileSync(path, 'utf8'), true, false);
        const local = importedFiles
          .map((f) => f.fileName)
          .filter((spec) => spec.startsWith('.'))
          .map((spec) => relative(ROOT, resolve(dirname(path), spec)).replace(/\.js$/, '.ts'));
        graph.set(relative(ROOT, path), local);
      }
    }
  };
  for (const folder of FOLDERS) walk(join(ROOT, folder));
  return graph;
}

/** One cycle, as the list of files around it, or undefined. */
function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (file: string): string[] | undefined => {
    if (state.get(file) === 'done') return undefined;
    if (state.get(file) === 'open') return [...stack.slice(stack.indexOf(file)), file];
    state.set(file, 'open');
    stack.push(file);
    for (const next of graph.get(file) ?? []) {
      const cycle = visit(next);
      if (cycle !== undefined) return cycle;
    }
    stack.pop();
    state.set(file, 'done');
    return undefined;
  };
  for (const file of graph.keys()) {
    const cycle = visit(file);
    if (cycle !== undefined) return cycle;
  }
  return undefined;
}

describe('the layout', () => {
  const graph = importGraph();
  const importsOf = (folder: string) =>
    [...graph].filter(([file]) => file.startsWith(`${folder}/`)).flatMap(([file, deps]) => deps.map((dep) => `${file} -> ${dep}`));

  it('has no import cycle, type imports included', () => {
    expect(graph.size).toBeGreaterThan(50);
    expect(findCycle(graph)).toBeUndefined();
  });

  it('points dependencies one way: protocol and scaler import nothing above them, the toolkit nothing of the proxy', () => {
    const outside = (folder: string, allowed: string[]) =>
      importsOf(folder).filter((edge) => !allowed.some((to) => edge.split(' -> ')[1]?.startsWith(`${to}/`)));
    expect(outside('protocol', ['protocol'])).toEqual([]);
    expect(outside('scaler', ['scaler'])).toEqual([]);
    expect(outside('config', ['config'])).toEqual([]);
    expect(outside('backend', ['backend', 'protocol'])).toEqual([]);
    expect(outside('proxy', ['proxy', 'protocol', 'scaler', 'config'])).toEqual([]);
  });

  it('hangs no state on requests, responses or sockets under symbols: what a stage needs is passed to it', () => {
    const keyed = [...graph.keys()]
      .filter((file) => file.startsWith('proxy/'))
      .flatMap((file) =>
        readFileSync(join(ROOT, file), 'utf8')
          .split('\n')
          .flatMap((line, i) => (/\bSymbol\(/.test(line) ? [`${file}:${i + 1}: ${line.trim()}`] : [])),
      );
    expect(keyed).toEqual([]);
  });

  it('keeps the interceptor contract apart from the list: intercept/types.ts imports nothing of Outrider', () => {
    expect(graph.get('proxy/intercept/types.ts')).toEqual([]);
  });
});
