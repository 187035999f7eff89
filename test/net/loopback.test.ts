/**
 * Real FieldNodes (real LevelDB in temp dirs) syncing over real libp2p on loopback, in one
 * process: static peers only, no mDNS. Convergence means equal version vectors, equal state
 * hashes, equal conflicts and the same op ids on every node.
 */
import { describe, expect, it } from 'vitest';
import type { DeviceId } from '../../src/core/keys.ts';
import type { MeshEvent } from '../../src/net/mesh.ts';
import type { FieldNode, NodeEvent } from '../../src/node/field-node.ts';
import { converge, observed, startMesh, useLoopback, waitFor } from './helpers.ts';

const DOMAINS = { case: 'manual', evidence: 'merge' } as const;

const lb = useLoopback();

/** Counts what the node's ingests (every frame a peer sent) added and found already held. */
function ingestCounter(node: FieldNode): { added: number; duplicates: number } {
  const counts = { added: 0, duplicates: 0 };
  const original = node.ingest.bind(node);
  node.ingest = async (encoded, device) => {
    const result = await original(encoded, device);
    counts.added += result.added;
    counts.duplicates += result.duplicates;
    return result;
  };
  return counts;
}

/** Every event the node's subscription yields, as it arrives (until the node closes). */
function record(node: FieldNode, kinds: NodeEvent['kind'][] = ['peer']): NodeEvent[] {
  const events: NodeEvent[] = [];
  const subscription = node.subscribe({ kinds });
  void (async () => {
    for await (const event of subscription) events.push(event);
  })().catch(() => undefined);
  return events;
}

const peerEvents = (events: readonly NodeEvent[]): MeshEvent[] => events.flatMap((e) => (e.kind === 'peer' ? [e.event] : []));

/** `n` writes to entities of its own (creates, then updates), in both domains. */
async function writeOwn(node: FieldNode, tag: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const domain = i % 2 === 0 ? 'evidence' : 'case';
    const entity = `${tag}-${Math.floor(i / 4)}`;
    const exists = (await node.get(domain, entity)) !== null;
    await node.mutate({ type: exists ? 'update' : 'create', domain, entity, fields: { n: i, by: tag } });
  }
}

