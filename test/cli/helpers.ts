/**
 * Helpers for the CLI tests: the real `fieldmesh` command run as child processes of this Node
 * (loopback only, no mDNS), with bounded waits; every process still running is stopped (SIGTERM,
 * then SIGKILL) and every temp dir removed after each test, also on failure.
 *
 * Starting a process that opens a data dir costs about a second of CPU here, mostly loading
 * modules; the children of a test share a V8 compile cache (NODE_COMPILE_CACHE) in a temp dir
 * removed after the test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, beforeEach } from 'vitest';
import { readConfig, toPolicies } from '../../src/cli/config.ts';
import { FieldNode } from '../../src/node/field-node.ts';

export const CLI = resolve(import.meta.dirname, '../../src/cli/main.ts');

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface Result {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Polls `check` until it returns a truthy value; throws after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 30_000, everyMs = 150): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      last = await check();
    } catch (err) {
      last = err;
    }
    if (last && !(last instanceof Error)) return last as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)?.slice(0, 300)})`);
    await sleep(everyMs);
  }
}

export { freePort } from '../../src/net/free-port.ts';

export { pool } from '../fixtures/pool.ts';

export interface RunningNode {
  readonly child: ChildProcess;
  readonly dataDir: string;
  /** Every JSON line the node printed, in order. */
  readonly events: Record<string, unknown>[];
  readonly device: string;
  readonly addresses: string[];
  /** The API's URL when started with --api. */
  readonly apiUrl: string | null;
  stderr(): string;
}

