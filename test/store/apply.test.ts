/**
 * Incremental application corner cases, each checked against core/materialize over the same ops:
 * an op that joins and leaves a manual conflict within one batch, ops waiting for their base,
 * HQ verdicts that arrive before the ops they judge, and rebuilds when HQ changes its mind.
 */
import { describe, expect, it } from 'vitest';
import { materialize, stateHash } from '../../src/core/materialize.ts';
import type { Op } from '../../src/core/op.ts';
import type { FieldNode } from '../../src/node/field-node.ts';
import { accept, DOMAINS, HQ, introduce, reject, signerOf, TestAuthor, useTemp } from '../node/helpers.ts';

const temp = useTemp();
const config = { hqDevice: HQ.device, domains: DOMAINS };

/** The node's statuses, hash and conflicts equal materialize's over `ops`. */
async function expectMatches(node: FieldNode, ops: readonly Op[]) {
  const m = materialize(ops, config);
  const listed = await node.ops({ limit: 100_000 });
  expect(Object.fromEntries(listed.map((o) => [o.id, o.reason === undefined ? o.status : `${o.status}:${o.reason}`]))).toEqual(
    Object.fromEntries([...m.statuses].map(([id, s]) => [id, s.reason === undefined ? s.status : `${s.status}:${s.reason}`])),
  );
  expect(listed.filter((o) => o.waiting).map((o) => o.id).sort()).toEqual([...m.waiting].sort());
  expect(await node.stateHash()).toBe(stateHash([...m.entities.values()].map((e) => e.view)));
  expect((await node.conflicts()).map((c) => c.id).sort()).toEqual([...m.entities.values()].flatMap((e) => (e.view.conflict ? [e.view.conflict.id] : [])).sort());
}

describe('incremental application', () => {
  it('does not leave an op marked conflict when a later op of the same batch supersedes its conflict', async () => {
    const node = await temp.open(await temp.dir());
    const a = new TestAuthor(signerOf('apply-a'), { user: 'a' });
    const b = new TestAuthor(signerOf('apply-b'), { user: 'b' });
    const a1 = a.create('case', 'c', { status: 'a' });
    await introduce(node);
    await node.ingest([a1.bytes]);
    // b creates concurrently (a conflict on `status`), then, having seen a1, writes over both.
    const b1 = b.create('case', 'c', { status: 'b' });
    const b2 = b.update('case', 'c', { status: 'final' }, [a1.id, b1.id]);
    await node.ingest([b1.bytes, b2.bytes]);
    expect(await node.conflicts()).toEqual([]);
    expect((await node.get('case', 'c'))!.fields).toEqual({ status: 'final' });
    expect((await node.ops({ device: b.device })).map((o) => o.status)).toEqual(['pending', 'pending']);
    expect(await node.ops({ status: 'conflict' })).toEqual([]);
    expect(await node.counts()).toEqual({ pending: 3, synced: 0, failed: 0, conflict: 0 });
    await expectMatches(node, [a1, b1, b2]);
  });

  it('does not leave an op marked conflict when the op waiting for it supersedes its conflict', async () => {
    const node = await temp.open(await temp.dir());
    const a = new TestAuthor(signerOf('apply-a'), { user: 'a' });
    const b = new TestAuthor(signerOf('apply-b'), { user: 'b' });
    const c = new TestAuthor(signerOf('apply-c'), { user: 'c' });
    const a1 = a.create('case', 'c', { status: 'a' });
    const b1 = b.create('case', 'c', { status: 'b' });
    const c1 = c.update('case', 'c', { status: 'c' }, [a1.id, b1.id]); // c saw both
    await introduce(node);
    await node.ingest([a1.bytes, c1.bytes]); // c1 waits for b1
    expect((await node.ops({ device: c.device }))[0]!.waiting).toBe(true);
    await node.ingest([b1.bytes]); // b1 conflicts with a1 for a moment, then c1 applies over both
    expect((await node.get('case', 'c'))!.fields).toEqual({ status: 'c' });
    expect(await node.ops({ status: 'conflict' })).toEqual([]);
    await expectMatches(node, [a1, b1, c1]);
  });

  it('applies HQ verdicts that arrive before the ops they judge', async () => {
    const node = await temp.open(await temp.dir());
    const hq = new TestAuthor(HQ, { user: 'hq' });
    const a = new TestAuthor(signerOf('apply-a'), { user: 'a' });
    const a1 = a.create('evidence', 'e1', { kind: 'photo' });
    const a2 = a.update('evidence', 'e1', { kind: 'fake' }, [a1.id]);
    const receipt = hq.receipt([accept(a1.id), reject(a2.id, 'INVALID')]);
    await introduce(node);
    await node.ingest([receipt.bytes]);
    await node.ingest([a1.bytes, a2.bytes]);
    expect((await node.ops({ device: a.device })).map((o) => [o.status, o.reason])).toEqual([
      ['synced', undefined],
      ['failed', 'REJECTED:INVALID'],
    ]);
    expect((await node.get('evidence', 'e1'))!.fields).toEqual({ kind: 'photo' });
    await expectMatches(node, [receipt, a1, a2]);
  });

  it('applies an early verdict to the op it judges when that op arrives in a later batch than others', async () => {
    const node = await temp.open(await temp.dir());
    const hq = new TestAuthor(HQ, { user: 'hq' });
    const a = new TestAuthor(signerOf('apply-a'), { user: 'a' });
    const b = new TestAuthor(signerOf('apply-b'), { user: 'b' });
    const a1 = a.create('note', 'n1', { text: 'spam' });
    const b1 = b.create('note', 'n2', { text: 'ham' });
    const receipt = hq.receipt([reject(a1.id, 'SPAM'), reject(b1.id, 'SPAM')]);
    await introduce(node);
    await node.ingest([receipt.bytes]);
    await node.ingest([b1.bytes]);
    await node.ingest([a1.bytes]);
    expect(await node.query('note')).toEqual([]);
    expect((await node.ops({ status: 'failed' })).length).toBe(2);
    await expectMatches(node, [receipt, a1, b1]);
  });

  it('rebuilds an entity when HQ rejects, then accepts, an op other ops built on', async () => {
    const node = await temp.open(await temp.dir());
    const hq = new TestAuthor(HQ, { user: 'hq' });
    const a = new TestAuthor(signerOf('apply-a'), { user: 'a' });
    const b = new TestAuthor(signerOf('apply-b'), { user: 'b' });
    const a1 = a.create('asset', 'x', { serial: 'S1', owner: 'a' });
    const b1 = b.update('asset', 'x', { owner: 'b' }, [a1.id]);
    const a2 = a.update('asset', 'x', { serial: 'S2' }, [b1.id]);
    const ops: Op[] = [a1, b1, a2];
    await introduce(node);
    await node.ingest(ops.map((o) => o.bytes));
    for (const receipt of [hq.receipt([reject(b1.id, 'NOPE')]), hq.receipt([reject(a1.id, 'NOPE'), accept(b1.id)]), hq.receipt([accept(a1.id)])]) {
      await node.ingest([receipt.bytes]);
      ops.push(receipt);
      await expectMatches(node, ops);
    }
    expect((await node.get('asset', 'x'))!.fields).toEqual({ serial: 'S2', owner: 'b' });
  });
});
