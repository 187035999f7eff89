/**
 * The conflict and status semantics, one hand-written scenario each. These double as the
 * documentation of what every node shows for a given set of ops.
 */
import { describe, expect, it } from 'vitest';
import { forkProofOf, verifyForkProof } from '../../src/core/chain.ts';
import { materialize } from '../../src/core/materialize.ts';
import type { Op } from '../../src/core/op.ts';
import { MERGE_FUNCTIONS, type ResolutionConfig } from '../../src/core/strategies.ts';
import { accept, hashOf, reject, statusIn, T0, TestDevice, viewIn } from './helpers.ts';

const hq = new TestDevice('sem-hq', { user: 'hq-staff' });
const alice = new TestDevice('sem-alice', { user: 'alice' });
const bob = new TestDevice('sem-bob', { user: 'bob' });
const config: ResolutionConfig = {
  hqDevice: hq.id,
  domains: {
    note: 'merge',
    tagged: { strategy: 'merge', merge: { tags: MERGE_FUNCTIONS.union } },
    srv: 'server-wins',
    cli: 'client-wins',
    case: 'manual',
  },
};
const m = (ops: readonly Op[], forks: { device: string; seq: number }[] = []) => materialize(ops, config, forks);
let t = T0;
/** A fresh physical time for every write, so scenarios never share clocks by accident. */
const tick = (ms = 1000) => (t += ms);

describe('merge', () => {
  it('applies concurrent writes to different fields both', () => {
    const c = alice.create(tick(), 'note', 'n-1', { title: 'fire' });
    const a = alice.update(tick(), 'note', 'n-1', { location: 'north gate' }, [c.id]);
    const b = bob.update(tick(), 'note', 'n-1', { witness: 'J. Doe' }, [c.id]);
    expect(viewIn(m([c, a, b]), 'note', 'n-1')).toMatchObject({ exists: true, fields: { title: 'fire', location: 'north gate', witness: 'J. Doe' }, conflict: null, heads: [a.id, b.id].sort() });
  });

  it('lets the last writer by HLC win on one field, whatever the arrival order', () => {
    const c = alice.create(tick(), 'note', 'n-2', { status: 'new' });
    const early = bob.update(tick(), 'note', 'n-2', { status: 'early' }, [c.id]);
    const late = alice.update(tick(), 'note', 'n-2', { status: 'late' }, [c.id]);
    expect(viewIn(m([c, early, late]), 'note', 'n-2').fields.status).toBe('late');
    expect(viewIn(m([late, early, c]), 'note', 'n-2').fields.status).toBe('late');
  });

  it('breaks an HLC tie on the device id', () => {
    const x = new TestDevice('sem-tie-x');
    const y = new TestDevice('sem-tie-y');
    const c = hq.create(tick(), 'note', 'n-3', { v: 'start' });
    const at = tick();
    const fromX = x.update(at, 'note', 'n-3', { v: 'x' }, [c.id]);
    const fromY = y.update(at, 'note', 'n-3', { v: 'y' }, [c.id]);
    expect(fromX.hlc).toEqual(fromY.hlc);
    const winner = x.id > y.id ? 'x' : 'y';
    expect(viewIn(m([c, fromX, fromY]), 'note', 'n-3').fields.v).toBe(winner);
  });

  it('puts causality before clocks: an op that saw another supersedes it even with an older HLC', () => {
    const c = alice.create(tick(), 'note', 'n-4', { v: 'start' });
    const ahead = alice.update(tick(10_000), 'note', 'n-4', { v: 'from a fast clock' }, [c.id]);
    // Bob's clock is far behind, but he had seen alice's write when he wrote his.
    const slow = new TestDevice('sem-slow');
    const seen = slow.update(c.hlc.wallMs + 1, 'note', 'n-4', { v: 'seen and replaced' }, [ahead.id]);
    expect(seen.hlc.wallMs).toBeLessThan(ahead.hlc.wallMs);
    expect(viewIn(m([c, ahead, seen]), 'note', 'n-4').fields.v).toBe('seen and replaced');
  });

  it('combines concurrent writes with a registered union merge function, other fields staying last-writer-wins', () => {
    const c = alice.create(tick(), 'tagged', 'ev-1', { tags: ['exterior'], note: '' });
    const a = alice.update(tick(), 'tagged', 'ev-1', { tags: ['exterior', 'smoke'], note: 'alice' }, [c.id]);
    const b = bob.update(tick(), 'tagged', 'ev-1', { tags: ['exterior', 'accelerant'], note: 'bob' }, [c.id]);
    // The union is ordered by canonical CBOR encoding: shorter strings first.
    expect(viewIn(m([c, a, b]), 'tagged', 'ev-1').fields).toEqual({ tags: ['smoke', 'exterior', 'accelerant'], note: 'bob' });
    // Without a concurrent write, the field is simply the last value written.
    const later = alice.update(tick(), 'tagged', 'ev-1', { tags: ['only'] }, [a.id, b.id]);
    expect(viewIn(m([c, a, b, later]), 'tagged', 'ev-1').fields.tags).toEqual(['only']);
  });

  it('lets an update beat a concurrent delete: the entity exists with the update\'s fields', () => {
    const c = alice.create(tick(), 'note', 'n-5', { a: 1, b: 2 });
    const update = bob.update(tick(), 'note', 'n-5', { a: 5 }, [c.id]);
    const removal = alice.remove(tick(), 'note', 'n-5', [c.id]);
    // The delete has the later HLC and still loses.
    expect(removal.hlc.wallMs).toBeGreaterThan(update.hlc.wallMs);
    const view = viewIn(m([c, removal, update]), 'note', 'n-5');
    expect(view).toMatchObject({ exists: true, fields: { a: 5 } });
    expect(view.heads).toEqual([update.id, removal.id].sort());
  });

  it('deletes an entity for good once nothing concurrent writes to it', () => {
    const c = alice.create(tick(), 'note', 'n-6', { a: 1 });
    const u = bob.update(tick(), 'note', 'n-6', { b: 2 }, [c.id]);
    const removal = alice.remove(tick(), 'note', 'n-6', [u.id]);
    const result = m([c, u, removal]);
    expect(viewIn(result, 'note', 'n-6')).toMatchObject({ exists: false, fields: {}, conflict: null });
    // A deleted entity is invisible: the state hash is that of no entity at all.
    expect(hashOf(result)).toBe(hashOf(m([])));
  });

  it('re-creates a deleted entity with only the new fields when a create follows the delete causally', () => {
    const c = alice.create(tick(), 'note', 'n-7', { a: 1, b: 2 });
    const removal = bob.remove(tick(), 'note', 'n-7', [c.id]);
    const again = alice.create(tick(), 'note', 'n-7', { c: 3 }, [removal.id]);
    expect(viewIn(m([again, removal, c]), 'note', 'n-7')).toMatchObject({ exists: true, fields: { c: 3 } });
  });
});

