import { describe, expect, it } from 'vitest';
import { applyEntityOp, clockOf, emptyEntity, EXISTS, isDeletion, type CausalClock, type EntityState, type Write } from '../../src/core/entity.ts';
import { InvalidInputError } from '../../src/core/errors.ts';
import type { Hlc } from '../../src/core/hlc.ts';
import type { EntityOp, OpId } from '../../src/core/op.ts';
import { ABSENT, disagree, MERGE_FUNCTIONS, policyOf, resolveRegister, type DomainPolicy, type ResolutionConfig, type Strategy } from '../../src/core/strategies.ts';
import type { Value } from '../../src/core/value.ts';
import { conflictOps, viewOf } from '../../src/core/view.ts';
import { expectCoreError, T0, TestDevice } from './helpers.ts';

const HQ = 'device-hq';

let nextId = 0;
/** A register candidate, built by hand: only device, hlc, deleted and value matter to the strategies. */
function write(device: string, hlc: Hlc | number, value: Value, deleted = false): Write {
  const id = (nextId++).toString(16).padStart(64, '0');
  return { op: id, device, seq: 1, hlc: typeof hlc === 'number' ? { wallMs: hlc, counter: 0 } : hlc, user: 'u', deleted, value: deleted ? null : value };
}
const tombstone = (device: string, hlc: number) => write(device, hlc, null, true);
const policy = (strategy: Strategy, merge?: DomainPolicy['merge']): DomainPolicy => (merge === undefined ? { strategy } : { strategy, merge });
const resolve = (candidates: Write[], p: DomainPolicy, field = 'f') => resolveRegister(candidates, p, field, HQ);

/** Applies ops (in the given causal order) the way the materializer does, every op writing. */
function fold(ops: readonly EntityOp[], writes: (op: EntityOp) => boolean = () => true): { state: EntityState; clocks: Map<OpId, CausalClock> } {
  const clocks = new Map<OpId, CausalClock>();
  let state = emptyEntity(ops[0]!.domain, ops[0]!.entity);
  for (const op of ops) {
    const clock = clockOf(op, op.base.map((b) => clocks.get(b)!));
    clocks.set(op.id, clock);
    state = applyEntityOp(state, op, clock, writes(op));
  }
  return { state, clocks };
}
const writers = (state: EntityState, field: string) => (state.registers[field] ?? []).map((w) => w.op);

describe('clockOf', () => {
  const alice = new TestDevice('entity-clock-alice');
  const c1 = alice.create(T0, 'case', 'c', { a: 1 });
  const u5 = (() => {
    for (let i = 0; i < 3; i++) alice.update(T0 + 1 + i, 'other', 'x', { i }, []);
    return alice.update(T0 + 10, 'case', 'c', { a: 2 }, [c1.id]);
  })();

  it('is the op\'s own (device, seq) for an op without base', () => {
    expect(clockOf(c1, [])).toEqual({ [alice.id]: 1 });
  });

  it('is the pointwise maximum of the base clocks plus the op itself', () => {
    expect(clockOf(u5, [{ [alice.id]: 1, 'dev-b': 4 }, { 'dev-b': 2, 'dev-c': 7 }])).toEqual({ [alice.id]: 5, 'dev-b': 4, 'dev-c': 7 });
    // The op's own entry is never lowered by it.
    expect(clockOf(c1, [{ [alice.id]: 9 }])).toEqual({ [alice.id]: 9 });
  });
});

