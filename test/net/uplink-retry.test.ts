/**
 * The uplink to HQ while HQ is down: the device keeps its ops pending and redials with back-off,
 * and shows how that goes (attempts, last error, next dial); once HQ is back the link comes up
 * and the ops are delivered.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { FieldNode } from '../../src/node/field-node.ts';
import { enroll } from '../../src/node/enroll.ts';
import { freePort } from '../../src/net/free-port.ts';

const DOMAINS = { case: 'merge' } as const;
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function until<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check();
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test('a device redials HQ with back-off, reports attempts and the last error, and delivers once HQ is up', async () => {
  const root = await mkdtemp(join(tmpdir(), 'fieldmesh-uplink-'));
  cleanups.push(() => rm(root, { recursive: true, force: true }));
  const hqDir = join(root, 'hq');
  const hqSetup = await FieldNode.open({ dataDir: hqDir, team: 't', user: 'boss', role: 'server', domains: DOMAINS });
  const hqDevice = hqSetup.device;
  await hqSetup.close();
  await enroll({ hqDataDir: hqDir, dataDir: join(root, 'field'), team: 't', user: 'alice', role: 'field' });

  const port = await freePort();
  const hqAddress = `/ip4/127.0.0.1/tcp/${port}/p2p/${hqDevice}`;
  const field = await FieldNode.open({ dataDir: join(root, 'field'), team: 't', user: 'alice', domains: DOMAINS });
  cleanups.push(() => field.close());
  await field.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: { title: 'well 4' } });
  await field.start({ listen: ['/ip4/127.0.0.1/tcp/0'], peers: [hqAddress], redialMinMs: 50, redialMaxMs: 400 });
  cleanups.push(() => field.stop());

  const down = await until('two failed dials', () => {
    const link = field.links()[0];
    return link !== undefined && link.attempts >= 2 && link.lastError !== null ? link : undefined;
  });
  expect(down).toMatchObject({ address: hqAddress, connected: false });
  expect(down.nextAttemptMs).toBeGreaterThan(0);
  expect((await field.counts()).pending).toBe(1);

  const hq = await FieldNode.open({ dataDir: hqDir, team: 't', user: 'boss', role: 'server', domains: DOMAINS });
  cleanups.push(() => hq.close());
  await hq.start({ listen: [`/ip4/127.0.0.1/tcp/${port}`] });
  cleanups.push(() => hq.stop());

  const up = await until('the uplink', () => (field.links()[0]?.connected === true ? field.links()[0] : undefined));
  expect(up).toMatchObject({ connected: true, attempts: 0, nextAttemptMs: null });
  await until('HQ to hold the op', async () => ((await hq.get('case', 'c1')) !== null ? true : undefined));
});
