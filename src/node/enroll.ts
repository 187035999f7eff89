/**
 * Enrollment: HQ signs a certificate for a device (team, device, user, role, expiry). The device
 * key is created in the device's data dir if missing, and the certificate is written beside it
 * (`device.cert`). HQ's key is read from HQ's own data dir (for now on the same machine; the
 * certificate file can also be carried to the device by hand).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeCertificate, issueCertificate, type Certificate, type Role } from '../core/cert.ts';
import { FieldmeshError } from '../core/errors.ts';
import { loadOrCreateDeviceKey } from './device-key.ts';

export const DEVICE_CERT_FILE = 'device.cert';
/** @default 365 days */
export const DEFAULT_CERT_VALIDITY_MS = 365 * 24 * 3600 * 1000;

export interface EnrollOptions {
  /** HQ's data dir, holding HQ's device.key (the team root). */
  readonly hqDataDir: string;
  /** The device's data dir (created if missing). */
  readonly dataDir: string;
  readonly team: string;
  readonly user: string;
  readonly role: Role;
  readonly nowMs?: number;
  readonly validForMs?: number;
}

export async function enroll(options: EnrollOptions): Promise<Certificate> {
  const hq = await loadOrCreateDeviceKey(options.hqDataDir);
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  const device = await loadOrCreateDeviceKey(options.dataDir);
  const issuedMs = options.nowMs ?? Date.now();
  const cert = issueCertificate(
    { team: options.team, device: device.key.signer.device, user: options.user, role: options.role, issuedMs, expiresMs: issuedMs + (options.validForMs ?? DEFAULT_CERT_VALIDITY_MS) },
    hq.key.signer,
  );
  await saveCertificate(options.dataDir, cert);
  return cert;
}

/** The device's certificate in its data dir, or null when it has not been enrolled. */
export async function readDeviceCertificate(dataDir: string): Promise<Certificate | null> {
  const path = join(dataDir, DEVICE_CERT_FILE);
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  try {
    return decodeCertificate(bytes);
  } catch (err) {
    throw new FieldmeshError('CERT_CORRUPT', `certificate ${path} is unusable: ${(err as Error).message}`, { path });
  }
}

/**
 * HQ's own certificate: self-issued on HQ's first start. `fresh` means it is not on disk yet:
 * the caller writes it (saveCertificate) only once the data dir proved to be HQ's.
 */
export async function hqCertificate(dataDir: string, team: string, user: string, nowMs: number): Promise<{ cert: Certificate; fresh: boolean }> {
  const existing = await readDeviceCertificate(dataDir);
  if (existing !== null) return { cert: existing, fresh: false };
  const { key } = await loadOrCreateDeviceKey(dataDir);
  const cert = issueCertificate({ team, device: key.signer.device, user, role: 'server', issuedMs: nowMs, expiresMs: nowMs + 10 * DEFAULT_CERT_VALIDITY_MS }, key.signer);
  return { cert, fresh: true };
}

export async function saveCertificate(dataDir: string, cert: Certificate): Promise<void> {
  await writeFile(join(dataDir, DEVICE_CERT_FILE), cert.bytes, { mode: 0o644 });
}
