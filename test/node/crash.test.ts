/**
 * Crash safety: a child process mutates a FieldNode as fast as it can (8 mutations in flight) and
 * is killed with SIGKILL at a random moment. After every kill the test reopens the same data dir
 * and checks that every mutation the child saw resolve is there, the log verifies, and statuses,
 * counts and the version vector agree. State accumulates across all kills.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { compareHlc } from '../../src/core/hlc.ts';
import { materialize, stateHash } from '../../src/core/materialize.ts';
import type { Op } from '../../src/core/op.ts';
import { FieldNode } from '../../src/node/field-node.ts';
import { HQ, rng } from './helpers.ts';

const FIXTURE = fileURLToPath(new URL('./fixtures/crash-child.ts', import.meta.url));
const DOMAINS = { case: 'manual', evidence: 'merge' } as const;
const KILLS = Number(process.env.FM_CRASH_KILLS ?? 50);

const live = new Set<ChildProcess>();
let scratch = '';

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'fm-crash-'));
});

// Every child is killed and awaited, also when a test fails half-way.
afterEach(async () => {
  await Promise.all([...live].map((child) => killAndWait(child)));
});

afterAll(async () => {
  if (scratch !== '') await rm(scratch, { recursive: true, force: true });
});

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function killAndWait(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await exited(child);
  live.delete(child);
}

interface Run {
  readonly child: ChildProcess;
  /** Complete lines printed so far (op ids, and `loaded` / `ready`). */
  readonly lines: string[];
  readonly stderr: string[];
  /** Resolves once the child's modules are loaded (it then waits for `go`). */
  readonly loaded: Promise<void>;
  /** Resolves once the child has opened the data dir and written its first op. */
  readonly ready: Promise<void>;
}

function signal(): { promise: Promise<void>; resolve: () => void; reject: (err: Error) => void } {
  let resolve: () => void = () => undefined;
  let reject: (err: Error) => void = () => undefined;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // observed by whoever awaits it
  return { promise, resolve, reject };
}

/**
 * Starts a child that loads its modules and then waits for `go` before opening the data dir, so
 * the next child can boot while the test still checks the dir (spawn cost dominates this test).
 */
function startChild(dataDir: string, tag: string, cacheDir: string): Run {
  const child = spawn(process.execPath, [FIXTURE, dataDir, HQ.device, tag, '8'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    // Node's compile cache shortens the start-up of each child after the first.
    env: { ...process.env, NODE_COMPILE_CACHE: cacheDir },
  });
  live.add(child);
  const lines: string[] = [];
  const stderr: string[] = [];
  const loaded = signal();
  const ready = signal();
  let partial = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop()!;
    for (const line of parts) {
      lines.push(line);
      if (line === 'loaded') loaded.resolve();
      if (line === 'ready') ready.resolve();
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => stderr.push(chunk));
  child.stdin!.on('error', () => undefined); // EPIPE once killed
  child.once('exit', (code, sig) => {
    const err = new Error(`child exited early (code ${code}, signal ${sig}): ${stderr.join('')}`);
    loaded.reject(err);
    ready.reject(err);
  });
  return { child, lines, stderr, loaded: loaded.promise, ready: ready.promise };
}

/** Rejects after `ms` with `what` in the message, unless `promise` settles first. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer after ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const openNode = (dataDir: string) => FieldNode.open({ dataDir, team: 'team-t', user: 'crash', hqDevice: HQ.device, domains: DOMAINS });

/**
 * verify() on a byte copy of the data dir as the test process left it (reopened, checked, closed):
 * it re-checks every signature and chain, so it is the slow part of each round; on a copy it runs
 * while the next child already writes to the original dir.
 */
async function verifyCopy(copyDir: string, seq: number, kill: number): Promise<void> {
  const node = await openNode(copyDir);
  try {
    const report = await node.verify();
    expect(report, `kill ${kill}`).toEqual({ devices: 1, ops: seq, problems: [] });
  } finally {
    await node.close();
    await rm(copyDir, { recursive: true, force: true });
  }
}

