/**
 * Reopening a data dir shows exactly what was there before closing: entities, queries, ops and
 * their statuses, queues, counts, open conflicts, the state hash and the version vector.
 */
import { describe, expect, it } from 'vitest';
import { FieldNode } from '../../src/node/field-node.ts';
import { accept, HQ, introduce, logOf, reject, snapshot, TestAuthor, useTemp } from '../node/helpers.ts';

const temp = useTemp();

const ENTITIES: [string, string][] = [
  ['case', 'c1'],
  ['case', 'c2'],
  ['evidence', 'e1'],
  ['evidence', 'e2'],
  ['evidence', 'e3'],
  ['asset', 'a1'],
  ['note', 'n1'],
  ['note', 'gone'],
];

describe('reopen', () => {
  it('shows the same entities, ops, statuses, queues, counts, conflicts and hashes after close and reopen', async () => {
    const dirA = await temp.dir();
    const dirB = await temp.dir();
    const a = await temp.open(dirA, { user: 'alice' });
    const b = await temp.open(dirB, { user: 'bob' });
    await introduce(a);
    const hq = new TestAuthor(HQ, { user: 'hq-staff', startMs: Date.now() });

    // Alice: creates, updates and deletes across domains.
    const c1 = await a.mutate({ type: 'create', domain: 'case', entity: 'c1', fields: { title: 'Warehouse fire', status: 'open', tags: ['fire'] } });
    await a.mutate({ type: 'create', domain: 'case', entity: 'c2', fields: { title: 'Flood', status: 'open' } });
    await a.mutate({ type: 'create', domain: 'evidence', entity: 'e1', fields: { kind: 'photo', blob: Uint8Array.of(1, 2, 3), nested: { x: [1.5, null, true] } } });
    const e2 = await a.mutate({ type: 'create', domain: 'evidence', entity: 'e2', fields: { kind: 'video' } });
    await a.mutate({ type: 'update', domain: 'evidence', entity: 'e1', fields: { kind: 'photo-hd', note: 'retaken' } });
    await a.mutate({ type: 'delete', domain: 'evidence', entity: 'e2' });
    await a.mutate({ type: 'create', domain: 'asset', entity: 'a1', fields: { serial: 'X-1' } });
    await a.mutate({ type: 'create', domain: 'note', entity: 'n1', fields: { text: 'hello' } });
    await a.mutate({ type: 'create', domain: 'note', entity: 'gone', fields: { text: 'bye' } });
    await a.mutate({ type: 'delete', domain: 'note', entity: 'gone' });

    // Bob learns everything, then both edit case c1's status concurrently (manual strategy).
    await b.ingest(await logOf(a));
    await a.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { status: 'closed' } });
    await b.mutate({ type: 'update', domain: 'case', entity: 'c1', fields: { status: 'escalated', lead: 'bob' } });
    await b.mutate({ type: 'update', domain: 'evidence', entity: 'e1', fields: { note: 'bob was here' } });
    await b.mutate({ type: 'create', domain: 'evidence', entity: 'e3', fields: { kind: 'audio' } });
    await a.ingest(await logOf(b));
    const conflicts = await a.conflicts();
    expect(conflicts).toHaveLength(1);
    expect(conflicts[0]).toMatchObject({ domain: 'case', entity: 'c1' });
    expect(conflicts[0]!.fields.map((f) => f.field)).toEqual(['status']);

    // HQ accepts alice's first case and rejects her evidence e2 (already deleted; still a status).
    const receipt = hq.receipt([accept(c1.id), reject(e2.id, 'DUPLICATE')]);
    await a.ingest([receipt.bytes]);
    expect((await a.ops({ status: 'synced', device: a.device })).map((o) => o.id)).toEqual([c1.id]);
    expect((await a.ops({ status: 'failed' })).map((o) => [o.id, o.reason])).toEqual([[e2.id, 'REJECTED:DUPLICATE']]);

    // An op whose base alice never received waits (causal buffering): carol -> bob -> alice, without carol's log.
    const dirC = await temp.dir();
    const c = await temp.open(dirC, { user: 'carol' });
    await introduce(a, b);
    await c.ingest([...(await logOf(a)), ...(await logOf(a, b.device))]);
    await c.mutate({ type: 'update', domain: 'evidence', entity: 'e3', fields: { kind: 'audio-hq' } });
    const fromB = (await logOf(b)).length;
    await b.ingest(await logOf(c));
    await b.mutate({ type: 'update', domain: 'evidence', entity: 'e3', fields: { checked: true } });
    await a.ingest(await logOf(b, b.device, fromB + 1));
    const waiting = (await a.ops({ device: b.device, limit: 1000 })).filter((o) => o.waiting);
    expect(waiting).toHaveLength(1);

    const before = await snapshot(a, undefined, ENTITIES);
    expect(before.stateHash).toMatch(/^[0-9a-f]{64}$/);
    expect(before.conflicts).toHaveLength(1);
    expect(Object.keys(before.versionVector)).toHaveLength(3);
    expect((before.counts.all as Record<string, number>).pending).toBeGreaterThan(0);
    expect((before.counts.all as Record<string, number>).conflict).toBe(2);
    expect(before.gets.filter((g) => g === null)).toHaveLength(2); // e2 and note/gone were deleted
    await a.close();

    const again = temp.track(await FieldNode.open({ dataDir: dirA, team: a.team, user: 'alice', hqDevice: HQ.device, domains: a.resolution.domains! }));
    expect(again.device).toBe(a.device);
    const after = await snapshot(again, undefined, ENTITIES);
    expect(after).toEqual(before);
    expect((await again.verify()).problems).toEqual([]);

    // And it keeps working from where it was: the waiting op applies once its base arrives.
    await again.ingest(await logOf(c));
    expect((await again.ops({ device: b.device })).filter((o) => o.waiting)).toEqual([]);
    expect((await again.get('evidence', 'e3'))!.fields).toMatchObject({ kind: 'audio-hq', checked: true });
  });
});
