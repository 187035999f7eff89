/**
 * Concurrent mutations share group-committed batches: all resolve, their seqs have no gaps and
 * no duplicates, the log verifies, and the entity shows one of the concurrent writes.
 */
import { describe, expect, it } from 'vitest';
import { useTemp } from '../node/helpers.ts';

const temp = useTemp();
const N = 1000;

describe('concurrent mutations', () => {
  it(`resolves ${N} concurrent mutate() calls on one entity with contiguous seqs and a verifying log`, async () => {
    const node = await temp.open(await temp.dir());
    const created = await node.mutate({ type: 'create', domain: 'evidence', entity: 'hot', fields: { n: -1 } });
    expect(created.op.seq).toBe(1);
    const results = await Promise.all(Array.from({ length: N }, (_, i) => node.mutate({ type: 'update', domain: 'evidence', entity: 'hot', fields: { n: i, [`f${i % 7}`]: i } })));
    const seqs = results.map((r) => r.op.seq).sort((x, y) => x - y);
    expect(seqs).toEqual(Array.from({ length: N }, (_, i) => i + 2));
    expect(new Set(results.map((r) => r.id)).size).toBe(N);
    expect(results.every((r) => r.status === 'pending')).toBe(true);

    // Each op names the one before it as its base: the writes are causally ordered, not concurrent.
    const bySeq = [created, ...results].sort((x, y) => x.op.seq - y.op.seq);
    for (let i = 1; i < bySeq.length; i++) {
      const op = bySeq[i]!.op;
      if (op.type !== 'update') throw new Error('expected an update');
      expect(op.base).toEqual([bySeq[i - 1]!.id]);
      expect(op.prev).toBe(bySeq[i - 1]!.id);
    }

    expect(node.versionVector()).toEqual({ [node.device]: N + 1 });
    const report = await node.verify();
    expect(report).toEqual({ devices: 1, ops: N + 1, problems: [] });
    expect(await node.counts()).toEqual({ pending: N + 1, synced: 0, failed: 0, conflict: 0 });
    const queue = await node.queue(node.device, 10 * N);
    expect(queue.map((o) => o.seq)).toEqual(Array.from({ length: N + 1 }, (_, i) => i + 1));

    // The last op in the log wins (each superseded the one before).
    const last = bySeq[bySeq.length - 1]!.op;
    const view = await node.get('evidence', 'hot');
    expect(view!.heads).toEqual([last.id]);
    expect(view!.fields.n).toBe((last.type === 'update' ? last.fields.n : undefined) as number);
    expect(await node.conflicts()).toEqual([]);
  });

  it('keeps concurrent mutations of different entities and domains apart', async () => {
    const node = await temp.open(await temp.dir());
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => node.mutate({ type: 'create', domain: i % 2 === 0 ? 'case' : 'note', entity: `x${i}`, fields: { i } })),
    );
    expect(results.map((r) => r.op.seq).sort((x, y) => x - y)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect((await node.query('case')).map((v) => v.fields.i).sort((x, y) => (x as number) - (y as number))).toEqual(Array.from({ length: 100 }, (_, i) => 2 * i));
    expect(await node.query('note')).toHaveLength(100);
    // A failing mutation among concurrent ones fails alone.
    const mixed = await Promise.allSettled([
      node.mutate({ type: 'update', domain: 'case', entity: 'x0', fields: { ok: true } }),
      node.mutate({ type: 'create', domain: 'case', entity: 'x0', fields: {} }),
      node.mutate({ type: 'update', domain: 'case', entity: 'x2', fields: { ok: true } }),
    ]);
    expect(mixed.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(node.versionVector()[node.device]).toBe(202);
    expect((await node.verify()).problems).toEqual([]);
  });
});
