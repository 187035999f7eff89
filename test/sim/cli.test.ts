/**
 * The simulator's command line as a real process (`node src/sim/cli.ts`, what `bash
 * scripts/run.sh sim` runs): every bad option exits 2 with one line on stderr before anything
 * runs, as docs/testing.md says; a good run exits 0 and prints a replay command that works from
 * a fresh clone (`bash scripts/run.sh sim ...`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { pool } from '../fixtures/pool.ts';

const SIM_CLI = resolve(import.meta.dirname, '../../src/sim/cli.ts');

interface Result {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

const children = new Set<ChildProcess>();
afterEach(() => {
  for (const child of children) child.kill('SIGKILL');
  children.clear();
});

/** Runs the simulator's CLI to completion (killed after `timeoutMs`). */
function sim(args: readonly string[], timeoutMs = 60_000): Promise<Result> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [SIM_CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '', FORCE_COLOR: '0' } });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', fail);
    child.once('close', (code) => {
      clearTimeout(timer);
      children.delete(child);
      done({ code, stdout, stderr });
    });
  });
}

const BAD: readonly [readonly string[], RegExp][] = [
  [['--seeds', '0'], /'--seeds <n>' argument '0' is invalid\. must be from 1 to 1000000/],
  [['--seeds', '-3'], /'--seeds <n>' argument '-3' is invalid\. must be from 1 to 1000000/],
  [['--seeds', 'abc'], /'--seeds <n>' argument 'abc' is invalid\. not an integer/],
  [['--seeds', '1e3'], /'--seeds <n>' argument '1e3' is invalid\. not an integer/],
  [['--seeds'], /'--seeds <n>' argument missing/],
  [['--bogus'], /unknown option '--bogus'/],
  [['stray'], /too many arguments/],
  [['--seed', '-1'], /'--seed <s>' argument '-1' is invalid\. must be from 0 to 4294967295/],
  [['--seed', '1', '--seeds', '2'], /'--seeds <n>' cannot be used with option '--seed <s>'/],
  [['--seed', '1', '--first-seed', '2'], /'--first-seed <s>' cannot be used with option '--seed <s>'/],
  [['--seeds', '2', '--first-seed', '4294967295'], /runs past the last seed, 4294967295/],
  [['--nodes', '2'], /'--nodes <m>' argument '2' is invalid\. must be from 3 to 64/],
  [['--workers', '0'], /'--workers <n>' argument '0' is invalid\. must be from 1 to 256/],
  [['--faults', 'crash,nope'], /unknown fault nope/],
  [['--variant', 'nope'], /Allowed choices are correct, arrival-order-state, ack-before-flush/],
  [['--latency-min-ms', '10', '--latency-max-ms', '5'], /latencyMaxMs must be at least latencyMinMs/],
];

describe('sim command line', () => {
  it('exits 2 on every bad option, with one line on stderr, before running anything', async () => {
    const results = await pool(4, BAD.map(([args]) => () => sim(args)));
    for (const [i, [args, message]] of BAD.entries()) {
      const r = results[i]!;
      expect({ args, code: r.code, stdout: r.stdout }).toEqual({ args, code: 2, stdout: '' });
      const lines = r.stderr.trim().split('\n');
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/^sim: .* \(sim --help lists the options\)$/);
      expect(lines[0]).toMatch(message);
    }
  });

  it('runs one seed (also after a `--`, as `bash scripts/run.sh sim -- ...` passes it) and prints a replay command for scripts/run.sh; --help exits 0', async () => {
    const [plain, dashed, help] = await Promise.all([
      sim(['--seed', '3', '--nodes', '3', '--mutations', '2']),
      sim(['--', '--seed', '3', '--nodes', '3', '--mutations', '2']),
      sim(['--help']),
    ]);
    expect([plain.code, dashed.code, help.code], plain.stderr + dashed.stderr + help.stderr).toEqual([0, 0, 0]);
    expect(plain.stdout).toContain('  replay: bash scripts/run.sh sim --seed 3 --nodes 3 --mutations 2\n');
    // The same run: the same output but for the wall time.
    const withoutTime = (stdout: string) => stdout.replace(/; \d+ ms$/m, '');
    expect(withoutTime(dashed.stdout)).toBe(withoutTime(plain.stdout));
    expect(help.stdout).toMatch(/^Usage: sim \[options\]/);
  });
});
