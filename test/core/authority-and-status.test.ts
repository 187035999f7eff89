import { describe, expect, it } from 'vitest';
import { AuthorityBuilder, exclusionOf } from '../../src/core/authority.ts';
import { statusOf } from '../../src/core/status.ts';
import { accept, reject, T0, TestDevice } from './helpers.ts';

const hq = new TestDevice('auth-hq');
const alice = new TestDevice('auth-alice');
const bob = new TestDevice('auth-bob');
const a1 = alice.create(T0, 'note', 'x', { v: 1 });
const a2 = alice.update(T0 + 1, 'note', 'x', { v: 2 }, [a1.id]);
const a3 = alice.update(T0 + 2, 'note', 'x', { v: 3 }, [a2.id]);

describe('AuthorityBuilder', () => {
  it('records HQ verdicts and reports which ops changed', () => {
    const authority = new AuthorityBuilder(hq.id);
    const receipt = hq.receipt(T0, [accept(a1), reject(a2, 'INVALID', 'no')]);
    expect(authority.addHqOp(receipt)).toEqual({ ops: [a1.id, a2.id], devices: [] });
    expect(authority.verdicts.get(a2.id)).toEqual({ accepted: false, reason: 'INVALID', detail: 'no', hqSeq: receipt.seq });
  });

  it('lets the receipt with the higher HQ seq win, whatever order they are added in', () => {
    const earlier = hq.receipt(T0, [reject(a1, 'INVALID')]);
    const later = hq.receipt(T0 + 1, [accept(a1)]);
    const forward = new AuthorityBuilder(hq.id);
    forward.addHqOp(earlier);
    expect(forward.addHqOp(later).ops).toEqual([a1.id]);
    const backward = new AuthorityBuilder(hq.id);
    backward.addHqOp(later);
    expect(backward.addHqOp(earlier).ops).toEqual([]);
    expect(backward.verdicts).toEqual(forward.verdicts);
    expect(backward.verdicts.get(a1.id)!.accepted).toBe(true);
  });

  it('keeps the first verdict when one receipt names an op twice', () => {
    const authority = new AuthorityBuilder(hq.id);
    authority.addHqOp(hq.receipt(T0, [reject(a1, 'FIRST'), accept(a1)]));
    expect(authority.verdicts.get(a1.id)).toMatchObject({ accepted: false, reason: 'FIRST' });
  });

  it('ignores receipts and revocations from any device but HQ', () => {
    const authority = new AuthorityBuilder(hq.id);
    expect(authority.addHqOp(bob.receipt(T0, [reject(a1, 'INVALID')]))).toEqual({ ops: [], devices: [] });
    expect(authority.addHqOp(bob.revoke(T0, alice.id, 0))).toEqual({ ops: [], devices: [] });
    expect(authority.verdicts.size).toBe(0);
    expect(authority.revokedAfter.size).toBe(0);
  });

  it('keeps the lowest afterSeq of HQ\'s revocations', () => {
    const authority = new AuthorityBuilder(hq.id);
    expect(authority.addHqOp(hq.revoke(T0, alice.id, 5))).toEqual({ ops: [], devices: [alice.id] });
    expect(authority.addHqOp(hq.revoke(T0, alice.id, 2)).devices).toEqual([alice.id]);
    expect(authority.addHqOp(hq.revoke(T0, alice.id, 9)).devices).toEqual([]);
    expect(authority.revokedAfter.get(alice.id)).toBe(2);
  });

  it('keeps the lowest fork seq', () => {
    const authority = new AuthorityBuilder(hq.id);
    expect(authority.addFork(alice.id, 4)).toBe(true);
    expect(authority.addFork(alice.id, 6)).toBe(false);
    expect(authority.addFork(alice.id, 3)).toBe(true);
    expect(authority.forkedAt.get(alice.id)).toBe(3);
  });
});

describe('exclusionOf and statusOf', () => {
  it('exclude nothing and say pending without any word from HQ', () => {
    const authority = new AuthorityBuilder(hq.id);
    expect(exclusionOf(a1, authority)).toBeNull();
    expect(statusOf(a1, authority, hq.id, false)).toEqual({ status: 'pending' });
  });

  it('say synced for accepted ops and for HQ\'s own', () => {
    const authority = new AuthorityBuilder(hq.id);
    authority.addHqOp(hq.receipt(T0, [accept(a1)]));
    expect(statusOf(a1, authority, hq.id, false)).toEqual({ status: 'synced' });
    const own = hq.create(T0, 'note', 'y', {});
    expect(statusOf(own, authority, hq.id, false)).toEqual({ status: 'synced' });
  });

  it('say conflict for candidates of an open conflict, unless excluded', () => {
    const authority = new AuthorityBuilder(hq.id);
    expect(statusOf(a1, authority, hq.id, true)).toEqual({ status: 'conflict' });
    authority.addHqOp(hq.receipt(T0, [reject(a1, 'INVALID')]));
    expect(statusOf(a1, authority, hq.id, true).status).toBe('failed');
  });

  it('rank a fork above a revocation above a rejection', () => {
    const authority = new AuthorityBuilder(hq.id);
    authority.addHqOp(hq.receipt(T0, [reject(a1, 'INVALID', 'detail'), reject(a2, 'INVALID'), reject(a3, 'INVALID')]));
    expect(exclusionOf(a1, authority)).toEqual({ reason: 'REJECTED', code: 'INVALID', detail: 'detail' });
    expect(statusOf(a1, authority, hq.id, false)).toEqual({ status: 'failed', reason: 'REJECTED:INVALID', detail: 'detail' });
    authority.addHqOp(hq.revoke(T0, alice.id, 1));
    expect(exclusionOf(a1, authority)!.reason).toBe('REJECTED');
    expect(exclusionOf(a2, authority)!.reason).toBe('DEVICE_REVOKED');
    authority.addFork(alice.id, 3);
    expect(exclusionOf(a2, authority)!.reason).toBe('DEVICE_REVOKED');
    expect(exclusionOf(a3, authority)!.reason).toBe('DEVICE_FORKED');
    expect(statusOf(a3, authority, hq.id, false)).toMatchObject({ status: 'failed', reason: 'DEVICE_FORKED' });
  });

  it('say failed with BAD_BASE for an op with a bad base that is not otherwise excluded', () => {
    const authority = new AuthorityBuilder(hq.id);
    expect(statusOf(a1, authority, hq.id, false, true)).toMatchObject({ status: 'failed', reason: 'BAD_BASE' });
    authority.addHqOp(hq.receipt(T0, [reject(a1, 'INVALID')]));
    expect(statusOf(a1, authority, hq.id, false, true)).toMatchObject({ status: 'failed', reason: 'REJECTED:INVALID' });
  });
});
