/**
 * The main job, as a newcomer runs it (`npm start`): the field-day demo must end with identical
 * state on every node and exit 0, leaving no process or temp dir behind.
 */
import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { resolve } from 'node:path';
import { expect, test } from 'vitest';

const DEMO = resolve(import.meta.dirname, '../../src/demo/field-day.ts');
const demoDirs = async () => (await readdir(tmpdir())).filter((name) => name.startsWith('fieldmesh-demo-'));

test('the field-day demo converges on every node and exits 0', async () => {
  const before = new Set(await demoDirs());
  const child = spawn(process.execPath, [DEMO], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const timer = setTimeout(() => child.kill('SIGTERM'), 240_000);
  const code = await new Promise<number | null>((done) => child.on('exit', (c) => done(c)));
  clearTimeout(timer);
  expect(err, out).toBe('');
  expect(code, out).toBe(0);
  expect(out).toMatch(/identical state on all 5 nodes\./);
  // Five nodes, one state hash.
  const hashes = [...out.matchAll(/state ([0-9a-f]{16})$/gm)].map((m) => m[1]);
  expect(hashes).toHaveLength(5);
  expect(new Set(hashes).size).toBe(1);
  expect(out).toMatch(/on bob: .* failed: /);
  expect((await demoDirs()).filter((d) => !before.has(d))).toEqual([]);
}, 300_000);
