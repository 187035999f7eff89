/**
 * Every value on disk is a record that carries its own checksum:
 *   record := payload • crc32(key • payload) as 4 bytes big-endian
 * The checksum covers the key too, so a value served under the wrong key (or a garbled key)
 * is detected as well as a garbled value. Payloads are canonical CBOR.
 */
import { crc32 } from 'node:zlib';
import { decode, encode } from 'cborg';
import { FieldmeshError } from '../core/errors.ts';
import { codecFor } from './codecs.ts';
import { DECLINED, decodeFast, encodeFastInto } from '../core/fast-cbor.ts';
import type { Table } from './tables.ts';

/** The data dir is damaged or not ours: never served, always reported with the path. */
export class StoreCorruptError extends FieldmeshError {}

function checksum(key: string, payload: Uint8Array): number {
  return crc32(payload, crc32(key)); // a string is checksummed as its UTF-8 bytes
}

export function sealRecord(key: string, payload: Uint8Array): Uint8Array {
  // Pooled allocation: records are small and written by the thousand per batch.
  const out = Buffer.allocUnsafe(payload.length + 4);
  out.set(payload);
  out.writeUInt32BE(checksum(key, payload), payload.length);
  return out;
}

export function openRecord(key: string, record: Uint8Array, where: string): Uint8Array {
  if (record.length < 4) throw corrupt(where, key, 'record shorter than its checksum');
  const payload = record.subarray(0, record.length - 4);
  const stored = new DataView(record.buffer, record.byteOffset + payload.length, 4).getUint32(0);
  if (stored !== checksum(key, payload)) throw corrupt(where, key, 'checksum mismatch');
  return payload;
}

const sealScratch = new Uint8Array(256 * 1024);

/** Encodes with core's fast canonical encoder where it can (same bytes as cborg), else cborg. */
function encodePayload(value: unknown): Uint8Array {
  try {
    const end = encodeFastInto(value, sealScratch, 0);
    if (end >= 0 && end <= sealScratch.length) return sealScratch.subarray(0, end);
  } catch {
    /* too large for the scratch buffer: cborg below */
  }
  return encode(value);
}

export const sealValue = (key: string, value: unknown): Uint8Array => sealRecord(key, encodePayload(codecFor(key[0] as Table).encode(value)));

export function openValue<T>(key: string, record: Uint8Array, where: string): T {
  const payload = openRecord(key, record, where);
  try {
    // Records are written canonically, so core's fast decoder reads nearly all of them; cborg the rest.
    const fast = decodeFast(payload);
    return codecFor(key[0] as Table).decode(fast !== DECLINED ? fast : decode(payload)) as T;
  } catch (err) {
    throw corrupt(where, key, `undecodable record: ${(err as Error).message}`);
  }
}

export function corrupt(where: string, key: string, what: string): StoreCorruptError {
  return new StoreCorruptError('STORE_CORRUPT', `data dir ${where} is corrupt: ${what} (key ${JSON.stringify(key.slice(0, 120))})`, { path: where, key, what });
}
