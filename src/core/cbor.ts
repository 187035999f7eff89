/**
 * Deterministic CBOR (cborg's canonical encoder: shortest ints and lengths, length-first sorted
 * map keys, smallest lossless floats). Decoding is strict and then checked by re-encoding: any
 * byte string that is not exactly what the encoder would produce is refused, so one value has
 * one encoding and one hash.
 */
import { decode, encode } from 'cborg';
import { equals } from 'uint8arrays';
import { decodeError } from './errors.ts';

const DECODE_OPTIONS = {
  strict: true,
  rejectDuplicateMapKeys: true,
  allowUndefined: false,
  allowIndefinite: false,
  allowNaN: false,
  allowInfinity: false,
  allowBigInt: false,
  tags: [],
} as const;

export function encodeCanonical(value: unknown): Uint8Array {
  return encode(value);
}

/** Decodes `bytes` and insists they are the canonical encoding of the result. */
export function decodeCanonical(bytes: Uint8Array, what: string): unknown {
  let value: unknown;
  try {
    value = decode(bytes, DECODE_OPTIONS);
  } catch (err) {
    throw decodeError(what, (err as Error).message);
  }
  let again: Uint8Array;
  try {
    again = encode(value);
  } catch (err) {
    throw decodeError(what, `value cannot be re-encoded: ${(err as Error).message}`);
  }
  if (!equals(again, bytes)) throw decodeError(what, 'not canonical CBOR (re-encoding gives other bytes)');
  return value;
}