describe('applyEntityOp', () => {
  const alice = new TestDevice('entity-alice');
  const bob = new TestDevice('entity-bob');
  const created = alice.create(T0, 'case', 'c-1', { a: 1, b: 2 });
  const byAlice = alice.update(T0 + 10, 'case', 'c-1', { a: 'alice' }, [created.id]);
  const byBob = bob.update(T0 + 5, 'case', 'c-1', { a: 'bob', c: 3 }, [created.id]);
  const after = alice.update(T0 + 20, 'case', 'c-1', { a: 'both seen' }, [byAlice.id, byBob.id]);
  const removed = bob.remove(T0 + 30, 'case', 'c-1', [after.id]);

  it('records a create as writes of every field and of existence', () => {
    const { state } = fold([created]);
    expect(state.heads).toEqual([{ op: created.id, device: alice.id, seq: 1 }]);
    expect(Object.keys(state.registers).sort()).toEqual([EXISTS, 'a', 'b'].sort());
    expect(state.registers.a).toEqual([{ op: created.id, device: alice.id, seq: 1, hlc: created.hlc, user: created.user, deleted: false, value: 1 }]);
    expect(state.registers[EXISTS]![0]!.value).toBe(true);
  });

  it('keeps concurrent writes side by side, sorted by op id, and drops superseded ones', () => {
    const { state } = fold([created, byAlice, byBob]);
    expect(writers(state, 'a')).toEqual([byAlice.id, byBob.id].sort());
    expect(writers(state, 'b')).toEqual([created.id]);
    expect(writers(state, 'c')).toEqual([byBob.id]);
    expect(state.heads.map((h) => h.op)).toEqual([byAlice.id, byBob.id].sort());
    const later = fold([created, byBob, byAlice, after]).state;
    expect(writers(later, 'a')).toEqual([after.id]);
    expect(later.heads.map((h) => h.op)).toEqual([after.id]);
  });

  it('records a delete as a tombstone: registers holding only deletes disappear', () => {
    const { state } = fold([created, byAlice, byBob, after, removed]);
    expect(state.registers).toEqual({});
    expect(state.deletes.map((d) => d.op)).toEqual([removed.id]);
    expect(state.deletes[0]!.deleted).toBe(true);
    expect(isDeletion(removed)).toBe(true);
    expect(isDeletion(after)).toBe(false);
  });

  it('lets an op that does not write take part in causality only', () => {
    const { state } = fold([created, byAlice], (op) => op.id !== byAlice.id);
    expect(state.heads.map((h) => h.op)).toEqual([byAlice.id]);
    expect(writers(state, 'a')).toEqual([created.id]);
  });

  it('tracks heads by base, so a forked device\'s two ops at one seq stay apart in any causal order', () => {
    const forker = new TestDevice('entity-forker');
    const x = forker.create(T0, 'case', 'f-1', { v: 1 });
    forker.state = { tip: { seq: 0, id: null }, clock: x.hlc };
    const y = forker.update(T0 + 1, 'case', 'f-1', { v: 2 }, [x.id]); // seq 1 again, after x
    const z = bob.update(T0 + 2, 'case', 'f-1', { w: 3 }, [x.id]); // saw x only
    expect(y.seq).toBe(x.seq);
    const expected = [y.id, z.id].sort();
    expect(fold([x, y, z]).state.heads.map((h) => h.op)).toEqual(expected);
    expect(fold([x, z, y]).state.heads.map((h) => h.op)).toEqual(expected);
  });

  it('handles fields named like Object.prototype members', () => {
    const odd = alice.create(T0 + 100, 'case', 'c-odd', { constructor: 'c', toString: 't', hasOwnProperty: 'h' });
    const { state } = fold([odd]);
    expect(viewOf(state, { hqDevice: HQ }).fields).toEqual({ constructor: 'c', hasOwnProperty: 'h', toString: 't' });
  });
});

describe('policyOf', () => {
  const config: ResolutionConfig = { hqDevice: HQ, domains: { a: 'manual', b: { strategy: 'server-wins', merge: { tags: MERGE_FUNCTIONS.union } } } };

  it('reads a strategy name or a full policy, and defaults to merge', () => {
    expect(policyOf(config, 'a')).toEqual({ strategy: 'manual' });
    expect(policyOf(config, 'b')).toEqual({ strategy: 'server-wins', merge: { tags: MERGE_FUNCTIONS.union } });
    expect(policyOf(config, 'unlisted')).toEqual({ strategy: 'merge' });
    expect(policyOf({ hqDevice: HQ }, 'a')).toEqual({ strategy: 'merge' });
  });

  it('does not mistake Object.prototype members for domains', () => {
    expect(policyOf(config, 'constructor')).toEqual({ strategy: 'merge' });
  });

  it('refuses an unknown strategy (BAD_STRATEGY)', () => {
    const bad = { hqDevice: HQ, domains: { x: 'newest-wins' as Strategy } };
    expectCoreError(() => policyOf(bad, 'x'), InvalidInputError, 'BAD_STRATEGY', { domain: 'x' });
  });
});

