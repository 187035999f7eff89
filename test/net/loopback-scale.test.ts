/**
 * Larger loopback runs with real FieldNodes: five nodes writing at random (seeded) while they
 * sync, and a catch-up of thousands of ops interrupted by closing the receiving node.
 */
import { describe, expect, it } from 'vitest';
import { FieldmeshError } from '../../src/core/errors.ts';
import { MIN_FRAME_BYTES } from '../../src/core/sync/session.ts';
import type { FieldNode } from '../../src/node/field-node.ts';
import { converge, observed, rng, startMesh, useLoopback, waitFor } from './helpers.ts';

const DOMAINS = { case: 'manual', evidence: 'merge' } as const;

const lb = useLoopback();

/** One random write: create, update or delete a random entity, as the node sees it now. */
async function randomWrite(node: FieldNode, rand: () => number): Promise<void> {
  const domain = rand() < 0.5 ? 'evidence' : 'case';
  const entity = `${domain[0]}${Math.floor(rand() * 8)}`;
  const field = ['status', 'weight', 'note'][Math.floor(rand() * 3)]!;
  const fields = { [field]: Math.floor(rand() * 1000), by: node.user };
  const view = await node.get(domain, entity);
  const roll = rand();
  try {
    if (view === null || !view.exists) await node.mutate({ type: 'create', domain, entity, fields });
    else if (roll < 0.1) await node.mutate({ type: 'delete', domain, entity });
    else await node.mutate({ type: 'update', domain, entity, fields });
  } catch (err) {
    // The node's view may have changed between get and mutate (a peer's ops arrived): fine.
    if (!(err instanceof FieldmeshError) || !['ENTITY_EXISTS', 'ENTITY_NOT_FOUND'].includes(err.code)) throw err;
  }
}

describe('loopback sync at scale', () => {
  it('five nodes writing at random (seeded) while syncing converge to one state', async () => {
    const rand = rng(0x5eed);
    const team = await lb.team(DOMAINS);
    const nodes: FieldNode[] = [];
    for (let i = 0; i < 5; i++) nodes.push(await team.node(`n${i}`));
    // Offline first.
    for (let i = 0; i < 60; i++) await randomWrite(nodes[Math.floor(rand() * 5)]!, rand);
    // A random spanning tree plus one extra edge; each node dials peers started before it.
    await startMesh(nodes[0]!);
    for (let i = 1; i < 5; i++) {
      const peers = new Set([nodes[Math.floor(rand() * i)]!]);
      if (i >= 2 && rand() < 0.7) peers.add(nodes[Math.floor(rand() * i)]!);
      await startMesh(nodes[i]!, [...peers]);
    }
    // Live writes while the catch-up runs.
    for (let i = 0; i < 100; i++) await randomWrite(nodes[Math.floor(rand() * 5)]!, rand);
    await converge(nodes, 'five-node convergence', 20_000);
    const first = await observed(nodes[0]!);
    for (const node of nodes.slice(1)) expect(await observed(node)).toEqual(first);
    expect(first.opIds.length).toBeGreaterThan(120);
    expect(Object.values(first.versionVector).reduce((n, s) => n + s, 0)).toBe(first.opIds.length);
    for (const node of nodes) expect((await node.verify()).problems).toEqual([]);
  });

  it('a node closed in the middle of a catch-up of thousands of ops resumes after reopening: nothing lost, nothing duplicated', async () => {
    const team = await lb.team(DOMAINS);
    const source = await team.node('source');
    let sink = await team.node('sink');
    const total = 3000;
    for (let start = 0; start < total; start += 500) {
      await Promise.all(
        Array.from({ length: 500 }, (_, i) => source.mutate({ type: 'create', domain: 'evidence', entity: `e${start + i}`, fields: { n: start + i, pad: 'x'.repeat(300) } })),
      );
    }
    expect(source.versionVector()[source.device]).toBe(total);
    // The sink takes one small frame at a time, so the transfer takes many round trips.
    const tight = { limits: { maxFrameBytes: MIN_FRAME_BYTES, windowBytes: MIN_FRAME_BYTES } };
    let reached = false;
    sink.onAdvanced((tips) => {
      if ((tips[source.device] ?? 0) >= 500) reached = true;
    });
    await startMesh(source);
    await startMesh(sink, [source], tight);
    await waitFor('the sink to hold 500 ops of the source', () => reached, 20_000, 5);
    await sink.stop();
    await sink.close();

    sink = await team.reopen(sink);
    const midway = sink.versionVector()[source.device] ?? 0;
    expect(midway).toBeGreaterThanOrEqual(500);
    expect(midway, 'the catch-up was interrupted before it finished').toBeLessThan(total);
    expect((await sink.verify()).problems).toEqual([]);

    await startMesh(sink, [source], tight);
    await converge([source, sink], 'catch-up after restart', 20_000);
    const ops = await sink.ops({ device: source.device, limit: 1_000_000 });
    expect(ops.map((o) => o.seq)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(new Set(ops.map((o) => o.id)).size).toBe(total);
    expect(await observed(sink)).toEqual(await observed(source));
    expect((await sink.query('evidence', { limit: 10_000 })).length).toBe(total);
    const report = await sink.verify();
    expect(report.problems).toEqual([]);
    expect(report.ops).toBe(total);
    // The source sees the sink as fully caught up.
    await waitFor('the source to see the sink caught up', () => source.peers().some((p) => p.device === sink.device && p.theyLack === 0 && p.weLack === 0));
  });
});