describe('loopback sync', () => {
  it('two nodes that both wrote offline converge once connected', async () => {
    const team = await lb.team(DOMAINS);
    const a = await team.node('alice');
    const b = await team.node('bob');
    await writeOwn(a, 'a', 40);
    await writeOwn(b, 'b', 30);
    // Both create the same entities while apart: merged fields, and a manual conflict.
    await a.mutate({ type: 'create', domain: 'evidence', entity: 'shared', fields: { a: 1, from: 'a' } });
    await b.mutate({ type: 'create', domain: 'evidence', entity: 'shared', fields: { b: 2, from: 'b' } });
    await a.mutate({ type: 'create', domain: 'case', entity: 'shared', fields: { status: 'open' } });
    await b.mutate({ type: 'create', domain: 'case', entity: 'shared', fields: { status: 'triage' } });
    const before = [await observed(a), await observed(b)] as const;
    expect(before[0].stateHash).not.toBe(before[1].stateHash);

    await startMesh(a);
    await startMesh(b, [a]);
    await converge([a, b]);

    const [oa, ob] = [await observed(a), await observed(b)];
    expect(oa).toEqual(ob);
    expect(oa.versionVector).toEqual({ [a.device]: 42, [b.device]: 32 });
    expect(oa.opIds).toEqual([...before[0].opIds, ...before[1].opIds].sort());
    expect(oa.opIds).toHaveLength(74);
    expect((await a.get('evidence', 'shared'))?.fields).toMatchObject({ a: 1, b: 2 });
    expect(await a.get('evidence', 'shared')).toEqual(await b.get('evidence', 'shared'));
    expect(oa.conflicts.map((c) => [c.domain, c.entity, c.fields.map((f) => f.field)])).toEqual([['case', 'shared', ['status']]]);
    for (const node of [a, b]) expect((await node.verify()).problems).toEqual([]);
  });

  it('pushes live writes both ways and never sends a peer back the ops it sent', async () => {
    const team = await lb.team(DOMAINS);
    const a = await team.node('alice');
    const b = await team.node('bob');
    await writeOwn(a, 'a', 10);
    await startMesh(a);
    await startMesh(b, [a]);
    await converge([a, b]);
    const atA = ingestCounter(a);
    const atB = ingestCounter(b);
    for (let i = 0; i < 5; i++) {
      await a.mutate({ type: 'update', domain: 'evidence', entity: 'a-0', fields: { live: i } });
      await b.mutate({ type: 'create', domain: 'evidence', entity: `b-live-${i}`, fields: { live: i } });
    }
    await converge([a, b]);
    expect((await b.get('evidence', 'a-0'))?.fields).toMatchObject({ live: 4 });
    expect(await a.get('evidence', 'b-live-4')).not.toBeNull();
    expect(atB.added).toBe(5);
    expect(atA.added).toBe(5);
    // Let any late frame arrive, then count what came back.
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect({ echoedToA: atA.duplicates, echoedToB: atB.duplicates }).toEqual({ echoedToA: 0, echoedToB: 0 });
  });

  it('converges along a chain A–B–C where A and C never connect (store-and-forward)', async () => {
    const team = await lb.team(DOMAINS);
    const a = await team.node('alice');
    const b = await team.node('bob');
    const c = await team.node('carol');
    await writeOwn(a, 'a', 20);
    await writeOwn(b, 'b', 10);
    await writeOwn(c, 'c', 15);
    const eventsA = record(a);
    const eventsC = record(c);
    await startMesh(b);
    await startMesh(a, [b]);
    await startMesh(c, [b]);
    await converge([a, b, c]);
    const first = await observed(a);
    expect(first.versionVector).toEqual({ [a.device]: 20, [b.device]: 10, [c.device]: 15 });
    expect(await observed(c)).toEqual(first);

    // Live writes at either end reach the other end through B.
    await a.mutate({ type: 'update', domain: 'evidence', entity: 'a-0', fields: { via: 'b' } });
    await c.mutate({ type: 'create', domain: 'case', entity: 'from-c', fields: { status: 'new' } });
    await converge([a, b, c]);
    expect((await c.get('evidence', 'a-0'))?.fields).toMatchObject({ via: 'b' });
    expect((await a.get('case', 'from-c'))?.fields).toEqual({ status: 'new' });
    expect(await observed(a)).toEqual(await observed(c));

    // A and C only ever synced with B.
    expect(a.peers().map((p) => p.device)).toEqual([b.device]);
    expect(c.peers().map((p) => p.device)).toEqual([b.device]);
    expect(b.peers().map((p) => p.device).sort()).toEqual([a.device, c.device].sort());
    const devicesSeen = (events: NodeEvent[]) => new Set(peerEvents(events).map((e) => e.device));
    expect([...devicesSeen(eventsA)]).toEqual([b.device]);
    expect([...devicesSeen(eventsC)]).toEqual([b.device]);
    for (const node of [a, b, c]) expect((await node.verify()).problems).toEqual([]);
  });

  it('partition and heal: groups that wrote the same entities apart end with one state and the same conflicts', async () => {
    const team = await lb.team(DOMAINS);
    const [a, b, c, d] = [await team.node('alice'), await team.node('bob'), await team.node('carol'), await team.node('dave')] as const;
    const all = [a, b, c, d];
    // Together: everyone learns the shared entities.
    await a.mutate({ type: 'create', domain: 'case', entity: 'x', fields: { status: 'new', owner: 'alice' } });
    await a.mutate({ type: 'create', domain: 'case', entity: 'y', fields: { status: 'open' } });
    await a.mutate({ type: 'create', domain: 'evidence', entity: 'e', fields: { weight: 0 } });
    await startMesh(b);
    for (const node of [a, c, d]) await startMesh(node, [b]);
    await converge(all, 'first sync');
    for (const node of all) await node.stop();

    // Apart: {a, b} and {c, d}, each pair syncing only with itself.
    await startMesh(b);
    await startMesh(a, [b]);
    await startMesh(c);
    await startMesh(d, [c]);
    await a.mutate({ type: 'update', domain: 'case', entity: 'x', fields: { status: 'assigned' } });
    await c.mutate({ type: 'update', domain: 'case', entity: 'x', fields: { status: 'closed' } });
    await d.mutate({ type: 'update', domain: 'case', entity: 'x', fields: { owner: 'dave' } });
    await a.mutate({ type: 'delete', domain: 'case', entity: 'y' });
    await c.mutate({ type: 'update', domain: 'case', entity: 'y', fields: { status: 'reopened' } });
    await b.mutate({ type: 'update', domain: 'evidence', entity: 'e', fields: { weight: 1, checkedBy: 'bob' } });
    await d.mutate({ type: 'update', domain: 'evidence', entity: 'e', fields: { weight: 2 } });
    await c.mutate({ type: 'update', domain: 'evidence', entity: 'e', fields: { tag: 'c' } });
    await converge([a, b], 'group 1');
    await converge([c, d], 'group 2');
    expect(await a.stateHash()).not.toBe(await c.stateHash());
    expect(c.peers().map((p) => p.device)).toEqual([d.device]);

    // Heal: one bridge between the groups.
    await b.dial(c.addresses()[0]!);
    await converge(all, 'heal');
    const healed = await observed(a);
    for (const node of [b, c, d]) expect(await observed(node)).toEqual(healed);
    const conflicts = healed.conflicts.map((k) => ({ entity: k.entity, fields: k.fields.map((f) => [f.field, f.candidates.map((cand) => (cand.deleted ? '(deleted)' : cand.value)).sort()]) }));
    expect(conflicts).toContainEqual({ entity: 'x', fields: [['status', ['assigned', 'closed']]] });
    expect(conflicts.find((k) => k.entity === 'y')).toBeDefined();
    const x = await d.get('case', 'x');
    expect(x?.fields.owner).toBe('dave');
    const e = await b.get('evidence', 'e');
    expect(e?.fields).toMatchObject({ checkedBy: 'bob', tag: 'c' });
    expect([1, 2]).toContain(e?.fields.weight);
    for (const node of all) expect(await node.get('evidence', 'e')).toEqual(e);

    // A resolution made anywhere closes the conflict everywhere.
    const conflictX = (await d.conflicts()).find((k) => k.entity === 'x')!;
    await d.resolve(conflictX.id, { fields: { status: 'review' } });
    await converge(all, 'resolution');
    for (const node of all) {
      expect((await node.conflicts()).map((k) => k.entity)).not.toContain('x');
      expect((await node.get('case', 'x'))?.fields).toMatchObject({ status: 'review', owner: 'dave' });
    }
    const final = await observed(a);
    for (const node of [b, c, d]) expect(await observed(node)).toEqual(final);
    for (const node of all) expect((await node.verify()).problems).toEqual([]);
  });

  it('stopping nodes that are syncing leaves no unhandled promise rejection (which would crash a plain Node process)', async () => {
    const rejections: string[] = [];
    const onRejection = (reason: unknown) => rejections.push(`${(reason as object)?.constructor?.name}: ${String((reason as Error)?.message ?? reason)}`);
    process.on('unhandledRejection', onRejection);
    try {
      const team = await lb.team(DOMAINS);
      const [a, b, c] = [await team.node('alice'), await team.node('bob'), await team.node('carol')] as const;
      for (let round = 0; round < 3; round++) {
        await startMesh(b);
        await startMesh(a, [b]);
        await startMesh(c, [b]);
        await writeOwn(a, `a${round}`, 10);
        await writeOwn(c, `c${round}`, 10);
        await converge([a, b, c], `round ${round}`);
        for (const node of [c, b, a]) await node.stop();
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } finally {
      process.off('unhandledRejection', onRejection);
    }
    expect(rejections, rejections.join('\n')).toEqual([]);
  });

  it('peers() reports who the peer is from its certificate, when it was seen and how far behind; subscribe() yields peer events', async () => {
    const team = await lb.team(DOMAINS);
    const hq = await team.hq();
    const a = await team.node('alice', { user: 'Alice Field' });
    const g = await team.node('gateway', { user: 'base camp', role: 'gateway' });
    await writeOwn(a, 'a', 60);
    const eventsA = record(a);
    const eventsHq = record(hq);
    const t0 = Date.now();
    await startMesh(hq);
    await startMesh(a, [hq]);
    await startMesh(g, [hq]);
    await converge([hq, a, g]);

    const settled = (node: FieldNode, count: number) => {
      const peers = node.peers();
      return peers.length === count && peers.every((p) => p.theyLack === 0 && p.weLack === 0 && p.caughtUp) ? peers : null;
    };
    const fromA = await waitFor('a to see hq settled', () => settled(a, 1));
    expect(fromA[0]).toMatchObject({ device: hq.device, role: 'server', user: 'hq-admin', theyLack: 0, weLack: 0, caughtUp: true });
    expect(fromA[0]!.address).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+/);
    const fromHq = await waitFor('hq to see both settled', () => settled(hq, 2));
    const byDevice = new Map(fromHq.map((p) => [p.device, p]));
    expect(byDevice.get(a.device)).toMatchObject({ role: 'field', user: 'Alice Field' });
    expect(byDevice.get(g.device)).toMatchObject({ role: 'gateway', user: 'base camp' });
    for (const p of [...fromA, ...fromHq]) {
      expect(p.lastSeenMs).toBeGreaterThanOrEqual(t0);
      expect(p.lastSeenMs).toBeLessThanOrEqual(Date.now());
      expect(p.connectedSinceMs).toBeGreaterThanOrEqual(t0);
    }

    // A live write: HQ sees A again, and the counts settle back to zero.
    const seenBefore = byDevice.get(a.device)!.lastSeenMs;
    await new Promise((resolve) => setTimeout(resolve, 20));
    await a.mutate({ type: 'update', domain: 'evidence', entity: 'a-0', fields: { live: true } });
    await converge([hq, a, g]);
    const again = await waitFor('hq to settle again', () => settled(hq, 2));
    expect(again.find((p) => p.device === a.device)!.lastSeenMs).toBeGreaterThan(seenBefore);

    // Subscriptions saw the peers arrive and catch up.
    const kinds = (events: NodeEvent[], device: DeviceId) => new Set(peerEvents(events).filter((e) => e.device === device).map((e) => e.kind));
    await waitFor('peer events at a', () => kinds(eventsA, hq.device).has('peer:caughtUp'));
    expect([...kinds(eventsA, hq.device)]).toEqual(expect.arrayContaining(['peer:admitted', 'peer:caughtUp']));
    await waitFor('peer events at hq', () => kinds(eventsHq, a.device).has('peer:caughtUp') && kinds(eventsHq, g.device).has('peer:caughtUp'));
    expect([...kinds(eventsHq, g.device)]).toEqual(expect.arrayContaining(['peer:admitted', 'peer:caughtUp']));
    // While a peer is listed, its latest admitted/closed event is 'admitted' (no stray 'closed' for a live peer).
    const latest = (events: NodeEvent[], device: DeviceId) => peerEvents(events).filter((e) => e.device === device && e.kind !== 'peer:caughtUp').at(-1)?.kind;
    expect(latest(eventsA, hq.device)).toBe('peer:admitted');
    expect(latest(eventsHq, a.device)).toBe('peer:admitted');
    expect(latest(eventsHq, g.device)).toBe('peer:admitted');

    // HQ leaves: A's peer list empties and its subscription says so.
    await hq.stop();
    await waitFor('a to drop hq', () => a.peers().length === 0);
    await waitFor('a peer:closed event', () => peerEvents(eventsA).some((e) => e.kind === 'peer:closed' && e.device === hq.device));
    // HQ said goodbye: the event says the peer ended the session, and that nobody was at fault.
    expect(peerEvents(eventsA).find((e) => e.kind === 'peer:closed' && e.device === hq.device)).toEqual({ kind: 'peer:closed', device: hq.device, code: 'SHUTDOWN', blame: false, byPeer: true });
    const admittedFirst = peerEvents(eventsA).findIndex((e) => e.kind === 'peer:admitted');
    const caughtUpFirst = peerEvents(eventsA).findIndex((e) => e.kind === 'peer:caughtUp');
    expect(admittedFirst).toBeLessThan(caughtUpFirst);
  });
});
