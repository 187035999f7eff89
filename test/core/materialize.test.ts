import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AuthorityBuilder } from '../../src/core/authority.ts';
import { encodeCanonical } from '../../src/core/cbor.ts';
import { InvalidInputError } from '../../src/core/errors.ts';
import { entityKey, isVisible, materialize, materializeEntity, stateHash, viewDigestBytes } from '../../src/core/materialize.ts';
import type { ResolutionConfig } from '../../src/core/strategies.ts';
import type { EntityView } from '../../src/core/view.ts';
import { expectCoreError, hashOf, observable, T0, TestDevice, viewIn } from './helpers.ts';

const hq = new TestDevice('mat-hq');
const alice = new TestDevice('mat-alice');
const bob = new TestDevice('mat-bob');
const config: ResolutionConfig = { hqDevice: hq.id, domains: { case: 'manual' } };
const noAuthority = new AuthorityBuilder(hq.id);

const c = alice.create(T0, 'note', 'n-1', { a: 1 });
const u = bob.update(T0 + 1, 'note', 'n-1', { a: 2 }, [c.id]);
const v = alice.update(T0 + 2, 'note', 'n-1', { b: 3 }, [u.id]);
const elsewhere = alice.create(T0 + 3, 'note', 'n-2', { z: 0 });

const view = (over: Partial<EntityView>): EntityView => ({ domain: 'note', entity: 'e', exists: true, fields: {}, conflict: null, heads: [], ...over });

describe('entityKey', () => {
  it('joins domain and entity with a slash neither may contain', () => {
    expect(entityKey('note', 'n-1')).toBe('note/n-1');
  });
});

describe('materializeEntity', () => {
  it('applies ops in causal order whatever order they are given in, with a clock for each', () => {
    const forward = materializeEntity('note', 'n-1', [c, u, v], noAuthority);
    const backward = materializeEntity('note', 'n-1', [v, u, c], noAuthority);
    expect(backward.state).toEqual(forward.state);
    expect(forward.clocks.get(v.id)).toEqual({ [alice.id]: 2, [bob.id]: 1 });
    expect(forward.waiting).toEqual([]);
    expect(forward.badBase).toEqual([]);
  });

  it('lists ops whose base is missing as waiting, sorted', () => {
    const result = materializeEntity('note', 'n-1', [v, u], noAuthority);
    expect(result.waiting).toEqual([u.id, v.id].sort());
    expect(result.clocks.size).toBe(0);
    expect(result.state.heads).toEqual([]);
  });

  it('lists an op once as bad-based, however many of its base ops belong to other entities', () => {
    const other2 = alice.create(T0 + 4, 'note', 'n-3', {});
    const wrong = bob.update(T0 + 5, 'note', 'n-1', { a: 9 }, [c.id, elsewhere.id, other2.id]);
    const others = new Set([elsewhere.id, other2.id]);
    const result = materializeEntity('note', 'n-1', [c, wrong], noAuthority, (id) => others.has(id));
    expect(result.badBase).toEqual([wrong.id]);
    expect(result.waiting).toEqual([]);
    expect(result.clocks.has(wrong.id)).toBe(false);
  });
});

describe('materialize', () => {
  it('ignores duplicates: the input is a set', () => {
    expect(observable(materialize([c, u, c, v, u, elsewhere, c], config))).toEqual(observable(materialize([c, u, v, elsewhere], config)));
  });

  it('keeps one entry per entity, sorted by key', () => {
    const result = materialize([elsewhere, v, u, c], config);
    expect([...result.entities.keys()]).toEqual(['note/n-1', 'note/n-2']);
    expect(viewIn(result, 'note', 'n-1').fields).toEqual({ a: 2, b: 3 });
    expect(result.entities.get('note/n-1')!.state.heads.map((h) => h.op)).toEqual([v.id]);
  });

  it('gives every applied op and every HQ op a status', () => {
    const receipt = hq.receipt(T0 + 10, [{ op: c.id, accepted: true, reason: '', detail: '' }]);
    const result = materialize([c, u, v, receipt], config);
    for (const op of [c, u, v, receipt]) expect(result.statuses.has(op.id)).toBe(true);
    expect(result.statuses.get(c.id)).toEqual({ status: 'synced' });
    expect(result.statuses.get(receipt.id)).toEqual({ status: 'synced' });
  });

  it('refuses a config naming an unknown strategy for a domain in use', () => {
    const bad = { hqDevice: hq.id, domains: { note: 'newest' as 'merge' } };
    expectCoreError(() => materialize([c], bad), InvalidInputError, 'BAD_STRATEGY');
  });

  it('survives entities and fields named like Object.prototype members', () => {
    const odd = alice.create(T0 + 20, 'constructor', 'toString', { constructor: 1, valueOf: 2 });
    const result = materialize([odd], config);
    expect(viewIn(result, 'constructor', 'toString').fields).toEqual({ constructor: 1, valueOf: 2 });
  });
});

describe('stateHash', () => {
  it('is SHA-256 over the digests of visible entities in (domain, entity) order', () => {
    const a = view({ domain: 'a', entity: 'x', fields: { f: 1 } });
    const b1 = view({ domain: 'b', entity: 'x' });
    const b2 = view({ domain: 'b', entity: 'y' });
    const expected = createHash('sha256').update(Buffer.concat([a, b1, b2].map(viewDigestBytes))).digest('hex');
    expect(stateHash([b2, a, b1])).toBe(expected);
    expect(stateHash([a, b1, b2])).toBe(expected);
    expect(viewDigestBytes(a)).toEqual(encodeCanonical(['a', 'x', true, { f: 1 }, null]));
  });

  it('leaves out entities that neither exist nor hold a conflict, and ignores heads', () => {
    const shown = view({ fields: { f: 1 } });
    const gone = view({ entity: 'gone', exists: false });
    const disputed = view({ entity: 'disputed', exists: false, conflict: { id: 'ab'.repeat(32), domain: 'note', entity: 'disputed', fields: [] } });
    expect(isVisible(gone)).toBe(false);
    expect(isVisible(disputed)).toBe(true);
    expect(stateHash([shown, gone])).toBe(stateHash([shown]));
    expect(stateHash([shown, disputed])).not.toBe(stateHash([shown]));
    expect(stateHash([view({ fields: { f: 1 }, heads: ['x'] })])).toBe(stateHash([shown]));
    expect(stateHash([])).toBe(createHash('sha256').digest('hex'));
  });

  it('changes with any field value', () => {
    expect(stateHash([view({ fields: { f: 1 } })])).not.toBe(stateHash([view({ fields: { f: 2 } })]));
    expect(hashOf(materialize([c], config))).not.toBe(hashOf(materialize([c, u], config)));
  });
});
