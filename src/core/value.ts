/**
 * Field values: what an op may carry. JSON-like plus byte strings; no undefined, no NaN or
 * infinities, integers only within the safe range, bounded depth.
 */
import { InvalidInputError } from './errors.ts';
import { LIMITS } from './limits.ts';

export type Value = null | boolean | number | string | Uint8Array | readonly Value[] | { readonly [key: string]: Value };
export type Fields = { readonly [field: string]: Value };

const FIELD_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** A UTF-16 surrogate not part of a pair (in `u` mode a pair is one code point, which this does not match). */
const LONE_SURROGATE = /\p{Surrogate}/u;
/**
 * Encoding turns a lone surrogate into U+FFFD: the node that wrote such a string would keep it
 * while every node that decodes the op shows U+FFFD. Strings and map keys alike are refused.
 */
const checkWellFormed = (text: string, path: string) => {
  if (LONE_SURROGATE.test(text)) throw new InvalidInputError('BAD_VALUE', `${path} holds a lone UTF-16 surrogate (not well-formed Unicode)`, { path });
};

/** A plain object (what a map value or the fields of an op must be): not null, an array, a class instance or a null-prototype object. */
export const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && Object.getPrototypeOf(value) === Object.prototype;

/** A map member with its key's UTF-8 length, for sorting in CBOR's canonical key order. */
type Member = { readonly key: string; readonly bytes: number; readonly value: unknown };

/** CBOR's canonical map key order: shorter UTF-8 first, then bytewise (code units are bytes for ASCII). */
function keyOrder(a: Member, b: Member): number {
  if (a.bytes !== b.bytes) return a.bytes - b.bytes;
  if (a.bytes === a.key.length && b.bytes === b.key.length) return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
  return Buffer.compare(Buffer.from(a.key), Buffer.from(b.key));
}

/**
 * A copy of a value shaped as decoding its canonical encoding gives: -0 as 0, byte strings as
 * plain Uint8Array copies, map keys in canonical order, nothing shared with the input. Each
 * member is read once, so what is checked, signed and kept is the same however the input's
 * getters behave. Shapes it does not know (and anything nested past the depth limit) are passed
 * as they are, for checkValue to refuse.
 */
export function canonicalCopy(value: unknown, depth = 0): unknown {
  if (depth > LIMITS.maxValueDepth) return value;
  if (typeof value === 'number') return value === 0 ? 0 : value;
  if (value instanceof Uint8Array) return new Uint8Array(value);
  if (Array.isArray(value)) {
    const out: unknown[] = new Array(value.length);
    for (let i = 0; i < value.length; i++) if (i in value) out[i] = canonicalCopy(value[i], depth + 1);
    return out;
  }
  if (isPlainObject(value)) {
    const members: Member[] = [];
    for (const [key, item] of Object.entries(value)) members.push({ key, bytes: Buffer.byteLength(key), value: item });
    members.sort(keyOrder);
    const out: Record<string, unknown> = {};
    for (const { key, value: item } of members) {
      // An own '__proto__' (from JSON.parse) stays an own member, for the checks to see.
      if (key === '__proto__') Object.defineProperty(out, key, { value: canonicalCopy(item, depth + 1), enumerable: true, writable: true, configurable: true });
      else out[key] = canonicalCopy(item, depth + 1);
    }
    return out;
  }
  return value;
}

export function checkFieldName(name: string): void {
  // '__proto__' is the one name a plain object cannot hold by assignment (it sets the prototype),
  // so the materializer could not keep a register or a view field under it.
  if (!FIELD_NAME.test(name) || name.length > LIMITS.maxFieldNameChars || name === '__proto__') {
    throw new InvalidInputError('BAD_FIELD_NAME', `field name ${JSON.stringify(name.slice(0, 80))} must match ${FIELD_NAME}, not be __proto__, and be at most ${LIMITS.maxFieldNameChars} chars`, { field: name });
  }
}

/**
 * Whether anything inside `value` sits deeper than `maxDepth` (`value` itself is depth 0; each
 * array element or map member is one deeper than its container), by the same measure as
 * checkValue. Iterative, with an explicit stack, so it is safe on input nested far deeper than
 * the call stack allows (a JSON body of 5 000 nested arrays): callers run it before any
 * recursive walk (conversions, JSON.stringify) of untrusted input. It stops at the first node
 * past the limit; byte strings are leaves. A cyclic value is reported as too deep.
 */
export function nestsDeeperThan(value: unknown, maxDepth: number): boolean {
  const pending: [unknown, number][] = [[value, 0]];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const [item, depth] = next;
    if (depth > maxDepth) return true;
    if (item === null || typeof item !== 'object' || item instanceof Uint8Array) continue;
    for (const child of Array.isArray(item) ? item : Object.values(item)) pending.push([child, depth + 1]);
  }
  return false;
}

/**
 * Checks one field value. The depth is checked on the way down before anything else, so the
 * recursion never goes more than maxValueDepth + 1 calls deep, whatever the input's nesting.
 */
export function checkValue(value: unknown, path: string, depth = 0): asserts value is Value {
  if (depth > LIMITS.maxValueDepth) {
    throw new InvalidInputError('VALUE_TOO_DEEP', `${path} nests deeper than ${LIMITS.maxValueDepth}`, { path });
  }
  if (typeof value === 'string') {
    // cborg's decoder drops a leading byte-order mark: such a string would not decode to itself.
    if (value.charCodeAt(0) === 0xfeff) throw new InvalidInputError('BAD_VALUE', `${path} starts with a byte-order mark (U+FEFF)`, { path });
    checkWellFormed(value, path);
    return;
  }
  if (value === null || typeof value === 'boolean' || value instanceof Uint8Array) return;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new InvalidInputError('BAD_VALUE', `${path} is not a finite number`, { path });
    if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
      throw new InvalidInputError('BAD_VALUE', `${path} is an integer beyond 2^53`, { path });
    }
    return;
  }
  if (Array.isArray(value)) {
    // A plain loop, not forEach: holes of a sparse array must be refused, not skipped.
    for (let i = 0; i < value.length; i++) {
      if (!(i in value)) throw new InvalidInputError('BAD_VALUE', `${path}[${i}] is a hole in a sparse array`, { path: `${path}[${i}]` });
      checkValue(value[i], `${path}[${i}]`, depth + 1);
    }
    return;
  }
  if (isPlainObject(value)) {
    for (const [key, item] of Object.entries(value)) {
      checkWellFormed(key, `${path}.${key}`);
      checkValue(item, `${path}.${key}`, depth + 1);
    }
    return;
  }
  throw new InvalidInputError('BAD_VALUE', `${path} is not serializable (${describe(value)})`, { path });
}

export function checkFields(fields: unknown, what: string): asserts fields is Fields {
  if (!isPlainObject(fields)) {
    throw new InvalidInputError('BAD_FIELDS', `${what}: fields must be a plain object`);
  }
  const names = Object.keys(fields);
  if (names.length > LIMITS.maxFieldsPerOp) {
    throw new InvalidInputError('TOO_MANY_FIELDS', `${what}: ${names.length} fields, over the limit of ${LIMITS.maxFieldsPerOp}`, { limit: LIMITS.maxFieldsPerOp, found: names.length });
  }
  for (const name of names) {
    checkFieldName(name);
    checkValue((fields as Record<string, unknown>)[name], name);
  }
}

function describe(value: unknown): string {
  if (value === undefined) return 'undefined';
  if (typeof value === 'object') return (value as object).constructor?.name ?? 'object';
  return typeof value;
}