describe('crash safety (SIGKILL at random moments)', () => {
  it(`keeps every resolved mutation and a consistent store across ${KILLS} kills of a writer`, async () => {
    const dataDir = join(scratch, 'node');
    const cacheDir = join(scratch, 'compile-cache');
    const seed = Number(process.env.FM_CRASH_SEED ?? Date.now() % 2 ** 31);
    const rand = rng(seed);
    const everReported = new Set<string>();
    let lastSeq = 0;
    let verifying: Promise<void> = Promise.resolve();
    let next = startChild(dataDir, 'r0', cacheDir);
    for (let kill = 0; kill < KILLS; kill++) {
      const run = next;
      await within(run.loaded, 30_000, `child ${kill} loading`);
      run.child.stdin!.write('go\n');
      await within(run.ready, 30_000, `child ${kill} opening the data dir`);
      // The next child boots (loads its modules) while this one runs; it opens the dir on `go`.
      if (kill + 1 < KILLS) next = startChild(dataDir, `r${kill + 1}`, cacheDir);
      await sleep(20 + Math.floor(rand() * 281));
      await killAndWait(run.child);
      expect(run.child.signalCode, `child died on its own: ${run.stderr.join('')}`).toBe('SIGKILL');
      expect(run.stderr.join('')).toBe('');
      const reported = run.lines.filter((l) => l !== 'ready' && l !== 'loaded');
      for (const id of reported) {
        expect(id).toMatch(/^[0-9a-f]{64}$/);
        expect(everReported.has(id), `op id ${id} reported twice`).toBe(false);
        everReported.add(id);
      }

      const node = await openNode(dataDir);
      let seq: number;
      try {
        // Every mutation the child saw resolve is durable.
        const missing: string[] = [];
        for (const id of reported) {
          const op = await node.op(id);
          if (op === undefined || op.device !== node.device || op.id !== id) missing.push(id);
        }
        expect(missing, `kill ${kill} (seed ${seed}): ${missing.length} of ${reported.length} resolved mutations lost`).toEqual([]);

        seq = node.versionVector()[node.device] ?? 0;
        expect(seq).toBeGreaterThanOrEqual(lastSeq + reported.length);
        lastSeq = seq;
        expect(Object.keys(node.versionVector())).toEqual([node.device]);

        // Every op is pending (no HQ here), so the device's queue is its whole log, in seq order.
        const ops = await node.queue(node.device, 10_000_000);
        expect(ops.length).toBe(seq);
        const badSeq = ops.findIndex((o, i) => o.seq !== i + 1 || o.status !== 'pending' || o.waiting || o.device !== node.device);
        expect(badSeq, `op at index ${badSeq}: ${JSON.stringify(ops[badSeq])}`).toBe(-1);
        // The HLC never goes backwards, across restarts included.
        const badHlc = ops.findIndex((o, i) => i > 0 && compareHlc(ops[i - 1]!.hlc, o.hlc) >= 0);
        expect(badHlc, `HLC of seq ${badHlc + 1} not after the one before`).toBe(-1);
        const counts = await node.counts(node.device);
        expect(counts.pending + counts.synced + counts.failed + counts.conflict).toBe(seq);
        expect(counts).toEqual({ pending: seq, synced: 0, failed: 0, conflict: 0 });
        expect(await node.counts()).toEqual(counts);
        expect(await node.devices()).toEqual([{ device: node.device, lastSeq: seq, lastSyncedSeq: 0, counts }]);

        // At the end, verify() on the dir itself, and the materialized state equals core's
        // from scratch over the same ops.
        if (kill === KILLS - 1) {
          expect(await node.verify()).toEqual({ devices: 1, ops: seq, problems: [] });
          const all: Op[] = [];
          for (const summary of ops) all.push((await node.op(summary.id))!);
          expect(all.every((op, i) => op !== undefined && op.seq === i + 1)).toBe(true);
          const m = materialize(all, node.resolution);
          expect(await node.stateHash()).toBe(stateHash([...m.entities.values()].map((e) => e.view)));
          for (const { view } of m.entities.values()) {
            const got = await node.get(view.domain, view.entity);
            expect(got).toEqual(view.exists || view.conflict !== null ? view : null);
          }
        }
      } finally {
        await node.close();
      }
      // One verification in flight at a time: wait for the previous round's, then start this one's.
      await verifying;
      if (kill < KILLS - 1) {
        const copy = join(scratch, `verify-${kill}`);
        await cp(dataDir, copy, { recursive: true });
        verifying = verifyCopy(copy, seq, kill);
        verifying.catch(() => undefined); // awaited next round (or at the end)
      }
    }
    await verifying;
    expect(everReported.size).toBeGreaterThan(KILLS);
  }, 180_000);
});