describe('server-wins and client-wins', () => {
  it('server-wins prefers HQ\'s write even when HQ\'s HLC is older', () => {
    const c = alice.create(tick(), 'srv', 's-1', { status: 'open' });
    const fromHq = hq.update(tick(), 'srv', 's-1', { status: 'hq' }, [c.id]);
    const fromField = alice.update(tick(10_000), 'srv', 's-1', { status: 'field' }, [c.id]);
    expect(fromHq.hlc.wallMs).toBeLessThan(fromField.hlc.wallMs);
    expect(viewIn(m([c, fromHq, fromField]), 'srv', 's-1').fields.status).toBe('hq');
    // The same ops under merge: the later HLC wins.
    const asMerge = materialize([c, fromHq, fromField], { hqDevice: hq.id, domains: { srv: 'merge' } });
    expect(viewIn(asMerge, 'srv', 's-1').fields.status).toBe('field');
  });

  it('server-wins lets HQ\'s delete beat a concurrent field update', () => {
    const c = alice.create(tick(), 'srv', 's-2', { status: 'open' });
    const removal = hq.remove(tick(), 'srv', 's-2', [c.id]);
    const update = alice.update(tick(), 'srv', 's-2', { status: 'field' }, [c.id]);
    expect(viewIn(m([c, removal, update]), 'srv', 's-2').exists).toBe(false);
  });

  it('client-wins prefers the field device\'s write even when HQ\'s HLC is newer', () => {
    const c = alice.create(tick(), 'cli', 'k-1', { status: 'open' });
    const fromField = alice.update(tick(), 'cli', 'k-1', { status: 'field' }, [c.id]);
    const fromHq = hq.update(tick(10_000), 'cli', 'k-1', { status: 'hq' }, [c.id]);
    expect(fromHq.hlc.wallMs).toBeGreaterThan(fromField.hlc.wallMs);
    expect(viewIn(m([c, fromHq, fromField]), 'cli', 'k-1').fields.status).toBe('field');
  });
});

