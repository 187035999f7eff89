/**
 * Helpers for the HQ tests: a team (HQ data dir plus devices enrolled by HQ's real key, each a
 * real LevelDB in a temp dir), real libp2p on loopback only (no mDNS), and cleanup after each
 * test, also on failure: receipt issuers stopped, HTTP servers closed, nodes stopped and closed,
 * temp dirs removed. Every wait is bounded by a deadline.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import { FieldmeshError } from '../../src/core/errors.ts';
import type { MeshOptions } from '../../src/net/mesh.ts';
import type { FieldNode } from '../../src/node/field-node.ts';
import type { Policy } from '../../src/hq/policy.ts';
import { ReceiptIssuer, type ReceiptOptions } from '../../src/hq/receipts.ts';
import { createTeam, type Domains, type Team } from '../fixtures/team.ts';

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns a truthy value; throws after `timeoutMs` naming `what` and the last value. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 20_000, everyMs = 40): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    last = await check();
    if (last) return last as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)?.slice(0, 300)})`);
    await sleep(everyMs);
  }
}

/** Resolves `promise`, or rejects after `ms` (teardown must not hang). */
export async function within<T>(what: string, promise: Promise<T>, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Mesh options for the tests: loopback only, no mDNS, quick redials. */
export const LOOPBACK: MeshOptions = { mdns: false, listen: ['/ip4/127.0.0.1/tcp/0'], redialMinMs: 100, redialMaxMs: 800 };

export { freePort } from '../../src/net/free-port.ts';

/** Awaits `promise`, which must reject with an instance of `cls` carrying `code`; returns the error. */
export async function expectRejects<E extends FieldmeshError>(promise: Promise<unknown>, cls: abstract new (...args: never[]) => E, code: string): Promise<E> {
  let err: unknown;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new Error(`expected a ${cls.name} (${code}), nothing was thrown`);
  expect(err, String(err)).toBeInstanceOf(cls);
  expect((err as E).code, (err as Error).message).toBe(code);
  return err as E;
}

export interface Closable {
  close(): Promise<unknown>;
}

/**
 * Call once at the top level of a test file. Everything made through it is torn down after each
 * test (issuers, then servers, then nodes, then dirs), with bounded waits.
 */
export function useHq() {
  const dirs: string[] = [];
  const nodes: FieldNode[] = [];
  const issuers: ReceiptIssuer[] = [];
  const closables: Closable[] = [];
  afterEach(async () => {
    const failures: unknown[] = [];
    const attempt = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await within(what, fn());
      } catch (err) {
        failures.push(err);
      }
    };
    for (const c of closables.splice(0).reverse()) await attempt('closing a server', () => c.close());
    for (const issuer of issuers.splice(0)) await attempt('stopping a receipt issuer', () => issuer.stop());
    for (const node of nodes.splice(0).reverse()) await attempt(`closing node ${node.dataDir}`, () => node.close().catch(() => undefined));
    for (const dir of dirs.splice(0)) await attempt(`removing ${dir}`, () => rm(dir, { recursive: true, force: true }));
    if (failures.length > 0) throw failures[0];
  });

  const track = (node: FieldNode): FieldNode => {
    nodes.push(node);
    return node;
  };
  const dir = async (prefix = 'fm-hq-'): Promise<string> => {
    const path = await mkdtemp(join(tmpdir(), prefix));
    dirs.push(path);
    return path;
  };

  return {
    track,
    dir,
    /** Registers something closed after the test (before nodes are closed). */
    closeLater<T extends Closable>(c: T): T {
      closables.push(c);
      return c;
    },
    /** A receipt issuer on `node`, started, stopped after the test. */
    issuer(node: FieldNode, policy: Policy, options: ReceiptOptions = {}): ReceiptIssuer {
      const issuer = new ReceiptIssuer(node, policy, options);
      issuers.push(issuer);
      issuer.start();
      return issuer;
    },
    /**
     * A team (test/fixtures/team.ts) under a temp root: HQ's data dir is set up, `node()` enrolls
     * a device with HQ's key and opens it; every node is closed after the test.
     */
    async team(domains: Domains, name = 'team-hq'): Promise<Team> {
      return createTeam({ root: await dir('fm-team-'), domains, name, hqUser: 'hq-staff', track });
    },
  };
}

/** Starts `node`'s mesh on loopback, dialling the given nodes (already started) and addresses. */
export async function startMesh(node: FieldNode, peers: readonly FieldNode[] = [], extra: MeshOptions = {}): Promise<void> {
  const addresses = peers.flatMap((p) => p.addresses());
  if (addresses.length < peers.length) throw new Error('startMesh: a static peer is not started');
  await node.start({ ...LOOPBACK, ...extra, peers: [...addresses, ...(extra.peers ?? [])] });
}

/** True when every node holds the same logs and shows the same state. */
export async function sameState(nodes: readonly FieldNode[]): Promise<boolean> {
  const [first, ...rest] = nodes;
  if (first === undefined) return true;
  const vv = vvKey(first.versionVector());
  if (rest.some((n) => vvKey(n.versionVector()) !== vv)) return false;
  const hash = await first.stateHash();
  for (const node of rest) if ((await node.stateHash()) !== hash) return false;
  return true;
}

export const vvKey = (vv: Readonly<Record<string, number>>): string => JSON.stringify(Object.entries(vv).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));

/** True when every node holds the same data and no op is pending, failed or in conflict anywhere. */
export async function allSynced(nodes: readonly FieldNode[]): Promise<boolean> {
  if (!(await sameState(nodes))) return false;
  for (const node of nodes) {
    const c = await node.counts();
    if (c.pending !== 0 || c.failed !== 0 || c.conflict !== 0) return false;
  }
  return true;
}
