import { encode } from 'cborg';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeCanonical, encodeCanonical } from '../../src/core/cbor.ts';
import { InvalidInputError } from '../../src/core/errors.ts';
import { expectCoreError, runs } from './helpers.ts';

const bytes = (...b: number[]) => Uint8Array.from(b);
// A map with its keys in reverse order: cborg writes entries in whatever order this sorter leaves.
const reversedKeys = { mapSorter: (a: { value: string }[], b: { value: string }[]) => (a[0]!.value < b[0]!.value ? 1 : -1) };

/** JSON-like values plus byte strings, the shapes fields may hold. */
const valueArb = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.maxSafeInteger(),
    fc.double({ noNaN: true, noDefaultInfinity: true }).filter((d) => !Object.is(d, -0)),
    fc.string(),
    fc.uint8Array({ maxLength: 8 }),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.string({ maxLength: 6 }), tie('value'), { maxKeys: 4 }),
  ),
})).value;

describe('encodeCanonical', () => {
  it('sorts map keys length-first, then bytewise', () => {
    expect(encodeCanonical({ bb: 1, a: 2, c: 3 })).toEqual(encodeCanonical({ c: 3, a: 2, bb: 1 }));
    // {"a": 2, "c": 3, "bb": 1}
    expect([...encodeCanonical({ bb: 1, a: 2, c: 3 })]).toEqual([0xa3, 0x61, 0x61, 0x02, 0x61, 0x63, 0x03, 0x62, 0x62, 0x62, 0x01]);
  });

  it('uses the shortest integer and float forms', () => {
    expect([...encodeCanonical(23)]).toEqual([0x17]);
    expect([...encodeCanonical(24)]).toEqual([0x18, 0x18]);
    expect([...encodeCanonical(1.5)]).toEqual([0xf9, 0x3e, 0x00]);
  });
});

describe('decodeCanonical', () => {
  it('round-trips every canonical encoding', () => {
    fc.assert(
      fc.property(valueArb, (value) => {
        const encoded = encodeCanonical(value);
        const decoded = decodeCanonical(encoded, 'value');
        expect(encodeCanonical(decoded)).toEqual(encoded);
      }),
      { numRuns: runs(300) },
    );
  });

  const refused: [string, Uint8Array][] = [
    ['empty input', bytes()],
    ['a truncated array', bytes(0x82, 0x01)],
    ['trailing bytes', bytes(0x01, 0x01)],
    ['a non-minimal integer', bytes(0x18, 0x05)],
    ['a non-minimal byte-string length', bytes(0x59, 0x00, 0x01, 0x41)],
    ['a non-minimal array length', bytes(0x98, 0x01, 0x01)],
    ['an indefinite-length array', bytes(0x9f, 0x01, 0xff)],
    ['a tag', bytes(0xc1, 0x01)],
    ['undefined', bytes(0xf7)],
    ['NaN', bytes(0xf9, 0x7e, 0x00)],
    ['Infinity', bytes(0xf9, 0x7c, 0x00)],
    ['an integer beyond 2^53', bytes(0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)],
    ['a non-string map key', bytes(0xa1, 0x01, 0x01)],
    ['a duplicate map key', bytes(0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02)],
    ['map keys out of order', encode({ bb: 1, a: 2 }, reversedKeys as never)],
    ['a float64 that fits in a float16', bytes(0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0)],
    ['an integral float', bytes(0xf9, 0x3c, 0x00)],
  ];

  it.each(refused)('refuses %s with DECODE', (_, input) => {
    expectCoreError(() => decodeCanonical(input, 'value'), InvalidInputError, 'DECODE');
  });

  it('decodes maps to plain objects', () => {
    const decoded = decodeCanonical(encodeCanonical({ a: { b: [1] } }), 'value') as { a: object };
    expect(Object.getPrototypeOf(decoded.a)).toBe(Object.prototype);
  });
});

