/**
 * A device restored from an old backup forks its log: it writes new ops at seqs it had used.
 * Real FieldNodes on loopback holding the two branches (of equal or different lengths) meet:
 * they compare tip ids, ask each other for ops until they find where the branches part, both
 * keep the fork proof, nobody blames an honest peer, a node that met only one of them learns the
 * proof by forwarding, and a node joining later is offered nothing past the fork point. An honest
 * op built on an op past the fork point applies on every node: those that do not hold that op
 * fetch it by id. (Found by the simulator's rollback fault, src/sim.)
 */
import { cp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { FieldNode } from '../../src/node/field-node.ts';
import type { Team } from '../fixtures/team.ts';
import { blames, startMesh, useLoopback, waitFor } from './helpers.ts';

const lb = useLoopback();
const DOMAINS = { note: 'merge' } as const;

async function write(node: FieldNode, n: number, label: string): Promise<void> {
  for (let i = 0; i < n; i++) await node.mutate({ type: 'create', domain: 'note', entity: `${label}-${i}`, fields: { text: `${label} ${i}` } });
}

/**
 * Device `rolled` writes `common` ops, is backed up, writes `first` more (carried to `a` by a
 * bundle), is restored from the backup and writes `second` others at the same seqs (carried to `b`).
 */
async function rollBack(team: Team, a: FieldNode, b: FieldNode, counts: { common: number; first: number; second: number }, writer = write): Promise<string> {
  let rolled = await team.node('rolled');
  const device = rolled.device;
  await writer(rolled, counts.common, 'common');
  await rolled.close();
  const backup = join(await lb.dir('fm-backup-'), 'rolled');
  await cp(rolled.dataDir, backup, { recursive: true });
  rolled = await team.reopen(rolled);
  await writer(rolled, counts.first, 'first');
  await a.importBundle(await rolled.exportBundle());
  await rolled.close();
  await rm(rolled.dataDir, { recursive: true, force: true });
  await cp(backup, rolled.dataDir, { recursive: true });
  rolled = await team.reopen(rolled);
  await writer(rolled, counts.second, 'second');
  await b.importBundle(await rolled.exportBundle());
  await rolled.close();
  return device;
}

describe('forked logs meet over the network', () => {
  it.each([
    ['of equal length', { common: 2, first: 3, second: 3 }],
    ['of different lengths', { common: 2, first: 4, second: 1 }],
  ])('two nodes holding branches %s both end with the proof, blame nobody, and a third learns it', async (_what, counts) => {
    const team = await lb.team(DOMAINS);
    const alice = await team.node('alice');
    const bob = await team.node('bob');
    const carol = await team.node('carol');
    const device = await rollBack(team, alice, bob, counts);
    expect(alice.versionVector()[device]).toBe(counts.common + counts.first);
    expect(bob.versionVector()[device]).toBe(counts.common + counts.second);
    const blamed = [alice, bob, carol].map(blames);
    // alice - bob - carol: carol never meets alice.
    await startMesh(bob);
    await startMesh(alice, [bob]);
    await startMesh(carol, [bob]);
    const forkSeq = counts.common + 1;
    for (const node of [alice, bob, carol]) {
      await waitFor(`${node.user}'s fork proof`, async () => (await node.forkProofs()).some((p) => p.device === device && p.seq === forkSeq));
    }
    const [proof] = await alice.forkProofs();
    expect(await bob.forkProofs()).toEqual([proof]);
    expect(await carol.forkProofs()).toEqual([proof]);
    // The proof holds both branches' ops at the first seq where they differ.
    const ops = await Promise.all([alice, bob].map(async (n) => (await n.loadRange(device, forkSeq, forkSeq, 1 << 20))[0]!));
    expect([...proof!.ops].map((o) => Buffer.from(o).toString('hex')).sort()).toEqual(ops.map((o) => Buffer.from(o).toString('hex')).sort());
    // Everyone shows the same data (the shared ops; both branches count nowhere), and the sessions stay up.
    await waitFor('one state on every node', async () => new Set(await Promise.all([alice, bob, carol].map((n) => n.stateHash()))).size === 1);
    expect(alice.peers().map((p) => p.device)).toEqual([bob.device]);
    expect(carol.peers().map((p) => p.device)).toEqual([bob.device]);
    // Carol may hold bob's branch from before the proof; a node joining her now gets only the shared ops.
    const dave = await team.node('dave');
    blamed.push(blames(dave));
    await startMesh(dave, [carol]);
    await waitFor("dave's fork proof", async () => (await dave.forkProofs()).length === 1);
    await waitFor("the shared ops on dave's node", () => dave.versionVector()[device] === counts.common);
    expect(await dave.stateHash()).toBe(await alice.stateHash());
    expect(blamed.flat()).toEqual([]);
  });

  it('an honest op built on an op past the fork point applies on every node; nodes without that op fetch it by id', async () => {
    const team = await lb.team(DOMAINS);
    const alice = await team.node('alice');
    const bob = await team.node('bob');
    const carol = await team.node('carol');
    // The rolled device edits one note: alice gets its first branch, bob the second.
    const edit = async (node: FieldNode, n: number, label: string) => {
      for (let i = 0; i < n; i++) await node.mutate({ type: label === 'common' && i === 0 ? 'create' : 'update', domain: 'note', entity: 'shared', fields: { text: `${label} ${i}` } });
    };
    const device = await rollBack(team, alice, bob, { common: 1, first: 1, second: 1 }, edit);
    // Before anyone knows of the fork, alice builds on the first branch's op.
    await alice.mutate({ type: 'update', domain: 'note', entity: 'shared', fields: { checked: true } });
    const blamed = [alice, bob, carol].map(blames);
    await startMesh(bob);
    await startMesh(alice, [bob]);
    await startMesh(carol, [bob]);
    for (const node of [bob, carol]) await waitFor(`alice's op applied on ${node.user}'s node`, async () => (await node.get('note', 'shared'))?.fields['checked'] === true);
    for (const node of [alice, bob, carol]) {
      expect((await node.forkProofs()).map((p) => [p.device, p.seq])).toEqual([[device, 2]]);
      // Both branches count nowhere; alice's op applies as built on what the void op built on.
      expect((await node.get('note', 'shared'))!.fields, node.user).toEqual({ text: 'common 0', checked: true });
      expect((await node.ops({ device: alice.device })).map((o) => o.status), node.user).toEqual(['pending']);
    }
    expect(new Set(await Promise.all([alice, bob, carol].map((n) => n.stateHash()))).size).toBe(1);
    // bob and carol hold the first branch's op by id only (bob holds the second branch in his log).
    for (const node of [bob, carol]) expect(await node.missingBases(10)).toEqual([]);
    expect(blamed.flat()).toEqual([]);
  });
});
