/**
 * Device identity and signatures. A device id is the libp2p PeerId string of its Ed25519 key
 * ("12D3KooW..."): base58btc of the identity multihash of the protobuf-wrapped public key.
 * Signing and verifying use node:crypto with KeyObjects cached per device, because rebuilding a
 * key object per call (as @libp2p/crypto does) costs 1.3-3x the rate.
 */
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { fromString, toString } from 'uint8arrays';
import { InvalidInputError } from './errors.ts';

/** identity multihash (0x00, len 36) + protobuf PublicKey { Type: Ed25519 (1), Data: 32 bytes } */
const PEER_ID_PREFIX = Uint8Array.of(0x00, 0x24, 0x08, 0x01, 0x12, 0x20);
const PKCS8_ED25519_PREFIX = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);
const SPKI_ED25519_PREFIX = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);
const MAX_DEVICE_ID_CHARS = 64;
const MAX_CACHED_KEYS = 4096;

export type DeviceId = string;

export interface DeviceSigner {
  readonly device: DeviceId;
  readonly publicKey: Uint8Array;
  sign(message: Uint8Array): Uint8Array;
}

export function deviceIdFromPublicKey(publicKey: Uint8Array): DeviceId {
  if (publicKey.length !== 32) throw new InvalidInputError('BAD_KEY', `Ed25519 public key must be 32 bytes, got ${publicKey.length}`);
  const bytes = new Uint8Array(PEER_ID_PREFIX.length + 32);
  bytes.set(PEER_ID_PREFIX);
  bytes.set(publicKey, PEER_ID_PREFIX.length);
  return toString(bytes, 'base58btc');
}

export function publicKeyFromDeviceId(device: DeviceId): Uint8Array {
  let bytes: Uint8Array;
  try {
    if (typeof device !== 'string' || device.length === 0 || device.length > MAX_DEVICE_ID_CHARS) throw new Error('length');
    bytes = fromString(device, 'base58btc');
  } catch {
    throw new InvalidInputError('BAD_DEVICE_ID', `not an Ed25519 PeerId: ${String(device).slice(0, 80)}`, { device });
  }
  if (bytes.length !== 38 || !PEER_ID_PREFIX.every((b, i) => bytes[i] === b)) {
    throw new InvalidInputError('BAD_DEVICE_ID', `not an Ed25519 PeerId: ${device}`, { device });
  }
  return bytes.subarray(PEER_ID_PREFIX.length);
}

export function isDeviceId(value: unknown): value is DeviceId {
  if (typeof value !== 'string') return false;
  if (publicKeyCache.has(value)) return true;
  try {
    publicKeyObject(value);
    return true;
  } catch {
    return false;
  }
}

const publicKeyCache = new Map<DeviceId, KeyObject>();

function publicKeyObject(device: DeviceId): KeyObject {
  let key = publicKeyCache.get(device);
  if (key === undefined) {
    const raw = publicKeyFromDeviceId(device);
    key = createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: 'der', type: 'spki' });
    // Bounded cache: a team has at most hundreds of devices; forget everything rather than grow.
    if (publicKeyCache.size >= MAX_CACHED_KEYS) publicKeyCache.clear();
    publicKeyCache.set(device, key);
  }
  return key;
}

/** A signer for a device from its 32-byte Ed25519 private seed (libp2p keeps the same seed). */
export function signerFromSeed(seed: Uint8Array): DeviceSigner {
  if (seed.length !== 32) throw new InvalidInputError('BAD_KEY', `Ed25519 seed must be 32 bytes, got ${seed.length}`);
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' });
  const spki = createPublicKey(privateKey).export({ format: 'der', type: 'spki' });
  const publicKey = new Uint8Array(spki.subarray(SPKI_ED25519_PREFIX.length));
  const device = deviceIdFromPublicKey(publicKey);
  return {
    device,
    publicKey,
    sign: (message) => sign(null, message, privateKey),
  };
}

export function verifySignature(device: DeviceId, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== 64) return false;
  return verify(null, message, publicKeyObject(device), signature);
}

/** Messages are signed with a purpose prefix so an op signature can never pass as a certificate's. */
export function withContext(context: Uint8Array, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(context.length + payload.length);
  out.set(context);
  out.set(payload, context.length);
  return out;
}
