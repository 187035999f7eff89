/**
 * The store's compact record layouts give back exactly what was written, through the real
 * record path (canonical CBOR and checksum): entity states list each op once and refer to it.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { EntityState, Write } from '../../src/core/entity.ts';
import { openValue, sealValue } from '../../src/store/records.ts';
import { TABLES, tableKey } from '../../src/store/tables.ts';

const hex64 = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex'));
const device = fc.constantFrom('12D3KooWAHoEkEqnKzM5PXFygh2movVBCSX3k8tDsT2cneU68Gyt', '12D3KooWBb8yfBJMbmbk1bjtXRkfGJnGPVdN3Zz5xJHCR3fsqXRx', 'd3');
const value = fc.oneof(fc.constant(null), fc.boolean(), fc.integer(), fc.string(), fc.double({ noNaN: true, noDefaultInfinity: true }).filter((x) => !Object.is(x, -0)) /* canonical CBOR has one zero */, fc.array(fc.string(), { maxLength: 3 }));

/** A pool of ops (each id with one device, seq, clock and user, as in real states) and states naming them. */
const entityStates = fc
  .array(fc.record({ op: hex64, device, seq: fc.nat(1000), wallMs: fc.nat(), counter: fc.nat(5), user: fc.string({ maxLength: 8 }) }), { minLength: 1, maxLength: 8 })
  .chain((pool) => {
    const opIndex = fc.nat(pool.length - 1);
    const write = (deleted: boolean) =>
      fc.tuple(opIndex, value).map(([i, v]): Write => {
        const o = pool[i]!;
        return { op: o.op, device: o.device, seq: o.seq, hlc: { wallMs: o.wallMs, counter: o.counter }, user: o.user, deleted, value: deleted ? null : v };
      });
    return fc.record({
      domain: fc.constant('case'),
      entity: fc.string({ minLength: 1, maxLength: 10 }),
      heads: fc.uniqueArray(opIndex, { maxLength: 4 }).map((is) => is.map((i) => ({ op: pool[i]!.op, device: pool[i]!.device, seq: pool[i]!.seq }))),
      deletes: fc.array(write(true), { maxLength: 3 }),
      registers: fc.dictionary(fc.string({ minLength: 1, maxLength: 6 }), fc.array(fc.oneof(write(false), write(true)), { minLength: 1, maxLength: 3 })),
    });
  });

describe('store codecs', () => {
  it('an entity state reads back deep-equal to what was written', () => {
    fc.assert(
      fc.property(entityStates, (state: EntityState) => {
        const key = tableKey(TABLES.entity, `${state.domain}\u0000${state.entity}`);
        expect(openValue<EntityState>(key, sealValue(key, state), '/tmp/test')).toEqual(state);
      }),
      { numRuns: 300 },
    );
  });

  it('lists an op that writes several fields once', () => {
    const op = 'ab'.repeat(32);
    const w = (value: string): Write => ({ op, device: 'd3', seq: 7, hlc: { wallMs: 5, counter: 0 }, user: 'ann', deleted: false, value });
    const state: EntityState = { domain: 'case', entity: 'c1', heads: [{ op, device: 'd3', seq: 7 }], deletes: [], registers: { $exists: [w('x')], a: [w('y')], b: [w('z')] } };
    const key = tableKey(TABLES.entity, 'case\u0000c1');
    const record = sealValue(key, state);
    expect(Buffer.from(record).indexOf(Buffer.from(op, 'hex'))).toBe(Buffer.from(record).lastIndexOf(Buffer.from(op, 'hex')));
    expect(openValue(key, record, '/tmp/test')).toEqual(state);
  });
});
