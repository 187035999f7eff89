/**
 * Small, generic helpers for tests with real FieldNodes on loopback: a team (HQ data dir plus
 * enrolled devices, each a real LevelDB in a temp dir) whose nodes are stopped and closed and
 * whose dirs are removed after each test, also on failure; bounded polling; a seeded PRNG; and
 * what a node shows of its data, for convergence checks.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import type { MeshEvent, MeshOptions } from '../../src/net/mesh.ts';
import type { FieldNode } from '../../src/node/field-node.ts';
import { createTeam, type Domains, type Team } from '../fixtures/team.ts';
export { rng } from '../core/helpers.ts';

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a truthy value; throws after `timeoutMs` (with `what`, and the last value seen). */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 15_000, everyMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Mesh options for loopback tests: no mDNS, quick redials. */
export const LOOPBACK: MeshOptions = { mdns: false, listen: ['/ip4/127.0.0.1/tcp/0'], redialMinMs: 100, redialMaxMs: 1000 };

/** Starts `node`'s mesh on loopback, dialling `peers` (nodes already started) as static peers. */
export async function startMesh(node: FieldNode, peers: readonly FieldNode[] = [], options: MeshOptions = {}): Promise<void> {
  const addresses = peers.flatMap((p) => p.addresses());
  if (addresses.length < peers.length) throw new Error('startMesh: a static peer is not started');
  await node.start({ ...LOOPBACK, ...options, peers: [...addresses, ...(options.peers ?? [])] });
}

/**
 * Temp dirs and nodes cleaned up after each test. Call once at the top level of a test file.
 * `team()` creates an HQ data dir (HQ opened once as role `server`, so its key and self-issued
 * certificate exist) and returns a team whose `node()` enrolls a device and opens it.
 */
export function useLoopback() {
  const dirs: string[] = [];
  const nodes: FieldNode[] = [];
  afterEach(async () => {
    for (const node of nodes.splice(0).reverse()) await node.close().catch(() => undefined);
    for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  });
  const track = (node: FieldNode): FieldNode => {
    nodes.push(node);
    return node;
  };
  const dir = async (prefix = 'fm-net-'): Promise<string> => {
    const path = await mkdtemp(join(tmpdir(), prefix));
    dirs.push(path);
    return path;
  };
  return {
    track,
    dir,
    async team(domains: Domains, name = 'team-net'): Promise<Team> {
      return createTeam({ root: await dir('fm-team-'), domains, name, hqUser: 'hq-admin', track });
    },
  };
}

/** What a node shows of its data: version vector, state hash, open conflicts and every op id. */
export async function observed(node: FieldNode) {
  const ops = await node.ops({ limit: 1_000_000 });
  return {
    versionVector: node.versionVector(),
    stateHash: await node.stateHash(),
    conflicts: await node.conflicts(),
    opIds: ops.map((o) => o.id).sort(),
  };
}

/** True when every node holds the same logs and shows the same state. */
export async function sameState(nodes: readonly FieldNode[]): Promise<boolean> {
  const [first, ...rest] = nodes;
  if (first === undefined) return true;
  const vv = JSON.stringify(sortedVV(first.versionVector()));
  if (rest.some((n) => JSON.stringify(sortedVV(n.versionVector())) !== vv)) return false;
  const hash = await first.stateHash();
  for (const node of rest) if ((await node.stateHash()) !== hash) return false;
  return true;
}

/** Waits until every node holds the same logs and shows the same state. */
export async function converge(nodes: readonly FieldNode[], what = 'convergence', timeoutMs = 15_000): Promise<void> {
  await waitFor(`${what} of ${nodes.length} nodes`, () => sameState(nodes), timeoutMs);
}

function sortedVV(vv: Readonly<Record<string, number>>): [string, number][] {
  return Object.entries(vv).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Sessions closed with blame, as `node` reports them. */
export function blames(node: FieldNode): MeshEvent[] {
  const seen: MeshEvent[] = [];
  void (async () => {
    for await (const event of node.subscribe({ kinds: ['peer'] })) {
      if (event.kind === 'peer' && event.event.kind === 'peer:closed' && event.event.blame) seen.push(event.event);
    }
  })();
  return seen;
}
