/**
 * The device's libp2p Ed25519 key, in libp2p's protobuf format, in `<dataDir>/device.key` with
 * mode 0600. Created once; its PeerId is the device id.
 */
import { chmod, open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { Ed25519PrivateKey } from '@libp2p/interface';
import { equals } from 'uint8arrays';
import { FieldmeshError } from '../core/errors.ts';
import { signerFromSeed, type DeviceSigner } from '../core/keys.ts';

export const DEVICE_KEY_FILE = 'device.key';

export class KeyFileError extends FieldmeshError {}

export interface DeviceKey {
  readonly privateKey: Ed25519PrivateKey;
  readonly signer: DeviceSigner;
}

function toDeviceKey(privateKey: Ed25519PrivateKey): DeviceKey {
  return { privateKey, signer: signerFromSeed(privateKey.raw.subarray(0, 32)) };
}

export async function loadOrCreateDeviceKey(dataDir: string): Promise<{ key: DeviceKey; created: boolean }> {
  const path = join(dataDir, DEVICE_KEY_FILE);
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') throw new KeyFileError('KEY_CORRUPT', `device key ${path} is unreadable: ${code === 'EISDIR' ? 'it is a directory' : (err as Error).message}`, { path });
    const privateKey = await generateKeyPair('Ed25519');
    const handle = await open(path, 'wx', 0o600);
    try {
      await handle.writeFile(privateKeyToProtobuf(privateKey));
      await handle.sync();
    } finally {
      await handle.close();
    }
    return { key: toDeviceKey(privateKey), created: true };
  }
  if (((await stat(path)).mode & 0o077) !== 0) await chmod(path, 0o600);
  let privateKey;
  try {
    privateKey = privateKeyFromProtobuf(bytes);
  } catch (err) {
    throw new KeyFileError('KEY_CORRUPT', `device key ${path} is unreadable: ${(err as Error).message}`, { path });
  }
  if (privateKey.type !== 'Ed25519') throw new KeyFileError('KEY_TYPE', `device key ${path} is ${privateKey.type}, not Ed25519`, { path });
  const key = toDeviceKey(privateKey);
  // The file holds seed and public key: a flipped byte in either makes them disagree.
  if (!equals(key.signer.publicKey, privateKey.publicKey.raw)) {
    throw new KeyFileError('KEY_CORRUPT', `device key ${path} is damaged: its public key does not match its seed`, { path });
  }
  return { key, created: false };
}