describe('manual', () => {
  const c = hq.create(tick(), 'case', 'case-7', { title: 'Warehouse fire', status: 'open' });
  const closed = alice.update(tick(), 'case', 'case-7', { status: 'closed' }, [c.id]);
  const escalated = bob.update(tick(), 'case', 'case-7', { status: 'escalated', lead: 'bob' }, [c.id]);
  const open = m([c, closed, escalated]);
  const conflict = viewIn(open, 'case', 'case-7').conflict!;

  it('opens a conflict listing both candidates, showing the last writer meanwhile', () => {
    const view = viewIn(open, 'case', 'case-7');
    expect(view.fields).toEqual({ title: 'Warehouse fire', status: 'escalated', lead: 'bob' });
    expect(conflict.fields).toHaveLength(1);
    expect(conflict.fields[0]!.field).toBe('status');
    expect(conflict.fields[0]!.candidates.map((x) => [x.user, x.value])).toEqual(
      [closed, escalated].sort((x, y) => (x.id < y.id ? -1 : 1)).map((op) => [op.user, op.fields.status]),
    );
    expect(statusIn(open, closed)).toEqual({ status: 'conflict' });
    expect(statusIn(open, escalated)).toEqual({ status: 'conflict' });
    // HQ's create is not part of the conflict.
    expect(statusIn(open, c)).toEqual({ status: 'synced' });
  });

  it('closes the conflict with a resolve op naming the heads', () => {
    const resolution = hq.resolve(tick(), 'case', 'case-7', { conflict: conflict.id, exists: true, fields: { status: 'closed' }, base: viewIn(open, 'case', 'case-7').heads });
    const after = m([resolution, escalated, closed, c]);
    const view = viewIn(after, 'case', 'case-7');
    expect(view.conflict).toBeNull();
    expect(view.fields).toEqual({ title: 'Warehouse fire', status: 'closed', lead: 'bob' });
    expect(statusIn(after, closed)).toEqual({ status: 'pending' });
    expect(statusIn(after, escalated)).toEqual({ status: 'pending' });
    expect(statusIn(after, resolution)).toEqual({ status: 'synced' });
  });

  it('closes the conflict by deleting the entity when the resolution says so', () => {
    const resolution = hq.resolve(tick(), 'case', 'case-7', { conflict: conflict.id, exists: false, fields: {}, base: viewIn(open, 'case', 'case-7').heads });
    expect(viewIn(m([c, closed, escalated, resolution]), 'case', 'case-7')).toMatchObject({ exists: false, conflict: null });
  });

  it('keeps the conflict open when the resolution saw only one candidate', () => {
    const partial = hq.resolve(tick(), 'case', 'case-7', { conflict: conflict.id, exists: true, fields: { status: 'closed' }, base: [closed.id] });
    const view = viewIn(m([c, closed, escalated, partial]), 'case', 'case-7');
    expect(view.conflict).not.toBeNull();
    expect(view.conflict!.fields[0]!.candidates.map((x) => x.op)).toEqual([escalated.id, partial.id].sort());
  });

  it('shows a delete against a concurrent update as a conflict on existence', () => {
    const x = hq.create(tick(), 'case', 'case-8', { a: 1 });
    const removal = alice.remove(tick(), 'case', 'case-8', [x.id]);
    const update = bob.update(tick(), 'case', 'case-8', { a: 2 }, [x.id]);
    const view = viewIn(m([x, removal, update]), 'case', 'case-8');
    expect(view.exists).toBe(true);
    expect(view.conflict!.fields.map((f) => f.field)).toContain('$exists');
    expect(view.conflict!.fields.find((f) => f.field === '$exists')!.candidates.map((cand) => cand.deleted).sort()).toEqual([false, true]);
  });
});