describe('resolveRegister', () => {
  it('shows nothing for no candidates or deletes only', () => {
    expect(resolve([], policy('merge'))).toEqual(ABSENT);
    expect(resolve([tombstone('x', 1), tombstone('y', 2)], policy('merge'))).toEqual(ABSENT);
  });

  it('merge: the last writer by (HLC, device) wins, device breaking HLC ties', () => {
    expect(resolve([write('x', 2, 'later'), write('y', 1, 'earlier')], policy('merge'))).toEqual({ deleted: false, value: 'later' });
    expect(resolve([write('x', { wallMs: 5, counter: 2 }, 'c2'), write('y', { wallMs: 5, counter: 1 }, 'c1')], policy('merge')).value).toBe('c2');
    expect(resolve([write('dev-b', 5, 'b'), write('dev-a', 5, 'a')], policy('merge')).value).toBe('b');
  });

  it('merge: a write beats a concurrent delete (add-wins)', () => {
    expect(resolve([tombstone('x', 9), write('y', 1, 'kept')], policy('merge'))).toEqual({ deleted: false, value: 'kept' });
  });

  it('merge: a registered merge function combines live values in (HLC, device) order', () => {
    const seen: Value[][] = [];
    const spy = (values: readonly Value[]) => (seen.push([...values]), values.join('+'));
    expect(resolve([write('x', 3, 'c'), write('y', 1, 'a'), tombstone('z', 9), write('w', 2, 'b')], policy('merge', { f: spy })).value).toBe('a+b+c');
    expect(seen).toEqual([['a', 'b', 'c']]);
    // Not for other fields, not for a single candidate.
    expect(resolve([write('x', 3, 'c'), write('y', 1, 'a')], policy('merge', { g: spy })).value).toBe('c');
    expect(resolve([write('x', 3, 'only')], policy('merge', { f: spy })).value).toBe('only');
    // Not for a field named like an Object.prototype member either.
    expect(resolve([write('x', 3, 'c'), write('y', 1, 'a')], policy('merge', { f: spy }), 'toString').value).toBe('c');
  });

  it('server-wins: HQ\'s write wins even with an older HLC, and HQ\'s delete beats a device\'s write', () => {
    expect(resolve([write(HQ, 1, 'hq'), write('field', 100, 'device')], policy('server-wins')).value).toBe('hq');
    expect(resolve([tombstone(HQ, 1), write('field', 100, 'device')], policy('server-wins'))).toEqual(ABSENT);
    // Without an HQ candidate it is merge.
    expect(resolve([write('a', 1, 'older'), write('b', 100, 'newer')], policy('server-wins')).value).toBe('newer');
  });

  it('client-wins: the field device\'s write wins even with an older HLC', () => {
    expect(resolve([write(HQ, 100, 'hq'), write('field', 1, 'device')], policy('client-wins')).value).toBe('device');
    expect(resolve([write(HQ, 100, 'hq'), tombstone('field', 1)], policy('client-wins'))).toEqual(ABSENT);
    expect(resolve([write(HQ, 1, 'older'), write(HQ, 100, 'newer')], policy('client-wins')).value).toBe('newer');
  });

  it('manual: shows the merge result meanwhile', () => {
    expect(resolve([write('a', 1, 'older'), write('b', 100, 'newer')], policy('manual')).value).toBe('newer');
  });
});

describe('merge functions', () => {
  it('union: a sorted set of the array elements, non-arrays counting as one element', () => {
    expect(MERGE_FUNCTIONS.union([['b', 'a'], ['a', 'c'], 'd'])).toEqual(MERGE_FUNCTIONS.union([['c', 'd'], 'a', ['b']]));
    expect(MERGE_FUNCTIONS.union([['b', 'a'], ['a', 'c'], 'd'])).toEqual(['a', 'b', 'c', 'd']);
    expect(MERGE_FUNCTIONS.union([[1, { x: 1 }], [{ x: 1 }, 1]])).toEqual([1, { x: 1 }]);
  });

  it('max and min', () => {
    expect(MERGE_FUNCTIONS.max([3, 9, -1])).toBe(9);
    expect(MERGE_FUNCTIONS.min([3, 9, -1])).toBe(-1);
  });
});