/** Call once at the top level of a test file. */
export function useCli() {
  const dirs: string[] = [];
  const children = new Set<ChildProcess>();
  // The children's V8 compile cache (NODE_COMPILE_CACHE): a temp dir per test like the others,
  // removed after the test; its files are carried in memory to the next test's dir, so that only
  // the file's first process compiles everything.
  let cacheDir: string | null = null;
  let cacheFiles = new Map<string, Buffer>();

  // Off between tests: a background task of a finished (failed) test starts no new process.
  let accepting = false;

  beforeEach(async () => {
    accepting = true;
    cacheDir = await mkdtemp(join(tmpdir(), 'fm-cli-cache-'));
    dirs.push(cacheDir);
    for (const [path, bytes] of cacheFiles) {
      await mkdir(dirname(join(cacheDir, path)), { recursive: true });
      await writeFile(join(cacheDir, path), bytes);
    }
  });
  afterEach(async () => {
    accepting = false;
    await Promise.all([...children].map((child) => stopChild(child, 10_000).catch(() => undefined)));
    children.clear();
    if (cacheDir !== null) cacheFiles = await readTree(cacheDir).catch(() => cacheFiles);
    cacheDir = null;
    for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
  });

  const env = (): NodeJS.ProcessEnv => {
    const out: NodeJS.ProcessEnv = { ...process.env, NODE_COMPILE_CACHE: cacheDir ?? undefined, FORCE_COLOR: '0', NO_COLOR: '1' };
    delete out.FIELDMESH_DATA;
    delete out.FIELDMESH_API_TOKEN;
    delete out.NODE_OPTIONS;
    return out;
  };

  /** Runs `fieldmesh ...args` to completion (killed after `timeoutMs`). */
  const run = (args: readonly string[], options: { timeoutMs?: number; cwd?: string } = {}): Promise<Result> =>
    new Promise((done, fail) => {
      if (!accepting) {
        done({ code: null, signal: 'SIGKILL', stdout: '', stderr: 'not started: the test is over' });
        return;
      }
      const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: env(), cwd: options.cwd });
      children.add(child);
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d) => (stdout += d));
      child.stderr!.on('data', (d) => (stderr += d));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        fail(new Error(`fieldmesh ${args.join(' ')} did not finish within ${options.timeoutMs ?? 60_000} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
      }, options.timeoutMs ?? 60_000);
      child.once('error', (err) => {
        clearTimeout(timer);
        fail(err);
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        children.delete(child);
        done({ code, signal, stdout, stderr });
      });
    });

  /** Runs a command that must succeed (exit 0, nothing on stderr). */
  const ok = async (args: readonly string[]): Promise<Result> => {
    const r = await run(args);
    if (r.code !== 0) throw new Error(`fieldmesh ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r;
  };

  /** Runs `fieldmesh --json ...args`, which must succeed and print one JSON line; returns it parsed. */
  const json = async (args: readonly string[]): Promise<any> => {
    const r = await ok(['--json', ...args]);
    const lines = r.stdout.trim().split('\n');
    if (lines.length !== 1) throw new Error(`fieldmesh --json ${args.join(' ')} printed ${lines.length} lines: ${r.stdout}`);
    return JSON.parse(lines[0]!);
  };

  /**
   * `fieldmesh [--json] -d <dataDir> start ...args`, resolved once it is listening. With --json
   * (the default) every stdout line is a JSON event; in text mode the lines are kept as printed.
   */
  const start = (dataDir: string, args: readonly string[], options: { json?: boolean; timeoutMs?: number } = {}): Promise<RunningNode> =>
    new Promise((done, fail) => {
      const asJson = options.json !== false;
      const timeoutMs = options.timeoutMs ?? 60_000;
      const child = spawn(process.execPath, [CLI, ...(asJson ? ['--json'] : []), '-d', dataDir, 'start', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: env() });
      children.add(child);
      const events: Record<string, unknown>[] = [];
      let stderr = '';
      let apiUrl: string | null = null;
      let listening = false;
      child.stderr!.on('data', (d) => (stderr += d));
      const timer = setTimeout(() => fail(new Error(`${dataDir}: not started within ${timeoutMs} ms; stderr: ${stderr}`)), timeoutMs);
      child.once('exit', (code) => {
        clearTimeout(timer);
        children.delete(child);
        fail(new Error(`${dataDir}: start exited (${code}) before it started; stderr: ${stderr}`));
      });
      const started = (device: string, addresses: string[]) => {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        child.once('exit', () => children.delete(child));
        done({ child, dataDir, events, device, addresses, apiUrl, stderr: () => stderr });
      };
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (!asJson) {
          events.push({ line });
          const api = /^HTTP API on (http:\/\/\S+) /.exec(line);
          if (api !== null) apiUrl = api[1]!;
          const header = /^fieldmesh (\S+) listening on$/.exec(line);
          if (header !== null) {
            listening = true;
            events.push({ device: header[1] });
          } else if (listening && line.startsWith('  /')) {
            listening = false;
            started(String(events.find((e) => e.device !== undefined)!.device), [line.trim()]);
          }
          return;
        }
        let event: Record<string, unknown>;
        try {
          event = JSON.parse(line) as Record<string, unknown>;
        } catch {
          event = { unparsed: line };
        }
        events.push(event);
        if (event.event === 'api') apiUrl = String(event.url);
        if (event.event === 'started') started(String(event.device), event.addresses as string[]);
      });
    });

  return {
    run,
    ok,
    json,
    start,
    async dir(prefix = 'fm-cli-'): Promise<string> {
      const path = await mkdtemp(join(tmpdir(), prefix));
      dirs.push(path);
      return path;
    },
  };
}

/** Stops a child: SIGTERM, then SIGKILL after `graceMs`; resolves with its exit code. */
export function stopChild(child: ChildProcess, graceMs = 10_000): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((done) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('close', (code) => {
      clearTimeout(timer);
      done(code);
    });
    child.kill('SIGTERM');
  });
}

/** Every file under `root` (relative path -> bytes). */
async function readTree(root: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    out.set(relative(root, path), await readFile(path));
  }
  return out;
}

/** Opens a CLI data dir in this process, as the CLI would (config.json), for `fn`. */
export async function withNode<T>(dataDir: string, fn: (node: FieldNode) => Promise<T>): Promise<T> {
  const config = await readConfig(dataDir);
  const node = await FieldNode.open({ dataDir, team: config.team, user: config.user, role: config.role, domains: toPolicies(config.domains) });
  try {
    return await fn(node);
  } finally {
    await node.close();
  }
}