describe('HQ receipts', () => {
  it('drop a rejected op out of the state; its status is failed with REJECTED:<code>', () => {
    const c = alice.create(tick(), 'note', 'r-1', { v: 'first' });
    const u = bob.update(tick(), 'note', 'r-1', { v: 'rejected', extra: 1 }, [c.id]);
    const receipt = hq.receipt(tick(), [accept(c), reject(u, 'INVALID', 'v must not change')]);
    const result = m([c, u, receipt]);
    expect(viewIn(result, 'note', 'r-1').fields).toEqual({ v: 'first' });
    expect(statusIn(result, u)).toEqual({ status: 'failed', reason: 'REJECTED:INVALID', detail: 'v must not change' });
    expect(statusIn(result, c)).toEqual({ status: 'synced' });
    expect(statusIn(result, receipt)).toEqual({ status: 'synced' });
    // Without the receipt both ops count and wait for HQ.
    const before = m([c, u]);
    expect(viewIn(before, 'note', 'r-1').fields).toEqual({ v: 'rejected', extra: 1 });
    expect(statusIn(before, u)).toEqual({ status: 'pending' });
  });

  it('keep ops built on a rejected op, without the rejected op\'s values', () => {
    const c = alice.create(tick(), 'note', 'r-2', { a: 1 });
    const u = bob.update(tick(), 'note', 'r-2', { a: 2 }, [c.id]);
    const v = alice.update(tick(), 'note', 'r-2', { b: 3 }, [u.id]);
    const receipt = hq.receipt(tick(), [reject(u, 'INVALID')]);
    expect(viewIn(m([c, u, v, receipt]), 'note', 'r-2').fields).toEqual({ a: 1, b: 3 });
  });

  it('make a rejected create leave no entity', () => {
    const c = alice.create(tick(), 'note', 'r-3', { a: 1 });
    const result = m([c, hq.receipt(tick(), [reject(c, 'DUPLICATE')])]);
    expect(viewIn(result, 'note', 'r-3').exists).toBe(false);
    expect(hashOf(result)).toBe(hashOf(m([])));
  });

  it('let the later receipt win over an earlier one, in any arrival order', () => {
    const c = alice.create(tick(), 'note', 'r-4', { a: 1 });
    const first = hq.receipt(tick(), [reject(c, 'INVALID')]);
    const second = hq.receipt(tick(), [accept(c)]);
    expect(statusIn(m([c, second, first]), c)).toEqual({ status: 'synced' });
    expect(viewIn(m([second, first, c]), 'note', 'r-4').exists).toBe(true);
    const third = hq.receipt(tick(), [reject(c, 'REVOKED_LATER')]);
    expect(statusIn(m([third, c, first, second]), c)).toMatchObject({ status: 'failed', reason: 'REJECTED:REVOKED_LATER' });
  });

  it('are ignored when they come from a device other than HQ', () => {
    const c = alice.create(tick(), 'note', 'r-5', { a: 1 });
    const fake = bob.receipt(tick(), [reject(c, 'INVALID')]);
    const result = m([c, fake]);
    expect(viewIn(result, 'note', 'r-5').fields).toEqual({ a: 1 });
    expect(statusIn(result, c)).toEqual({ status: 'pending' });
    expect(result.authority.verdicts.size).toBe(0);
  });
});