describe('disagree', () => {
  it('is false for one candidate or equal values from several devices', () => {
    expect(disagree([write('a', 1, 'x')])).toBe(false);
    expect(disagree([write('a', 1, { k: [1] }), write('b', 2, { k: [1] })])).toBe(false);
    expect(disagree([tombstone('a', 1), tombstone('b', 2)])).toBe(false);
  });

  it('is true for different values or a write against a delete', () => {
    expect(disagree([write('a', 1, 'x'), write('b', 2, 'y')])).toBe(true);
    expect(disagree([write('a', 1, 1), write('b', 2, '1')])).toBe(true);
    expect(disagree([write('a', 1, null), tombstone('b', 2)])).toBe(true);
  });
});

describe('viewOf', () => {
  const alice = new TestDevice('view-alice', { user: 'alice' });
  const bob = new TestDevice('view-bob', { user: 'bob' });
  const created = alice.create(T0, 'case', 'c-1', { z: 1, title: 'fire', status: 'open' });
  const closed = alice.update(T0 + 10, 'case', 'c-1', { status: 'closed' }, [created.id]);
  const escalated = bob.update(T0 + 20, 'case', 'c-1', { status: 'escalated' }, [created.id]);
  const manual: ResolutionConfig = { hqDevice: HQ, domains: { case: 'manual' } };

  it('lists resolved fields with sorted keys, and nothing for a deleted entity', () => {
    const { state } = fold([created]);
    const view = viewOf(state, { hqDevice: HQ });
    expect(view).toEqual({ domain: 'case', entity: 'c-1', exists: true, fields: { status: 'open', title: 'fire', z: 1 }, conflict: null, heads: [created.id] });
    expect(Object.keys(view.fields)).toEqual(['status', 'title', 'z']);
    const gone = fold([created, bob.remove(T0 + 5, 'case', 'c-1', [created.id])]).state;
    expect(viewOf(gone, { hqDevice: HQ })).toMatchObject({ exists: false, fields: {}, conflict: null });
  });

  it('opens a conflict under manual listing every candidate; merge shows none', () => {
    const { state } = fold([created, closed, escalated]);
    expect(viewOf(state, { hqDevice: HQ }).conflict).toBeNull();
    const view = viewOf(state, manual);
    expect(view.fields.status).toBe('escalated');
    expect(view.conflict).toMatchObject({ domain: 'case', entity: 'c-1' });
    expect(view.conflict!.fields.map((f) => f.field)).toEqual(['status']);
    const candidates = view.conflict!.fields[0]!.candidates;
    expect(candidates.map((c) => c.op)).toEqual([closed.id, escalated.id].sort());
    expect(candidates.find((c) => c.op === closed.id)).toEqual({ op: closed.id, device: alice.id, user: 'alice', hlc: closed.hlc, deleted: false, value: 'closed' });
    expect(conflictOps(view).sort()).toEqual([closed.id, escalated.id].sort());
    expect(view.conflict!.id).toMatch(/^[0-9a-f]{64}$/);
  });

  it('gives a conflict an id that changes when its candidates do', () => {
    const first = viewOf(fold([created, closed, escalated]).state, manual).conflict!;
    const again = viewOf(fold([created, escalated, closed]).state, manual).conflict!;
    expect(again.id).toBe(first.id);
    const more = bob.update(T0 + 40, 'case', 'c-1', { status: 'reopened' }, [created.id]);
    const grown = viewOf(fold([created, closed, escalated, more]).state, manual).conflict!;
    expect(grown.id).not.toBe(first.id);
  });

  it('does not open a conflict when concurrent writers agree', () => {
    const same = bob.update(T0 + 50, 'case', 'c-1', { status: 'closed' }, [created.id]);
    const view = viewOf(fold([created, closed, same]).state, manual);
    expect(view.conflict).toBeNull();
    expect(conflictOps(view)).toEqual([]);
  });
});
