/**
 * fast-cbor.ts promises to be a shortcut, never a second definition of the format: whatever it
 * encodes is byte-for-byte encodeCanonical, whatever it decodes is exactly what decodeCanonical
 * returns, and it declines everything else. These are differential tests against cborg.
 */
import { encode } from 'cborg';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeCanonical, encodeCanonical } from '../../src/core/cbor.ts';
import { DECLINED, decodeFast, encodeFastInto } from '../../src/core/fast-cbor.ts';
import { canonicalCopy, checkValue } from '../../src/core/value.ts';
import { flipBit, runs, thrownBy } from './helpers.ts';

/** Values of every shape cborg can encode, keys and strings beyond ASCII included. */
const valueArb = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.maxSafeInteger(),
    fc.constantFrom(23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, -24, -25, -257, Number.MIN_SAFE_INTEGER),
    fc.double({ noNaN: true, noDefaultInfinity: true }),
    fc.float({ noNaN: true, noDefaultInfinity: true }),
    fc.string({ unit: 'grapheme', maxLength: 6 }),
    fc.string({ maxLength: 30 }),
    fc.uint8Array({ maxLength: 30 }),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.oneof(fc.string({ maxLength: 5 }), fc.string({ unit: 'grapheme', maxLength: 3 })), tie('value'), { maxKeys: 4, noNullPrototype: true }),
  ),
})).value;

/** encodeCanonical's bytes as a plain Uint8Array (cborg may hand out a Buffer). */
const canonical = (value: unknown): Uint8Array => new Uint8Array(encodeCanonical(value));

function fastEncode(value: unknown, room = 4096, offset = 3): Uint8Array | typeof DECLINED {
  const dest = new Uint8Array(offset + room);
  const end = encodeFastInto(value, dest, offset);
  return end < 0 ? DECLINED : dest.slice(offset, end);
}

/** decodeCanonical's verdict, as a value or DECLINED when it throws. */
function slowDecode(bytes: Uint8Array): unknown {
  try {
    return decodeCanonical(bytes, 'value');
  } catch {
    return DECLINED;
  }
}

/** The fast reader either declines or agrees exactly with cborg; it never accepts what cborg refuses. */
function expectAgrees(bytes: Uint8Array): void {
  const fast = decodeFast(bytes);
  if (fast === DECLINED) return;
  const slow = slowDecode(bytes);
  expect(slow).not.toBe(DECLINED);
  expect(fast).toStrictEqual(slow);
}