describe('revocations and forks', () => {
  it('a revocation excludes the device\'s ops with seq > afterSeq', () => {
    const carol = new TestDevice('sem-carol');
    const c1 = carol.create(tick(), 'note', 'v-1', { a: 1 });
    const c2 = carol.update(tick(), 'note', 'v-1', { a: 2 }, [c1.id]);
    const c3 = carol.update(tick(), 'note', 'v-1', { b: 3 }, [c2.id]);
    const revoke = hq.revoke(tick(), carol.id, 1, 'tablet stolen');
    const result = m([c3, revoke, c2, c1]);
    expect(viewIn(result, 'note', 'v-1').fields).toEqual({ a: 1 });
    expect(statusIn(result, c1)).toEqual({ status: 'pending' });
    expect(statusIn(result, c2)).toMatchObject({ status: 'failed', reason: 'DEVICE_REVOKED' });
    expect(statusIn(result, c3)).toMatchObject({ status: 'failed', reason: 'DEVICE_REVOKED' });
    // The lowest afterSeq of HQ's revocations counts; a revocation from anyone else does not.
    const looser = hq.revoke(tick(), carol.id, 2);
    expect(viewIn(m([c1, c2, c3, revoke, looser]), 'note', 'v-1').fields).toEqual({ a: 1 });
    const fake = bob.revoke(tick(), carol.id, 0);
    expect(viewIn(m([c1, c2, c3, fake]), 'note', 'v-1').fields).toEqual({ a: 2, b: 3 });
  });

  it('a fork point excludes the device\'s ops with seq >= the fork seq, on both branches', () => {
    const dave = new TestDevice('sem-dave');
    const d1 = dave.create(tick(), 'note', 'f-1', { a: 1 });
    const saved = dave.state;
    const d2 = dave.update(tick(), 'note', 'f-1', { a: 'branch one' }, [d1.id]);
    const d3 = dave.update(tick(), 'note', 'f-1', { b: 'after branch one' }, [d2.id]);
    dave.state = saved;
    const d2b = dave.update(tick(), 'note', 'f-1', { a: 'branch two' }, [d1.id]);
    const proof = forkProofOf(d2, d2b)!;
    const [forkOp] = verifyForkProof(proof);
    const fork = { device: forkOp.device, seq: forkOp.seq };
    expect(fork).toEqual({ device: dave.id, seq: 2 });
    const result = m([d1, d2, d3, d2b], [fork]);
    expect(viewIn(result, 'note', 'f-1').fields).toEqual({ a: 1 });
    expect(statusIn(result, d1)).toEqual({ status: 'pending' });
    for (const op of [d2, d3, d2b]) expect(statusIn(result, op)).toMatchObject({ status: 'failed', reason: 'DEVICE_FORKED' });
    // Other devices' ops built on a forked branch still apply.
    const e = alice.update(tick(), 'note', 'f-1', { c: 'alice' }, [d3.id]);
    expect(viewIn(m([d1, d2, d3, d2b, e], [fork]), 'note', 'f-1').fields).toEqual({ a: 1, c: 'alice' });
  });
});

describe('causal buffering and bad bases', () => {
  it('makes an op whose base is missing wait, and applies it once the base arrives', () => {
    const c = alice.create(tick(), 'note', 'w-1', { a: 1 });
    const u = bob.update(tick(), 'note', 'w-1', { a: 2 }, [c.id]);
    const v = alice.update(tick(), 'note', 'w-1', { b: 3 }, [u.id]);
    const early = m([v, u]);
    expect(early.waiting).toEqual([u.id, v.id].sort());
    expect(viewIn(early, 'note', 'w-1').exists).toBe(false);
    const complete = m([v, u, c]);
    expect(complete.waiting).toEqual([]);
    expect(viewIn(complete, 'note', 'w-1').fields).toEqual({ a: 2, b: 3 });
    expect(statusIn(complete, v)).toEqual({ status: 'pending' });
  });

  it('fails an op whose base names an op of another entity (BAD_BASE) instead of waiting', () => {
    const other = alice.create(tick(), 'note', 'w-2', { a: 1 });
    const c = alice.create(tick(), 'note', 'w-3', { a: 1 });
    const wrong = bob.update(tick(), 'note', 'w-3', { a: 'wrong' }, [c.id, other.id]);
    const result = m([other, c, wrong]);
    expect(statusIn(result, wrong)).toMatchObject({ status: 'failed', reason: 'BAD_BASE' });
    expect(result.waiting).toEqual([]);
    expect(viewIn(result, 'note', 'w-3').fields).toEqual({ a: 1 });
    // Until the other entity's op arrives, the op cannot be told apart from one that waits.
    expect(m([c, wrong]).waiting).toEqual([wrong.id]);
  });
});

describe('statuses', () => {
  it('are pending until HQ answers, synced when HQ accepted or wrote the op', () => {
    const c = alice.create(tick(), 'note', 's-1', { a: 1 });
    const h = hq.update(tick(), 'note', 's-1', { b: 2 }, [c.id]);
    expect(statusIn(m([c, h]), c)).toEqual({ status: 'pending' });
    expect(statusIn(m([c, h]), h)).toEqual({ status: 'synced' });
    expect(statusIn(m([c, h, hq.receipt(tick(), [accept(c)])]), c)).toEqual({ status: 'synced' });
  });
});
