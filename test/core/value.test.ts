import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '../../src/core/errors.ts';
import { LIMITS } from '../../src/core/limits.ts';
import { checkFieldName, checkFields, checkValue } from '../../src/core/value.ts';
import { expectCoreError } from './helpers.ts';

const nested = (depth: number): unknown => (depth === 0 ? 1 : [nested(depth - 1)]);

describe('checkFieldName', () => {
  it.each(['a', 'title', '_private', 'A1_b2', 'constructor', 'toString', 'x'.repeat(LIMITS.maxFieldNameChars)])('accepts %j', (name) => {
    expect(() => checkFieldName(name)).not.toThrow();
  });

  it.each(['', '1a', 'a-b', 'a.b', 'a b', '$exists', 'é', 'x'.repeat(LIMITS.maxFieldNameChars + 1), '__proto__'])('refuses %j with BAD_FIELD_NAME', (name) => {
    expectCoreError(() => checkFieldName(name), InvalidInputError, 'BAD_FIELD_NAME', { field: name });
  });
});

describe('checkValue', () => {
  it('accepts JSON-like values and byte strings', () => {
    for (const value of [null, true, 0, -1.5, Number.MAX_SAFE_INTEGER, '', 'text', new Uint8Array(3), [], [1, 'a', null], { a: { b: [new Uint8Array(1)] } }]) {
      expect(() => checkValue(value, 'v')).not.toThrow();
    }
  });

  it.each([
    ['NaN', Number.NaN],
    ['Infinity', Number.POSITIVE_INFINITY],
    ['an integer beyond 2^53', 2 ** 53],
    ['undefined', undefined],
    ['a Date', new Date(0)],
    ['a Map', new Map()],
    ['a class instance', new (class Thing {})()],
    ['a function', () => 1],
    ['a bigint', 1n],
    ['a nested undefined', { a: [1, undefined] }],
  ])('refuses %s with BAD_VALUE', (_, value) => {
    expectCoreError(() => checkValue(value, 'v'), InvalidInputError, 'BAD_VALUE');
  });

  // Encoding would turn a lone surrogate into U+FFFD: the writer would show one value, every other node another.
  it.each([
    ['a lone high surrogate', 'fire \ud800'],
    ['a lone low surrogate', '\udc00'],
    ['a lone surrogate in a nested array', ['ok', ['\ud83d']]],
    ['a lone surrogate in a map key', { a: { '\ud800': 1 } }],
  ])('refuses %s with BAD_VALUE', (_, value) => {
    expectCoreError(() => checkValue(value, 'v'), InvalidInputError, 'BAD_VALUE');
  });

  it('accepts surrogate pairs (characters beyond the BMP) in strings and map keys', () => {
    expect(() => checkValue({ '\ud83d\ude92': ['fire \ud83d\ude92', '🚒'] }, 'v')).not.toThrow();
  });

  it('bounds nesting depth', () => {
    expect(() => checkValue(nested(LIMITS.maxValueDepth), 'v')).not.toThrow();
    expectCoreError(() => checkValue(nested(LIMITS.maxValueDepth + 1), 'v'), InvalidInputError, 'VALUE_TOO_DEEP');
  });
});

describe('checkFields', () => {
  it.each([
    ['null', null],
    ['an array', [1]],
    ['a string', 'a'],
    ['a Map', new Map()],
    ['an object with a prototype', Object.create({ a: 1 })],
  ])('refuses %s with BAD_FIELDS', (_, fields) => {
    expectCoreError(() => checkFields(fields, 'op'), InvalidInputError, 'BAD_FIELDS');
  });

  it('bounds the number of fields', () => {
    const many = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`f${i}`, i]));
    expect(() => checkFields(many(LIMITS.maxFieldsPerOp), 'op')).not.toThrow();
    expectCoreError(() => checkFields(many(LIMITS.maxFieldsPerOp + 1), 'op'), InvalidInputError, 'TOO_MANY_FIELDS', {
      limit: LIMITS.maxFieldsPerOp,
      found: LIMITS.maxFieldsPerOp + 1,
    });
  });

  it('checks every name and value', () => {
    expectCoreError(() => checkFields({ ok: 1, 'not ok': 2 }, 'op'), InvalidInputError, 'BAD_FIELD_NAME');
    expectCoreError(() => checkFields({ ok: Number.NaN }, 'op'), InvalidInputError, 'BAD_VALUE');
    // An own "__proto__" key, as JSON.parse makes it.
    expectCoreError(() => checkFields(JSON.parse('{"__proto__": 1}'), 'op'), InvalidInputError, 'BAD_FIELD_NAME');
  });
});