describe('encodeFastInto', () => {
  it('writes exactly encodeCanonical\'s bytes whenever it does not decline', () => {
    fc.assert(
      fc.property(valueArb, (value) => {
        const fast = fastEncode(value);
        if (fast !== DECLINED) expect(fast).toEqual(canonical(value));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('handles the common op shapes itself', () => {
    const body = [1, 2, 'team-1', '12D3KooW', 7, new Uint8Array(32), 1767225600000, 3, 'alice', 'evidence', 'ev-1', [new Uint8Array(32)], { note: 'shell casing', lat: 12.3456, n: -3, tags: ['a', 'b'], ok: true, none: null }];
    expect(fastEncode(body)).toEqual(canonical(body));
  });

  it('declines rather than overflow a destination that is too small', () => {
    const value = { text: 'x'.repeat(100), list: [1, 2, 3] };
    expect(fastEncode(value, 50)).toBe(DECLINED);
    expect(fastEncode(value, canonical(value).length)).toEqual(canonical(value));
  });

  it('declines what cborg would refuse or encode its own way', () => {
    for (const value of [undefined, Number.NaN, Number.POSITIVE_INFINITY, 1n, new Map(), new Date(0), Object.create(null), '\ud800', () => 1]) {
      expect(fastEncode(value)).toBe(DECLINED);
    }
    // Integers beyond 2^53 are floats to cborg, and to the fast path alike.
    expect(fastEncode(2 ** 60)).toEqual(canonical(2 ** 60));
  });
});

describe('decodeFast', () => {
  it('reads canonical encodings as decodeCanonical does, or declines', () => {
    fc.assert(
      fc.property(valueArb, (value) => {
        const bytes = encodeCanonical(value);
        expectAgrees(bytes);
        expectAgrees(canonical(value));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('never accepts a flipped bit, a truncation or an extension that cborg refuses', () => {
    fc.assert(
      fc.property(valueArb, fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 3 }), (value, n, extra) => {
        const bytes = canonical(value);
        expectAgrees(flipBit(bytes, n % (bytes.length * 8)));
        expectAgrees(bytes.subarray(0, n % bytes.length));
        expectAgrees(Uint8Array.from([...bytes, ...extra]));
      }),
      { numRuns: runs(1000) },
    );
  });

  it('never accepts random bytes that cborg refuses', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => expectAgrees(bytes)),
      { numRuns: runs(2000) },
    );
  });

  it('declines non-canonical encodings', () => {
    const bytes = (...b: number[]) => Uint8Array.from(b);
    const reversedKeys = { mapSorter: (a: { value: string }[], b: { value: string }[]) => (a[0]!.value < b[0]!.value ? 1 : -1) };
    const cases = [
      bytes(0x18, 0x05),
      bytes(0x59, 0x00, 0x01, 0x41),
      bytes(0x98, 0x01, 0x01),
      bytes(0x9f, 0x01, 0xff),
      bytes(0xc1, 0x01),
      bytes(0xf7),
      bytes(0xf9, 0x7e, 0x00),
      bytes(0xf9, 0x3c, 0x00),
      bytes(0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0),
      bytes(0x1b, 0x00, 0x20, 0, 0, 0, 0, 0, 0),
      bytes(0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02),
      bytes(0xa1, 0x01, 0x01),
      new Uint8Array(encode({ bb: 1, a: 2 }, reversedKeys as never)),
      bytes(0x01, 0x01),
      bytes(),
    ];
    for (const input of cases) {
      expect(decodeFast(input)).toBe(DECLINED);
      expect(thrownBy(() => decodeCanonical(input, 'value'))).toBeInstanceOf(Error);
    }
  });

  it('declines a "__proto__" key, leaving it to cborg', () => {
    const input = Uint8Array.from([0xa1, 0x69, ...new TextEncoder().encode('__proto__'), 0x01]);
    expect(decodeFast(input)).toBe(DECLINED);
    expect(Object.hasOwn(decodeCanonical(input, 'value') as object, '__proto__')).toBe(true);
  });
});

describe('canonicalCopy', () => {
  /** A value's shape, key order, byte strings and -0 included, as comparable text. */
  const shape = (value: unknown): string =>
    JSON.stringify(value, (_key, v: unknown) => (v instanceof Uint8Array ? { $bytes: [...v], plain: Object.getPrototypeOf(v) === Uint8Array.prototype } : Object.is(v, -0) ? '-0' : v));

  it('gives what decoding the canonical encoding gives, for every field value, sharing nothing with its input', () => {
    fc.assert(
      fc.property(valueArb, (value) => {
        try {
          checkValue(value, 'v');
        } catch {
          return; // only values an op may carry
        }
        const copy = canonicalCopy(value);
        expect(shape(copy)).toBe(shape(decodeCanonical(canonical(value), 'value')));
        if (value !== null && typeof value === 'object') expect(copy).not.toBe(value);
      }),
      { numRuns: runs(2000) },
    );
    // Byte strings of a Buffer come out as plain, separate Uint8Arrays; -0 as 0; keys in canonical order.
    const bytes = Buffer.from([1, 2, 3]);
    const copied = canonicalCopy({ zz: -0, b: [bytes], aaa: { é: 1, z: 2 } }) as { zz: number; b: Uint8Array[] };
    expect(shape(copied)).toBe(shape({ b: [new Uint8Array([1, 2, 3])], zz: 0, aaa: { z: 2, é: 1 } }));
    bytes[0] = 9;
    expect(copied.b[0]![0]).toBe(1);
  });
});
